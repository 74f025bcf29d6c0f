"""What ran the benchmark: machine, packages, commit. Collected without ever raising."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from backends.host import usable_cpus

PACKAGES = (
    "torch", "ray", "gymnasium", "numpy", "psutil", "nvidia-ml-py", "tabulate",
    "matplotlib", "rich", "scipy", "pytest", "pytest-benchmark",
)  # fmt: skip


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpus() -> list[dict[str, Any]]:
    """Name and memory of each NVIDIA GPU, or [] where NVML finds none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            found = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(handle)
                found.append(
                    {
                        "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20,
                    }
                )
            return found
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver or no device all mean: no GPU
        return []


def busy_cores_between(before: Any, after: Any, wall_s: float) -> float:
    """Cores kept busy between two `psutil.cpu_times()` readings: every state but idle and iowait."""
    waiting = ("idle", "iowait", "guest", "guest_nice")  # the guest times are counted in user and nice already
    busy = sum(getattr(after, f) - getattr(before, f) for f in after._fields if f not in waiting)
    return max(0.0, busy / wall_s)


def busy_cores_elsewhere(window_s: float = 1.0) -> float:
    """Cores other processes keep busy, measured across the whole machine while this one sleeps. A load
    average lags by a minute (it still counts a test run that just ended); this reads the last second."""
    before, start = psutil.cpu_times(), time.monotonic()
    time.sleep(window_s)
    return busy_cores_between(before, psutil.cpu_times(), time.monotonic() - start)


def machine_info() -> dict[str, Any]:
    """Cores, memory, load and GPUs: what a reader needs to judge a number."""
    import torch

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cpus": usable_cpus(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": list(os.getloadavg()),
        "gpus": gpus(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the numbers (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def commit_info(repo: Path | None = None) -> dict[str, Any]:
    """Commit id and dirty flag; an `error` field instead of an exception when git can't tell."""
    repo = repo or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        # Dirty means changed tracked files, not tool droppings (tox's .venv, results/): untracked ones don't count.
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
        return {
            "id": git("rev-parse", "HEAD"),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(changed),
            "changed_files": [line.split(maxsplit=1)[1] for line in changed],
        }
    except (OSError, subprocess.SubprocessError) as exc:
        return {"id": None, "dirty": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
