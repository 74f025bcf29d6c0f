"""Learner side of every backend whose workers live in other processes.

Subclasses only move bytes: launch workers, broadcast weights, dispatch sample
requests and receive their fragments, step envs for central inference; each
says how many serialized bytes crossed, since only the transport knows. This
class decides what is timed and how, and checks policy versions, so all process
backends report alike.

Clocks: every time is a `time.perf_counter()` reading. On Linux that is the
system-wide CLOCK_MONOTONIC, so a worker on the learner's host stamps its
replies on the learner's own clock. A worker on another node is given an offset
at start-up by Cristian's method (F. Cristian, "Probabilistic clock
synchronization", Distributed Computing 3, 1989): the learner reads its clock,
asks the worker for its clock, reads its own again, and keeps the round trip
with the smallest RTT; the worker's reading fell inside that round trip, so the
offset is known to within half of it. No time is clamped: what contradicts
causality by more than that uncertainty is counted (`clock_violations`).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from algorithms.model import InferencePolicy
from algorithms.rollout import Rollout
from backends.base import Backend, Collected, PolicySpec, SyncReport, WorkerShare
from backends.envs import EnvCost, EnvSpec
from backends.sampling import FragmentSampler, NoiseSource
from backends.workers import CentralStepper, FragmentReply, WorkerError

DEFAULT_TIMEOUT_S = 120.0
CLOCK_PROBES = 8
"""Ping-pongs per worker on another node; the one with the smallest round trip gives the offset."""


@dataclass(frozen=True)
class ClockOffset:
    """How a worker's `perf_counter` relates to the learner's: learner time = worker time - `offset_s`."""

    method: str
    """`shared`: the learner's host, one system-wide clock; `cristian`: estimated by ping-pong."""
    offset_s: float = 0.0
    uncertainty_s: float = 0.0
    """The true offset lies within `offset_s` +- this (half the best round trip)."""
    round_trip_s: float | None = None

    def to_learner(self, worker_time: float) -> float:
        return worker_time - self.offset_s

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "offset_s": self.offset_s, "uncertainty_s": self.uncertainty_s,
                "round_trip_s": self.round_trip_s}  # fmt: skip


SHARED_CLOCK = ClockOffset("shared")


def estimate_clock_offset(
    probe: Callable[[], float], probes: int = CLOCK_PROBES, clock: Callable[[], float] = time.perf_counter
) -> ClockOffset:
    """Cristian's method: `probe()` returns the worker's clock; offset = t_worker - (t_send + t_recv) / 2
    from the probe with the smallest round trip, uncertain by half that round trip."""
    best: tuple[float, float] | None = None
    for _ in range(probes):
        sent = clock()
        remote = probe()
        received = clock()
        if best is None or received - sent < best[0]:
            best = (received - sent, remote - (sent + received) / 2)
    assert best is not None, "at least one probe"
    round_trip, offset = best
    return ClockOffset("cristian", offset, round_trip / 2, round_trip)


@dataclass(frozen=True)
class Request:
    """A dispatched sample request: what `take` needs to check and time it (learner clock)."""

    handles: list[Any]
    """Per worker, what the transport needs to receive its fragment."""
    version: int
    """The policy version the workers hold when they start it."""
    dispatched_at: float
    """When the learner began dispatching: every time of the request counts from here."""
    dispatch_s: float
    sent_at: tuple[float, ...]
    """Per worker, when the learner began handing it the request."""


def collected_from(rollout: Rollout, replies: list[tuple[FragmentReply, int]], clocks: list[ClockOffset],
                   request: Request, asked_at: float, joined_at: float) -> Collected:  # fmt: skip
    """A request's figures from each worker's reply and serialized size, its clock, and the learner's stamps.

    transfer_s = joined - max(asked, last ready), all on the learner's clock: what the learner waited for
    of the move (under `overlap` a fragment may have been ready, and moved, before the learner asked).
    """
    t0 = request.dispatched_at
    asked, joined = asked_at - t0, joined_at - t0
    shares, readies, violations = [], [], 0
    for (reply, size), clock, sent_at in zip(replies, clocks, request.sent_at, strict=True):
        sent, start, ready = sent_at - t0, clock.to_learner(reply.started) - t0, clock.to_learner(reply.ready) - t0
        slack = clock.uncertainty_s
        if start < sent - slack or ready > joined + slack:
            violations += 1  # started before it was asked, or ready after the learner held it: a bad offset
        shares.append(WorkerShare(compute_s=reply.sampled - reply.started, bytes=size, env_cost_s=reply.env_cost.seconds,
                                  env_cost_steps=reply.env_cost.steps, sent_s=sent, start_s=start, ready_s=ready,
                                  clock_uncertainty_s=slack))  # fmt: skip
        readies.append((ready, slack))
    last_ready = max(ready for ready, _ in readies)
    # Only a worker that may have been ready after the learner asked bounds the transfer with its clock.
    uncertainty = max((slack for ready, slack in readies if ready + slack > asked), default=0.0)
    return Collected(
        rollout,
        worker_compute_s=max(share.compute_s for share in shares),
        transfer_s=joined - max(last_ready, asked),
        transfer_bytes=sum(share.bytes for share in shares),
        fragment_versions=tuple(reply.fragment.policy_version for reply, _ in replies),
        dispatch_s=request.dispatch_s,
        transfer_uncertainty_s=uncertainty,
        clock_violations=violations,
        asked_s=asked,
        joined_s=joined,
        workers=tuple(shares),
        env_cost=sum((reply.env_cost for reply, _ in replies), EnvCost()),
    )


class RemoteBackend(Backend):
    """Workers in other processes; `inference` decides where the policy runs."""

    @property
    def timeout_s(self) -> float:
        """How long any wait on a worker may take before it counts as hung."""
        return float(self.spec.options.get("timeout_s", DEFAULT_TIMEOUT_S))

    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        self.version = -1
        self.sync_reports: list[SyncReport] = []
        self.placement = self._launch(env, policy, seed)
        self.clocks = [
            SHARED_CLOCK if self._shares_learner_clock(i) else estimate_clock_offset(lambda i=i: self._clock_probe(i))
            for i in range(self.spec.workers)
        ]
        for info, clock in zip(self.placement, self.clocks, strict=True):
            info["clock"] = clock.describe()
        if self.spec.inference == "central":
            self.policy = InferencePolicy(policy.obs_dim, policy.act_dim, policy.hidden_size)
            self.stepper = self._central_stepper(policy.obs_dim)
            noise = NoiseSource(np.arange(self.spec.num_envs), seed, policy.act_dim)
            self.sampler = FragmentSampler(self.stepper, self.policy, noise)

    def set_weights(self, weights: np.ndarray, version: int, wait: bool = True) -> SyncReport:
        if self.requests and (wait or self.spec.inference == "central"):
            # A blocking broadcast would wait behind the requests; central inference samples in `take`,
            # so new weights would leak into a request submitted before them.
            raise RuntimeError("set_weights: requests are in flight; take them first (or wait=False with worker inference)")
        self.version = version
        if self.spec.inference == "central":
            self.policy.load_flat(weights, version)
            report = SyncReport(bytes_sent=0, bytes_network=0, in_process=True)  # the policy never leaves the learner
        else:
            serialized, network = self._broadcast(weights, version, wait)
            report = SyncReport(bytes_sent=serialized, bytes_network=network)
        self.sync_reports.append(report)
        return report

    def drain_sync_reports(self) -> list[SyncReport]:
        """Every `set_weights` report since the last call, oldest first (the harness records them per iteration)."""
        reports, self.sync_reports = self.sync_reports, []
        return reports

    def submit(self, num_steps: int) -> None:
        steps_per_env = self.steps_per_env(num_steps)
        if self.spec.inference == "central":  # sampled in `take`, one message per step
            self.requests.append(steps_per_env)
            return
        # Workers handle messages in order, so a request samples with the last version sent before it.
        dispatched_at = time.perf_counter()
        handles, sent_at = [], []
        for worker in range(self.spec.workers):
            sent_at.append(time.perf_counter())
            handles.append(self._dispatch_to(worker, steps_per_env))
        dispatch_s = time.perf_counter() - dispatched_at
        self.requests.append(Request(handles, self.version, dispatched_at, dispatch_s, tuple(sent_at)))

    def take(self) -> Collected:
        if not self.requests:
            raise RuntimeError("take() with no request submitted")
        request = self.requests.popleft()
        if self.spec.inference == "central":
            return self._sample_centrally(request)
        asked_at = time.perf_counter()
        replies = self._receive(request.handles)
        for worker, (reply, _) in enumerate(replies):
            if reply.fragment.policy_version != request.version:
                raise WorkerError(
                    f"worker {worker} sampled with policy version {reply.fragment.policy_version}, expected {request.version}"
                )
        rollout = Rollout.concat_envs([reply.fragment for reply, _ in replies])
        joined_at = time.perf_counter()
        return collected_from(rollout, replies, self.clocks, request, asked_at, joined_at)

    def _sample_centrally(self, steps_per_env: int) -> Collected:
        self.stepper.reset_counters()
        rollout = self.sampler.sample(steps_per_env)
        stepper = self.stepper
        shares = tuple(
            WorkerShare(compute_s=c, bytes=b, env_cost_s=e.seconds, env_cost_steps=e.steps)
            for c, b, e in zip(stepper.compute_s, stepper.bytes, stepper.env_cost, strict=True)
        )
        return Collected(
            rollout,
            worker_compute_s=stepper.worker_s,
            transfer_s=stepper.comm_s,  # durations on each side's own clock: no offset involved
            transfer_bytes=sum(stepper.bytes),
            fragment_versions=(rollout.policy_version,),
            dispatch_s=None,  # the per-step requests are part of transfer_s here
            transfer_uncertainty_s=0.0,
            clock_violations=0,
            workers=shares,
            env_cost=sum(stepper.env_cost, EnvCost()),
        )

    def describe(self) -> dict[str, Any]:
        # Every time in the record is this clock, read in the learner or in a worker (then corrected by its offset).
        return super().describe() | {"learner_clock": time.get_clock_info("perf_counter").implementation}

    def _shares_learner_clock(self, worker: int) -> bool:
        """Whether worker `worker` reads the learner's clock (same host); if not, its offset is measured."""
        return True

    def _clock_probe(self, worker: int) -> float:
        """Worker `worker`'s `perf_counter`, read in one round trip."""
        raise NotImplementedError(f"{type(self).__name__} cannot read a worker's clock")

    @abstractmethod
    def _launch(self, env: EnvSpec, policy: PolicySpec, seed: int) -> list[dict[str, Any]]:
        """Start the workers and wait until each is ready (or fail within the timeout); each one's placement info."""

    @abstractmethod
    def _broadcast(self, weights: np.ndarray, version: int, wait: bool) -> tuple[int, int]:
        """Send `weights` as `version` to every worker, queued behind the requests already dispatched;
        with `wait`, return once every worker has loaded them. Returns the serialized bytes that left
        the learner's process (counted once, however many workers read them) and the bytes that crossed a network."""

    @abstractmethod
    def _dispatch_to(self, worker: int, steps_per_env: int) -> Any:
        """Ask `worker` for a fragment of `steps_per_env` steps per env; return a handle for `_receive`."""

    @abstractmethod
    def _receive(self, handles: list[Any]) -> list[tuple[FragmentReply, int]]:
        """Each worker's reply to a dispatched request and the serialized size of the message that carried it,
        in worker order."""

    @abstractmethod
    def _central_stepper(self, obs_dim: int) -> CentralStepper:
        """A stepper that drives the workers' envs one step at a time."""
