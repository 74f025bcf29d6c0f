"""How one iteration interleaves sampling and training: `sync` or `overlap`.

`sync` is a barrier: broadcast the weights, collect a batch with them, train on it.
`overlap` keeps `max_lag` requests in flight (Cleanba's and HTS-RL's one-step lag
when 1): the learner takes the oldest batch, asks for the next one at once, trains
while the workers sample it with the weights they hold, then sends its new weights
without waiting; the workers load them before their next fragment. A batch then
lags the learner by up to `max_lag` versions, measured per fragment.

Every phase is timed here, on the learner's timeline, so the phases add up to the
iteration's wall time under either schedule: `between_s` (the learner's own time since
the previous iteration: writing the record, progress), `sync_s` (sending weights),
`collect_s` (the learner waiting for data, plus dispatching the next request), `train_s`.
What runs at the same time under `overlap`, the workers' sampling, is recorded beside
them (`worker_compute_s`), never added in.

The clock gives overlap nothing for free (issue 23). Whatever the learner does between
iterations is on it, since under `overlap` the workers sample meanwhile. The one thing kept
off it, an evaluation, runs between `pause()` and `resume()`: `pause` takes every batch in
flight first (the wait is on the clock, as the next iteration's collect time), so no worker
samples while the clock is stopped. Draining, rather than clocking the evaluation, keeps
seconds to a threshold comparable with sync's, which never counted evaluations.

Lag is counted in versions and in the learner's optimiser steps (`Learner.optimizer_steps`
when each version was published): what Sample Factory and Cleanba mean by policy lag. With
`publish_every` the learner also publishes during its update: a part of a batch sampled with
such weights lags by the SGD steps since then, and by one version (the update was under way).

`Iteration` is one row of run.json's `iterations`: the union of what measured it (the schedule's
`PhaseTimes`, the backend's `BatchFigures`, its weight broadcasts' `SyncReport`s, its `WorkerShare`s and
`WorkerRestart`s), whose fields are the record's keys; `harness/records.py` and the JSON Schema use it as is.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
from annotated_types import Ge

from algorithms.base import Learner
from backends.base import (
    Backend,
    BatchFigures,
    Collected,
    Count,
    Seconds,
    SyncReport,
    WorkerRestart,
    WorkerShare,
    join_in_time,
)
from backends.envs import EnvCost

Positive = Annotated[int, Ge(1)]


@dataclass(frozen=True, kw_only=True)
class PhaseTimes:
    """How long each phase of one iteration took, timed by the schedule with time.perf_counter() (seconds,
    on the learner's clock)."""

    between_s: Seconds
    """The learner's time since the previous iteration ended, an evaluation excluded (`Schedule.pause`): the
    run's record and progress. 0 in the first iteration."""
    sync_s: Seconds
    """The learner's time sending weights (sync: until every copy loaded them; overlap: handing them over
    without waiting, plus the first barrier broadcast in iteration 0)."""
    collect_s: Seconds
    """The learner's time getting this iteration's batch (sync: sampling it; overlap: waiting for it, plus
    dispatching the next request, plus waiting for it when `pause` drained the pipeline)."""
    train_s: Seconds
    """Learner.train(rollout): for PPO, GAE plus the update."""
    total_s: Seconds
    """Wall time of the iteration on the learner's timeline: between_s + sync_s + collect_s + train_s. Under
    overlap the workers' sampling runs during train_s and is not added in."""
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
    sgd_lags: tuple[int, ...] | None
    """The same lags in the learner's optimiser steps; None for a learner that does not count them."""


class Schedule(ABC):
    """Drives a learner and a backend for `planned` iterations of `steps` env steps each."""

    training: Callable[[], AbstractContextManager[object]] = nullcontext
    """What holds while the learner trains: the case's `train_threads` under sync (harness.case sets it)."""

    def __init__(self, learner: Learner, backend: Backend, steps: int, planned: int) -> None:
        self.learner, self.backend, self.steps, self.planned = learner, backend, steps, planned
        # Each weight broadcast's number (what the backend calls its version) -> the learner's version and optimiser
        # steps when it was published: lag in SGD steps is a difference of two. One broadcast per update makes the
        # two numbers the same; publishing during an update (`publish_every`) makes more broadcasts than versions.
        self._published: dict[int, tuple[int, int | None]] = {}
        self._next_broadcast = learner.version
        self._ended: float | None = None  # when the last iteration ended, or the last pause resumed
        self._between_s = 0.0  # the learner's time since then that is on the clock
        self._waited_s = 0.0  # a pause's wait for the batches in flight, the next iteration's collect time

    @abstractmethod
    def iteration(self, index: int) -> Scheduled:
        """Run iteration `index` (0-based) and say how long each phase took."""

    def pause(self) -> None:
        """Stop the clock with no worker sampling: what runs until `resume` (an evaluation) is on no clock."""
        paused = time.perf_counter()
        self._between_s += paused - self._ended if self._ended is not None else 0.0
        self._drain()
        self._waited_s += time.perf_counter() - paused
        self._ended = None

    def resume(self) -> None:
        """Start the clock again after `pause`."""
        self._ended = time.perf_counter()

    def _drain(self) -> None:  # noqa: B027 (a hook: sync has no batch in flight)
        """Take every batch in flight."""

    def _clocked(self, started: float, ended: float, **phases: Any) -> Scheduled:
        """The iteration's record, with the learner's time before it (`between_s`) and a pause's wait on the clock."""
        between = self._between_s + (started - self._ended if self._ended is not None else 0.0)
        collect = phases.pop("collect_s") + self._waited_s
        self._ended, self._between_s, self._waited_s = ended, 0.0, 0.0
        total = between + phases["sync_s"] + collect + phases["train_s"]
        return Scheduled(between_s=between, collect_s=collect, total_s=total, **phases)

    def _send(self, weights: np.ndarray, wait: bool, optimizer_steps: int | None) -> int | None:
        """Broadcast `weights` (the learner's at `optimizer_steps`) under the next broadcast number; its bytes."""
        broadcast, self._next_broadcast = self._next_broadcast, self._next_broadcast + 1
        self._published[broadcast] = (self.learner.version, optimizer_steps)
        return self.backend.set_weights(weights, broadcast, wait=wait).bytes_sent

    def _train(self, collected: Collected) -> tuple[Collected, dict[str, float], tuple[int, ...], tuple[int, ...] | None]:
        """Train on the batch; it comes back with its rollout's version the learner's (not the broadcast's number)."""
        rollout = collected.rollout
        if rollout.num_steps != self.steps:
            raise RuntimeError(f"backend returned {rollout.num_steps} steps, {self.steps} were asked for")
        broadcasts = collected.fragment_versions or (rollout.policy_version,)
        lags = tuple(self.learner.version - self._published[b][0] for b in broadcasts)
        now = self.learner.optimizer_steps
        sampled = [self._published[b][1] for b in broadcasts]
        sgd_lags = None if now is None or None in sampled else tuple(now - s for s in sampled)  # type: ignore[operator]
        rollout = dataclasses.replace(rollout, policy_version=self._published[rollout.policy_version][0])
        with self.training():
            stats = self.learner.train(rollout)  # PPO refuses a batch that lags more than it allows
        return dataclasses.replace(collected, rollout=rollout), stats, lags, sgd_lags


class SyncSchedule(Schedule):
    """Broadcast, collect, train: every batch is sampled with the learner's current weights."""

    def iteration(self, index: int) -> Scheduled:
        t0 = time.perf_counter()
        sync_bytes = self._send(self.learner.weights(), True, self.learner.optimizer_steps)  # a GPU learner's copy to the host
        t1 = time.perf_counter()
        collected = self.backend.collect(self.steps)
        t2 = time.perf_counter()
        collected, stats, lags, sgd_lags = self._train(collected)
        t3 = time.perf_counter()
        return self._clocked(t0, t3, sync_s=t1 - t0, collect_s=t2 - t1, train_s=t3 - t2, sync_bytes=sync_bytes,
                             collected=collected, stats=stats, lags=lags, sgd_lags=sgd_lags)  # fmt: skip


class OverlapSchedule(Schedule):
    """Take the oldest batch, ask for the next, train, send the new weights without waiting.

    With `publish_every` (`BackendSpec.publications_per_batch` > 1) the next batch is asked for in that many
    consecutive parts: the first as the update starts, each other as the learner publishes weights during the
    update (`Learner.on_publish`), right behind them, so each part is sampled with the newest weights there are.
    Parts the learner did not publish for (KL early stopping ended its update) are asked for after it, with its
    final weights. Workers handle messages in order, so a part never waits for the weights of a later one."""

    def __init__(self, learner: Learner, backend: Backend, steps: int, planned: int) -> None:
        super().__init__(learner, backend, steps, planned)
        self._held: deque[Collected] = deque()  # batches a pause took, oldest first
        self._submitted = self._taken = 0  # batches
        self._parts = split_in_parts(steps, backend.spec.num_envs, backend.spec.publications_per_batch)
        self._unsent: deque[int] = deque()  # parts of the batch being asked for, waiting for the learner's next weights
        self._sent_mid_update: list[int | None] = []  # bytes of the broadcasts made during this iteration's update
        if len(self._parts) > 1:
            learner.on_publish = self._publish

    def iteration(self, index: int) -> Scheduled:
        depth = self.backend.spec.pipeline_depth
        t0 = time.perf_counter()
        sent: list[int | None] = []
        if index == 0:  # the first weights go out with a barrier, then the pipeline fills
            sent.append(self._send(self.learner.weights(), True, self.learner.optimizer_steps))
            while self._submitted < min(depth, self.planned):
                self._submit(whole=True)
        t1 = time.perf_counter()
        collected = self._held.popleft() if self._held else self._take()
        if self._submitted < self.planned:  # never ask for a batch no iteration will train on
            self._submit(whole=False)
        t2 = time.perf_counter()
        self._sent_mid_update = []
        collected, stats, lags, sgd_lags = self._train(collected)
        t3 = time.perf_counter()
        sent += self._sent_mid_update  # their time is the learner's, inside train_s
        sent.append(self._send(self.learner.weights(), False, self.learner.optimizer_steps))
        while self._unsent:  # the update ended before publishing for these parts
            self.backend.submit(self._unsent.popleft())
        t4 = time.perf_counter()
        sync_bytes = None if None in sent else sum(sent)  # type: ignore[arg-type]
        return self._clocked(t0, t4, sync_s=(t1 - t0) + (t4 - t3), collect_s=t2 - t1, train_s=t3 - t2,
                             sync_bytes=sync_bytes, collected=collected, stats=stats, lags=lags, sgd_lags=sgd_lags)  # fmt: skip

    def _publish(self, weights: np.ndarray, optimizer_steps: int) -> None:
        """The learner's weights during its update: broadcast them and ask for the next part behind them. With no part
        waiting (the last batch is asked for), nothing: no request would sample with them."""
        if self._unsent:
            self._sent_mid_update.append(self._send(weights, False, optimizer_steps))
            self.backend.submit(self._unsent.popleft())

    def _submit(self, whole: bool) -> None:
        """Ask for the next batch: every part now (`whole`), or the first now and the rest as weights are published."""
        first, *rest = self._parts
        self.backend.submit(first)
        if whole:
            for part in rest:
                self.backend.submit(part)
        else:
            self._unsent.extend(rest)
        self._submitted += 1

    def _take(self) -> Collected:
        self._taken += 1
        return join_in_time([self.backend.take() for _ in self._parts])

    def _drain(self) -> None:
        while self._taken < self._submitted:
            self._held.append(self._take())


def split_in_parts(steps: int, num_envs: int, parts: int) -> list[int]:
    """A batch of `steps` env steps (summed over `num_envs` envs) as `parts` consecutive requests of whole steps per
    env, as even as they can be: 2048 steps of 8 envs in 10 parts are 6 of 26 x 8 and 4 of 25 x 8."""
    per_env = steps // num_envs
    if parts > per_env:
        raise ValueError(f"{parts} publications per update is more than the {per_env} steps per env of a batch")
    return [len(chunk) * num_envs for chunk in np.array_split(np.arange(per_env), parts)]


SCHEDULE_CLASSES: dict[str, type[Schedule]] = {"sync": SyncSchedule, "overlap": OverlapSchedule}


@dataclass(frozen=True)
class PolicyLag:
    """Over the iteration's fragments: the learner's version when it trained on the batch minus the
    version each fragment was sampled with."""

    min: Count
    mean: Annotated[float, Ge(0)]
    max: Count
    sgd_steps_min: Count | None
    """The same lags in the learner's optimiser steps (null for a learner that does not count them)."""
    sgd_steps_mean: Annotated[float, Ge(0)] | None
    sgd_steps_max: Count | None

    @classmethod
    def of(cls, lags: tuple[int, ...], sgd_lags: tuple[int, ...] | None) -> PolicyLag:
        def spread(values: tuple[int, ...]) -> tuple[int, float, int]:
            return int(min(values)), float(np.mean(values)), int(max(values))

        return cls(*spread(lags), *(spread(sgd_lags) if sgd_lags else (None, None, None)))


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
    """Wall time of this run's iterations so far, this one included: the sum of their `total_s`, so everything
    but evaluations, which run with no batch in flight."""
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
            policy_lag=PolicyLag.of(done.lags, done.sgd_lags),
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
