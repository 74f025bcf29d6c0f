"""The rollout record every backend returns: `(T, N, ...)` numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

PER_STEP_FIELDS = ("obs", "actions", "log_probs", "values", "rewards", "terminations", "truncations", "final_values")
"""The `(T, N, ...)` fields of a `Rollout`: one column per env."""


@dataclass(frozen=True)
class Rollout:
    """T steps of N envs, sampled with one policy version (or, joined in time, consecutive stretches each sampled
    with one: `policy_version` is then the oldest).

    Column j holds global env `env_ids[j]`. An episode that ended at step t has
    `terminations[t, j]` or `truncations[t, j]` set; `obs[t + 1, j]` is then the
    first observation of the next episode, so GAE needs `final_values[t, j]`, the
    value of the episode's last observation, to bootstrap a truncation.
    """

    obs: np.ndarray  # (T, N, obs_dim) float32
    actions: np.ndarray  # (T, N, act_dim) float32, unclipped samples
    log_probs: np.ndarray  # (T, N) float32, of the unclipped actions
    values: np.ndarray  # (T, N) float32
    rewards: np.ndarray  # (T, N) float32, as the env returned them
    terminations: np.ndarray  # (T, N) bool
    truncations: np.ndarray  # (T, N) bool
    final_values: np.ndarray  # (T, N) float32, V(last obs) where truncated, else 0
    last_values: np.ndarray  # (N,) float32, V(obs after step T-1)
    env_ids: np.ndarray  # (N,) int64
    episode_returns: np.ndarray  # (E,) float64, episodes completed in this rollout, by env id, then in the order they ended
    episode_lengths: np.ndarray  # (E,) int64
    episode_env_ids: np.ndarray  # (E,) int64
    policy_version: int

    @property
    def num_steps(self) -> int:
        """Env steps in the rollout, summed over envs."""
        return int(self.rewards.size)

    @property
    def nbytes(self) -> int:
        """Size of the array payload, the bytes a transfer has to move."""
        return sum(getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray))

    @staticmethod
    def concat_envs(fragments: list[Rollout]) -> Rollout:
        """Join fragments of the same length side by side, ordered by env id."""
        versions = {f.policy_version for f in fragments}
        if len(versions) != 1:
            raise ValueError(f"fragments sampled with different policy versions {sorted(versions)}")
        ordered = sorted(fragments, key=lambda f: int(f.env_ids[0]))
        per_env = ("last_values", "env_ids")
        per_episode = ("episode_returns", "episode_lengths", "episode_env_ids")
        joined = {name: np.concatenate([getattr(f, name) for f in ordered], axis=1) for name in PER_STEP_FIELDS}
        joined |= {name: np.concatenate([getattr(f, name) for f in ordered]) for name in per_env + per_episode}
        return Rollout(**joined, policy_version=versions.pop())

    @staticmethod
    def concat_time(parts: list[Rollout]) -> Rollout:
        """Join consecutive stretches of the same envs end to end (each env's steps go on where the last part
        stopped): the bootstrap values are the last part's, `policy_version` the oldest part's, and episodes stay
        ordered by env id, then in the order they ended."""
        if any(not np.array_equal(p.env_ids, parts[0].env_ids) for p in parts):
            raise ValueError("parts joined in time must hold the same envs in the same columns")
        joined = {name: np.concatenate([getattr(p, name) for p in parts]) for name in PER_STEP_FIELDS}
        episodes = {
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in ("episode_returns", "episode_lengths", "episode_env_ids")
        }
        order = np.argsort(episodes["episode_env_ids"], kind="stable")  # by env; within an env, parts are in time order
        joined |= {name: values[order] for name, values in episodes.items()}
        last = parts[-1]
        return Rollout(**joined, last_values=last.last_values, env_ids=last.env_ids,
                       policy_version=min(p.policy_version for p in parts))  # fmt: skip
