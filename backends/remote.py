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

Lost workers: a worker that dies, or sends no reply within `timeout_s`, is lost. With
`options.on_worker_failure = "fail"` (the default) the case fails with a `WorkerError`
naming it. With `"restart"` (RLlib's `restart_failed_env_runners`) this class replaces it:
the transport kills what is left of it and starts a new worker with the same env ids and
seeds, this class reloads the weights each request in flight was sent with and sends those
requests again, then waits for the replacement's share. Its envs start from reset, so its
fragment is a fresh one from the same seeds, not the one the lost worker was sampling:
the rollout after a restart differs from an uninterrupted run's (the env states and the
noise streams' positions are lost with the process). `max_restarts` restarts in one run
are allowed; one more loss fails the case. An exception raised in the worker's own code is
not a loss: it fails the case either way, since the same seeds would raise it again.
Central inference refuses `restart`: the learner holds every env's state between steps,
so a worker lost mid-fragment would leave a joint fragment half-sampled.
"""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout
from backends import REGISTRY, WaitOptions
from backends.base import Backend, BackendSpec, Collected, PolicySpec, Seconds, SyncReport, WorkerRestart, WorkerShare
from backends.envs import EnvCost, EnvSpec
from backends.sampling import FragmentSampler, NoiseSource
from backends.workers import CentralStepper, FragmentReply, WorkerError, WorkerLost

CLOCK_PROBES = 8
"""Ping-pongs per worker on another node; the one with the smallest round trip gives the offset."""


@dataclass(frozen=True)
class ClockOffset:
    """How a worker's `perf_counter` relates to the learner's: learner time = worker time - `offset_s`.
    Its fields are its record in run.json (a worker placement's `clock`), written by `describe`."""

    method: Literal["shared", "cristian"]
    """`shared`: one system-wide CLOCK_MONOTONIC on the learner's host; `cristian`: estimated at start-up by
    ping-pong (Cristian's method), keeping the smallest round trip."""
    offset_s: float = 0.0
    uncertainty_s: Seconds = 0.0
    """Half the best round trip: the true offset lies within offset_s +- this."""
    round_trip_s: Seconds | None = None

    def to_learner(self, worker_time: float) -> float:
        return worker_time - self.offset_s

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    """A dispatched sample request: what `take` needs to check and time it (learner clock), and to send it
    again to a replacement worker."""

    handles: list[Any]
    """Per worker, what the transport needs to receive its fragment (a replacement's handle replaces the lost one's)."""
    version: int
    """The policy version the workers hold when they start it."""
    steps_per_env: int
    dispatched_at: float
    """When the learner began dispatching: every time of the request counts from here."""
    dispatch_s: float
    sent_at: list[float]
    """Per worker, when the learner began handing it the request (a replacement: when it was sent again)."""


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
                                  clock_uncertainty_s=slack, env_s=reply.split.env_s,
                                  inference_s=reply.split.inference_s))  # fmt: skip
        readies.append((ready, slack))
    last_ready = max(ready for ready, _ in readies)
    # Only a worker that may have been ready after the learner asked bounds the transfer with its clock.
    uncertainty = max((slack for ready, slack in readies if ready + slack > asked), default=0.0)
    slowest = max(replies, key=lambda reply_size: reply_size[0].sampled - reply_size[0].started)[0]
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
        **slowest.split.figures(),  # the critical path: the learner waited for this worker
    )


class RemoteBackend(Backend):
    """Workers in other processes; `inference` decides where the policy runs."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.options: WaitOptions = spec.settings  # type: ignore[assignment]  # every remote entry's model extends it
        """The case's options with their defaults (`timeout_s`, `on_worker_failure`, `max_restarts`, the transport's own)."""
        self.version = -1
        self.sync_reports: list[SyncReport] = []
        self.restarts: list[WorkerRestart] = []
        """Every worker restart of this run, oldest first."""
        self.restarts_drained = 0
        self.placement: list[dict[str, Any]] = []
        """Per worker, where it runs (pid, host, node, its clock): filled by `start`."""
        self.clocks: list[ClockOffset] = []

    @property
    def timeout_s(self) -> float:
        """How long any wait on a worker may take before it counts as hung."""
        return self.options.timeout_s

    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        REGISTRY[self.spec.name].check(self.spec)  # the rules the suite checked, for a spec made in code
        self.placement = self._launch(env, policy, seed)
        self.clocks = [self._clock_for(i) for i in range(self.spec.workers)]
        for info, clock in zip(self.placement, self.clocks, strict=True):
            info["clock"] = clock.describe()
        if self.spec.inference == "central":
            self.policy = InferencePolicy(policy)
            self.stepper = self._central_stepper(policy.obs_dim)
            noise = NoiseSource(np.arange(self.spec.num_envs), seed, policy.action)
            self.sampler = self._central_sampler(noise)

    def _central_sampler(self, noise: NoiseSource) -> FragmentSampler:
        """The learner's sampling loop over `self.stepper` for central inference: lockstep, every env each step.
        A transport may return another loop with the same `sample` and `last_split` that keeps the stepper's
        counters as `CentralStepper.step` does (`multiprocessing`'s async mode: `backends.async_central`)."""
        return FragmentSampler(self.stepper, self.policy, noise)

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
            serialized, network, lost = self._broadcast(weights, version, wait)
            report = SyncReport(bytes_sent=serialized, bytes_network=network)
            self._restart_all(lost, list(self.requests), "load weights")
        self.sync_reports.append(report)
        return report

    def drain_sync_reports(self) -> list[SyncReport]:
        """Every `set_weights` report since the last call, oldest first (the harness records them per iteration)."""
        reports, self.sync_reports = self.sync_reports, []
        return reports

    def drain_restarts(self) -> list[WorkerRestart]:
        """Every worker restart since the last call, oldest first (the harness records them per iteration)."""
        restarts = self.restarts[self.restarts_drained :]
        self.restarts_drained = len(self.restarts)
        return restarts

    def submit(self, num_steps: int) -> None:
        steps_per_env = self.steps_per_env(num_steps)
        if self.spec.inference == "central":  # sampled in `take`, one message per step
            self.requests.append(steps_per_env)
            return
        # Workers handle messages in order, so a request samples with the last version sent before it.
        dispatched_at = time.perf_counter()
        handles: list[Any] = []
        sent_at: list[float] = []
        lost: list[WorkerLost] = []
        for worker in range(self.spec.workers):
            sent_at.append(time.perf_counter())
            try:
                handles.append(self._dispatch_to(worker, steps_per_env))
            except WorkerLost as loss:
                handles.append(None)  # sent again to its replacement below
                lost.append(loss)
        dispatch_s = time.perf_counter() - dispatched_at
        self.requests.append(Request(handles, self.version, steps_per_env, dispatched_at, dispatch_s, sent_at))
        self._restart_all(lost, list(self.requests), "sample")

    def take(self) -> Collected:
        if not self.requests:
            raise RuntimeError("take() with no request submitted")
        request = self.requests.popleft()
        if self.spec.inference == "central":
            return self._sample_centrally(request)
        asked_at = time.perf_counter()
        received: dict[int, tuple[FragmentReply, int]] = {}
        while len(received) < self.spec.workers:
            pending = {i: request.handles[i] for i in range(self.spec.workers) if i not in received}
            lost = []
            for worker, reply in self._receive(pending).items():
                if isinstance(reply, WorkerLost):
                    lost.append(reply)
                else:
                    received[worker] = reply
            # The replacement samples this request again (and every later one in flight); then it is waited for.
            self._restart_all(lost, [request, *self.requests], "sample")
        replies = [received[i] for i in range(self.spec.workers)]
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
            **self.sampler.last_split.figures(),
        )

    def describe(self) -> dict[str, Any]:
        # Every time in the record is this clock, read in the learner or in a worker (then corrected by its offset).
        return super().describe() | {"learner_clock": time.get_clock_info("perf_counter").implementation}

    # --- lost workers ---------------------------------------------------------------------------

    def _restart_all(self, lost: list[WorkerLost], in_flight: list[Request], during: str) -> None:
        """Replace every lost worker (or, under `fail`, raise the first loss); see `_restart`."""
        for loss in lost:
            self._restart(loss, in_flight, during)

    def _restart(self, loss: WorkerLost, in_flight: list[Request], during: str) -> None:
        """Replace the lost worker, reload the weights of each request `in_flight` (oldest first) and send it
        again, then load the current weights: the replacement ends up where its predecessor would have been.
        A replacement lost in turn is replaced again, within `max_restarts`."""
        if self.options.on_worker_failure != "restart":
            raise loss
        worker = loss.worker
        reason: str | None = str(loss).splitlines()[0]
        while reason is not None:
            if len(self.restarts) >= self.options.max_restarts:
                raise WorkerError(f"{reason}; not restarted: {len(self.restarts)} worker restart(s) already in this run "
                                  f"(max_restarts = {self.options.max_restarts})")  # fmt: skip
            found = time.perf_counter()
            replaced_pid, pid, lost_again = self.placement[worker].get("pid"), None, None
            try:
                self.placement[worker] = self._replace(worker)
                pid = self.placement[worker].get("pid")
                self.clocks[worker] = self._clock_for(worker)
                self.placement[worker]["clock"] = self.clocks[worker].describe()
                self._send_again(worker, in_flight)
            except WorkerLost as again:  # the replacement was lost too: this restart counts, and it is replaced in turn
                lost_again = str(again).splitlines()[0]
            replace_s = time.perf_counter() - found
            self.restarts.append(WorkerRestart(worker, reason, during, replaced_pid, pid, replace_s, len(in_flight)))
            reason = lost_again

    def _send_again(self, worker: int, in_flight: list[Request]) -> None:
        """Bring a replacement to where its predecessor was: each request in flight with the weights it was sent
        with, then the current weights (messages run in order, as for every worker)."""
        loaded = -1
        for request in in_flight:
            if request.version != loaded and request.version >= 0:
                self._load(worker, request.version)
                loaded = request.version
            request.sent_at[worker] = time.perf_counter()
            request.handles[worker] = self._dispatch_to(worker, request.steps_per_env)
        if self.version >= 0 and self.version != loaded:
            self._load(worker, self.version)

    def _clock_for(self, worker: int) -> ClockOffset:
        return SHARED_CLOCK if self._shares_learner_clock(worker) else estimate_clock_offset(lambda: self._clock_probe(worker))

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
    def _broadcast(self, weights: np.ndarray, version: int, wait: bool) -> tuple[int, int, list[WorkerLost]]:
        """Send `weights` as `version` to every worker, queued behind the requests already dispatched;
        with `wait`, return once every worker has loaded them (or is lost). Keep the last `weights_kept`
        versions where `_load` can find them. Returns the serialized bytes that left the learner's process
        (counted once, however many workers read them), the bytes that crossed a network, and the workers
        found lost."""

    @abstractmethod
    def _dispatch_to(self, worker: int, steps_per_env: int) -> Any:
        """Ask `worker` for a fragment of `steps_per_env` steps per env; return a handle for `_receive`.
        Raises `WorkerLost` if the worker is found gone."""

    @abstractmethod
    def _receive(self, handles: dict[int, Any]) -> dict[int, tuple[FragmentReply, int] | WorkerLost]:
        """For each worker in `handles`, its reply to a dispatched request and the serialized size of the message
        that carried it, or its loss (died, or no reply within `timeout_s`). An exception raised in a worker
        raises `WorkerError`."""

    @abstractmethod
    def _replace(self, worker: int) -> dict[str, Any]:
        """Stop what is left of `worker` (kill it if it still runs; free its slot) and start a replacement with
        the same env ids and seeds on the same node where possible, sharing the same weight buffers; wait until
        it is ready (or raise `WorkerError` within the timeout). Its placement info."""

    @abstractmethod
    def _load(self, worker: int, version: int) -> None:
        """Queue on `worker` a load of `version`, one of the last `weights_kept` broadcast, without waiting."""

    @abstractmethod
    def _central_stepper(self, obs_dim: int) -> CentralStepper:
        """A stepper that drives the workers' envs one step at a time."""
