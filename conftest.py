"""Fixtures shared by tests/ and benchmarks/ (one session, so one cluster for both), and the session's own
temp space.

Tests own their temp space (issue 19): the session makes a private folder and points TMPDIR at it, and with it
every temp file the session or its children make (pytest's tmp_path, multiprocessing's sockets, each case's
scratch folder, Ray's session dirs, torch.compile's cache), then removes it at the end. The leak check looks
only at what the session owns: that folder, shared-memory segments carrying the session's prefix, and the
test process's descendants. Another program writing to /tmp, a cache an earlier run left, or a first run on a
fresh machine changes nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import multiprocessing.util
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from backends.host import SHORT_ROOT_MAX
from backends.processes import SHM_DIR, SHM_PREFIX_ENV
from tests.conftest import SESSION_PROCESSES, child_processes

BASE_ENV = "PPO_HARNESS_TEST_TEMP_BASE"
"""Where session folders go; set by the first pytest process, so pytest-xdist's workers make theirs beside it."""
SESSION_FOLDER_NAME = len("/t12345678")
SCRATCH_NAME = len("/ph12345678")
"""A case's scratch folder inside the session folder must still leave room for Ray's socket paths."""
# torch.compile's cache: the folder torch would pick under our TMPDIR anyway (a few of its modules ask for that
# default directly, ignoring TORCHINDUCTOR_CACHE_DIR), named as torch names it.
INDUCTOR_CACHE = "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
OWNED_BY_SESSION: set[str] = {INDUCTOR_CACHE}
"""Entries of the session folder that session fixtures create and remove themselves (not a test's leak)."""
SESSION_TEMP: Path | None = None


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`--numprocesses=auto`: one worker more than the cores, at most 4. The tests mostly wait (Ray and worker
    processes starting, runs through the CLI), so a third worker on 2 cores kept them busy: 8:18 against 9:13 for
    the test command's tests on a 2-core AMD EPYC, December 2026."""
    return min(4, (os.cpu_count() or 1) + 1)


def pytest_configure(config: pytest.Config) -> None:
    """Make the session's temp folder before any test, fixture or child process can look for one."""
    global SESSION_TEMP
    base = os.environ.get(BASE_ENV) or tempfile.gettempdir()
    if len(base) + SESSION_FOLDER_NAME + SCRATCH_NAME > SHORT_ROOT_MAX:
        base = "/tmp"  # a long TMPDIR would push Ray's sockets out of the session folder
    os.environ[BASE_ENV] = base
    SESSION_TEMP = Path(tempfile.mkdtemp(prefix="t", dir=base))
    os.environ["TMPDIR"] = str(SESSION_TEMP)
    tempfile.tempdir = str(SESSION_TEMP)
    # torch.compile's cache would otherwise go to <tmp>/torchinductor_<user> the first time a machine compiles.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(SESSION_TEMP / INDUCTOR_CACHE)
    os.environ["RAY_TMPDIR"] = str(SESSION_TEMP)  # only for a Ray started without our own temp dir
    os.environ[SHM_PREFIX_ENV] = f"pt{os.getpid()}_"


def pytest_report_header(config: pytest.Config) -> str:
    return f"private temp folder: {SESSION_TEMP} (TMPDIR; removed at the end)"


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_TEMP is not None:
        for entry in SESSION_TEMP.iterdir():
            if entry.name.startswith("pymp-"):  # multiprocessing removes its own at exit
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        # The folder itself after multiprocessing's own exit finalizers (priority -100) have run.
        multiprocessing.util.Finalize(None, shutil.rmtree, args=(SESSION_TEMP,), kwargs={"ignore_errors": True},
                                      exitpriority=-200)  # fmt: skip
    for segment in _shm_entries():  # segments the leak check already reported: don't leave them for the next run
        (SHM_DIR / segment).unlink(missing_ok=True)


def _temp_entries() -> set[str]:
    # pytest's own folders, and multiprocessing's (its forkserver's socket dir, removed when the session ends)
    return {p.name for p in SESSION_TEMP.iterdir() if not p.name.startswith(("pytest-of-", "pymp-"))}


def _shm_entries() -> set[str]:
    """The session's shared-memory segments: every one our code makes carries the session's prefix."""
    prefix = os.environ[SHM_PREFIX_ENV]
    return {p.name for p in SHM_DIR.glob(f"{prefix}*")} if SHM_DIR.is_dir() else set()


def _descendants() -> dict[int, str]:
    """The test process's live descendants that are a test's business (tests/conftest.py), by pid, with their
    command lines for the message."""
    out = {}
    for proc in child_processes():
        with contextlib.suppress(psutil.Error):
            out[proc.pid] = " ".join(proc.cmdline())[:120]
    return out


@pytest.fixture(autouse=True, scope="module")
def no_leaks(request):
    """Fails a test module that leaves a process, a shared-memory segment or a temp entry behind (Ray session
    dirs and tokens included), counting only what the session owns (see the module's docstring). Module scope:
    module fixtures (a cluster) are torn down before the check."""
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
             f"temp entries {sorted(left_temp)} in {SESSION_TEMP}" if left_temp else ""]  # fmt: skip
    pytest.fail(f"{request.module.__name__} left behind: {'; '.join(x for x in leaks if x)}", pytrace=False)


@pytest.fixture(scope="session")
def ray_cluster_address():
    """A real two-node Ray cluster started with `ray start` (harness.cluster), torn down at the end.

    Its state file is private to the session, and PPO_HARNESS_CLUSTER_STATE points at
    it so the ray_cluster backend finds the cluster's token.
    """
    from harness import cluster

    state_dir = Path(tempfile.mkdtemp(prefix="rts"))
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
