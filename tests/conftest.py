"""Test helpers: the processes a test left behind. The leak check and the Ray cluster fixture live in the
repository's conftest.py, which counts processes with this same helper."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from backends import processes

REPO = Path(__file__).resolve().parent.parent


# multiprocessing's own helpers live as long as the test process, by design: one forkserver
# (it forks workers) and one resource tracker (it unlinks leaked shared memory).
SHARED_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
SESSION_PROCESSES: set[int] = set()
"""Processes a session fixture started (the cluster's nodes): they and their children are its to stop."""


def child_processes() -> list[psutil.Process]:
    """Live (non-zombie) descendants of the test process, besides multiprocessing's helpers and the session
    fixtures' processes."""
    alive = []
    for proc in processes.descendants():
        try:
            if SESSION_PROCESSES & {proc.pid, *(p.pid for p in proc.parents())}:
                continue
            if not any(h in " ".join(proc.cmdline()) for h in SHARED_HELPERS):
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def wait_for_no_children(timeout_s: float = 15.0) -> list[psutil.Process]:
    """Children still alive after `timeout_s` (Ray's daemons take a moment to exit)."""
    deadline = time.monotonic() + timeout_s
    while (left := child_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
