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
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from algorithms.base import Learner
from backends.base import Backend, Collected


@dataclass(frozen=True)
class Iteration:
    """What one iteration did and how long each phase took (seconds, on the learner's clock)."""

    sync_s: float
    collect_s: float
    train_s: float
    total_s: float
    sync_bytes: int | None
    collected: Collected
    stats: dict[str, float]
    lags: tuple[int, ...]
    """Per fragment: the learner's version when it trained on it minus the version it was sampled with."""


class Schedule(ABC):
    """Drives a learner and a backend for `planned` iterations of `steps` env steps each."""

    def __init__(self, learner: Learner, backend: Backend, steps: int, planned: int) -> None:
        self.learner, self.backend, self.steps, self.planned = learner, backend, steps, planned

    @abstractmethod
    def iteration(self, index: int) -> Iteration:
        """Run iteration `index` (0-based) and say how long each phase took."""

    def _train(self, collected: Collected) -> tuple[dict[str, float], tuple[int, ...]]:
        rollout = collected.rollout
        if rollout.num_steps != self.steps:
            raise RuntimeError(f"backend returned {rollout.num_steps} steps, {self.steps} were asked for")
        lags = tuple(self.learner.version - v for v in collected.fragment_versions or (rollout.policy_version,))
        return self.learner.train(rollout), lags  # PPO refuses a batch that lags more than it allows


class SyncSchedule(Schedule):
    """Broadcast, collect, train: every batch is sampled with the learner's current weights."""

    def iteration(self, index: int) -> Iteration:
        t0 = time.perf_counter()
        sync = self.backend.set_weights(self.learner.weights(), self.learner.version)  # a GPU learner's copy to the host
        t1 = time.perf_counter()
        collected = self.backend.collect(self.steps)
        t2 = time.perf_counter()
        stats, lags = self._train(collected)
        t3 = time.perf_counter()
        return Iteration(t1 - t0, t2 - t1, t3 - t2, t3 - t0, sync.bytes_sent, collected, stats, lags)


class OverlapSchedule(Schedule):
    """Take the oldest batch, ask for the next, train, send the new weights without waiting."""

    def iteration(self, index: int) -> Iteration:
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
        return Iteration((t1 - t0) + (t4 - t3), t2 - t1, t3 - t2, t4 - t0, sync_bytes, collected, stats, lags)


SCHEDULE_CLASSES: dict[str, type[Schedule]] = {"sync": SyncSchedule, "overlap": OverlapSchedule}


def lag_summary(lags: tuple[int, ...]) -> dict[str, Any]:
    """min / mean / max policy lag over an iteration's fragments."""
    return {"min": int(min(lags)), "mean": float(np.mean(lags)), "max": int(max(lags))}
