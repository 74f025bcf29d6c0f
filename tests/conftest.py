"""Test helpers: leak checks. The Ray cluster fixture lives in the repository's conftest.py."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


# multiprocessing's own helpers live as long as the test process, by design: one forkserver
# (it forks workers) and one resource tracker (it unlinks leaked shared memory).
SHARED_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def child_processes() -> list[psutil.Process]:
    """Live (non-zombie) descendants of the test process, besides multiprocessing's helpers."""
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or any(h in " ".join(proc.cmdline()) for h in SHARED_HELPERS):
                continue
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
