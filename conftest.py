"""Fixtures shared by tests/ and benchmarks/ (one session, so one cluster for both)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


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
