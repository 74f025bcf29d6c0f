"""The one sampling loop every backend runs, wherever its envs live.

`EnvBlock` steps k envs in one process; `FragmentSampler` drives any stepper
(an `EnvBlock`, or central inference's group of remote blocks) with a policy
and returns a `Rollout`. Because env i is seeded `seed + i` and draws its
exploration noise from its own generator seeded by `(seed, i)`, the same env
produces the same transitions whether it lives alone in a Ray actor or beside
fifteen others in a vector env.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from algorithms.distributions import Distribution, distribution_of
from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout
from backends.envs import EnvSpec, make_env

# Recorded in results: the sampling semantics every backend shares.
AUTORESET_MODE = AutoresetMode.SAME_STEP


@dataclass(frozen=True)
class StepResult:
    """One step of k envs. Where an episode ended, `obs` is already the next
    episode's first observation and `final_obs` holds the ended one's last."""

    obs: np.ndarray  # (k, obs_dim) float32
    rewards: np.ndarray  # (k,) float32
    terminations: np.ndarray  # (k,) bool
    truncations: np.ndarray  # (k,) bool
    final_obs: np.ndarray  # (k, obs_dim) float32, meaningful where an episode ended


@dataclass(frozen=True)
class SamplingSplit:
    """Where one fragment's sampling time went, on the sampler's own clock (`time.perf_counter`): waiting on
    env steps, in policy calls, and the rest (the loop's own Python, buffers, bootstrap values). Env time is
    what the sampler waited for its envs' step to return: for envs in its own process their physics summed,
    for envs in other processes (gymnasium's AsyncVectorEnv, SB3's SubprocVecEnv, central inference) the
    slowest env of each step plus the transport of actions and results, for EnvPool its C++ threads' step."""

    env_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0

    @property
    def other_s(self) -> float:
        return max(0.0, self.total_s - self.env_s - self.inference_s)

    def __add__(self, other: SamplingSplit) -> SamplingSplit:
        return SamplingSplit(self.env_s + other.env_s, self.inference_s + other.inference_s, self.total_s + other.total_s)

    def figures(self) -> dict[str, float]:
        """Its `BatchFigures` fields, for a backend's `Collected`."""
        return {"sample_env_s": self.env_s, "sample_inference_s": self.inference_s, "sample_other_s": self.other_s}


class Stepper(Protocol):
    """Something that steps a fixed set of envs in lockstep."""

    env_ids: np.ndarray

    def reset(self) -> np.ndarray: ...

    def step(self, actions: np.ndarray) -> StepResult: ...


VectorEnvClass = Callable[..., VectorEnv]
"""A gymnasium vector env's constructor: `(env_fns, autoreset_mode=...) -> VectorEnv`."""


class EnvBlock:
    """Envs `env_ids` as one gymnasium vector env with same-step autoreset: a `SyncVectorEnv` in this process
    by default, or any other of gymnasium's vector envs (`gym_async` passes `AsyncVectorEnv`, one subprocess
    per env), read the same way: one stepper, so every backend built on it returns the same rollout. `make` makes
    one env from the spec (`make_env`, or one that wraps it: it must be picklable for a vector env in subprocesses)."""

    def __init__(self, spec: EnvSpec, env_ids: np.ndarray, seed: int, vector: VectorEnvClass = SyncVectorEnv,
                 make: Callable[[EnvSpec], gym.Env] = make_env) -> None:  # fmt: skip
        self.env_ids = np.asarray(env_ids, dtype=np.int64)
        self.seed = seed
        env_fns: Sequence[Callable[[], gym.Env]] = [partial(make, spec, int(i), seed) for i in self.env_ids]
        self.vec = vector(env_fns, autoreset_mode=AUTORESET_MODE)
        self.action_space = self.vec.single_action_space
        self.action = distribution_of(self.action_space)

    def reset(self) -> np.ndarray:
        obs, _ = self.vec.reset(seed=[self.seed + int(i) for i in self.env_ids])
        return obs.astype(np.float32, copy=False)

    def step(self, actions: np.ndarray) -> StepResult:
        # The env gets what the distribution says (a Gaussian's sample clipped); PPO keeps the raw sample.
        obs, rewards, terminations, truncations, info = self.vec.step(self.action.to_env(actions, self.action_space))
        obs = obs.astype(np.float32, copy=False)
        final_obs = obs.copy()
        if "_final_obs" in info:
            for j in np.flatnonzero(info["_final_obs"]):
                final_obs[j] = info["final_obs"][j]
        return StepResult(obs, rewards.astype(np.float32), terminations.astype(bool), truncations.astype(bool), final_obs)

    def close(self) -> None:
        self.vec.close()


class NoiseSource:
    """Per-env exploration noise (the distribution's kind), seeded by `(seed, env_id)`."""

    def __init__(self, env_ids: np.ndarray, seed: int, action: Distribution) -> None:
        self.generators = [np.random.default_rng([seed, int(i)]) for i in env_ids]
        self.action = action

    def draw(self) -> np.ndarray:
        return np.stack([self.action.draw_noise(g) for g in self.generators])


class FragmentSampler:
    """Samples T-step fragments from a stepper; episodes carry over between calls."""

    def __init__(self, stepper: Stepper, policy: InferencePolicy, noise: NoiseSource, batched: bool = True) -> None:
        self.stepper = stepper
        self.policy = policy
        self.noise = noise
        # Unbatched: one policy call per env step, the report's single-process PPO.
        self.batched = batched
        self.obs = stepper.reset()
        num_envs = len(stepper.env_ids)
        self.running_return = np.zeros(num_envs)
        self.running_length = np.zeros(num_envs, dtype=np.int64)
        self.last_split = SamplingSplit()
        """Where the last `sample` call's time went."""

    def _act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.batched:
            return self.policy.act(obs, noise)
        parts = [self.policy.act(obs[j : j + 1], noise[j : j + 1]) for j in range(len(obs))]
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    def sample(self, num_steps_per_env: int) -> Rollout:
        """Step every env `num_steps_per_env` times with the policy's current weights."""
        began = time.perf_counter()
        env_s = inference_s = 0.0
        T, k, obs_dim = num_steps_per_env, len(self.obs), self.obs.shape[1]
        action = self.noise.action
        obs_buf = np.empty((T, k, obs_dim), np.float32)
        act_buf = np.empty((T, k, *action.action_shape), action.action_dtype)
        logp_buf, value_buf, reward_buf, final_value_buf = (np.zeros((T, k), np.float32) for _ in range(4))
        term_buf, trunc_buf = np.zeros((T, k), bool), np.zeros((T, k), bool)
        episodes: list[tuple[float, int, int]] = []
        for t in range(T):
            noise = self.noise.draw()
            acting = time.perf_counter()
            actions, log_probs, values = self._act(self.obs, noise)
            stepping = time.perf_counter()
            step = self.stepper.step(actions)
            stepped = time.perf_counter()
            inference_s += stepping - acting
            env_s += stepped - stepping
            obs_buf[t], act_buf[t], logp_buf[t], value_buf[t] = self.obs, actions, log_probs, values
            reward_buf[t], term_buf[t], trunc_buf[t] = step.rewards, step.terminations, step.truncations
            self.running_return += step.rewards
            self.running_length += 1
            ended = np.flatnonzero(step.terminations | step.truncations)
            if len(ended):
                truncated_only = ended[~step.terminations[ended]]
                if len(truncated_only):
                    final_value_buf[t, truncated_only] = self.policy.value(step.final_obs[truncated_only])
                for j in ended:
                    episodes.append((self.running_return[j], int(self.running_length[j]), int(self.stepper.env_ids[j])))
                self.running_return[ended] = 0.0
                self.running_length[ended] = 0
            self.obs = step.obs
        episodes.sort(key=lambda episode: episode[2])  # by env id, each env's in the order they ended (Rollout)
        returns, lengths, env_ids = zip(*episodes, strict=True) if episodes else ((), (), ())
        rollout = Rollout(
            obs=obs_buf,
            actions=act_buf,
            log_probs=logp_buf,
            values=value_buf,
            rewards=reward_buf,
            terminations=term_buf,
            truncations=trunc_buf,
            final_values=final_value_buf,
            last_values=self.policy.value(self.obs).astype(np.float32),
            env_ids=self.stepper.env_ids.copy(),
            episode_returns=np.asarray(returns, np.float64),
            episode_lengths=np.asarray(lengths, np.int64),
            episode_env_ids=np.asarray(env_ids, np.int64),
            policy_version=self.policy.version,
        )
        self.last_split = SamplingSplit(env_s, inference_s, time.perf_counter() - began)
        return rollout
