"""Learner side of every backend whose workers live in other processes.

Subclasses only move bytes: launch workers, broadcast weights, gather
fragments, step envs for central inference. This class decides what is
measured and checks on-policy versions, so all process backends report alike.
"""

from __future__ import annotations

import time
from abc import abstractmethod

import numpy as np

from algorithms.model import InferencePolicy
from algorithms.rollout import Rollout
from backends.base import Backend, Collected, PolicySpec, SyncReport
from backends.envs import EnvSpec
from backends.sampling import FragmentSampler, NoiseSource
from backends.workers import CentralStepper, WorkerError

DEFAULT_TIMEOUT_S = 120.0


class RemoteBackend(Backend):
    """Workers in other processes; `inference` decides where the policy runs."""

    remote = True

    @property
    def timeout_s(self) -> float:
        """How long any wait on a worker may take before it counts as hung."""
        return float(self.spec.options.get("timeout_s", DEFAULT_TIMEOUT_S))

    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        self.version = -1
        self._launch(env, policy, seed)
        if self.spec.inference == "central":
            self.policy = InferencePolicy(policy.obs_dim, policy.act_dim, policy.hidden_size)
            self.stepper = self._central_stepper(policy.obs_dim)
            noise = NoiseSource(np.arange(self.spec.num_envs), seed, policy.act_dim)
            self.sampler = FragmentSampler(self.stepper, self.policy, noise)

    def set_weights(self, weights: np.ndarray, version: int) -> SyncReport:
        self.version = version
        if self.spec.inference == "central":
            self.policy.load_flat(weights, version)
            return SyncReport(bytes_sent=None)  # the policy never leaves the learner
        self._broadcast(weights, version)
        # Every worker loads its own copy of the buffer.
        return SyncReport(bytes_sent=weights.nbytes * self.spec.workers)

    def collect(self, num_steps: int) -> Collected:
        steps_per_env = self.steps_per_env(num_steps)
        if self.spec.inference == "central":
            self.stepper.reset_counters()
            rollout = self.sampler.sample(steps_per_env)
            return Collected(rollout, self.stepper.worker_s, self.stepper.comm_s, self.stepper.bytes_moved)
        fragments = self._gather(steps_per_env)
        for worker, (fragment, _, _) in enumerate(fragments):
            if fragment.policy_version != self.version:
                raise WorkerError(
                    f"worker {worker} sampled with policy version {fragment.policy_version}, expected {self.version} (on-policy PPO)"
                )
        rollout = Rollout.concat_envs([f for f, _, _ in fragments])
        joined_at = time.time()
        last_ready = max(ready for _, _, ready in fragments)
        return Collected(
            rollout,
            worker_compute_s=max(seconds for _, seconds, _ in fragments),
            transfer_s=max(0.0, joined_at - last_ready),
            transfer_bytes=sum(f.nbytes for f, _, _ in fragments),
        )

    @abstractmethod
    def _launch(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        """Start the workers and wait until each is ready (or fail within the timeout)."""

    @abstractmethod
    def _broadcast(self, weights: np.ndarray, version: int) -> None:
        """Return once every worker has loaded `weights` as `version`."""

    @abstractmethod
    def _gather(self, steps_per_env: int) -> list[tuple[Rollout, float, float]]:
        """Each worker's (fragment, sampling seconds, wall time ready), in worker order."""

    @abstractmethod
    def _central_stepper(self, obs_dim: int) -> CentralStepper:
        """A stepper that drives the workers' envs one step at a time."""
