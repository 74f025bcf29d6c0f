"""A user's path to ray_cluster: `cluster up --nodes 2`, a ray_cluster suite, `cluster down`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.results import load_run
from tests.conftest import REPO

pytestmark = pytest.mark.ray_cluster

SUITE = """
[suite]
name = "two-nodes"
tables = ["speed", "communication"]
[ppo]
steps_per_iteration = 256
epochs = 1
[measure]
warmup_iterations = 0
iterations = 1
repeats = 1
[[cases]]
backend = "ray_cluster"
workers = 4
"""


@pytest.mark.slow
def test_cluster_up_suite_down(tmp_path):
    state_dir = Path(tempfile.mkdtemp(prefix="rts"))
    env = os.environ | {"PPO_HARNESS_CLUSTER_STATE": str(state_dir / "cluster.json")}
    env.pop("RAY_ADDRESS", None)

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
        )

    try:
        up = harness("cluster", "up", "--nodes", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        address = next(line.split("=", 1)[1].strip().strip("'\"") for line in up.stdout.splitlines() if "RAY_ADDRESS=" in line)
        suite = tmp_path / "two_nodes.toml"
        suite.write_text(SUITE)
        # As the README says: no --address, no exports; the run finds the cluster `up` recorded.
        run = harness("run", str(suite), "--out", str(tmp_path / "out"))
        assert run.returncode == 0, run.stdout + run.stderr
        (run_dir,) = (tmp_path / "out").iterdir()
        (result,) = load_run(run_dir)["cases"][0]["runs"]
        assert result["status"] == "ok"
        placement = result["backend"]["placement"]
        assert len(placement) == 4 and len({w["node"] for w in placement}) == 2, placement
        assert result["backend"]["cluster_nodes"] == 2 and result["backend"]["address"] == address
        # `run` exported the recorded cluster's token before the case process imported Ray: no private Ray call.
        recorded = state_dir / "cluster.json"
        assert result["backend"]["credentials"] == f"the cluster recorded in {recorded}, already in the environment"
        assert "Ray nodes: 2" in (run_dir / "report.md").read_text()
    finally:
        down = harness("cluster", "down")
        again = harness("cluster", "down")
        shutil.rmtree(state_dir, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout + again.stderr


def test_unreachable_address_is_one_line_within_30s(tmp_path):
    suite = tmp_path / "unreachable.toml"
    suite.write_text(SUITE.replace("workers = 4", 'workers = 1\noptions = { address = "127.0.0.1:1" }'))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in line and "cluster up" in line
    assert not (tmp_path / "out").exists()
