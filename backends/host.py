"""What a process can learn about the machine it runs on, for results (no harness imports: workers use it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def usable_cpus() -> float:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota if one is set."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


# Ray puts unix sockets at `<its temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store`: 61 bytes
# after the temp dir with a 4-digit pid, 64 with a 7-digit one (Linux's largest), and a socket path holds at
# most 107. Our Ray temp dirs are `<root>/` + a 10-character mkdtemp name, so the root may have 32 bytes.
SOCKET_PATH_MAX = 107
RAY_SOCKET_SUFFIX = len("/session_2026-12-02_14-25-02_461291_4194304/sockets/plasma_store")
RAY_TEMP_NAME = len("/rl12345678")
SHORT_ROOT_MAX = SOCKET_PATH_MAX - RAY_SOCKET_SUFFIX - RAY_TEMP_NAME


def short_temp_root() -> str:
    """Where to make a folder that will hold Ray's sockets: the temp folder (TMPDIR; the harness gives each
    case its own, and the tests their session's) when it is short enough, else /tmp."""
    root = tempfile.gettempdir()
    return root if len(root) <= SHORT_ROOT_MAX else "/tmp"
