"""What a worker process does, whatever carries its messages (pipes or Ray).

`RolloutWorker` hosts envs `env_ids` and, for worker inference, a policy copy.
`CentralStepper` is the learner's side of central inference: it looks like one
big `Stepper` to `FragmentSampler`, and fans each step out to the workers.
"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from algorithms.model import InferencePolicy
from algorithms.rollout import Rollout
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvSpec
from backends.sampling import EnvBlock, FragmentSampler, NoiseSource, StepResult


class WorkerError(RuntimeError):
    """A worker failed or died; the message names the worker, then its traceback follows."""


class RolloutWorker:
    """Envs `env_ids` (seeded `seed + id`) and, in worker-inference mode, a policy copy."""

    def __init__(self, index: int, env: EnvSpec, env_ids: np.ndarray, seed: int, policy: PolicySpec, inference: str) -> None:
        self.index = index
        self.block = EnvBlock(env, env_ids, seed)
        self.sampler: FragmentSampler | None = None
        if inference == "worker":
            self.policy = InferencePolicy(policy.obs_dim, policy.act_dim, policy.hidden_size, torch_threads=1)
            self.sampler = FragmentSampler(self.block, self.policy, NoiseSource(env_ids, seed, policy.act_dim))

    def info(self) -> dict[str, Any]:
        """Where this worker runs (recorded in results)."""
        import os

        node = {"worker": self.index, "pid": os.getpid(), "host": socket.gethostname()}
        try:
            import ray

            if ray.is_initialized():
                node["node"] = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        return node

    def load(self, weights: np.ndarray, version: int) -> int:
        self.policy.load_flat(weights, version)
        return version

    def sample(self, steps_per_env: int) -> tuple[Rollout, float, float]:
        """A fragment, the seconds it took, and the wall-clock time it was ready."""
        assert self.sampler is not None, "sample() needs worker inference"
        started = time.perf_counter()
        fragment = self.sampler.sample(steps_per_env)
        # time.time(), not perf_counter: the learner compares it with its own clock,
        # possibly on another node (clocks are assumed NTP-synced there).
        return fragment, time.perf_counter() - started, time.time()

    def reset(self) -> np.ndarray:
        return self.block.reset()

    def step(self, actions: np.ndarray) -> tuple[StepResult, float]:
        started = time.perf_counter()
        result = self.block.step(actions)
        return result, time.perf_counter() - started

    def close(self) -> None:
        self.block.close()


class CentralStepper(ABC):
    """Learner-side stepper over all workers' envs, for central inference.

    Subclasses move actions out and results back; this class splits, joins and
    accounts: `comm_s` is each step's round trip minus the slowest worker's own
    stepping time, summed; `worker_s` is that slowest stepping time, summed.
    """

    def __init__(self, spec: BackendSpec, obs_dim: int) -> None:
        self.spec = spec
        self.obs_dim = obs_dim
        self.env_ids = np.arange(spec.num_envs, dtype=np.int64)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.comm_s = 0.0
        self.worker_s = 0.0
        self.bytes_moved = 0

    @abstractmethod
    def _reset_all(self) -> list[np.ndarray]:
        """Each worker's first observations."""

    @abstractmethod
    def _step_all(self, actions: list[np.ndarray]) -> list[tuple[StepResult, float]]:
        """Each worker's step result and its own stepping seconds."""

    def reset(self) -> np.ndarray:
        return np.concatenate(self._reset_all())

    def step(self, actions: np.ndarray) -> StepResult:
        per_worker = np.split(actions, self.spec.workers)
        started = time.perf_counter()
        results = self._step_all(per_worker)
        round_trip = time.perf_counter() - started
        slowest = max(seconds for _, seconds in results)
        self.worker_s += slowest
        self.comm_s += round_trip - slowest
        steps = [r for r, _ in results]
        joined = StepResult(*(np.concatenate([getattr(s, f) for s in steps]) for f in StepResult.__dataclass_fields__))
        self.bytes_moved += actions.nbytes + sum(getattr(joined, f).nbytes for f in StepResult.__dataclass_fields__)
        return joined
