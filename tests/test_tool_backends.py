"""What is particular to the backends that run a third-party vector env as itself (`gym_async`: gymnasium's
AsyncVectorEnv; `sb3_subproc`: Stable-Baselines3's SubprocVecEnv). The registry-driven conformance suite
(tests/test_backends.py) covers the rest."""

from __future__ import annotations

import dataclasses
import os
import signal

import psutil
import pytest

from backends import REGISTRY, available
from backends.base import BackendSpec
from backends.workers import WorkerError
from tests.conftest import wait_for_no_children
from tests.test_backends import ENV, NUM_ENVS, WORKLOADS, assert_same_rollout, collect_twice, reference_for, started, test_weights

TOOLS = ("gym_async", "sb3_subproc")
needs_sb3 = pytest.mark.skipif(not available("sb3_subproc"), reason="needs stable_baselines3")
TOOL_PARAMS = [pytest.param(name, marks=[needs_sb3] if name == "sb3_subproc" else []) for name in TOOLS]


@pytest.fixture(scope="module")
def references() -> dict:
    return {}


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("name", TOOL_PARAMS)
def test_same_rollout_as_vecenv_bit_for_bit(name, workload, references):
    """The same envs, seeds, noise and batch shapes as vecenv: every float equal, not only within tolerance."""
    actual = collect_twice(BackendSpec(name, 1, NUM_ENVS, "central"), WORKLOADS[workload])
    for got, expected in zip(actual, reference_for(workload, references), strict=True):
        assert_same_rollout(got, expected, tolerance=0)


def test_gym_async_without_shared_memory_samples_the_same(references):
    spec = BackendSpec("gym_async", 1, NUM_ENVS, "central", {"shared_memory": False})
    assert not started_description(spec)["transport"].endswith("shared memory")
    for got, expected in zip(collect_twice(spec), reference_for("pendulum", references), strict=True):
        assert_same_rollout(got, expected, tolerance=0)


def started_description(spec: BackendSpec) -> dict:
    backend = started(spec)
    try:
        return backend.describe()
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("gym_async", {"context": "fork"}, "context must be one of forkserver, spawn, got 'fork'"),
        ("gym_async", {"timeout_s": 5}, "unknown option 'timeout_s' for this backend; valid options: shared_memory, context"),
        ("sb3_subproc", {"start_method": "thread"}, "start_method must be one of forkserver, spawn, fork, got 'thread'"),
    ],
)
def test_options_are_the_tools_own(name, options, message):
    with pytest.raises(ValueError, match=message):
        REGISTRY[name].parse_options(options)
    assert BackendSpec("sb3_subproc", options={"start_method": "spawn"}).settings.start_method == "spawn"
    assert BackendSpec("gym_async", options={"shared_memory": False}).settings.shared_memory is False


@pytest.mark.parametrize("name", TOOLS)
def test_one_vector_env_with_central_inference_or_one_line_why_not(name):
    check = REGISTRY[name].check
    check(BackendSpec(name, 1, 8, "central"))
    with pytest.raises(ValueError, match=f"backend '{name}' is one vector env, stepped by the learner: set workers = 1"):
        check(BackendSpec(name, 2, 4, "central"))
    with pytest.raises(ValueError, match=f"backend '{name}' has no inference mode 'worker'; choose central$"):
        check(BackendSpec(name, 1, 4, "worker"))


@needs_sb3
def test_sb3_env_exception_is_reraised_as_itself_naming_the_env_and_its_traceback():
    """SB3's worker lets the exception end its process and the learner sees a closed pipe; the backend re-raises
    what the env raised, with the env and its traceback in a note."""
    broken = dataclasses.replace(ENV, kwargs={"g": "not a number"})
    backend = started(BackendSpec("sb3_subproc", 1, NUM_ENVS, "central"), broken)
    try:
        backend.set_weights(test_weights(), 0)
        with pytest.raises(TypeError) as error:
            backend.collect(16)
    finally:
        backend.close()
    note = "\n".join(error.value.__notes__)
    assert note.startswith("raised in env 0's process (Stable-Baselines3 SubprocVecEnv)") and "pendulum.py" in note
    assert wait_for_no_children() == []


@needs_sb3
def test_sb3_env_that_cannot_be_made_is_refused_at_start_with_its_cause():
    """SubprocVecEnv refuses nothing the harness accepts (it checks no spaces: harness's describe_env refuses
    images, Dict and Tuple first); what it cannot run is an env its process cannot make, which it reports as a
    bare EOFError while asking env 0 for its spaces. The backend says why, in the env's own words."""
    unmakeable = dataclasses.replace(ENV, kwargs={"no_such_argument": 1})
    with pytest.raises(TypeError, match="no_such_argument") as error:
        started(BackendSpec("sb3_subproc", 1, 2, "central"), unmakeable)
    assert "\n" not in str(error.value)
    assert wait_for_no_children() == []


@needs_sb3
def test_sb3_killed_env_process_is_a_worker_error_naming_it():
    backend = started(BackendSpec("sb3_subproc", 1, NUM_ENVS, "central"))
    try:
        backend.set_weights(test_weights(), 0)
        victim = backend.describe()["placement"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerError, match=rf"worker env 1 \(pid {victim}, exit code -9\)"):
            backend.collect(16)
    finally:
        backend.close()
    assert wait_for_no_children() == []


@needs_sb3
def test_memory_record_counts_the_env_processes_and_sb3s_import_torch():
    """The harness's memory record (harness.case.memory_by_process over the monitor's process tree) charges each
    env process as a worker. SB3's processes import SB3's package, torch included: measured here at ~180 MiB PSS
    each against ~25 MiB for gymnasium's, so the assertion keeps a wide margin (torch mapped, and 50 MiB more)."""
    from harness.case import memory_by_process
    from harness.monitor import ResourceMonitor

    workers: dict[str, list[float]] = {}
    for name in TOOLS:
        backend = started(BackendSpec(name, 1, 2, "central"))
        try:
            with ResourceMonitor(interval_s=0.1, memory_interval_s=0.1) as monitor:
                backend.set_weights(test_weights(), 0)
                backend.collect(8)
                placement = backend.describe()["placement"]
                torch = [any("torch" in m.path for m in psutil.Process(w["pid"]).memory_maps()) for w in placement]
            memory = memory_by_process(monitor.peak_pss_mib, monitor.summary(), placement)
        finally:
            backend.close()
        if not memory:
            pytest.skip("no PSS on this system (Linux's smaps)")
        workers[name] = memory["workers_pss_mib"]
        assert len(workers[name]) == 2 and all(w and w > 0 for w in workers[name]), memory
        assert torch == [name == "sb3_subproc"] * 2
    assert min(workers["sb3_subproc"]) > max(workers["gym_async"]) + 50, workers
