"""`harness.cluster`: a real two-node Ray cluster is started, joined and stopped.

One cluster is shared by the module (starting one takes ~10 s). It is recorded
in a state file of its own under a short /tmp dir, never the user's default
one, and is always torn down, even when a test fails. The tests never import
`ray` in this process: joining happens in subprocesses, as the harness does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness import cluster as cl
from harness.errors import HarnessError
from tests.conftest import REPO

pytestmark = pytest.mark.ray_cluster

_JOIN = """
import ray
ray.init(log_to_driver=False, logging_level="ERROR")  # RAY_ADDRESS comes from the env
print(sum(1 for node in ray.nodes() if node["Alive"]))
"""

# The ray_cluster backend across the cluster's two nodes: one worker per node, one sync and one batch.
_MEASURE = """
import dataclasses, json, sys
import numpy as np
from backends import create_backend
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvSpec


def main():
    from backends.ray_backend import serialized_size

    policy = PolicySpec(3, 1, 64)
    backend = create_backend(BackendSpec("ray_cluster", 2, 2, "worker", {"timeout_s": 60, "address": sys.argv[1]}))
    try:
        backend.start(EnvSpec(), policy, 7)
        weights = np.random.default_rng(0).normal(0.0, 0.3, policy.num_params).astype(np.float32)
        report = backend.set_weights(weights, 1)
        collected = backend.collect(64)
        fields = {f.name: getattr(collected, f.name) for f in dataclasses.fields(collected) if f.name != "rollout"}
        fields["workers"] = [dataclasses.asdict(w) for w in collected.workers]
        out = {"report": dataclasses.asdict(report), "serialized": serialized_size(weights),
               "describe": backend.describe(), "collected": fields}
    finally:
        backend.close()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def state_dir():
    """A private dir for this module's state files: the user's cluster is never touched."""
    path = Path(tempfile.mkdtemp(prefix="rts", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(state_dir):
    """A two-node cluster for the whole module; torn down whatever happens."""
    state_file = state_dir / "cluster.json"
    try:
        info = cl.cluster_up(2, cpus_per_node=1, state_file=state_file)
        yield info, state_file
    finally:
        if state_file.exists():
            cl.cluster_down(state_file)


def _client_env(info: cl.ClusterInfo) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env.update(info.env)
    return env


def test_cluster_info_json_round_trip():
    info = cl.ClusterInfo("127.0.0.1:1234", 2, 1.0, "/tmp/rtokX", ("/tmp/rtA", "/tmp/rtB"), (10, 11), "192.0.2.2:1234")
    assert cl.ClusterInfo.from_json(info.to_json()) == info
    assert json.loads(info.to_json())["version"] == cl.STATE_VERSION
    assert info.env == {
        "RAY_ADDRESS": "127.0.0.1:1234",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/tmp/rtokX",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def test_default_state_file_honours_env(monkeypatch):
    monkeypatch.setenv(cl.STATE_ENV_VAR, "/tmp/elsewhere.json")
    assert cl.default_state_file() == Path("/tmp/elsewhere.json")
    monkeypatch.delenv(cl.STATE_ENV_VAR)
    assert cl.default_state_file() == Path(cl.DEFAULT_STATE_FILE)


def test_down_without_state_file_says_how_to_start(state_dir):
    missing = state_dir / "missing.json"
    with pytest.raises(HarnessError, match="no cluster is up") as err:
        cl.cluster_down(missing)
    assert str(missing) in str(err.value)
    assert "cluster up --nodes 2" in str(err.value)
    assert "no cluster is up" in cl.cluster_status(missing)


def test_probe_unreachable_address_fails_fast():
    start = time.perf_counter()
    with pytest.raises(HarnessError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:1 .*cluster up"):
        cl.probe_address("127.0.0.1:1", timeout_s=2.0)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize("address", ["", "localhost", "127.0.0.1:", "127.0.0.1:port", ":6379", "h:99999"])
def test_probe_malformed_address(address):
    with pytest.raises(HarnessError, match="malformed Ray cluster address"):
        cl.probe_address(address)


def test_up_records_cluster_and_client_sees_two_nodes(cluster):
    info, state_file = cluster
    assert cl.ClusterInfo.from_json(state_file.read_text()) == info
    assert info.address.startswith("127.0.0.1:") and info.nodes == 2
    assert len(info.temp_dirs) == 2 and all(os.path.isdir(d) for d in info.temp_dirs)
    assert info.pids and oct(os.stat(info.token_path).st_mode & 0o777) == "0o600"
    cl.probe_address(info.address)
    joined = subprocess.run(
        [sys.executable, "-c", _JOIN], env=_client_env(info), capture_output=True, text=True, timeout=120, cwd="/tmp"
    )
    assert joined.returncode == 0, joined.stderr[-2000:]
    assert joined.stdout.strip().splitlines()[-1] == "2"
    assert "2 of 2 nodes alive" in cl.cluster_status(state_file)


def test_env_for_recorded_address(cluster, monkeypatch):
    info, state_file = cluster
    monkeypatch.setenv(cl.STATE_ENV_VAR, str(state_file))
    assert cl.cluster_env_for(info.address) == info.env
    assert cl.cluster_env_for("127.0.0.1:1") == {}


def test_second_up_is_refused(cluster):
    info, state_file = cluster
    before = state_file.read_text()
    with pytest.raises(HarnessError, match=f"already up at {info.address}; run `python -m harness cluster down --state-file"):
        cl.cluster_up(2, cpus_per_node=1, state_file=state_file)
    assert state_file.read_text() == before  # the running cluster's record is untouched


def test_worker_on_another_node_gets_a_measured_clock_offset_and_network_bytes(cluster):
    # Both nodes run on this host, so the true offset is 0: the estimate must say so within its uncertainty.
    info, state_file = cluster
    env = _client_env(info) | {cl.STATE_ENV_VAR: str(state_file)}
    measured = subprocess.run([sys.executable, "-c", _MEASURE, info.address], env=env, capture_output=True, text=True,
                              timeout=180, cwd=REPO)  # fmt: skip
    assert measured.returncode == 0, measured.stderr[-3000:]
    out = json.loads(measured.stdout.strip().splitlines()[-1])
    described, collected, report = out["describe"], out["collected"], out["report"]
    placement = described["placement"]
    assert len({w["node"] for w in placement}) == 2 and described["remote_worker_nodes"] == 1
    clocks = {w["node"] == described["driver_node"]: w["clock"] for w in placement}
    assert clocks[True]["method"] == "shared" and clocks[True]["offset_s"] == 0
    remote = clocks[False]
    assert remote["method"] == "cristian" and 0 < remote["round_trip_s"] < 1.0
    assert remote["uncertainty_s"] == remote["round_trip_s"] / 2
    assert abs(remote["offset_s"]) <= remote["uncertainty_s"] + 1e-3
    # The weights are stored once and fetched once by the other node's object store.
    assert report["bytes_sent"] == out["serialized"] and report["bytes_network"] == out["serialized"]
    assert collected["clock_violations"] == 0
    assert collected["transfer_s"] >= -collected["transfer_uncertainty_s"]
    assert collected["transfer_uncertainty_s"] in (0.0, remote["uncertainty_s"])
    for worker in collected["workers"]:
        assert worker["start_s"] >= worker["sent_s"] - worker["clock_uncertainty_s"]
        assert worker["ready_s"] <= collected["joined_s"] + worker["clock_uncertainty_s"]
    assert sorted(w["clock_uncertainty_s"] for w in collected["workers"]) == [0.0, remote["uncertainty_s"]]


def test_down_stops_only_this_cluster_and_cleans_up(cluster):
    # Runs last among the cluster tests (file order); later users of the
    # fixture would find the cluster gone.
    info, state_file = cluster
    stopped = cl.cluster_down(state_file)
    assert stopped.pids  # (idle workers recorded at start may have exited since)
    assert cl._find_processes(info) == []
    for d in info.temp_dirs:
        assert not os.path.exists(d)
    assert not os.path.exists(info.token_path)
    assert not state_file.exists()
    with pytest.raises(HarnessError, match="cannot reach"):
        cl.probe_address(info.address, timeout_s=1.0)


def test_failed_start_tears_down_what_it_started(state_dir, monkeypatch):
    # Make the worker node's `ray start` fail after the head is up.
    real_popen = cl._popen_ray_start

    def popen(args, env, temp_dir):
        if not args[0].startswith("--head"):
            args = [*args, "--num-gpus=not-a-number"]
        return real_popen(args, env, temp_dir)

    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(cl, "_popen_ray_start", popen)
    monkeypatch.setattr(cl.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    state_file = state_dir / "failing.json"
    try:
        with pytest.raises(HarnessError, match="`ray start` failed") as err:
            cl.cluster_up(2, cpus_per_node=1, state_file=state_file)
        assert "\n" not in str(err.value)
        assert len(made) == 2 and not any(os.path.exists(d) for d in made)
        assert not state_file.exists()
        leftover = cl.ClusterInfo("", 2, 1.0, "", tuple(made), ())
        assert cl._find_processes(leftover) == []
    finally:
        if state_file.exists():
            cl.cluster_down(state_file)
