"""Process trees and shared memory: finding what a run started, and stopping and removing it (issue 20).

`stop` is the one terminate-then-kill helper. The runner stops a case's tree with it, the Ray backends what a
failed start left under their temp dir, `harness cluster down` a cluster's nodes, the multiprocessing backend
its workers; each decides what to ask first and how long to wait, and the helper does the rest alike.

Nothing here reaps a process: a zombie counts as stopped, and its parent (subprocess.Popen,
multiprocessing.Process, init) collects its exit status as usual. Reaping another owner's child would lose
it: Popen would report exit code 0 for a killed case, and multiprocessing's `is_alive` would stay true.

Shared-memory segments made by a process tree carry the tree's prefix (`SHM_PREFIX_ENV`: the runner sets one
per case, the tests one per session), so whoever started the tree can find in /dev/shm what a killed
process left. No harness imports: workers use this module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

KILL_WAIT_S = 5.0
"""How long SIGKILLed processes may take to be gone (the kernel frees a large address space in its own time)."""
POLL_S = 0.01

SHM_DIR = Path("/dev/shm")
SHM_PREFIX_ENV = "PPO_HARNESS_SHM_PREFIX"
"""Shared-memory segments made by this process tree start with this prefix."""
DEFAULT_SHM_PREFIX = "ph_"


def new_shm_name() -> str:
    """A fresh shared-memory segment name carrying the tree's prefix (Python's own names are random `psm_*`,
    which nobody can tell apart from another program's)."""
    return f"{os.environ.get(SHM_PREFIX_ENV, DEFAULT_SHM_PREFIX)}{secrets.token_hex(6)}"


def running(proc: psutil.Process | int) -> bool:
    """Whether a process (or pid) still runs: an exited process that nobody has reaped yet (a zombie) does not."""
    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def existing(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes of `pids` that still exist. A worker started by a forkserver is the server's child, not
    ours: the server reaps it the moment it exits, so its pid may vanish between any two calls."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


def find(predicate: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """Every process on the machine but this one for which `predicate` holds; one that exits or denies access
    while `predicate` looks at it is left out."""
    found, me = [], os.getpid()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != me and predicate(proc):
                found.append(proc)
    return found


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """The running descendants of process `pid` (default: this one), children first; none if it is gone."""
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if running(p)]
    except psutil.Error:
        return []


def session_members(sid: int) -> list[psutil.Process]:
    """Processes in session `sid` besides its leader: Ray daemonises some of its processes out of the tree,
    but not out of the session."""
    return find(lambda p: p.pid != sid and os.getsid(p.pid) == sid)


def stop(procs: Iterable[psutil.Process], grace_s: float, *, terminate: bool = True,
         kill_wait_s: float = KILL_WAIT_S) -> list[psutil.Process]:  # fmt: skip
    """Stop `procs`: SIGTERM each (unless `terminate` is False: they were asked to stop another way, by a message
    say, or must die at once), give them `grace_s` to exit, SIGKILL those still running and wait up to
    `kill_wait_s` for them. Returns those still running after that (none, unless one cannot be signalled)."""
    left = [p for p in procs if running(p)]
    if terminate:
        _signal(left, signal.SIGTERM)
    left = _wait(left, grace_s)
    _signal(left, signal.SIGKILL)
    return _wait(left, kill_wait_s)


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil checks first that the pid is still the same process


def _wait(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `procs` still running after up to `timeout_s` (polled: see the module's docstring on reaping)."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return left
