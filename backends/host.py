"""What a process can learn about the machine it runs on, for results (no harness imports: workers use it)."""

from __future__ import annotations

import os
import secrets
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


SHM_PREFIX_ENV = "PPO_HARNESS_SHM_PREFIX"
"""Shared-memory segments made by this process tree start with this prefix (the runner sets one per case, the
tests one per session), so whoever started the tree can find what a killed process left in /dev/shm."""
DEFAULT_SHM_PREFIX = "ph_"


def new_shm_name() -> str:
    """A fresh shared-memory segment name carrying the tree's prefix (Python's own names are random `psm_*`,
    which nobody can tell apart from another program's)."""
    return f"{os.environ.get(SHM_PREFIX_ENV, DEFAULT_SHM_PREFIX)}{secrets.token_hex(6)}"
