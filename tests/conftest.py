"""Shared fixtures: a real local Ray cluster for `ray_cluster` tests, and leak checks."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

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


@pytest.fixture(scope="session")
def ray_cluster_address():
    """A real two-node Ray cluster started with `ray start` (harness.cluster), torn down at the end.

    Its state file is private to the session, and PPO_HARNESS_CLUSTER_STATE points at
    it so the ray_cluster backend finds the cluster's token.
    """
    from harness import cluster

    state_dir = Path(tempfile.mkdtemp(prefix="rts", dir="/tmp"))
    state_file = state_dir / "cluster.json"
    previous = os.environ.get("PPO_HARNESS_CLUSTER_STATE")
    os.environ["PPO_HARNESS_CLUSTER_STATE"] = str(state_file)
    try:
        info = cluster.cluster_up(2, cpus_per_node=1, state_file=state_file)
        yield info.address
    finally:
        if state_file.exists():
            cluster.cluster_down(state_file)
        shutil.rmtree(state_dir, ignore_errors=True)
        if previous is None:
            os.environ.pop("PPO_HARNESS_CLUSTER_STATE", None)
        else:
            os.environ["PPO_HARNESS_CLUSTER_STATE"] = previous
