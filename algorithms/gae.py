"""Generalised advantage estimation that bootstraps time-limit truncations."""

from __future__ import annotations

import numpy as np

from algorithms.rollout import Rollout


def compute_gae(rollout: Rollout, gamma: float, gae_lambda: float, reward_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and value targets, both `(T, N)` float32.

    A terminated episode's next value is 0. A truncated one (Pendulum's 200-step
    limit: it never terminates) is bootstrapped with the value of its last
    observation, because the task would have gone on (Pardo et al. 2018,
    "Time Limits in Reinforcement Learning"). Either way the advantage
    recursion stops at the episode boundary.
    """
    rewards = rollout.rewards.astype(np.float32) * reward_scale
    values = rollout.values
    steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    next_advantage = np.zeros_like(rollout.last_values)
    next_value = rollout.last_values
    for t in reversed(range(steps)):
        ended = rollout.terminations[t] | rollout.truncations[t]
        bootstrap = np.where(rollout.terminations[t], 0.0, np.where(rollout.truncations[t], rollout.final_values[t], next_value))
        delta = rewards[t] + gamma * bootstrap - values[t]
        advantages[t] = delta + gamma * gae_lambda * np.where(ended, 0.0, next_advantage)
        next_advantage = advantages[t]
        next_value = values[t]
    return advantages, advantages + values
