"""The backend interface: start, set weights, collect N steps, close, describe.

The harness times every call from outside, so no backend can under-report;
backends add their own inner breakdown (worker sampling compute, transfer,
bytes) to what they return. Backends never touch loss code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.policy import PolicySpec
from algorithms.rollout import Rollout
from backends.envs import EnvSpec

INFERENCE_MODES = ("worker", "central")
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


class Backend(ABC):
    """A way of sampling env steps. Subclasses: one file each, plus a registry line."""

    #: Whether the policy copy is in another process (weight sync and transfer apply).
    remote: bool = False

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec

    @abstractmethod
    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        """Create envs (env i seeded `seed + i`) and policy copies; reset the envs."""

    @abstractmethod
    def set_weights(self, weights: np.ndarray, version: int) -> SyncReport:
        """Return only once every policy copy holds `weights` as `version`."""

    @abstractmethod
    def collect(self, num_steps: int) -> Collected:
        """Exactly `num_steps` env steps summed over envs, `num_steps / num_envs` per env."""

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
