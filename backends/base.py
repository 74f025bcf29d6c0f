"""The backend interface: start, set weights, submit a request for N steps and take it, close, describe.

`collect(N)` is `submit(N)` then `take()`: the blocking form every synchronous
iteration uses. The non-blocking pair lets the harness overlap sampling with
training (`schedule = "overlap"`): a remote backend's workers sample a submitted
request while the learner trains, and each fragment comes back with the policy
version it was sampled with. The harness times every call from outside, so no
backend can under-report; backends add their own inner breakdown (worker
sampling compute, transfer, bytes) to what they return. Backends never touch loss code.

Whatever else the harness asks of a backend (the weight broadcasts and worker restarts
since it last asked, its self-description) has a default here that suits an in-process
backend, so the harness asks every backend alike and never checks which kind it holds.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from annotated_types import Ge

from algorithms.policy import PolicySpec
from algorithms.rollout import Rollout
from backends.envs import EnvCost, EnvSpec

if TYPE_CHECKING:
    from backends import NoOptions

INFERENCE_MODES = ("worker", "central")
SCHEDULES = ("sync", "overlap")
PUBLISH_POINTS = ("iteration", "epoch")
"""`publish_every`'s named values; an integer N means every N optimiser steps."""


def check_publish_every(value: object) -> None:
    """`ValueError` unless `value` is one of `PUBLISH_POINTS` or a positive integer."""
    if isinstance(value, bool) or not (value in PUBLISH_POINTS or (isinstance(value, int) and value >= 1)):
        raise ValueError(f"publish_every must be 'iteration', 'epoch' or a positive number of optimiser steps, got {value!r}")


# PolicySpec: re-exported
__all__ = ["Backend", "BackendSpec", "BatchFigures", "Collected", "PolicySpec", "SyncReport", "WorkerRestart", "WorkerShare"]

Seconds = Annotated[float, Ge(0)]
"""A duration, never negative (the run record's JSON Schema says so: harness/records.py)."""
Count = Annotated[int, Ge(0)]
"""A count or a size in bytes."""


@dataclass(frozen=True)
class BackendSpec:
    """One backend configuration of a suite case."""

    name: str
    workers: int = 1
    envs_per_worker: int = 1
    inference: str = "worker"
    """`worker`: each worker holds a policy copy and samples fragments.
    `central`: workers only step envs; the learner batches inference every step."""
    options: dict[str, Any] = field(default_factory=dict)
    """Backend-specific settings, as the suite gave them (the keys its registry entry's `options_model` has;
    `settings` is that model, parsed)."""
    schedule: str = "sync"
    """`sync`: sample, then train, then broadcast: a barrier each iteration. `overlap`: workers
    sample the next batch with the weights they hold while the learner trains on this one."""
    max_lag: int = 1
    """Under `overlap`: requests kept in flight, so the most policy versions a batch may lag the learner."""
    publish_every: str | int = "iteration"
    """Under `overlap`, when the learner hands out new weights: after each update (`iteration`), also after each
    epoch of it (`epoch`), or every N of its optimiser steps. The next batch is asked for in that many consecutive
    parts, each sampled with the newest weights published before it (`harness.schedule.OverlapSchedule`)."""
    publications_per_batch: int = 1
    """How many weight versions the sampling of one batch may use: `publish_every`'s publications per update (the
    suite works it out from the learner's settings). With `max_lag`, how many versions a backend keeps."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        check_publish_every(self.publish_every)
        if self.publications_per_batch < 1:
            raise ValueError(f"publications_per_batch must be at least 1, got {self.publications_per_batch}")
        if self.publish_every != "iteration" and self.schedule != "overlap":
            raise ValueError(f"publish_every = {self.publish_every!r} needs schedule 'overlap': under 'sync' no worker "
                             f"samples while the learner trains; leave publish_every out, or use overlap")  # fmt: skip
        if self.max_lag < 1:
            raise ValueError(f"max_lag must be at least 1, got {self.max_lag}")
        if self.workers < 1 or self.envs_per_worker < 1:
            raise ValueError(f"workers and envs_per_worker must be positive, got {self.workers} and {self.envs_per_worker}")

    @functools.cached_property
    def settings(self) -> NoOptions:
        """`options` parsed once into the backend's options model (`options_model` of its registry entry), with
        the defaults of the keys the suite left out: what the harness and the backend read."""
        from backends import REGISTRY  # the registry imports this module

        return REGISTRY[self.name].parse_options(self.options)

    @property
    def pipeline_depth(self) -> int:
        """Requests in flight while the learner trains: 0 for `sync`, `max_lag` for `overlap`."""
        return self.max_lag if self.schedule == "overlap" else 0

    @property
    def weights_kept(self) -> int:
        """Weight versions a backend keeps for requests in flight (and a replacement worker): every version the
        `max_lag` batches in flight may have been asked for with, and the one being written."""
        return self.max_lag * self.publications_per_batch + 1

    @property
    def num_envs(self) -> int:
        """Envs summed over all workers."""
        return self.workers * self.envs_per_worker

    def worker_env_ids(self, worker: int) -> np.ndarray:
        """Global env indices hosted by `worker`: contiguous, so seeds are `seed + index`."""
        first = worker * self.envs_per_worker
        return np.arange(first, first + self.envs_per_worker, dtype=np.int64)


@dataclass(frozen=True)
class SyncReport:
    """What one weight broadcast moved, as measured by the transport. None: not applicable (in-process backends)."""

    bytes_sent: int | None
    """Serialized bytes that left the learner's process, counted once however many workers read them:
    multiprocessing, the shared-memory slot written once plus every pickled control message on the pipes
    (both ways); Ray, the size of the object `ray.put` stored (data + metadata). 0 for central inference."""
    bytes_network: int | None = None
    """Bytes that crossed a network between nodes: the stored object once per other node that hosts
    workers (each node's object store fetches it once). 0 on one node."""
    in_process: bool = False
    """The policy copy lives in the learner's process (central inference): loading it is not communication."""


@dataclass(frozen=True)
class WorkerRestart:
    """A lost worker replaced under `on_worker_failure = "restart"`. Its fields are its record in run.json
    (an iteration's `worker_restarts`), written by `dataclasses.asdict`."""

    worker: Count
    reason: str
    """Why it counted as lost, one line: it died (exit code, or Ray's word for it), or sent no reply within timeout_s."""
    during: str
    """What the learner was doing when it found out: `load weights` or `sample` (dispatching or receiving one)."""
    replaced_pid: int | None
    """The lost worker's process (the placement recorded at start-up names the first one of each worker)."""
    pid: int | None
    """The replacement's process; null if it was lost before it said."""
    replace_s: Seconds
    """From finding the loss to the replacement started, its weights reloaded and its requests sent again (learner
    clock); part of this iteration's sync_s or collect_s."""
    redispatched: Count
    """Requests in flight sent again to the replacement: its envs restart from reset with the same seeds, so those
    fragments differ from what the lost worker would have sampled."""


@dataclass(frozen=True)
class WorkerShare:
    """One worker's part in one request. Times in seconds on the learner's clock (the worker's clock
    corrected by its measured offset), counted from the moment the learner began dispatching the request.
    Its fields are its record in run.json (an iteration's `workers`), written by `dataclasses.asdict`."""

    compute_s: Seconds
    """The worker's own sampling (worker inference) or env-stepping time (central inference, summed over steps)."""
    bytes: Count
    """Serialized size of what crossed for this worker: its returned fragment message (worker inference),
    or every per-step message both ways plus shared memory written (central inference)."""
    env_cost_s: Seconds = 0.0
    """Wall seconds spent inside the synthetic step cost by this worker's envs."""
    env_cost_steps: Count = 0
    """Env steps that paid that cost."""
    sent_s: float | None = None
    """When the learner began handing this worker its request (null with central inference)."""
    start_s: float | None = None
    """When the worker began sampling, after the clock offset (null with central inference)."""
    ready_s: float | None = None
    """When the worker handed its fragment to the transport (null with central inference)."""
    clock_uncertainty_s: Seconds = 0.0
    """How far `start_s` and `ready_s` may be off: 0 on the learner's host (one clock), half the best
    ping-pong round trip for a worker on another node."""
    env_s: Seconds | None = None
    """Worker inference: of `compute_s`, the worker's sampler waiting on its envs' steps (null with central inference,
    where the learner's sampler splits its time)."""
    inference_s: Seconds | None = None
    """Worker inference: of `compute_s`, the worker's policy calls."""


@dataclass(frozen=True, kw_only=True)
class BatchFigures:
    """The backend's own breakdown of how a batch was gathered: the figures of `Collected` that the run
    record keeps, under these names, in each iteration (`harness.schedule.Iteration` inherits them).
    None throughout for in-process backends."""

    dispatch_s: Seconds | None = None
    """The learner sending this batch's sample request to every worker (in neither compute nor transfer;
    under overlap it was sent during the previous iteration). Null in-process and with central inference,
    where the per-step requests are part of transfer_s."""
    worker_compute_s: Seconds | None = None
    """The slowest worker's own sampling time for this batch (null in-process); under overlap it runs in
    parallel with the learner. Async central inference (`batch_size` below the env count), where steps overlap
    one another: the busiest worker's summed stepping time."""
    transfer_s: float | None = None
    """From the last fragment being ready (or the learner asking, if later) to the learner holding the joined
    rollout; central inference: per-step round trips less dispatch and the slowest worker's stepping (async
    central inference: the learner's own time writing actions and reading results, since steps overlap). Null
    in-process. Never clamped: across nodes, worker clocks are corrected by an estimated offset, so it may come
    out below zero by up to transfer_uncertainty_s."""
    transfer_uncertainty_s: Seconds | None = None
    """Largest clock-offset uncertainty among workers that may have been ready after the learner asked (0 on one host)."""
    clock_violations: Count | None = None
    """Workers whose corrected times contradict causality (started before being asked, or ready after the
    learner held their fragment) by more than their clock's uncertainty: suspect, kept as measured."""
    transfer_bytes: Count | None = None
    """Serialized bytes of the workers' replies (multiprocessing: pickled message sizes; Ray: serialized
    object sizes), summed; central inference: every step's messages both ways. Null in-process."""
    asked_s: float | None = None
    """When the learner asked for the batch (`take`), seconds after it began dispatching the request."""
    joined_s: float | None = None
    """When the learner held the joined rollout, on the same scale."""
    sample_env_s: Seconds | None = None
    """Where the batch's sampling time went, on the critical path (`backends.sampling.SamplingSplit`): the sampler
    waiting on env steps. The sampler is the learner's (in-process backends, central inference) or, with worker
    inference, the slowest worker's. Null where a backend cannot tell (an older record)."""
    sample_inference_s: Seconds | None = None
    """The same sampler's policy calls."""
    sample_other_s: Seconds | None = None
    """The rest of its sampling time: the loop's Python, buffers, the framework."""


@dataclass(frozen=True)
class Collected(BatchFigures):
    """A rollout plus the backend's own breakdown of how it was gathered (`BatchFigures`)."""

    rollout: Rollout
    fragment_versions: tuple[int, ...] = ()
    """The policy version each fragment (each worker's share) was sampled with."""
    workers: tuple[WorkerShare, ...] = ()
    """Per worker, the figures the aggregates come from (empty for in-process backends)."""
    env_cost: EnvCost | None = None
    """Measured synthetic step cost over the fragment, all envs (None: measured by the caller, in-process)."""


def _total(values: list[float | None]) -> float | None:
    return None if None in values else sum(values)  # type: ignore[arg-type]


def join_in_time(parts: list[Collected]) -> Collected:
    """A batch asked for in consecutive parts (`publish_every`), as one: the rollouts end to end, every fragment's
    version, and each worker's figures summed over the parts. Durations add up (the slowest worker's sampling is the
    largest of the workers' sums); the moments in a request's own time (`sent_s`, `asked_s`, ...) have no common
    origin across parts, so the joined batch has none."""
    if len(parts) == 1:
        return parts[0]
    shares = []
    for per_worker in zip(*(p.workers for p in parts), strict=True):
        shares.append(WorkerShare(
            compute_s=sum(w.compute_s for w in per_worker),
            bytes=sum(w.bytes for w in per_worker),
            env_cost_s=sum(w.env_cost_s for w in per_worker),
            env_cost_steps=sum(w.env_cost_steps for w in per_worker),
            clock_uncertainty_s=max(w.clock_uncertainty_s for w in per_worker),
            env_s=_total([w.env_s for w in per_worker]),
            inference_s=_total([w.inference_s for w in per_worker]),
        ))  # fmt: skip
    figures = {name: _total([getattr(p, name) for p in parts]) for name in ADDITIVE_FIGURES}
    return Collected(
        Rollout.concat_time([p.rollout for p in parts]),
        fragment_versions=tuple(v for p in parts for v in p.fragment_versions),
        workers=tuple(shares),
        env_cost=None if None in (costs := [p.env_cost for p in parts]) else sum(costs, EnvCost()),  # type: ignore[arg-type]
        worker_compute_s=max((w.compute_s for w in shares), default=None),
        transfer_uncertainty_s=max((p.transfer_uncertainty_s or 0.0 for p in parts), default=None),
        **figures,
    )


ADDITIVE_FIGURES = ("dispatch_s", "transfer_s", "clock_violations", "transfer_bytes", "sample_env_s",
                    "sample_inference_s", "sample_other_s")  # fmt: skip
"""The `BatchFigures` a batch asked for in parts has as the sums of its parts'."""


class Backend(ABC):
    """A way of sampling env steps. Subclasses: one file each, plus a registry line
    (whose `remote` says whether the policy copies live in other processes). What the harness asks
    of every backend has a default here, for in-process backends; remote ones override it."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.requests: deque[Any] = deque()
        """Submitted requests not yet taken, oldest first (what each backend keeps of one is its own)."""

    @abstractmethod
    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        """Create envs (env i seeded `seed + i`) and policy copies; reset the envs."""

    @abstractmethod
    def set_weights(self, weights: np.ndarray, version: int, wait: bool = True) -> SyncReport:
        """Give every policy copy `weights` as `version`.

        `wait=True`: return only once every copy holds them (nothing may be in flight).
        `wait=False`: return once they are on their way; each copy loads them before it
        starts its next fragment, after the requests already submitted.
        """

    @abstractmethod
    def submit(self, num_steps: int) -> None:
        """Ask for exactly `num_steps` env steps summed over envs (`num_steps / num_envs` per env),
        sampled with the weights each copy holds when it starts; return without waiting where the
        backend samples in other processes."""

    @abstractmethod
    def take(self) -> Collected:
        """The oldest submitted request's fragments, joined; blocks until every one is in."""

    def collect(self, num_steps: int) -> Collected:
        """`num_steps` env steps, sampled now: `submit` then `take`."""
        self.submit(num_steps)
        return self.take()

    @abstractmethod
    def close(self) -> None:
        """Release workers and envs. Idempotent."""

    def drain_sync_reports(self) -> list[SyncReport]:
        """The `set_weights` reports since the last call, oldest first (the harness sums them per iteration).
        Default: none, for a backend whose one policy copy is the learner's own (nothing is sent anywhere)."""
        return []

    def drain_restarts(self) -> list[WorkerRestart]:
        """The worker restarts since the last call, oldest first (the harness records them per iteration).
        Default: none, for a backend with no worker to lose."""
        return []

    def describe(self) -> dict[str, Any]:
        """Self-description recorded in results."""
        from backends.sampling import AUTORESET_MODE

        return {
            "backend": self.spec.name,
            "workers": self.spec.workers,
            "envs_per_worker": self.spec.envs_per_worker,
            "num_envs": self.spec.num_envs,
            "inference": self.spec.inference,
            "schedule": self.spec.schedule,
            "max_lag": self.spec.max_lag,
            "publish_every": self.spec.publish_every,
            "autoreset_mode": AUTORESET_MODE.value,
            "options": dict(self.spec.options),
        }

    def steps_per_env(self, num_steps: int) -> int:
        """Per-env fragment length; N steps must split evenly so accounting is exact."""
        if num_steps % self.spec.num_envs:
            raise ValueError(f"{num_steps} steps do not split evenly over {self.spec.num_envs} envs")
        return num_steps // self.spec.num_envs

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
