"""The backend interface: start, set weights, submit a request for N steps and take it, close, describe.

`collect(N)` is `submit(N)` then `take()`: the blocking form every synchronous
iteration uses. The non-blocking pair lets the harness overlap sampling with
training (`schedule = "overlap"`): a remote backend's workers sample a submitted
request while the learner trains, and each fragment comes back with the policy
version it was sampled with. The harness times every call from outside, so no
backend can under-report; backends add their own inner breakdown (worker
sampling compute, transfer, bytes) to what they return. Backends never touch loss code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.policy import PolicySpec
from algorithms.rollout import Rollout
from backends.envs import EnvSpec

INFERENCE_MODES = ("worker", "central")
SCHEDULES = ("sync", "overlap")
__all__ = ["Backend", "BackendSpec", "Collected", "PolicySpec", "SyncReport"]  # PolicySpec: re-exported for backends


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
    """Backend-specific settings (see each backend's `OPTIONS`)."""
    schedule: str = "sync"
    """`sync`: sample, then train, then broadcast: a barrier each iteration. `overlap`: workers
    sample the next batch with the weights they hold while the learner trains on this one."""
    max_lag: int = 1
    """Under `overlap`: requests kept in flight, so the most policy versions a batch may lag the learner."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.max_lag < 1:
            raise ValueError(f"max_lag must be at least 1, got {self.max_lag}")

    @property
    def pipeline_depth(self) -> int:
        """Requests in flight while the learner trains: 0 for `sync`, `max_lag` for `overlap`."""
        return self.max_lag if self.schedule == "overlap" else 0

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
    """What a weight broadcast moved. None: not applicable (no copy crosses a process)."""

    bytes_sent: int | None


@dataclass(frozen=True)
class Collected:
    """A rollout plus the backend's own breakdown of how it was gathered."""

    rollout: Rollout
    worker_compute_s: float | None = None
    """The slowest worker's own sampling time (None for in-process backends)."""
    transfer_s: float | None = None
    """From the last fragment being ready to the learner holding the joined rollout."""
    transfer_bytes: int | None = None
    """Bytes of trajectory data that crossed a process boundary."""
    fragment_versions: tuple[int, ...] = ()
    """The policy version each fragment (each worker's share) was sampled with."""


class Backend(ABC):
    """A way of sampling env steps. Subclasses: one file each, plus a registry line."""

    #: Whether the policy copy is in another process (weight sync and transfer apply).
    remote: bool = False

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
