"""`harness.cluster` and `backends.ray_connect`: a real Ray cluster is started, joined, interrupted and stopped.

Tests marked `ray_cluster` start real clusters with `ray start`; the others are
quick unit tests that start no Ray process. One two-node cluster is shared by
the module (starting one takes ~10 s); tests that need to stop a cluster start
their own. Every cluster is recorded in a state file of its own in the session's
temp folder, never the user's default one, and is always torn down, even when a
test fails. The tests never import `ray` in this process: joining happens in
subprocesses, as the harness does.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from backends import ray_connect
from backends.host import short_temp_root
from harness import cluster as cl
from harness.cli import main
from harness.cluster import lifecycle
from harness.errors import HarnessError
from tests.conftest import REPO

cluster_test = pytest.mark.ray_cluster

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

    policy = PolicySpec(3, 1, (64, 64))
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
    path = Path(tempfile.mkdtemp(prefix="rts"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(state_dir):
    """A two-node cluster for the whole module; torn down whatever happens. No test stops it."""
    state_file = state_dir / "cluster.json"
    try:
        info = cl.cluster_up(2, cpus_per_node=1, state_file=state_file)
        yield info, state_file
    finally:
        cl.cluster_down(state_file)


def _client_env(info: cl.ClusterInfo) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env.update(info.env)
    return env


def _harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _started_with_token(token_path: str) -> set[int]:
    """Every running process whose environment holds this cluster's token path, and their descendants.

    A check independent of `find_processes` (which goes by command lines): every process a
    `ray start` of the cluster spawns inherits `RAY_AUTH_TOKEN_PATH`, bar the raylets' agents,
    which are their children.
    """
    found: set[int] = set()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_AUTH_TOKEN_PATH") == token_path:
                found |= {proc.pid} | {c.pid for c in proc.children(recursive=True)}
        except psutil.Error:
            continue
    alive = set()
    for pid in found:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.Error:
            continue
    return alive


def _wait_for(what: str, condition, timeout_s: float = 120.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _recorded(state_file: Path) -> cl.ClusterInfo | None:
    try:
        return cl.ClusterInfo.from_json(state_file.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet, or an old format


def _start_up_in_background(state_file: Path, nodes: int = 2) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "cluster", "up", "--nodes", str(nodes), "--cpus-per-node", "1",
         "--state-file", str(state_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _assert_nothing_left(info: cl.ClusterInfo, state_file: Path) -> None:
    assert _wait_for_gone(info) == set(), "Ray processes of the cluster still run"
    assert not state_file.exists()
    assert not [d for d in info.temp_dirs if os.path.exists(d)]
    assert not os.path.exists(info.token_path)


def _wait_for_gone(info: cl.ClusterInfo, timeout_s: float = 15.0) -> set[int]:
    """The cluster's processes still running after `timeout_s`, by environment and by command line."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = _started_with_token(info.token_path) | {p.pid for p in cl.find_processes(info)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _emergency_stop(info: cl.ClusterInfo | None, state_file: Path) -> None:
    """After a failed test: stop whatever is left, by pid, so that no test leaves a cluster behind."""
    if info is None:
        return
    lifecycle.teardown(info, state_file)
    for pid in _started_with_token(info.token_path):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


# --- quick: no Ray process ---------------------------------------------------------------------------------


def test_cluster_info_json_round_trip():
    info = cl.ClusterInfo("127.0.0.1:1234", 2, 1.0, "/tmp/rtokX", ("/tmp/rtA", "/tmp/rtB"), (10, 11), "192.0.2.2:1234",
                          status="starting", client_server_port=4321, owner_pid=77, owner_create_time=1.5)  # fmt: skip
    assert cl.ClusterInfo.from_json(info.to_json()) == info
    assert json.loads(info.to_json())["version"] == cl.STATE_VERSION
    assert info.env == {
        "RAY_ADDRESS": "127.0.0.1:1234",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/tmp/rtokX",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def test_version_1_state_file_reads_as_an_up_cluster():
    # Written by the harness before the state gained a status: `down` must still find and stop that cluster.
    old = {"version": 1, "address": "127.0.0.1:1234", "nodes": 2, "cpus_per_node": 1.0, "token_path": "/tmp/rtokX",
           "temp_dirs": ["/tmp/rtA", "/tmp/rtB"], "pids": [10], "advertised_address": "192.0.2.2:1234"}  # fmt: skip
    info = cl.ClusterInfo.from_json(json.dumps(old))
    assert info.status == "up" and info.temp_dirs == ("/tmp/rtA", "/tmp/rtB") and info.client_server_port == 0


def test_default_state_file_honours_env(monkeypatch):
    monkeypatch.setenv(cl.STATE_ENV_VAR, "/tmp/elsewhere.json")
    assert cl.default_state_file() == Path("/tmp/elsewhere.json")
    monkeypatch.delenv(cl.STATE_ENV_VAR)
    assert cl.default_state_file() == Path(cl.DEFAULT_STATE_FILE)


def test_down_with_nothing_up_exits_0_with_one_line(state_dir, capsys):
    missing = state_dir / "missing.json"
    assert cl.cluster_down(missing) is None
    for _ in range(2):  # and again: `down` is idempotent
        assert main(["cluster", "down", "--state-file", str(missing)]) == 0
        out, err = capsys.readouterr()
        (line,) = out.strip().splitlines()
        assert "no cluster is up" in line and str(missing) in line and "nothing to stop" in line and not err
    assert "no cluster is up" in cl.cluster_status(missing)


def test_state_is_recorded_before_the_first_ray_start(state_dir, monkeypatch):
    # Stand in for the first `ray start`: look at the state file, then fail as a start can.
    state_file = state_dir / "early.json"
    seen: list[cl.ClusterInfo | None] = []

    def first_start(args, env, temp_dir):  # noqa: ANN001, ANN202
        seen.append(_recorded(state_file))
        raise HarnessError("stopped before the first process")

    monkeypatch.setattr(lifecycle, "_popen_ray_start", first_start)
    with pytest.raises(HarnessError, match="stopped before the first process"):
        cl.cluster_up(3, cpus_per_node=1, state_file=state_file)
    (recorded,) = seen
    assert recorded is not None, "no state file when the first `ray start` ran"
    assert recorded.status == "starting" and recorded.owner_pid == os.getpid()
    assert len(recorded.temp_dirs) == 3 and all(d.startswith(f"{short_temp_root()}/rt") for d in recorded.temp_dirs)
    assert recorded.token_path and recorded.client_server_port > 0
    # The failed start removed what it had made.
    assert not state_file.exists() and not os.path.exists(recorded.token_path)
    assert not any(os.path.exists(d) for d in recorded.temp_dirs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_terminate_and_hangup_unwind_while_starting(sig):
    # By default both end the process on the spot, with no chance to stop what `up` started.
    if signal.getsignal(sig) != signal.SIG_DFL:
        pytest.skip(f"{sig.name} has a handler in this process already")
    with pytest.raises(SystemExit) as exited, lifecycle._signals_raise():
        os.kill(os.getpid(), sig)
        time.sleep(5)
    assert exited.value.code == 128 + sig
    assert signal.getsignal(sig) == signal.SIG_DFL  # restored afterwards


def test_down_finds_processes_of_an_up_interrupted_before_it_read_the_address(tmp_path):
    # Stand-ins for Ray daemons of a head whose `up` died after `ray start` but before it recorded the address:
    # one names the address the head wrote to its temp dir, one only the client server's port (as Ray's does).
    head_dir = tempfile.mkdtemp(prefix="rt")
    (Path(head_dir) / "ray_current_cluster").write_text("192.0.2.2:40123")
    sleep = "import time; time.sleep(60)"
    named = [
        ["--gcs-address=192.0.2.2:40123"],
        ["ray.util.client.server", "--address=192.0.2.2:40123", "--port=40999"],
        ["ray.util.client.server", "--port=40999"],
        ["--gcs-address=192.0.2.2:401234", "ray.util.client.server", "--port=409990"],  # another cluster's
    ]
    procs = [subprocess.Popen([sys.executable, "-c", sleep, *args]) for args in named]
    state_file = tmp_path / "interrupted.json"
    info = cl.ClusterInfo("", 1, 1.0, "", (head_dir,), status="starting", client_server_port=40999)
    cl.write_state(state_file, info)
    try:
        _wait_for("the stand-ins", lambda: all("time.sleep(60)" in " ".join(psutil.Process(p.pid).cmdline()) for p in procs), 10)
        assert {p.pid for p in cl.find_processes(info)} == {p.pid for p in procs[:3]}
        stopped = cl.cluster_down(state_file)
        assert set(stopped.pids) == {p.pid for p in procs[:3]}
        assert [p.wait(timeout=10) for p in procs[:3]] == [-signal.SIGTERM] * 3
        assert procs[3].poll() is None, "a process of another cluster was stopped"
        assert not os.path.exists(head_dir) and not state_file.exists()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(head_dir, ignore_errors=True)


def test_probe_unreachable_address_fails_fast():
    # Fast means refused at once, not after the timeout: the reason says which (a wall-time bound would be
    # another process's to break).
    with pytest.raises(HarnessError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:1 \(connection refused\).*cluster up"):
        cl.probe_address("127.0.0.1:1", timeout_s=2.0)


@pytest.mark.parametrize("address", ["", "localhost", "127.0.0.1:", "127.0.0.1:port", ":6379", "h:99999"])
def test_probe_malformed_address(address):
    with pytest.raises(HarnessError, match="malformed Ray cluster address"):
        cl.probe_address(address)


def test_backends_never_import_the_harness():
    # The layering of ARCHITECTURE.md: harness -> backends -> algorithms, nothing back up.
    for path in (REPO / "backends").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "harness" or n.startswith("harness.")], f"{path.name} imports {names}"


def _write_recorded(path: Path, address: str, advertised: str, token_path: str) -> None:
    cl.write_state(path, cl.ClusterInfo(address, 2, 1.0, token_path, ("/tmp/rtA",), advertised_address=advertised))


def test_connect_takes_the_recorded_token_for_the_recorded_address(tmp_path):
    state_file = tmp_path / "c.json"
    _write_recorded(state_file, "127.0.0.1:1234", "192.0.2.2:1234", "/tmp/rtokX")
    environ = {ray_connect.STATE_ENV_VAR: str(state_file), "RAY_AUTH_TOKEN": "someone else's"}
    want = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/tmp/rtokX", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_TOKEN": None}
    for address in ("127.0.0.1:1234", "192.0.2.2:1234"):
        connection = ray_connect.resolve({"address": address}, environ)
        assert connection.address == address and connection.env == want
        assert str(state_file) in connection.token_source
    # From RAY_ADDRESS when the options have none; the options win when both are set.
    assert ray_connect.resolve({}, environ | {"RAY_ADDRESS": "127.0.0.1:1234"}).env == want
    assert ray_connect.resolve({"address": "127.0.0.1:1"}, environ | {"RAY_ADDRESS": "127.0.0.1:1234"}).address == "127.0.0.1:1"


def test_connect_leaves_another_clusters_credentials_to_the_user(tmp_path):
    state_file = tmp_path / "c.json"
    _write_recorded(state_file, "127.0.0.1:1234", "192.0.2.2:1234", "/tmp/rtokX")
    environ = {ray_connect.STATE_ENV_VAR: str(state_file)}
    for address in ("127.0.0.1:12345", "10.0.0.1:1234"):
        assert ray_connect.resolve({"address": address}, environ).env == {"RAY_USAGE_STATS_ENABLED": "0"}
    (tmp_path / "bad.json").write_text("{not json")
    assert ray_connect.resolve({"address": "127.0.0.1:1234"}, {ray_connect.STATE_ENV_VAR: str(tmp_path / "bad.json")}).env == {
        "RAY_USAGE_STATS_ENABLED": "0"
    }
    with pytest.raises(ray_connect.ConnectError, match="needs an address"):
        ray_connect.resolve({}, environ)
    with pytest.raises(ray_connect.ConnectError, match="malformed"):
        ray_connect.resolve({"address": "nohost"}, environ)


def test_connect_exports_one_clusters_credentials_for_case_processes(tmp_path):
    state_file = tmp_path / "c.json"
    _write_recorded(state_file, "127.0.0.1:1234", "192.0.2.2:1234", "/tmp/rtokX")
    environ = {ray_connect.STATE_ENV_VAR: str(state_file), "RAY_AUTH_TOKEN": "x", "PATH": "/bin"}
    assert ray_connect.export_for_children(["127.0.0.1:1234", "10.0.0.1:1"], environ) is None
    assert environ["RAY_AUTH_TOKEN"] == "x"  # two clusters: each case process sets its own
    connection = ray_connect.export_for_children(["127.0.0.1:1234", "127.0.0.1:1234"], environ)
    assert environ == {ray_connect.STATE_ENV_VAR: str(state_file), "PATH": "/bin", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN_PATH": "/tmp/rtokX", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    # A case process started with that environment needs no change to Ray's settings after import.
    assert connection.missing_from(environ) == {}
    assert ray_connect.resolve({"address": "127.0.0.1:1234"}, environ).missing_from(environ) == {}
    previous = ray_connect.apply({"RAY_AUTH_TOKEN_PATH": "/tmp/other", "RAY_AUTH_MODE": None}, environ)
    assert connection.missing_from(environ) == {"RAY_AUTH_TOKEN_PATH": "/tmp/rtokX", "RAY_AUTH_MODE": "token"}
    ray_connect.restore(previous, environ)
    assert connection.missing_from(environ) == {}


# --- a real cluster ----------------------------------------------------------------------------------------


@cluster_test
def test_up_records_cluster_and_client_sees_two_nodes(cluster):
    info, state_file = cluster
    assert cl.ClusterInfo.from_json(state_file.read_text()) == info
    assert info.status == "up" and info.client_server_port > 0
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


@cluster_test
def test_connect_finds_the_recorded_clusters_token(cluster):
    info, state_file = cluster
    environ = {cl.STATE_ENV_VAR: str(state_file)}
    for address in (info.address, info.advertised_address):
        assert ray_connect.resolve({"address": address}, environ).env["RAY_AUTH_TOKEN_PATH"] == info.token_path


@cluster_test
def test_second_up_is_refused(cluster):
    info, state_file = cluster
    before = state_file.read_text()
    with pytest.raises(HarnessError, match=f"already up at {info.address}; run `python -m harness cluster down --state-file"):
        cl.cluster_up(2, cpus_per_node=1, state_file=state_file)
    assert state_file.read_text() == before  # the running cluster's record is untouched


@cluster_test
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
    assert remote["method"] == "cristian" and 0 < remote["round_trip_s"] < float("inf")  # no bound in s: load stretches it
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


@cluster_test
def test_down_stops_only_its_own_cluster_and_twice_is_fine(cluster, state_dir):
    # A second cluster of this test's own, beside the module's: `down` of it leaves the module's running.
    kept, _ = cluster
    kept_before = {p.pid for p in cl.find_processes(kept)}
    state_file = state_dir / "second.json"
    info = None
    try:
        info = cl.cluster_up(1, cpus_per_node=1, state_file=state_file)
        assert not set(info.pids) & kept_before and not set(info.temp_dirs) & set(kept.temp_dirs)
        assert _started_with_token(info.token_path)
        down = _harness("cluster", "down", "--state-file", str(state_file))
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"Ray cluster at {info.address} stopped" in down.stdout
        _assert_nothing_left(info, state_file)
        with pytest.raises(HarnessError, match="cannot reach"):
            cl.probe_address(info.address, timeout_s=1.0)
        again = _harness("cluster", "down", "--state-file", str(state_file))
        assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout + again.stderr
    finally:
        _emergency_stop(info, state_file)
    # The module's cluster: its daemons (idle workers may come and go) and both nodes still up.
    daemons = {p.pid for p in cl.find_processes(kept) if p.name() in ("gcs_server", "raylet")}
    assert len(daemons) == 3 and daemons <= kept_before
    assert "2 of 2 nodes alive" in cl.cluster_status(cluster[1])


@cluster_test
def test_sigterm_during_up_stops_what_it_started(state_dir):
    state_file = state_dir / "sigterm.json"
    up = _start_up_in_background(state_file)
    info = None
    try:
        # Once the head is up and recorded, the worker node is starting: interrupt there.
        info = _wait_for("the head's address in the state file", lambda: (i := _recorded(state_file)) and i.address and i)
        assert _started_with_token(info.token_path)
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=120)
        assert up.returncode == 128 + signal.SIGTERM, out + err
        _assert_nothing_left(info, state_file)
        down = _harness("cluster", "down", "--state-file", str(state_file))
        assert down.returncode == 0 and "nothing to stop" in down.stdout, down.stdout + down.stderr
    finally:
        up.kill()
        up.communicate()
        _emergency_stop(info or _recorded(state_file), state_file)


@cluster_test
def test_down_after_up_was_killed_while_starting_the_head_stops_everything(state_dir):
    # SIGKILL: `up` cleans nothing. Killed while the head starts, before it knows the address, so `down` has
    # only what `up` recorded before the first `ray start`.
    state_file = state_dir / "sigkill.json"
    up = _start_up_in_background(state_file)
    info = None
    try:
        recorded = _wait_for("a state file", lambda: _recorded(state_file))
        _wait_for("the head's GCS", lambda: any(p.name() == "gcs_server" for p in cl.find_processes(recorded)))
        up.kill()
        up.communicate(timeout=30)
        info = _recorded(state_file)
        assert info is not None and info.status == "starting"
        # The orphaned `ray start --head` carries on starting the head: let it finish, then stop it all.
        _wait_for("the head's client server", lambda: _client_server_running(info), timeout_s=60)
        started = _started_with_token(info.token_path)
        assert len(started) >= 4, started
        down = _harness("cluster", "down", "--state-file", str(state_file))
        assert down.returncode == 0, down.stdout + down.stderr
        assert "interrupted `cluster up` stopped" in down.stdout
        _assert_nothing_left(info, state_file)
        again = _harness("cluster", "down", "--state-file", str(state_file))
        assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout + again.stderr
    finally:
        up.kill()
        up.communicate()
        _emergency_stop(info or _recorded(state_file), state_file)


def _client_server_running(info: cl.ClusterInfo) -> bool:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "ray.util.client.server" in cmdline and f"--port={info.client_server_port}" in cmdline:
            return True
    return False


@cluster_test
def test_down_while_up_is_starting_stops_the_up_and_its_nodes(state_dir):
    state_file = state_dir / "racing.json"
    up = _start_up_in_background(state_file)
    info = None
    try:
        # As soon as `up` has recorded the cluster: it has a few seconds of starting nodes ahead of it.
        info = _wait_for("a state file", lambda: _recorded(state_file))
        assert "is starting" in cl.cluster_status(state_file)
        down = _harness("cluster", "down", "--state-file", str(state_file))
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.wait(timeout=30) == 128 + signal.SIGTERM  # `up` was told to stop, and did
        _assert_nothing_left(info, state_file)
    finally:
        up.kill()
        up.communicate()
        _emergency_stop(info or _recorded(state_file), state_file)


@cluster_test
def test_failed_start_tears_down_what_it_started(state_dir, monkeypatch):
    # Make the worker node's `ray start` fail after the head is up.
    real_popen = lifecycle._popen_ray_start

    def popen(args, env, temp_dir):  # noqa: ANN001, ANN202
        if not args[0].startswith("--head"):
            args = [*args, "--num-gpus=not-a-number"]
        return real_popen(args, env, temp_dir)

    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(lifecycle, "_popen_ray_start", popen)
    monkeypatch.setattr(lifecycle.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    state_file = state_dir / "failing.json"
    try:
        with pytest.raises(HarnessError, match="`ray start` failed") as err:
            cl.cluster_up(2, cpus_per_node=1, state_file=state_file)
        assert "\n" not in str(err.value)
        assert len(made) == 2 and not any(os.path.exists(d) for d in made)
        assert not state_file.exists()
        leftover = cl.ClusterInfo("", 2, 1.0, "", tuple(made), ())
        assert cl.find_processes(leftover) == []
    finally:
        cl.cluster_down(state_file)
