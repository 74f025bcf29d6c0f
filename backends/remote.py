"""Learner side of every backend whose workers live in other processes.

Subclasses only move bytes: launch workers, broadcast weights, dispatch sample
requests and receive their fragments, step envs for central inference. This
class decides what is measured and checks policy versions, so all process
backends report alike.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

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

    def set_weights(self, weights: np.ndarray, version: int, wait: bool = True) -> SyncReport:
        if self.requests and (wait or self.spec.inference == "central"):
            # A blocking broadcast would wait behind the requests; central inference samples in `take`,
            # so new weights would leak into a request submitted before them.
            raise RuntimeError("set_weights: requests are in flight; take them first (or wait=False with worker inference)")
        self.version = version
        if self.spec.inference == "central":
            self.policy.load_flat(weights, version)
            return SyncReport(bytes_sent=None)  # the policy never leaves the learner
        self._broadcast(weights, version, wait)
        # Every worker loads its own copy of the buffer.
        return SyncReport(bytes_sent=weights.nbytes * self.spec.workers)

    def submit(self, num_steps: int) -> None:
        steps_per_env = self.steps_per_env(num_steps)
        # Workers handle messages in order, so a request samples with the last version sent before it.
        handle = steps_per_env if self.spec.inference == "central" else self._dispatch(steps_per_env)
        self.requests.append((handle, self.version))

    def take(self) -> Collected:
        if not self.requests:
            raise RuntimeError("take() with no request submitted")
        handle, expected_version = self.requests.popleft()
        if self.spec.inference == "central":
            self.stepper.reset_counters()
            rollout = self.sampler.sample(handle)
            return Collected(rollout, self.stepper.worker_s, self.stepper.comm_s, self.stepper.bytes_moved,
                             (rollout.policy_version,))  # fmt: skip
        asked_at = time.time()
        fragments = self._receive(handle)
        for worker, (fragment, _, _) in enumerate(fragments):
            if fragment.policy_version != expected_version:
                raise WorkerError(
                    f"worker {worker} sampled with policy version {fragment.policy_version}, expected {expected_version}"
                )
        rollout = Rollout.concat_envs([f for f, _, _ in fragments])
        joined_at = time.time()
        last_ready = max(ready for _, _, ready in fragments)
        return Collected(
            rollout,
            worker_compute_s=max(seconds for _, seconds, _ in fragments),
            # What the learner waited for of the move: under `overlap` a fragment may have been ready
            # (and moved) long before the learner asked for it.
            transfer_s=max(0.0, joined_at - max(last_ready, asked_at)),
            transfer_bytes=sum(f.nbytes for f, _, _ in fragments),
            fragment_versions=tuple(f.policy_version for f, _, _ in fragments),
        )

    @abstractmethod
    def _launch(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        """Start the workers and wait until each is ready (or fail within the timeout)."""

    @abstractmethod
    def _broadcast(self, weights: np.ndarray, version: int, wait: bool) -> None:
        """Send `weights` as `version` to every worker, queued behind the requests already dispatched;
        with `wait`, return once every worker has loaded them."""

    @abstractmethod
    def _dispatch(self, steps_per_env: int) -> Any:
        """Ask every worker for a fragment of `steps_per_env` steps per env; return a handle for `_receive`."""

    @abstractmethod
    def _receive(self, handle: Any) -> list[tuple[Rollout, float, float]]:
        """Each worker's (fragment, sampling seconds, wall time ready) for a dispatched request, in worker order."""

    @abstractmethod
    def _central_stepper(self, obs_dim: int) -> CentralStepper:
        """A stepper that drives the workers' envs one step at a time."""
