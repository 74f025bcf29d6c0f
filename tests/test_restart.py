"""Worker fault tolerance (issue 11): with `options.on_worker_failure = "restart"` a worker that dies or hangs
is replaced, its envs rebuilt with the same seeds and its share of the request sampled again; under `fail` (the
default) the run stops with a `WorkerError` naming it; past `max_restarts` the run fails in one line.

Workers are lost two ways here: SIGKILL (or SIGSTOP, for a hang) by the pid in the backend's placement info, and
`KillingPendulum`, a Pendulum that kills its own process at a given step: mid-fragment, deterministically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from backends import REGISTRY, available, create_backend
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvSpec
from backends.processes import running
from backends.workers import WorkerError, WorkerLost
from tests.conftest import wait_for_no_children

POLICY = PolicySpec(obs_dim=3, act_dim=1, hidden_sizes=(16, 16))
SEED = 3


class KillingPendulum(gym.Wrapper):
    """Pendulum-v1 whose process SIGKILLs itself at step `at_step` of an env (counted from the env's making).
    With a `marker` path, only the first env anywhere to get there does (it creates the file); without, every env
    does, so a replacement worker dies again. With a `release` path, the env that dies first waits for that file
    to exist (up to 60 s): the test decides when, not the race between the worker and the learner's next message."""

    def __init__(
        self, at_step: int, marker: str | None = None, release: str | None = None, render_mode: str | None = None
    ) -> None:
        super().__init__(PendulumEnv(render_mode=render_mode))
        self.at_step, self.marker, self.release, self.steps = at_step, marker, release, 0

    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        self.steps += 1
        if self.steps == self.at_step and self._claim():
            deadline = time.monotonic() + 60
            while self.release is not None and not os.path.exists(self.release) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        return self.env.step(action)

    def _claim(self) -> bool:
        if self.marker is None:
            return True
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False


# The id names this module, so gymnasium imports it (and so registers the env) in whichever process makes the
# env: worker processes, Ray actors, the case process. The suite loader checks the full id against the registry.
KILLING_ENV = "tests.test_restart:KillingPendulum-v0"
for _id in (KILLING_ENV, KILLING_ENV.split(":")[1]):
    if _id not in gym.registry:
        gym.register(_id, entry_point=KillingPendulum, max_episode_steps=200)

BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not available(name), reason=f"needs {REGISTRY[name].needs}"))
    for name in ("multiprocessing", "ray_local")
]


def make_spec(name: str, workers: int = 2, envs: int = 2, **options) -> BackendSpec:
    return BackendSpec(name, workers, envs, "worker", {"timeout_s": 30, "on_worker_failure": "restart", **options})


def weights() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.3, POLICY.num_params).astype(np.float32)


@contextlib.contextmanager
def started(spec: BackendSpec, env: EnvSpec | None = None):
    """A started backend; on the way out, closed, and checked to leave no process or shared-memory segment."""
    backend = create_backend(spec)
    pids: set[int] = set()
    segments: set[str] = set()
    try:
        backend.start(env or EnvSpec(), POLICY, SEED)
        yield backend
    finally:
        pids = {w.get("pid") for w in backend.placement} | {p for r in backend.restarts for p in (r.pid, r.replaced_pid)}
        segments = {shared.shm.name for shared in getattr(backend, "shared", [])}
        backend.close()
    assert wait_for_no_children() == []
    # Ray's actors are its raylet's children, not ours: on a loaded machine they may take a while to go after
    # close. A leak is one still there when the wait is over.
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in pids if pid and running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == []
    assert [name for name in segments if Path("/dev/shm", name.lstrip("/")).exists()] == []


def assert_whole(collected, spec: BackendSpec, steps: int, version: int) -> None:
    """Every env's share is there, in order, sampled with `version`."""
    rollout = collected.rollout
    assert rollout.num_steps == steps and rollout.obs.shape == (steps // spec.num_envs, spec.num_envs, 3)
    np.testing.assert_array_equal(rollout.env_ids, np.arange(spec.num_envs))
    assert collected.fragment_versions == (version,) * spec.workers and rollout.policy_version == version
    assert len(collected.workers) == spec.workers and all(w.compute_s > 0 for w in collected.workers)


# --- a worker killed by pid -------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
def test_killed_worker_is_replaced_with_the_same_envs_and_seeds(name):
    spec = make_spec(name)
    w = weights()
    with started(spec) as backend:
        backend.set_weights(w, 0)
        first = backend.collect(64).rollout
        victim = backend.describe()["placement"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        backend.set_weights(w, 1)  # found here (its pipe or actor is gone) or in the collect
        collected = backend.collect(64)
        assert_whole(collected, spec, 64, 1)
        (restart,) = backend.drain_restarts()
        assert backend.drain_restarts() == []  # each restart is handed to the harness once
        replacement = backend.describe()["placement"][1]["pid"]
        # The next iteration runs on as if nothing happened.
        backend.set_weights(w, 2)
        assert_whole(backend.collect(64), spec, 64, 2)
    assert restart.worker == 1 and restart.replaced_pid == victim and restart.pid == replacement != victim
    assert restart.during in ("load weights", "sample") and restart.replace_s > 0
    assert restart.reason.startswith("worker 1 ") and "\n" not in restart.reason
    second = collected.rollout
    # The replacement's envs (2 and 3) restarted from reset with their seeds: with the same weights, their fragment
    # is the one they sampled first. The surviving worker's envs (0 and 1) went on from where they were.
    np.testing.assert_array_equal(second.obs[:, 2:], first.obs[:, 2:])
    np.testing.assert_array_equal(second.actions[:, 2:], first.actions[:, 2:])
    assert not np.allclose(second.obs[:, :2], first.obs[:, :2])


@pytest.mark.parametrize("name", BACKENDS)
def test_under_fail_a_killed_worker_stops_the_run_naming_it(name):
    spec = make_spec(name, on_worker_failure="fail")
    with started(spec) as backend:
        backend.set_weights(weights(), 0)
        victim = backend.describe()["placement"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerLost) as error:
            backend.set_weights(weights(), 1)
            backend.collect(64)
        assert backend.restarts == []
    assert error.value.worker == 1 and str(error.value).startswith("worker 1 ")


# --- a worker that kills itself mid-fragment --------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
def test_worker_dying_mid_fragment_is_replaced_and_the_fragment_sampled_again(name, tmp_path):
    spec = make_spec(name)
    env = EnvSpec(KILLING_ENV, {"at_step": 20, "marker": str(tmp_path / "killed")})
    with started(spec, env) as backend:
        backend.set_weights(weights(), 0)
        assert_whole(backend.collect(64), spec, 64, 0)  # steps 1-16 of each env
        assert backend.drain_restarts() == []
        backend.set_weights(weights(), 1)
        assert_whole(backend.collect(64), spec, 64, 1)  # one env kills its worker at step 20
        restarts = backend.drain_restarts()
    assert (tmp_path / "killed").exists()
    assert [(r.during, r.redispatched) for r in restarts] == [("sample", 1)]
    assert "died" in restarts[0].reason


@pytest.mark.parametrize("name", BACKENDS)
def test_worker_that_keeps_dying_fails_the_run_after_max_restarts(name):
    spec = make_spec(name, max_restarts=2)
    env = EnvSpec(KILLING_ENV, {"at_step": 5})  # no marker: every worker, and every replacement, dies at step 5
    with started(spec, env) as backend:
        backend.set_weights(weights(), 0)
        with pytest.raises(WorkerError) as error:
            backend.collect(64)
        assert len(backend.restarts) == 2
    text = str(error.value)
    assert "\n" not in text and text.startswith("worker ") and "died" in text
    assert "not restarted: 2 worker restart(s) already in this run (max_restarts = 2)" in text
    assert not isinstance(error.value, WorkerLost)  # the case fails; nothing may catch this and restart again


# --- a hung worker, and requests in flight ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_hung_worker_is_killed_and_replaced(name):
    # A deadline that finds the hang soon, yet lets a worker start on a loaded machine (with two busy processes
    # beside the tests, a Ray actor took more than 5 s to start: the start shares the deadline).
    spec = make_spec(name, timeout_s=20)
    with started(spec) as backend:
        backend.set_weights(weights(), 0)
        victim = backend.describe()["placement"][0]["pid"]
        os.kill(victim, signal.SIGSTOP)  # alive, but answers nothing
        backend.set_weights(weights(), 1)
        assert_whole(backend.collect(64), spec, 64, 1)
        (restart,) = backend.drain_restarts()  # its reason names the 5 s deadline that found the hang (below)
        assert not running(victim)  # killed, not left stopped beside its replacement
    assert restart.worker == 0 and restart.during == "load weights" and "within 20 s" in restart.reason


@pytest.mark.parametrize("name", BACKENDS)
def test_overlap_sends_every_request_in_flight_again_with_its_weights(name, tmp_path):
    """Under overlap with max_lag 2, two requests for different versions are in flight when a worker dies in the
    first: its replacement reloads each one's weights and samples both again, in order, then loads the newest."""
    spec = dataclasses.replace(make_spec(name), schedule="overlap", max_lag=2)
    release = tmp_path / "release"
    env = EnvSpec(KILLING_ENV, {"at_step": 5, "marker": str(tmp_path / "killed"), "release": str(release)})
    with started(spec, env) as backend:
        backend.set_weights(weights(), 0)
        backend.submit(64)  # one env dies at its 5th step of this one, once both requests are sent
        backend.set_weights(weights(), 1, wait=False)
        backend.submit(64)
        backend.set_weights(weights(), 2, wait=False)
        release.touch()
        assert_whole(backend.take(), spec, 64, 0)
        assert_whole(backend.take(), spec, 64, 1)
        backend.submit(64)
        assert_whole(backend.take(), spec, 64, 2)
        restarts = backend.drain_restarts()
    # Found while sending (a pipe already closed) or while waiting: either way both requests went again.
    assert len(restarts) == 1 and restarts[0].redispatched == 2


def test_central_inference_refuses_restart():
    backend = create_backend(BackendSpec("multiprocessing", 2, 1, "central", {"on_worker_failure": "restart"}))
    with pytest.raises(ValueError, match='needs inference = "worker"'):
        backend.start(EnvSpec(), POLICY, SEED)
    backend.close()


# --- end to end -------------------------------------------------------------------------------------


RESTART_SUITE = """
[suite]
name = "restart"
tables = ["speed", "phases"]
[ppo]
steps_per_iteration = 64
epochs = 1
hidden_sizes = [16, 16]
[measure]
warmup_iterations = 0
iterations = 3
repeats = 1
[env]
id = "{env}"
[[cases]]
backend = "multiprocessing"
workers = 2
options = {{ on_worker_failure = "restart", timeout_s = 60 }}
env = {{ kwargs = {{ at_step = 40, marker = "{tmp}/mp" }} }}
[[cases]]
backend = "ray_local"
workers = 2
options = {{ on_worker_failure = "restart", max_restarts = 1, timeout_s = 60 }}
env = {{ kwargs = {{ at_step = 40, marker = "{tmp}/ray" }} }}
"""


@pytest.mark.slow
@pytest.mark.skipif(not available("ray_local"), reason="needs ray")
def test_cli_run_with_a_worker_killed_mid_run_ends_ok_with_the_restart_recorded(tmp_path):
    import subprocess
    import sys

    from harness.results import load_run
    from harness.schema import validate_run
    from tests.conftest import REPO

    suite = tmp_path / "restart.toml"
    suite.write_text(RESTART_SUITE.format(env=KILLING_ENV, tmp=tmp_path))
    out = tmp_path / "out"
    # The CLI as a user runs it, in a process that has imported this module: the suite names its env.
    script = f"import sys, {__name__}; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", script, "run", str(suite), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "mp").exists() and (tmp_path / "ray").exists()  # each case lost a worker at step 40
    (run_dir,) = out.iterdir()
    validate_run(run_dir)
    run = load_run(run_dir)
    for case in run["cases"]:
        (result,) = case["runs"]
        assert result["status"] == "ok" and result["worker_restarts"] == 1, case["id"]
        # 32 steps per env per iteration: step 40 falls in the second iteration, which still has all 64 steps.
        assert [len(it["worker_restarts"]) for it in result["iterations"]] == [0, 1, 0]
        assert all(it["steps"] == 64 for it in result["iterations"])
        (restart,) = result["iterations"][1]["worker_restarts"]
        assert restart["during"] == "sample" and "died" in restart["reason"] and restart["pid"] != restart["replaced_pid"]
    report = (run_dir / "report.md").read_text()
    assert report.count("1 worker restart in 1 run") >= 4  # both cases' notes, and the sentence under each table
    assert 'Workers lost and replaced (on_worker_failure = "restart")' in report
