"""Per-env streams of transitions packed into `(T, N)` rollouts: what a sampler needs when its envs step at
different rates (EnvPool's async mode and reset steps, `multiprocessing`'s async central inference).

A request is exactly `num_steps` transitions in a `(T, N)` rollout, yet per-env counts differ. Each env's
transitions form a stream; column j takes env j's next T transitions (so column j is env j whenever no env
fell short), and a column left short is filled with the surplus of other envs, in env id order (`pack`).
Where a column holds the end of one env's piece and the start of another's, the cut is marked as a
truncation with `final_values` = V(the piece's next obs): for GAE (algorithms/gae.py) exactly a bootstrap
with nothing propagated across. Transitions stepped beyond the request carry over, in order, to the head of
the next request; they were sampled with the weights held then, and their stored log-probs are that
policy's, which is what PPO's ratio needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from algorithms.distributions import Distribution
from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout

Layout = list[list[tuple[int, int, int]]]
"""Per column, its pieces `(env, start, stop)`: positions in each env's stream at that request."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One env step of one env, with what packing needs: the obs after it and the episode it ended, if any."""

    obs: np.ndarray
    action: np.ndarray
    log_prob: float
    value: float
    reward: float
    terminated: bool
    truncated: bool
    next_obs: np.ndarray
    """The obs after the step; where it ended an episode, that episode's last obs (not the next one's first),
    which a truncation bootstraps from."""
    episode: tuple[float, int] | None
    """(return, length) of the episode this step ended."""


def pack(lengths: Sequence[int], steps: int) -> Layout:
    """Lay streams of `lengths` transitions into columns of `steps`: per column, its pieces `(env, start, stop)`.

    Column j begins with env j's first transitions; short columns take other envs' surplus in env id order.
    Every env's pieces are a prefix of its stream, so what is left is the tail that carries over.
    """
    taken = [min(length, steps) for length in lengths]
    columns = [[(env, 0, n)] if n else [] for env, n in enumerate(taken)]
    for column in columns:
        room = steps - sum(stop - start for _, start, stop in column)
        for env, length in enumerate(lengths):
            if room and (spare := min(room, length - taken[env])) > 0:
                column.append((env, taken[env], taken[env] + spare))
                taken[env] += spare
                room -= spare
        if room:
            raise ValueError(f"{sum(lengths)} transitions cannot fill {len(lengths)} columns of {steps}")
    return columns


class StreamRollouts:
    """Each env's stream of transitions, its running episode, and the rollouts packed from them (module docstring)."""

    def __init__(self, num_envs: int, obs_dim: int, action: Distribution) -> None:
        self.num_envs, self.obs_dim, self.action = num_envs, obs_dim, action
        self.streams: list[list[Transition]] = [[] for _ in range(num_envs)]
        self.episode_return, self.episode_length = np.zeros(num_envs), np.zeros(num_envs, np.int64)
        self.last_layout: Layout = []
        """Which env's transitions each column of the last rollout holds, as `pack` laid them: what the rollout
        alone cannot say, for tests and debugging."""

    @property
    def held(self) -> int:
        """Transitions stepped and not yet in a rollout."""
        return sum(map(len, self.streams))

    def add(self, env: int, obs: np.ndarray, action: np.ndarray, log_prob: float, value: float, reward: float,
            terminated: bool, truncated: bool, next_obs: np.ndarray) -> None:  # fmt: skip
        """Append env `env`'s next transition; `next_obs` as `Transition.next_obs` has it."""
        self.episode_return[env] += reward
        self.episode_length[env] += 1
        ended = bool(terminated or truncated)
        episode = (float(self.episode_return[env]), int(self.episode_length[env])) if ended else None
        self.streams[env].append(Transition(obs, action, float(log_prob), float(value), float(reward), bool(terminated),
                                            bool(truncated), np.asarray(next_obs, np.float32), episode))  # fmt: skip
        if ended:
            self.episode_return[env], self.episode_length[env] = 0.0, 0

    def rollout(self, steps: int, policy: InferencePolicy) -> Rollout:
        """The streams' next `steps * num_envs` transitions as a rollout; `policy` gives the bootstrap values and
        the version recorded (the weights the learner holds now, as in `FragmentSampler`)."""
        n = self.num_envs
        obs = np.empty((steps, n, self.obs_dim), np.float32)
        actions = np.empty((steps, n, *self.action.action_shape), self.action.action_dtype)
        log_probs, values, rewards, final_values = (np.zeros((steps, n), np.float32) for _ in range(4))
        terminations, truncations = np.zeros((steps, n), bool), np.zeros((steps, n), bool)
        bootstrap: list[tuple[int, int, np.ndarray]] = []  # (row, column, obs) whose value goes to final_values
        last_obs = np.empty((n, self.obs_dim), np.float32)
        episodes: list[tuple[int, int, float, int]] = []  # (env, stream position, return, length)
        columns = self.last_layout = pack([len(s) for s in self.streams], steps)
        for j, pieces in enumerate(columns):
            row = 0
            for env, start, stop in pieces:
                for position in range(start, stop):
                    tr = self.streams[env][position]
                    obs[row, j], actions[row, j], log_probs[row, j], values[row, j] = tr.obs, tr.action, tr.log_prob, tr.value
                    rewards[row, j], terminations[row, j], truncations[row, j] = tr.reward, tr.terminated, tr.truncated
                    if tr.episode is not None:
                        episodes.append((env, position, *tr.episode))
                    if tr.truncated and not tr.terminated:
                        bootstrap.append((row, j, tr.next_obs))
                    row += 1
                last = self.streams[env][stop - 1]
                if row == steps:
                    last_obs[j] = last.next_obs  # the column's last row: `last_values` bootstraps it
                elif not (last.terminated or last.truncated):  # a cut: bootstrapped like a truncation
                    truncations[row - 1, j] = True
                    bootstrap.append((row - 1, j, last.next_obs))
        consumed = [0] * n
        for pieces in columns:
            for env, _, stop in pieces:
                consumed[env] = max(consumed[env], stop)
        self.streams = [stream[used:] for stream, used in zip(self.streams, consumed, strict=True)]
        if bootstrap:
            rows, cols, next_obs = zip(*bootstrap, strict=True)
            final_values[list(rows), list(cols)] = policy.value(np.stack(next_obs))
        episodes.sort()  # by env id, each env's in the order they ended (Rollout)
        return Rollout(
            obs=obs,
            actions=actions,
            log_probs=log_probs,
            values=values,
            rewards=rewards,
            terminations=terminations,
            truncations=truncations,
            final_values=final_values,
            last_values=policy.value(last_obs).astype(np.float32),
            env_ids=np.arange(n, dtype=np.int64),
            episode_returns=np.asarray([e[2] for e in episodes], np.float64),
            episode_lengths=np.asarray([e[3] for e in episodes], np.int64),
            episode_env_ids=np.asarray([e[0] for e in episodes], np.int64),
            policy_version=policy.version,
        )
