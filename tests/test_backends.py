"""One conformance suite over every registered backend and inference mode, plus equivalence.

Equivalence: with the same seed, weights and total env count, every backend returns
the rollout `vecenv` returns: everything discrete (env ids, step counts, episode
boundaries, policy version) exactly, every float within `FLOAT_TOLERANCE`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import pytest

from algorithms.rollout import PER_STEP_FIELDS, Rollout
from backends import REGISTRY, available, create_backend
from backends.base import BackendSpec, PolicySpec
from backends.envs import STEP_COST_METER, EnvSpec
from backends.processes import running
from backends.workers import WorkerError
from tests.conftest import wait_for_no_children


@dataclass(frozen=True)
class Workload:
    """An env and the policy that fits its spaces."""

    env: EnvSpec
    policy: PolicySpec


# Pendulum: a continuous action, every env truncated at step 200 together, never terminated.
# CartPole: a discrete action, episodes that terminate at different steps in each env (autoreset
# per env while the others go on), under weights that balance the pole badly.
WORKLOADS = {
    "pendulum": Workload(EnvSpec(), PolicySpec(obs_dim=3, act_dim=1, hidden_sizes=(64, 64))),
    "cartpole": Workload(
        EnvSpec("CartPole-v1"), PolicySpec(obs_dim=4, act_dim=2, hidden_sizes=(64, 64), distribution="categorical")
    ),
}
ENV, POLICY = WORKLOADS["pendulum"].env, WORKLOADS["pendulum"].policy
SEED = 7
NUM_ENVS = 4

# (backend, workers, envs per worker, inference): what each registry entry's `conformance` asks for, so a
# new backend is covered by its registry line alone.
CONFIGS = [(name, workers, envs, mode) for name, entry in REGISTRY.items() for mode, workers, envs in entry.conformance]
REMOTE = {name for name, entry in REGISTRY.items() if entry.remote}


def _param(config):
    entry = REGISTRY[config[0]]
    # A backend for an existing cluster runs against the session's (the ray_cluster fixture), marked so
    # that `-m "not ray_cluster"` leaves it out; one whose dependency is missing here is skipped.
    marks = [pytest.mark.ray_cluster] if entry.cluster else []
    marks.append(pytest.mark.skipif(not available(config[0]), reason=f"needs {entry.needs}"))
    return pytest.param(config, id="-".join(map(str, config)), marks=marks)


PARAMS = [_param(c) for c in CONFIGS]


def needs_gymnasium_envs(config) -> None:
    """Skip a test that needs the backend to step gymnasium's own envs (its registry entry says whether it does)."""
    if not REGISTRY[config[0]].same_envs_as_gymnasium:
        pytest.skip(f"{config[0]} steps its own env implementations, not gymnasium's (same_envs_as_gymnasium = False)")


@pytest.mark.parametrize("name", REGISTRY)
def test_every_backend_and_mode_is_covered(name):
    entry = REGISTRY[name]
    assert {mode for mode, _, _ in entry.conformance} == set(entry.inference_modes)
    assert all(workers * envs == NUM_ENVS for _, workers, envs in entry.conformance)
    assert entry.multi_worker or all(workers == 1 for _, workers, _ in entry.conformance)


@pytest.mark.parametrize("name", REGISTRY)
def test_options_parse_into_the_entrys_model_with_its_defaults(name):
    entry = REGISTRY[name]
    assert BackendSpec(name).settings == entry.options_model()  # every field has its default
    assert entry.options == tuple(f.name for f in dataclasses.fields(entry.options_model))
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        entry.parse_options({"colour": "red"})
    if entry.remote:  # a choice outside its Literal is refused without pydantic (workers never import it)
        with pytest.raises(ValueError, match="on_worker_failure must be one of fail, restart, got 'retry'"):
            entry.parse_options({"on_worker_failure": "retry"})
        given = BackendSpec(name, 2, 1, options={"timeout_s": 5.0, "on_worker_failure": "restart", "max_restarts": 2}).settings
        assert (given.timeout_s, given.on_worker_failure, given.max_restarts) == (5.0, "restart", 2)


@pytest.mark.parametrize("name", [n for n, e in REGISTRY.items() if not e.remote])
def test_an_in_process_backend_answers_the_harness_with_the_interfaces_defaults(name):
    """No isinstance in the harness: an in-process backend drains no sync report and no restart, and the
    iteration records a sync that stayed in the learner's process."""
    from backends.envs import EnvCost
    from harness.case import worker_restarts
    from harness.schedule import Iteration, Scheduled

    mode = REGISTRY[name].inference_modes[0]
    unstarted = create_backend(BackendSpec(name, 1, 2, mode))
    assert unstarted.drain_sync_reports() == [] and unstarted.drain_restarts() == []
    unstarted.close()  # never started: nothing to release, and no error
    backend = started(BackendSpec(name, 1, 2, mode))
    try:
        backend.set_weights(test_weights(), 1)
        done = Scheduled(
            between_s=0.0,
            sync_s=0.0,
            collect_s=0.1,
            train_s=0.0,
            total_s=0.1,
            sync_bytes=None,
            collected=backend.collect(4),
            stats={},
            lags=(0,),
            sgd_lags=None,
        )
        record = Iteration.measured(done, index=0, warmup=False, train_wall_s=0.1, steps_trained=4,
                                    sync_reports=backend.drain_sync_reports(), restarts=worker_restarts(backend),
                                    env_cost=EnvCost()).record()  # fmt: skip
    finally:
        backend.close()
    sync = {k: record[k] for k in ("sync_bytes_serialized", "sync_bytes_network", "sync_in_process", "worker_restarts")}
    assert sync == {"sync_bytes_serialized": 0, "sync_bytes_network": 0, "sync_in_process": True, "worker_restarts": []}


def test_rules_live_in_the_registry_entry():
    """One place per rule: the suite (tests/test_suite_config.py) and a remote backend's start both call it."""
    check = REGISTRY["multiprocessing"].check
    check(BackendSpec("multiprocessing", 2, 1, "worker", {"on_worker_failure": "restart", "max_restarts": 1}))
    with pytest.raises(ValueError, match='needs inference = "worker"'):
        check(BackendSpec("multiprocessing", 2, 1, "central", {"on_worker_failure": "restart"}))
    with pytest.raises(ValueError, match="schedule 'overlap' needs inference"):
        check(BackendSpec("multiprocessing", 2, 1, "central", schedule="overlap"))
    with pytest.raises(ValueError, match="is one vector env, stepped by the learner"):
        REGISTRY["vecenv"].check(BackendSpec("vecenv", 2, 1))
    with pytest.raises(ValueError, match="cannot overlap sampling"):
        REGISTRY["serial"].check(BackendSpec("serial", schedule="overlap"))
    assert REGISTRY["serial"].batched_inference is False and REGISTRY["vecenv"].batched_inference


def make_spec(config, request, **options) -> BackendSpec:
    name, workers, envs, inference = config
    if REGISTRY[name].cluster:
        options["address"] = request.getfixturevalue("ray_cluster_address")
    # A backend that waits on workers gets a deadline shorter than its default; one without the option, none.
    deadline = {"timeout_s": 60} if "timeout_s" in REGISTRY[name].options else {}
    return BackendSpec(name, workers, envs, inference, {**deadline, **options})


def test_weights(policy: PolicySpec = POLICY) -> np.ndarray:
    """Weights large enough that actions depend on the observation, not only on the noise."""
    return np.random.default_rng(0).normal(0.0, 0.3, policy.num_params).astype(np.float32)


test_weights.__test__ = False  # a helper, not a test


def started(spec: BackendSpec, env: EnvSpec = ENV, policy: PolicySpec = POLICY):
    backend = create_backend(spec)
    try:
        backend.start(env, policy, SEED)
    except BaseException:
        backend.close()
        raise
    return backend


def fragment_weights(policy: PolicySpec = POLICY, count: int = 2) -> list[np.ndarray]:
    """Different weights for each fragment: a backend that kept the first broadcast, or bumped the version
    without loading the weights, samples the later fragments visibly differently."""
    return [np.roll(test_weights(policy), 7 * k) * (1 + 0.1 * k) for k in range(count)]


def collect_twice(
    spec: BackendSpec, workload: Workload = WORKLOADS["pendulum"], steps_per_env: int = 150, weights: list | None = None
) -> list[Rollout]:
    """Two fragments of 150 steps per env, each with its own weights (`fragment_weights` unless given):
    Pendulum's 200-step truncation falls in the second."""
    backend = started(spec, workload.env, workload.policy)
    try:
        rollouts = []
        for version, fragment in enumerate(weights or fragment_weights(workload.policy)):
            backend.set_weights(fragment, version)
            rollouts.append(backend.collect(steps_per_env * spec.num_envs).rollout)
        return rollouts
    finally:
        backend.close()


@pytest.fixture(scope="module")
def references() -> dict[str, list[Rollout]]:
    """`vecenv`'s two fragments per workload, sampled once per module when first asked for."""
    return {}


@pytest.fixture
def reference(references) -> list[Rollout]:
    return reference_for("pendulum", references)


def reference_for(workload: str, references: dict[str, list[Rollout]], backend: str = "vecenv") -> list[Rollout]:
    """`backend`'s fragments for the workload (`vecenv`, or `serial` to check `vecenv` against)."""
    key = f"{backend}/{workload}"
    if key not in references:
        references[key] = collect_twice(BackendSpec(backend, 1, NUM_ENVS), WORKLOADS[workload])
    return references[key]


# Why floats are not compared exactly: a batch-1 and a batch-4 float32 matmul take different
# kernels (MKL picks them by CPU: Intel or AMD, AVX2 or AVX-512), so one policy call differs
# in the last bits, ~1e-6 of the output's scale for a 64-wide layer (64 products summed,
# float32 epsilon 6e-8). Pendulum's dynamics then carry the difference along the trajectory:
# measured on an AMD EPYC over these 300 steps, it grows to 1.8e-5 in actions, 5e-6 of the
# scale of every field (serial vs vecenv; 8e-6 and 1.5e-6 with MKL_CBWR=COMPATIBLE). The
# tolerance is 20x that; every bug the negative controls model (an env reordered, duplicated,
# dropped or seeded alike) moves a value by the field's own scale, 10^4 times more.
FLOAT_TOLERANCE = 1e-4
"""Relative to each field's largest magnitude (and to each value)."""


def assert_same_rollout(actual: Rollout, expected: Rollout, tolerance: float = FLOAT_TOLERANCE) -> None:
    """Every transition of every env, in order; raises AssertionError on any difference."""
    np.testing.assert_array_equal(actual.env_ids, expected.env_ids)
    assert actual.obs.shape == expected.obs.shape and actual.num_steps == expected.num_steps
    assert actual.policy_version == expected.policy_version
    for name in ("terminations", "truncations", "episode_env_ids", "episode_lengths"):
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name), err_msg=name)
    for name in ("obs", "actions", "rewards", "log_probs", "values", "final_values", "last_values", "episode_returns"):
        want = getattr(expected, name)
        if want.dtype.kind in "iu":  # discrete actions: exactly
            np.testing.assert_array_equal(getattr(actual, name), want, err_msg=name)
            continue
        scale = float(np.abs(want).max()) if want.size else 0.0
        np.testing.assert_allclose(getattr(actual, name), want, rtol=tolerance, atol=tolerance * scale, err_msg=name)


# --- conformance ------------------------------------------------------------------------------


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("config", PARAMS)
def test_shapes_dtypes_and_exact_step_accounting(config, workload, request):
    spec = make_spec(config, request)
    env, policy = WORKLOADS[workload].env, WORKLOADS[workload].policy
    backend = started(spec, env, policy)
    try:
        report = backend.set_weights(test_weights(policy), 5)
        collected = backend.collect(64)
        rollout = collected.rollout
        description = backend.describe()
    finally:
        backend.close()
        backend.close()  # idempotent
    steps = 64 // NUM_ENVS
    assert rollout.num_steps == 64 and rollout.policy_version == 5
    assert rollout.obs.shape == (steps, NUM_ENVS, policy.obs_dim) and rollout.obs.dtype == np.float32
    assert rollout.actions.shape == (steps, NUM_ENVS, *policy.action.action_shape)
    assert rollout.actions.dtype == policy.action.action_dtype
    for name in ("log_probs", "values", "rewards", "final_values"):
        assert getattr(rollout, name).shape == (steps, NUM_ENVS) and getattr(rollout, name).dtype == np.float32, name
    assert rollout.terminations.dtype == bool and rollout.truncations.dtype == bool
    np.testing.assert_array_equal(rollout.env_ids, np.arange(NUM_ENVS))
    assert rollout.last_values.shape == (NUM_ENVS,)
    assert description["inference"] == spec.inference and description["autoreset_mode"] == "SameStep"
    # Central inference loads the learner's own copy: measured as 0 bytes, in-process; in-process backends: None.
    assert (report.bytes_sent is not None) == (spec.name in REMOTE)
    assert report.in_process == (spec.name in REMOTE and spec.inference == "central")
    assert (report.bytes_sent == 0) == report.in_process
    assert (collected.transfer_s is not None) == (spec.name in REMOTE)
    if spec.name in REMOTE:
        assert collected.transfer_bytes > 0 and collected.worker_compute_s > 0
    with pytest.raises(ValueError, match="split evenly"):
        backend.steps_per_env(63)


@pytest.mark.parametrize("config", PARAMS)
def test_close_leaves_no_worker_process(config, request):
    spec = make_spec(config, request)
    backend = started(spec)
    backend.set_weights(test_weights(), 0)
    backend.collect(16)
    worker_pids = [w["pid"] for w in backend.describe().get("placement", [])]
    backend.close()
    backend.close()
    assert wait_for_no_children() == []
    # Workers on cluster nodes are not our children: check their processes by pid.
    deadline = time.monotonic() + 15
    while (alive := [pid for pid in worker_pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == []


@pytest.mark.parametrize("config", PARAMS)
def test_env_exception_reaches_caller_naming_the_worker(config, request):
    needs_gymnasium_envs(config)  # a broken env is made with gymnasium kwargs
    spec = make_spec(config, request)
    broken = dataclasses.replace(ENV, kwargs={"g": "not a number"})  # Pendulum fails inside step()
    backend = started(spec, broken)
    try:
        backend.set_weights(test_weights(), 0)
        with pytest.raises((WorkerError, TypeError)) as error:
            backend.collect(16)
    finally:
        backend.close()
    if spec.name in REMOTE:
        assert error.type is WorkerError
        text = str(error.value)
        assert text.startswith("worker ") and "TypeError" in text
        assert "pendulum.py" in text  # the worker's traceback travels with it
    else:
        assert error.type is TypeError


@pytest.mark.parametrize("config", [p for p in PARAMS if p.values[0][0] in REMOTE])
def test_killed_worker_is_detected_not_waited_on(config, request):
    spec = make_spec(config, request, timeout_s=30)
    backend = started(spec)
    try:
        backend.set_weights(test_weights(), 0)
        victim = backend.describe()["placement"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        # Detected as a death, not as the 30 s deadline running out: the cause, not a wall time another
        # process could stretch, shows that nothing waited on the dead worker.
        with pytest.raises(WorkerError, match=r"worker \d+ .*(died|is gone)") as caught:
            backend.set_weights(test_weights(), 1)
            backend.collect(16)
        assert "within" not in str(caught.value)
    finally:
        backend.close()


@pytest.mark.parametrize("config", PARAMS)
def test_communication_figures_are_measured_and_add_up(config, request):
    """Per-worker figures add up to the aggregates, times are causal on the learner's clock (within each
    clock's uncertainty), and a 2 ms sleep cost measures what the envs really slept: at least 2 ms a step, and
    no more than the time it was measured in (a sleep on a loaded machine may take any longer: no bound in ms)."""
    spec = make_spec(config, request)
    if not REGISTRY[spec.name].same_envs_as_gymnasium:  # its own envs take no step cost: the figures alone
        backend = started(spec)
        try:
            backend.set_weights(test_weights(), 1)
            collected = backend.collect(32)
        finally:
            backend.close()
        assert collected.rollout.num_steps == 32 and spec.name not in REMOTE
        assert collected.env_cost is None and collected.workers == () and collected.dispatch_s is None
        assert collected.transfer_s is None and collected.transfer_bytes is None
        return
    backend = started(spec, dataclasses.replace(ENV, step_cost_ms=2.0, step_cost_kind="sleep"))
    try:
        backend.set_weights(test_weights(), 1)
        before, began = STEP_COST_METER.reading(), time.perf_counter()
        collected = backend.collect(32)
        here, wall = STEP_COST_METER.reading() - before, time.perf_counter() - began  # envs stepped in this process
    finally:
        backend.close()
    # As the harness reads it (harness/case.py): the backend's own figure, else this process's meter (envs stepped here).
    cost = collected.env_cost if collected.env_cost is not None else here
    # What the envs slept, from the figure the record reports: within the collect's wall time in-process, within
    # the workers' summed sampling time otherwise (a unit slip, s for ms, would claim 64 s in a 0.1 s collect).
    assert cost.steps == 32 and cost.mean_ms >= 2.0
    slept_s = cost.mean_ms * cost.steps / 1000
    if spec.name in REMOTE:
        bound = sum(w.compute_s for w in collected.workers) + 1e-9
    else:  # envs here sleep one after another; envs in a tool's subprocesses (one each) sleep side by side
        bound = wall if collected.env_cost is None else wall * spec.num_envs
    assert slept_s <= bound
    # Where sampling's time went, on the critical path: its parts add up to the sampler's time, which fits in the
    # collect; and waiting on env steps holds at least one env's own sleeps (8 steps of 2 ms: envs side by side at
    # best), which happen inside the env step and nowhere else.
    env_s, inference_s, other_s = collected.sample_env_s, collected.sample_inference_s, collected.sample_other_s
    assert min(env_s, inference_s, other_s) >= 0 and env_s + inference_s + other_s <= wall
    assert env_s >= (32 // spec.num_envs) * 0.002
    if spec.name not in REMOTE:
        # Envs in this process spend their cost on its meter and report none; envs in a tool's subprocesses
        # (gym_async, sb3_subproc) leave it untouched and report theirs.
        assert (collected.env_cost is None) == (here.steps == 32) and here.steps in (0, 32)
        assert collected.workers == () and collected.dispatch_s is None
        return
    shares = collected.workers
    assert all(w.env_cost_s <= w.compute_s + 1e-9 for w in shares)  # each worker's envs slept within its sampling
    assert len(shares) == spec.workers and [w.env_cost_steps for w in shares] == [32 // spec.workers] * spec.workers
    assert collected.transfer_bytes == sum(w.bytes for w in shares) and all(w.bytes > 0 for w in shares)
    assert collected.clock_violations == 0
    for w in shares:
        assert all(math.isfinite(v) for v in dataclasses.astuple(w) if v is not None)
    if spec.inference == "central":  # per-step messages: the workers' own stepping, summed
        assert collected.dispatch_s is None and max(w.compute_s for w in shares) <= collected.worker_compute_s + 1e-9
        return
    assert 0 < collected.dispatch_s <= collected.asked_s <= collected.joined_s
    assert collected.worker_compute_s == max(w.compute_s for w in shares)
    assert collected.transfer_bytes > collected.rollout.nbytes  # serialized messages, not the bare arrays
    for w in shares:
        slack = w.clock_uncertainty_s
        assert 0 <= w.sent_s <= collected.dispatch_s and w.start_s >= w.sent_s - slack
        assert 0 < w.compute_s <= w.ready_s - w.start_s + 1e-9 and w.ready_s <= collected.joined_s + slack
    last_ready = max(w.ready_s for w in shares)
    assert collected.transfer_s == pytest.approx(collected.joined_s - max(collected.asked_s, last_ready), abs=1e-12)
    assert collected.transfer_s >= -collected.transfer_uncertainty_s


@pytest.mark.parametrize("config", [p for p in PARAMS if p.values[0][0] in REMOTE])
def test_sampling_workers_never_import_torch(config, request):
    """Workers infer in numpy (algorithms/inference.py) and step envs: nothing they import may pull in torch,
    ~190 MiB a process (issue 13). The probe env reports, from inside each worker, whether torch is loaded."""
    probe, policy = EnvSpec("tests.custom_envs:ImportProbe"), PolicySpec(1, 2, (16, 16), "categorical")
    backend = started(make_spec(config, request), probe, policy)
    try:
        backend.set_weights(test_weights(policy), 0)
        rollout = backend.collect(32).rollout
    finally:
        backend.close()
    assert rollout.obs.shape == (8, NUM_ENVS, 1) and not rollout.obs.any(), "a worker process has imported torch"
    # The probe can tell: in this process, which has torch, it reports it.
    import torch  # noqa: F401 - loaded here whichever tests ran before

    in_process = started(BackendSpec("vecenv", 1, 2), probe, policy)
    try:
        in_process.set_weights(test_weights(policy), 0)
        assert in_process.collect(4).rollout.obs.all()
    finally:
        in_process.close()


# --- equivalence --------------------------------------------------------------------------------


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("config", PARAMS)
def test_same_rollout_as_vecenv(config, workload, request, references):
    """vecenv itself is checked against serial: the same envs and noise, one policy call per env step."""
    needs_gymnasium_envs(config)  # other dynamics and seeding sample other rollouts
    actual = collect_twice(make_spec(config, request), WORKLOADS[workload])
    if workload == "pendulum":
        assert actual[1].truncations.any(), "the fragments should cross the 200-step time limit"
    else:  # some env terminated (and autoreset) at a step where another env went on
        terminated = np.concatenate([r.terminations for r in actual])
        assert (terminated.any(axis=1) & ~terminated.all(axis=1)).any()
        assert len(set(np.concatenate([r.episode_lengths for r in actual]).tolist())) > 1
    reference = reference_for(workload, references, "serial" if config[0] == "vecenv" else "vecenv")
    for got, expected in zip(actual, reference, strict=True):
        assert_same_rollout(got, expected)


def _reorder(rollout: Rollout, columns: list[int]) -> Rollout:
    changes = {name: getattr(rollout, name)[:, columns] for name in PER_STEP_FIELDS}
    return dataclasses.replace(rollout, **changes, last_values=rollout.last_values[columns])


def test_equivalence_check_catches_reordered_duplicated_dropped_or_alike_envs(reference):
    first = reference[0]
    assert not np.allclose(first.obs[:, 0], first.obs[:, 1]), "envs must be seeded differently"
    with pytest.raises(AssertionError):
        assert_same_rollout(_reorder(first, [1, 0, 2, 3]), first)  # reordered envs
    with pytest.raises(AssertionError):
        assert_same_rollout(_reorder(first, [0, 0, 2, 3]), first)  # duplicated env / two envs seeded alike
    dropped = dataclasses.replace(first, obs=np.roll(first.obs, 1, axis=0))
    with pytest.raises(AssertionError):
        assert_same_rollout(dropped, first)  # a transition dropped and the rest shifted
    first_weights = fragment_weights()[0]
    stale = collect_twice(BackendSpec("vecenv", 1, NUM_ENVS), weights=[first_weights, first_weights])
    with pytest.raises(AssertionError):
        assert_same_rollout(stale[1], reference[1])  # a backend that ignored the second broadcast
    assert_same_rollout(stale[0], first, tolerance=0)  # and the check passes on a true repeat
