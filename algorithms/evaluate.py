"""Deterministic evaluation: the policy's mean action on held-out seeds."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from algorithms.model import InferencePolicy

# Training envs are seeded seed + env_index with small indices; evaluation episodes
# start far above any env count a suite can ask for, so the two never share a seed.
EVAL_SEED_OFFSET = 1_000_000


def evaluation_seeds(seed: int, episodes: int) -> list[int]:
    """Seeds of the evaluation episodes for a training seed: disjoint from training seeds."""
    return [EVAL_SEED_OFFSET + seed * 10_000 + k for k in range(episodes)]


def evaluate(policy: InferencePolicy, make_env: Callable[[], gym.Env], seeds: list[int]) -> np.ndarray:
    """Return of one episode per seed, acting with the clipped mean action."""
    env = make_env()
    low, high = env.action_space.low, env.action_space.high
    returns = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                action = np.clip(policy.mean_action(obs[None].astype(np.float32))[0], low, high)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return np.asarray(returns)
