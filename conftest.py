"""Fixtures shared by tests/ and benchmarks/ (one session, so one cluster for both)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

SHM_DIR = Path("/dev/shm")
OWNED_BY_SESSION: set[str] = set()
"""Temp-folder entries that session fixtures create and remove themselves (not a test's leak)."""
SESSION_PROCESSES: set[int] = set()
"""Processes a session fixture started (the cluster's nodes): they and their children are its to stop."""


def _temp_entries() -> set[str]:
    root = Path(tempfile.gettempdir())
    # pytest's own folders, and multiprocessing's (its forkserver's socket dir, removed when the session ends)
    return {p.name for p in root.iterdir() if not p.name.startswith(("pytest-of-", "pymp-"))}


def _shm_entries() -> set[str]:
    return {p.name for p in SHM_DIR.iterdir()} if SHM_DIR.is_dir() else set()


def _descendants() -> dict[int, str]:
    """Live descendants of the test process, besides multiprocessing's helpers, which live as long as it
    does by design (a forkserver, a resource tracker)."""
    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if SESSION_PROCESSES & {proc.pid, *(p.pid for p in proc.parents())}:
                continue
            cmdline = " ".join(proc.cmdline())
            if (
                proc.status() != psutil.STATUS_ZOMBIE
                and "multiprocessing.forkserver" not in cmdline
                and "resource_tracker" not in cmdline
            ):
                out[proc.pid] = cmdline[:120]
        except psutil.Error:
            continue
    return out


@pytest.fixture(autouse=True, scope="module")
def no_leaks(request):
    """Fails a test module that leaves a process, a shared-memory segment or a temp dir behind (Ray session
    dirs and tokens included). Module scope: module fixtures (a cluster) are torn down before the check."""
    processes, shm, temp = set(_descendants()), _shm_entries(), _temp_entries()
    yield
    deadline = time.monotonic() + 20  # Ray's daemons and worker processes take a moment to exit
    while time.monotonic() < deadline:
        left_processes = {pid: cmd for pid, cmd in _descendants().items() if pid not in processes}
        left_shm = _shm_entries() - shm
        left_temp = _temp_entries() - temp - OWNED_BY_SESSION
        if not (left_processes or left_shm or left_temp):
            return
        time.sleep(0.5)
    leaks = [f"processes {sorted(left_processes.values())}" if left_processes else "",
             f"shared memory {sorted(left_shm)}" if left_shm else "",
             f"temp entries {sorted(left_temp)} in {tempfile.gettempdir()}" if left_temp else ""]  # fmt: skip
    pytest.fail(f"{request.module.__name__} left behind: {'; '.join(x for x in leaks if x)}", pytrace=False)


@pytest.fixture(scope="session")
def ray_cluster_address():
    """A real two-node Ray cluster started with `ray start` (harness.cluster), torn down at the end.

    Its state file is private to the session, and PPO_HARNESS_CLUSTER_STATE points at
    it so the ray_cluster backend finds the cluster's token.
    """
    from harness import cluster

    state_dir = Path(tempfile.mkdtemp(prefix="rts", dir="/tmp"))
    OWNED_BY_SESSION.add(state_dir.name)
    state_file = state_dir / "cluster.json"
    previous = os.environ.get("PPO_HARNESS_CLUSTER_STATE")
    os.environ["PPO_HARNESS_CLUSTER_STATE"] = str(state_file)
    temp_before, processes_before = _temp_entries(), set(_descendants())
    try:
        info = cluster.cluster_up(2, cpus_per_node=1, state_file=state_file)
        # The cluster's temp dirs and node processes live for the session: not any test module's leak.
        OWNED_BY_SESSION.update(_temp_entries() - temp_before)
        SESSION_PROCESSES.update(set(_descendants()) - processes_before)
        yield info.address
    finally:
        if state_file.exists():
            cluster.cluster_down(state_file)
        shutil.rmtree(state_dir, ignore_errors=True)
        if previous is None:
            os.environ.pop("PPO_HARNESS_CLUSTER_STATE", None)
        else:
            os.environ["PPO_HARNESS_CLUSTER_STATE"] = previous
