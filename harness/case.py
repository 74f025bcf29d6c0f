"""One repeat of one case, run in a fresh process: `python -m harness.case SPEC.json RESULT.json`.

The harness, not the backend or the learner, times each phase of each iteration
with `time.perf_counter()`: weight sync, collect, train. It drives the learner
through `algorithms.base.Learner` alone, so it never knows which algorithm it
times. The result file is rewritten after every iteration, so a crash keeps
what finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import psutil
from annotated_types import Ge, MinLen
from threadpoolctl import threadpool_limits

from algorithms.base import Learner, LearnerSetup
from algorithms.evaluate import evaluate, evaluation_seeds
from algorithms.inference import InferencePolicy
from algorithms.registry import create_learner
from backends import create_backend
from backends.base import Backend, Count, Seconds, WorkerRestart
from backends.envs import STEP_COST_METER, describe_env, make_env
from backends.host import usable_cpus
from harness.errors import HarnessError
from harness.monitor import ResourceMonitor
from harness.schedule import SCHEDULE_CLASSES, Iteration, Schedule
from harness.suite import CaseConfig, MeasureConfig, from_json
from harness.watchdog import EPISODE_STEPS, RESTART_STARTUP_S, STARTUP_S, Watchdog, default_deadline

PROGRESS_PREFIX = "@@progress"
MiB = Annotated[float, Ge(0)]


@dataclass(frozen=True)
class Evaluation:
    """Deterministic evaluation (mean action) on seeds disjoint from training: an entry of a run's
    `evaluations`, or its `final_evaluation`."""

    steps: Count
    train_wall_s: Seconds
    """Wall time of the run's iterations before this evaluation, their `between_s` included, evaluations excluded
    (each runs with no batch in flight): what 'seconds to the threshold' counts, alike under both schedules."""
    mean_return: float
    returns: Annotated[list[float], MinLen(1)]
    seconds: Seconds


@dataclass(frozen=True)
class Memory:
    """Peak PSS in MiB, each process charged its share of shared pages (`memory_by_process`). An empty record
    where the system has no PSS (Linux's smaps)."""

    NOT_REQUIRED: ClassVar[tuple[str, ...]] = ("learner_pss_mib", "workers_pss_mib", "others_pss_mib", "tree_pss_mib")

    learner_pss_mib: MiB | None
    workers_pss_mib: list[MiB | None]
    """In worker order; None for a worker outside the case's process tree (another node, a cluster's raylet)."""
    others_pss_mib: MiB
    """Every other process of the tree (Ray's daemons, the forkserver), each at its own peak, summed."""
    tree_pss_mib: MiB | None
    """The largest total over the tree at one sample."""


def worker_restarts(backend: Backend) -> list[WorkerRestart]:
    """This iteration's worker restarts (`on_worker_failure = "restart"`), oldest first; none in-process."""
    return backend.drain_restarts()


class CaseRun:
    """Trains (or just iterates) one case with one seed and records every phase."""

    def __init__(self, case: CaseConfig, measure: MeasureConfig, seed: int, result_path: Path | None = None) -> None:
        self.case, self.measure, self.seed = case, measure, seed
        self.result_path = result_path
        self.result: dict[str, Any] = {"seed": seed, "status": "running", "iterations": [], "evaluations": [],
                                       "worker_restarts": 0}  # fmt: skip
        self.train_wall_s = 0.0  # wall time of the iterations so far: what "seconds to the threshold" counts
        self.phase = "setup"
        """What the run was doing: `setup` until the first iteration starts (a failure there recurs in every run)."""
        self.watchdog = Watchdog(self._expired)

    def _deadline(self, steps: int) -> float:
        if self.measure.iteration_timeout_s:
            return self.measure.iteration_timeout_s
        deadline = default_deadline(steps, self.case.env.worst_step_cost_ms, self.case.backend.workers)
        return deadline + self.case.backend.settings.restart_room_s(RESTART_STARTUP_S)

    def _expired(self, what: str) -> None:
        """The main thread never took the watchdog's signal: record the hang before the process exits."""
        self.result |= {"status": "error", "error": f"no progress in {what} within its deadline; the process was stuck"}
        self._save()

    def _training_threads(self, threads: int) -> Callable[[], AbstractContextManager[object]]:
        """While the learner trains: the case's `train_threads` (0: every CPU this process may use) for torch and BLAS,
        then `threads` again for sampling in this process; recorded as the run's `train_threads`."""
        asked = self.case.train_threads
        training = threads if asked is None else asked or max(1, int(usable_cpus()))
        self.result["train_threads"] = training
        if training == threads:
            return nullcontext

        @contextmanager
        def training_threads() -> Iterator[None]:
            import torch

            torch.set_num_threads(training)
            try:
                with threadpool_limits(training, user_api="blas"):
                    yield
            finally:
                torch.set_num_threads(threads)

        return training_threads

    def iterations_planned(self) -> int:
        per_iteration = self.case.steps_per_iteration
        if self.measure.mode == "convergence":
            return math.ceil(self.measure.total_steps / per_iteration)
        return self.measure.warmup_iterations + self.measure.iterations

    def run(self) -> dict[str, Any]:
        # Imported here, not at the top: nothing a sampling worker imports may pull torch in (issue 13).
        import torch

        asked = self.case.torch_threads if self.case.torch_threads is not None else self.measure.torch_threads
        threads = asked or psutil.cpu_count(logical=False) or 1
        torch.set_num_threads(threads)
        threadpool_limits(threads, user_api="blas")  # numpy's inference in this process (central, vecenv, eval)
        self.result["torch_threads"] = threads
        spaces = describe_env(self.case.env)  # checked at suite load too; here the env's own package may have changed
        policy = self.case.policy_spec(spaces)
        planned = self.iterations_planned()
        total_steps = planned * self.case.steps_per_iteration
        lag = self.case.backend.pipeline_depth  # how stale a batch the schedule will hand the learner
        setup = LearnerSetup(
            self.case.learner_config(), policy, self.seed, total_steps, self.case.algorithm.device, max_policy_lag=lag,
            publish_every=self.case.backend.publish_every,
        )  # fmt: skip
        started = time.perf_counter()
        with self.watchdog.phase("building the learner", STARTUP_S):
            learner = create_learner(self.case.algorithm.name, setup)  # a compiled learner compiles here, not in an iteration
        self.result["learner"] = {"name": self.case.algorithm.name, **learner.describe()}
        self.result["learner"]["startup_s"] = time.perf_counter() - started
        eval_policy = InferencePolicy(policy)
        backend = create_backend(self.case.backend)
        monitor = ResourceMonitor()
        try:
            with monitor:
                started = time.perf_counter()
                with self.watchdog.phase("starting the backend", STARTUP_S):
                    backend.start(self.case.env, policy, self.seed)
                # Ray's ray.init installs its own SIGTERM handler: ours decides, so the stop is recorded.
                signal.signal(signal.SIGTERM, _terminate)
                self.result["startup_s"] = time.perf_counter() - started
                self.result["backend"] = backend.describe()
                schedule = SCHEDULE_CLASSES[self.case.backend.schedule](learner, backend, self.case.steps_per_iteration, planned)
                schedule.training = self._training_threads(threads)
                next_eval = self.measure.eval_every
                iteration_deadline = self._deadline(self.case.steps_per_iteration)
                for index in range(planned):
                    self.phase = f"iteration {index}"
                    with self.watchdog.phase(self.phase, iteration_deadline):
                        self.result["iterations"].append(self._iteration(index, schedule))
                    self._progress(index + 1, planned)
                    if self.measure.mode == "convergence" and (learner.steps_trained >= next_eval or index == planned - 1):
                        next_eval += self.measure.eval_every
                        # Off the clock, so first the batches in flight: no worker samples while it runs.
                        with self.watchdog.phase(f"taking the batches in flight after iteration {index}", iteration_deadline):
                            schedule.pause()
                        self.result["evaluations"].append(self._evaluate(learner, eval_policy, self.measure.eval_episodes))
                        schedule.resume()
                    self._save()
                if self.measure.mode == "convergence":
                    self.result["final_evaluation"] = self._evaluate(learner, eval_policy, self.measure.final_eval_episodes)
                self.phase = "closing"
        finally:
            closing = time.perf_counter()
            backend.close()
            self.result["shutdown_s"] = time.perf_counter() - closing
            self.result["resources"] = monitor.summary()
            placement = self.result.get("backend", {}).get("placement", [])
            self.result["memory"] = memory_by_process(monitor.peak_pss_mib, self.result["resources"], placement)
        self.result["status"] = "ok"
        self._save()
        return self.result

    def _iteration(self, index: int, schedule: Schedule) -> dict[str, Any]:
        cost_before = STEP_COST_METER.reading()
        done = schedule.iteration(index)
        collected = done.collected
        # Workers measure their envs' step cost; an in-process backend's envs step here, on this process's meter.
        env_cost = collected.env_cost if collected.env_cost is not None else STEP_COST_METER.reading() - cost_before
        self.train_wall_s += done.total_s
        restarts = worker_restarts(schedule.backend)
        self.result["worker_restarts"] += len(restarts)
        return Iteration.measured(
            done,
            index=index,
            warmup=self.measure.mode == "throughput" and index < self.measure.warmup_iterations,
            train_wall_s=self.train_wall_s,
            steps_trained=schedule.learner.steps_trained,
            sync_reports=schedule.backend.drain_sync_reports(),
            restarts=restarts,
            env_cost=env_cost,
        ).record()

    def _evaluate(self, learner: Learner, policy: InferencePolicy, episodes: int) -> dict[str, Any]:
        policy.load_flat(learner.weights(), learner.version)
        started = time.perf_counter()
        deadline = (
            self._deadline(episodes * EPISODE_STEPS) if not self.measure.iteration_timeout_s else self.measure.iteration_timeout_s
        )
        with self.watchdog.phase(f"the evaluation after {learner.steps_trained:,} steps", deadline):
            returns = evaluate(policy, lambda: make_env(dataclasses.replace(self.case.env, step_cost_ms=0.0, reset_cost_ms=0.0)),
                               evaluation_seeds(self.seed, episodes))  # fmt: skip
        seconds = time.perf_counter() - started
        return dataclasses.asdict(
            Evaluation(learner.steps_trained, self.train_wall_s, float(np.mean(returns)), returns.tolist(), seconds)
        )

    def _progress(self, done: int, total: int) -> None:
        print(f"{PROGRESS_PREFIX} {done} {total}", flush=True)

    def _save(self) -> None:
        if self.result_path is not None:
            tmp = self.result_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.result, default=float))
            tmp.replace(self.result_path)


class Stopped(SystemExit):
    """SIGTERM reached the case: from the runner (a stop, --case-timeout) or the watchdog (a hang)."""


def _terminate(signum: int, frame: object) -> None:
    # Turn SIGTERM into an exception so `finally` closes the backend (Ray, worker processes).
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


# Errors that come from the configuration or the code, not the moment: raised during set-up, they would
def memory_by_process(peaks: dict[int, float], resources: dict[str, Any], placement: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak PSS (MiB) of this process (the learner), of each worker, and of everything else in the tree, from
    the monitor's per-process peaks and its summary (`tree_pss_mib`).

    A worker outside this process tree (on another node, or under a cluster's raylet) is None; on a
    system without PSS the record is empty.
    """
    if not peaks:
        return {}
    learner, worker_pids = os.getpid(), {w["pid"] for w in placement}
    others = sum(v for pid, v in peaks.items() if pid != learner and pid not in worker_pids)
    workers = [peaks.get(w["pid"]) for w in placement]
    return dataclasses.asdict(Memory(peaks.get(learner), workers, others, resources.get("tree_pss_mib", {}).get("max")))


# recur in every repeat, so the runner runs the case's other repeats no more (harness/runner.py).
DETERMINISTIC = (HarnessError, ValueError, TypeError, KeyError, AttributeError, ImportError, NotImplementedError)


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    signal.signal(signal.SIGTERM, _terminate)
    spec = json.loads(spec_path.read_text())
    # The spec is `harness.suite.to_json` output (harness/runner.py); `from_json` runs the configs' checks again.
    run = CaseRun(from_json(CaseConfig, spec["case"]), from_json(MeasureConfig, spec["measure"]), spec["seed"], result_path)
    try:
        run.run()
        return 0
    except BaseException as exc:  # recorded for the parent, whatever it was
        if run.watchdog.expired is not None and isinstance(exc, Stopped):
            message = (f"hung: no progress in {run.watchdog.expired} within its deadline of "
                       f"{run.watchdog.expired_after:.0f} s; raise [measure] iteration_timeout_s if it is only slow")  # fmt: skip
        else:
            message = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        run.result |= {
            "status": "error",
            "error": message.splitlines()[0] if message else type(exc).__name__,
            "traceback": traceback.format_exc(),
            "phase": run.phase,
            # A hang recurs too: each repeat would wait out the same deadline.
            "deterministic": (run.phase == "setup" and isinstance(exc, DETERMINISTIC)) or run.watchdog.expired is not None,
        }
        run._save()
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return 1
    finally:
        run.watchdog.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
