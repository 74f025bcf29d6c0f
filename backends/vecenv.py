"""`vecenv`: N envs stepped by one process with batched policy inference (the report's VecEnv)."""

from __future__ import annotations

import numpy as np

from algorithms.inference import InferencePolicy
from backends import REGISTRY
from backends.base import Backend, BackendSpec, Collected, PolicySpec, SyncReport
from backends.envs import EnvSpec
from backends.sampling import EnvBlock, FragmentSampler, NoiseSource


class VecEnvBackend(Backend):
    """All envs and the policy copy live in the learner's process."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.batched_inference = REGISTRY[spec.name].batched_inference
        """One policy call per step for every env, or (`serial`) one per env step: the registry entry says which."""
        self.block: EnvBlock | None = None

    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        env_ids = np.arange(self.spec.num_envs)
        self.block = EnvBlock(env, env_ids, seed)
        self.policy = InferencePolicy(policy)
        noise = NoiseSource(env_ids, seed, policy.action)
        self.sampler = FragmentSampler(self.block, self.policy, noise, batched=self.batched_inference)

    def set_weights(self, weights: np.ndarray, version: int, wait: bool = True) -> SyncReport:
        # One process: sampling happens inside `take`, so loading now is always "before the next fragment".
        self.policy.load_flat(weights, version)
        return SyncReport(bytes_sent=None)

    def submit(self, num_steps: int) -> None:
        self.requests.append(self.steps_per_env(num_steps))

    def take(self) -> Collected:
        # In-process: the sampling happens here, in the learner's thread (no overlap possible).
        rollout = self.sampler.sample(self.requests.popleft())
        return Collected(rollout, fragment_versions=(rollout.policy_version,), **self.sampler.last_split.figures())

    def close(self) -> None:
        if self.block is not None:
            self.block.close()
            self.block = None

    def describe(self) -> dict:
        return super().describe() | {"batched_inference": self.batched_inference, "transport": "in-process"}
