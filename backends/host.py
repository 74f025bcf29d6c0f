"""What a process can learn about the machine it runs on, for results (no harness imports: workers use it)."""

from __future__ import annotations

import os
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
