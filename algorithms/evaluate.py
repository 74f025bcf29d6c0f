"""Deterministic evaluation: the policy's mode (mean action, or most likely action) on held-out seeds."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from algorithms.inference import InferencePolicy

# Training envs are seeded seed + env_index with small indices; evaluation episodes
# start far above any env count a suite can ask for, so the two never share a seed.
EVAL_SEED_OFFSET = 1_000_000


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    """Seeds of the evaluation episodes for a training seed: disjoint from training seeds."""
    return [EVAL_SEED_OFFSET + seed * 10_000 + k for k in range(episodes)]


def evaluate(policy: InferencePolicy, make_env: Callable[[], gym.Env], seeds: list[int]) -> np.ndarray:
    """Return of one episode per seed, acting with the mode (a Gaussian's mean clipped to the bounds)."""
    env = make_env()
    space = env.action_space
    returns = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                action = policy.action.to_env(policy.mode(np.asarray(obs, np.float32)[None])[0], space)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return np.asarray(returns)
