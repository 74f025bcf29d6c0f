"""How one iteration interleaves sampling and training: `sync` or `overlap`.

`sync` is a barrier: broadcast the weights, collect a batch with them, train on it.
`overlap` keeps `max_lag` requests in flight (Cleanba's and HTS-RL's one-step lag
when 1): the learner takes the oldest batch, asks for the next one at once, trains
while the workers sample it with the weights they hold, then sends its new weights
without waiting; the workers load them before their next fragment. A batch then
lags the learner by up to `max_lag` versions, measured per fragment.

Every phase is timed here, on the learner's timeline, so the phases add up to the
iteration's wall time under either schedule: `sync_s` (sending weights), `collect_s`
(the learner waiting for data, plus dispatching the next request), `train_s`. What
runs at the same time under `overlap`, the workers' sampling, is recorded beside
them (`worker_compute_s`), never added in.

`Iteration` is one row of run.json's `iterations`: the union of what measured it (the schedule's
`PhaseTimes`, the backend's `BatchFigures`, its weight broadcasts' `SyncReport`s, its `WorkerShare`s and
`WorkerRestart`s), whose fields are the record's keys; `harness/records.py` and the JSON Schema use it as is.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
from annotated_types import Ge

from algorithms.base import Learner
from backends.base import Backend, BatchFigures, Collected, Count, Seconds, SyncReport, WorkerRestart, WorkerShare
from backends.envs import EnvCost

Positive = Annotated[int, Ge(1)]


@dataclass(frozen=True, kw_only=True)
class PhaseTimes:
    """How long each phase of one iteration took, timed by the schedule with time.perf_counter() (seconds,
    on the learner's clock)."""

    sync_s: Seconds
    """The learner's time sending weights (sync: until every copy loaded them; overlap: handing them over
    without waiting, plus the first barrier broadcast in iteration 0)."""
    collect_s: Seconds
    """The learner's time getting this iteration's batch (sync: sampling it; overlap: waiting for it, plus
    dispatching the next request)."""
    train_s: Seconds
    """Learner.train(rollout): for PPO, GAE plus the update."""
    total_s: Seconds
    """Wall time of the iteration on the learner's timeline: sync_s + collect_s + train_s. Under overlap the
    workers' sampling runs during train_s and is not added in."""
    sync_bytes: Count | None
    """Serialized bytes of this iteration's weight broadcasts, measured (stored once however many workers
    read them); 0 with central inference, null in-process."""


@dataclass(frozen=True, kw_only=True)
class Scheduled(PhaseTimes):
    """What one iteration of a schedule did: its phase times, the batch it trained on, and what training said."""

    collected: Collected
    stats: dict[str, float]
    lags: tuple[int, ...]
    """Per fragment: the learner's version when it trained on it minus the version it was sampled with."""


class Schedule(ABC):
    """Drives a learner and a backend for `planned` iterations of `steps` env steps each."""

    def __init__(self, learner: Learner, backend: Backend, steps: int, planned: int) -> None:
        self.learner, self.backend, self.steps, self.planned = learner, backend, steps, planned

    @abstractmethod
    def iteration(self, index: int) -> Scheduled:
        """Run iteration `index` (0-based) and say how long each phase took."""

    def _train(self, collected: Collected) -> tuple[dict[str, float], tuple[int, ...]]:
        rollout = collected.rollout
        if rollout.num_steps != self.steps:
            raise RuntimeError(f"backend returned {rollout.num_steps} steps, {self.steps} were asked for")
        lags = tuple(self.learner.version - v for v in collected.fragment_versions or (rollout.policy_version,))
        return self.learner.train(rollout), lags  # PPO refuses a batch that lags more than it allows


class SyncSchedule(Schedule):
    """Broadcast, collect, train: every batch is sampled with the learner's current weights."""

    def iteration(self, index: int) -> Scheduled:
        t0 = time.perf_counter()
        sync = self.backend.set_weights(self.learner.weights(), self.learner.version)  # a GPU learner's copy to the host
        t1 = time.perf_counter()
        collected = self.backend.collect(self.steps)
        t2 = time.perf_counter()
        stats, lags = self._train(collected)
        t3 = time.perf_counter()
        return Scheduled(sync_s=t1 - t0, collect_s=t2 - t1, train_s=t3 - t2, total_s=t3 - t0, sync_bytes=sync.bytes_sent,
                         collected=collected, stats=stats, lags=lags)  # fmt: skip


class OverlapSchedule(Schedule):
    """Take the oldest batch, ask for the next, train, send the new weights without waiting."""

    def iteration(self, index: int) -> Scheduled:
        depth = self.backend.spec.pipeline_depth
        t0 = time.perf_counter()
        sent: list[int | None] = []
        if index == 0:  # the first weights go out with a barrier, then the pipeline fills
            sent.append(self.backend.set_weights(self.learner.weights(), self.learner.version).bytes_sent)
            for _ in range(min(depth, self.planned)):
                self.backend.submit(self.steps)
        t1 = time.perf_counter()
        collected = self.backend.take()
        if index + depth < self.planned:  # never ask for a batch no iteration will train on
            self.backend.submit(self.steps)
        t2 = time.perf_counter()
        stats, lags = self._train(collected)
        t3 = time.perf_counter()
        sent.append(self.backend.set_weights(self.learner.weights(), self.learner.version, wait=False).bytes_sent)
        t4 = time.perf_counter()
        sync_bytes = None if None in sent else sum(sent)  # type: ignore[arg-type]
        return Scheduled(sync_s=(t1 - t0) + (t4 - t3), collect_s=t2 - t1, train_s=t3 - t2, total_s=t4 - t0,
                         sync_bytes=sync_bytes, collected=collected, stats=stats, lags=lags)  # fmt: skip


SCHEDULE_CLASSES: dict[str, type[Schedule]] = {"sync": SyncSchedule, "overlap": OverlapSchedule}


@dataclass(frozen=True)
class PolicyLag:
    """Over the iteration's fragments: the learner's version when it trained on the batch minus the
    version each fragment was sampled with."""

    min: Count
    mean: Annotated[float, Ge(0)]
    max: Count

    @classmethod
    def of(cls, lags: tuple[int, ...]) -> PolicyLag:
        return cls(int(min(lags)), float(np.mean(lags)), int(max(lags)))


@dataclass(frozen=True, kw_only=True)
class Iteration(PhaseTimes, BatchFigures):
    """One iteration of the learner/backend loop, each phase timed by the harness with time.perf_counter():
    a row of run.json's `iterations`, whose keys are these fields (`record()`)."""

    NOT_REQUIRED: ClassVar[tuple[str, ...]] = ("worker_restarts",)
    """Keys a valid record may lack (older runs did not write them); every other field is required."""

    index: Count
    warmup: bool
    """Excluded from every statistic."""
    steps: Positive
    train_wall_s: Seconds
    """Wall time of this run's iterations so far, this one included (evaluations excluded)."""
    policy_lag: PolicyLag
    sync_bytes_serialized: Count
    """As sync_bytes, but 0 rather than null in-process."""
    sync_bytes_network: Count
    """Of those, bytes fetched over the network: serialized size times the Ray nodes other than the driver's
    that host workers (0 on one node and for multiprocessing)."""
    sync_in_process: bool
    """True when no policy copy left the learner's process (in-process backends, central inference)."""
    workers: list[WorkerShare] | None
    """Per worker, the times and sizes the aggregates above come from (null in-process)."""
    worker_restarts: list[WorkerRestart] = field(default_factory=list)
    """Workers lost and replaced during this iteration (on_worker_failure = "restart"); empty when none."""
    env_cost_ms_mean: Annotated[float, Ge(0)] | None
    """Measured wall time per env step inside the synthetic step cost, over all envs; null without one."""
    env_cost_steps: Count
    policy_version: Count
    episodes: Count
    episode_return_mean: float | None
    steps_trained: Count
    learner: dict[str, float]
    """The named statistics Learner.train returned (PPO: policy_loss, value_loss, entropy, approx_kl,
    clip_fraction, learning_rate, gae_s, update_s). Names ending in _s are durations the learner measured
    inside the call."""

    @classmethod
    def measured(
        cls,
        done: Scheduled,
        *,
        index: int,
        warmup: bool,
        train_wall_s: float,
        steps_trained: int,
        sync_reports: list[SyncReport],
        restarts: list[WorkerRestart],
        env_cost: EnvCost,
    ) -> Iteration:
        """The record of one iteration from what measured it (an in-process backend drains no sync report)."""
        collected, rollout = done.collected, done.collected.rollout
        reports = sync_reports
        returns = rollout.episode_returns
        return cls(
            **_fields_of(PhaseTimes, done),
            **_fields_of(BatchFigures, collected),
            index=index,
            warmup=warmup,
            steps=rollout.num_steps,
            train_wall_s=train_wall_s,
            policy_lag=PolicyLag.of(done.lags),
            sync_bytes_serialized=sum(r.bytes_sent or 0 for r in reports),
            sync_bytes_network=sum(r.bytes_network or 0 for r in reports),
            # A backend whose policy copy is the learner's own drains no report: nothing crossed.
            sync_in_process=all(r.in_process for r in reports),
            workers=list(collected.workers) or None,
            worker_restarts=restarts,
            env_cost_ms_mean=env_cost.mean_ms,
            env_cost_steps=env_cost.steps,
            policy_version=rollout.policy_version,
            episodes=len(returns),
            episode_return_mean=float(returns.mean()) if len(returns) else None,
            steps_trained=steps_trained,
            learner={name: float(value) for name, value in done.stats.items()},
        )

    def record(self) -> dict[str, Any]:
        """This iteration as run.json keeps it."""
        return dataclasses.asdict(self)


def _fields_of(part: type, measured: object) -> dict[str, Any]:
    """The fields `part` declares, read from `measured` (an instance of `part` or of a subclass)."""
    return {f.name: getattr(measured, f.name) for f in dataclasses.fields(part)}
