"""What a worker process does, whatever carries its messages (pipes or Ray).

`RolloutWorker` hosts envs `env_ids` and, for worker inference, a policy copy.
`CentralStepper` is the learner's side of central inference: it looks like one
big `Stepper` to `FragmentSampler`, and fans each step out to the workers.

Workers stamp their replies with `time.perf_counter()`: on Linux that is the
system-wide CLOCK_MONOTONIC, one clock for every process on a host, so the
learner compares the stamps with its own directly there, and corrects them by
a measured offset for a worker on another node (`backends.remote`).
"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout
from backends.base import BackendSpec, PolicySpec
from backends.envs import STEP_COST_METER, EnvCost, EnvSpec
from backends.host import usable_cpus
from backends.sampling import EnvBlock, FragmentSampler, NoiseSource, SamplingSplit, StepResult


class WorkerError(RuntimeError):
    """A worker failed or died; the message names the worker, then its traceback follows."""


class WorkerLost(WorkerError):
    """Worker `worker` died or stopped answering (as opposed to raising an exception of its own): what
    `on_worker_failure = "restart"` replaces. An exception in the worker's code stays a plain `WorkerError`:
    its replacement, with the same env seeds, would raise it again."""

    def __init__(self, worker: int, message: str) -> None:
        super().__init__(message)
        self.worker = worker


@dataclass(frozen=True)
class FragmentReply:
    """A worker's fragment and what it measured; times are the worker's `time.perf_counter()`."""

    fragment: Rollout
    started: float
    """Sampling began."""
    sampled: float
    """Sampling ended: `sampled - started` is the worker's compute time."""
    ready: float
    """Handed to the transport (after any measuring the transport asked for): transfer starts here."""
    env_cost: EnvCost
    """Synthetic step cost this fragment's envs paid."""
    message_bytes: int = 0
    """Serialized size of this reply, where the worker measures it (Ray); 0 where the learner does (pipes)."""
    split: SamplingSplit = SamplingSplit()
    """Where the worker's sampling time went."""


@dataclass(frozen=True)
class StepReply:
    """One central-inference step of a worker's envs."""

    result: StepResult
    seconds: float
    """The worker's own stepping time."""
    env_cost: EnvCost
    message_bytes: int = 0
    """Serialized bytes of this step's request and reply, where the worker measures them (Ray)."""


class RolloutWorker:
    """Envs `env_ids` (seeded `seed + id`) and, in worker-inference mode, a policy copy."""

    def __init__(self, index: int, env: EnvSpec, env_ids: np.ndarray, seed: int, policy: PolicySpec, inference: str) -> None:
        self.index = index
        self.block = EnvBlock(env, env_ids, seed)
        self.sampler: FragmentSampler | None = None
        # One BLAS thread: a worker is one process per core (or fewer); more threads for a batch of a
        # few envs only contend with the other workers.
        threadpool_limits(1, user_api="blas")
        if inference == "worker":
            self.policy = InferencePolicy(policy)
            self.sampler = FragmentSampler(self.block, self.policy, NoiseSource(env_ids, seed, policy.action))

    def info(self) -> dict[str, Any]:
        """Where this worker runs (recorded in results)."""
        import os

        # CPUs usable on this host: what oversubscription is judged against, per host, on a cluster.
        node = {"worker": self.index, "pid": os.getpid(), "host": socket.gethostname(), "cpus": usable_cpus()}
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

    def clock(self) -> float:
        """This process's `perf_counter`, for the learner's clock-offset ping-pong."""
        return time.perf_counter()

    def sample(self, steps_per_env: int) -> FragmentReply:
        """A fragment, stamped with when it started and was ready, and the step cost it paid."""
        assert self.sampler is not None, "sample() needs worker inference"
        cost_before = STEP_COST_METER.reading()
        started = time.perf_counter()
        fragment = self.sampler.sample(steps_per_env)
        sampled = time.perf_counter()
        return FragmentReply(fragment, started, sampled, sampled, STEP_COST_METER.reading() - cost_before,
                             split=self.sampler.last_split)  # fmt: skip

    def reset(self) -> np.ndarray:
        return self.block.reset()

    def step(self, actions: np.ndarray) -> StepReply:
        cost_before = STEP_COST_METER.reading()
        started = time.perf_counter()
        result = self.block.step(actions)
        seconds = time.perf_counter() - started
        return StepReply(result, seconds, STEP_COST_METER.reading() - cost_before)

    def close(self) -> None:
        self.block.close()


class CentralStepper(ABC):
    """Learner-side stepper over all workers' envs, for central inference.

    Subclasses move actions out and results back; this class splits, joins and
    accounts: `comm_s` is each step's round trip minus the slowest worker's own
    stepping time, summed (handing out the actions included); `worker_s` is that
    slowest stepping time, summed. Per worker: its own stepping time, the bytes
    its steps moved both ways, and the step cost its envs paid, summed.
    """

    def __init__(self, spec: BackendSpec, obs_dim: int) -> None:
        self.spec = spec
        self.obs_dim = obs_dim
        self.env_ids = np.arange(spec.num_envs, dtype=np.int64)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.comm_s = 0.0
        self.worker_s = 0.0
        workers = self.spec.workers
        self.compute_s = [0.0] * workers
        self.bytes = [0] * workers
        self.env_cost = [EnvCost()] * workers

    @abstractmethod
    def _reset_all(self) -> list[np.ndarray]:
        """Each worker's first observations."""

    @abstractmethod
    def _step_all(self, actions: list[np.ndarray]) -> list[tuple[StepReply, int]]:
        """Each worker's step reply, and the serialized bytes that crossed for it (request and reply)."""

    def reset(self) -> np.ndarray:
        return np.concatenate(self._reset_all())

    def step(self, actions: np.ndarray) -> StepResult:
        per_worker = np.split(actions, self.spec.workers)
        started = time.perf_counter()
        replies = self._step_all(per_worker)
        round_trip = time.perf_counter() - started
        slowest = max(reply.seconds for reply, _ in replies)
        self.worker_s += slowest
        self.comm_s += round_trip - slowest
        for i, (reply, size) in enumerate(replies):
            self.compute_s[i] += reply.seconds
            self.bytes[i] += size
            self.env_cost[i] += reply.env_cost
        steps = [reply.result for reply, _ in replies]
        return StepResult(*(np.concatenate([getattr(s, f) for s in steps]) for f in StepResult.__dataclass_fields__))
