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

Storage is columnar: transitions arrive in blocks (one per step a sampler receives: several envs' transitions
at once) and are kept as arrays, not one object per env step, whose per-transition Python cost was most of
EnvPool's sampling time at 64 envs (issue 21). An env's stream is its rows in arrival order, and a rollout is
a gather of those rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import ArrayLike

from algorithms.distributions import Distribution
from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout

Layout = list[list[tuple[int, int, int]]]
"""Per column, its pieces `(env, start, stop)`: positions in each env's stream at that request."""


@dataclass(frozen=True, slots=True)
class Transitions:
    """Rows of env steps, one per transition (of any envs, in the order they arrived), with what packing needs:
    the obs after each and the episode it ended, if any."""

    env: np.ndarray  # (k,) int64
    obs: np.ndarray  # (k, obs_dim) float32
    action: np.ndarray  # (k, *action_shape) the distribution's dtype, unclipped
    log_prob: np.ndarray  # (k,) float32
    value: np.ndarray  # (k,) float32
    reward: np.ndarray  # (k,) float64: as the env returned it, summed into episode returns before a rollout casts it
    terminated: np.ndarray  # (k,) bool
    truncated: np.ndarray  # (k,) bool
    next_obs: np.ndarray
    """(k, obs_dim) float32: the obs after the step; where it ended an episode, that episode's last obs (not the
    next one's first), which a truncation bootstraps from."""
    episode_return: np.ndarray
    """(k,) float64: the return of the episode the step ended; meaningless where it ended none."""
    episode_length: np.ndarray  # (k,) int64, likewise

    def __len__(self) -> int:
        return len(self.env)

    def take(self, rows: np.ndarray) -> Transitions:
        """The transitions at `rows` (indices or a mask), in that order."""
        return Transitions(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def concat(blocks: Sequence[Transitions]) -> Transitions:
        """`blocks` one after another."""
        if len(blocks) == 1:
            return blocks[0]
        return Transitions(*(np.concatenate([getattr(b, f.name) for b in blocks]) for f in fields(Transitions)))


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
        self.blocks: list[Transitions] = []
        """The transitions held, block by block in the order they arrived."""
        self.held = 0
        """Transitions stepped and not yet in a rollout."""
        self.episode_return, self.episode_length = np.zeros(num_envs), np.zeros(num_envs, np.int64)
        self.last_layout: Layout = []
        """Which env's transitions each column of the last rollout holds, as `pack` laid them: what the rollout
        alone cannot say, for tests and debugging."""

    def add(self, envs: ArrayLike, obs: ArrayLike, actions: ArrayLike, log_probs: ArrayLike, values: ArrayLike,
            rewards: ArrayLike, terminated: ArrayLike, truncated: ArrayLike, next_obs: ArrayLike) -> None:  # fmt: skip
        """Append one block: the next transition of each of `envs` (distinct env ids, or one id and one
        transition's fields), row k of every argument env k's; `next_obs` as `Transitions.next_obs` has it.
        The arrays are copied."""
        env = np.atleast_1d(np.asarray(envs, np.int64))
        k = len(env)
        if k == 0:
            return
        if k > 1 and np.bincount(env, minlength=self.num_envs).max() > 1:
            raise ValueError(f"a block holds one transition per env, not several of env(s) {np.unique(env)}")
        reward = np.array(rewards, np.float64).reshape(k)
        terminated, truncated = np.array(terminated, bool).reshape(k), np.array(truncated, bool).reshape(k)
        # Each env at most once in a block: the running sums take the same float64 additions, in the same order, as
        # one transition at a time would.
        self.episode_return[env] += reward
        self.episode_length[env] += 1
        episode_return, episode_length = self.episode_return[env], self.episode_length[env]
        ended = env[terminated | truncated]
        self.episode_return[ended], self.episode_length[ended] = 0.0, 0
        self.blocks.append(Transitions(
            env=env,
            obs=np.array(obs, np.float32).reshape(k, self.obs_dim),
            action=np.array(actions, self.action.action_dtype).reshape(k, *self.action.action_shape),
            log_prob=np.array(log_probs, np.float32).reshape(k),
            value=np.array(values, np.float32).reshape(k),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=np.array(next_obs, np.float32).reshape(k, self.obs_dim),
            episode_return=episode_return,
            episode_length=episode_length,
        ))  # fmt: skip
        self.held += k

    def stream(self, env: int) -> Transitions:
        """Env `env`'s transitions held (stepped and not yet in a rollout), in its stream's order."""
        held = Transitions.concat(self.blocks) if self.blocks else None
        return held.take(np.flatnonzero(held.env == env)) if held is not None else self._empty()

    def rollout(self, steps: int, policy: InferencePolicy) -> Rollout:
        """The streams' next `steps * num_envs` transitions as a rollout; `policy` gives the bootstrap values and
        the version recorded (the weights the learner holds now, as in `FragmentSampler`)."""
        n = self.num_envs
        held = Transitions.concat(self.blocks) if self.blocks else self._empty()
        lengths = np.bincount(held.env, minlength=n)
        by_env = np.argsort(held.env, kind="stable")  # each env's stream, in arrival order, one after another
        heads = np.cumsum(lengths) - lengths  # where each env's stream begins in `by_env`
        columns = self.last_layout = pack(lengths.tolist(), steps)
        rows = np.empty((steps, n), np.int64)  # the held transition at each (row, column)
        piece_ends = np.zeros((steps, n), bool)  # the last row of a piece that does not end its column: a cut
        for j, pieces in enumerate(columns):
            row = 0
            for env, start, stop in pieces:
                rows[row : row + stop - start, j] = by_env[heads[env] + start : heads[env] + stop]
                row += stop - start
                if row < steps:
                    piece_ends[row - 1, j] = True
        terminations, truncations = held.terminated[rows], held.truncated[rows]
        cuts = piece_ends & ~(terminations | truncations)  # a cut where an episode ended is that end, nothing more
        bootstrap = (truncations & ~terminations) | cuts
        truncations |= cuts
        final_values = np.zeros((steps, n), np.float32)
        # Column by column, row by row: the order the values were always asked for in one policy call.
        bootstrap_columns, bootstrap_rows = np.nonzero(bootstrap.T)
        if len(bootstrap_rows):
            final_values[bootstrap_rows, bootstrap_columns] = policy.value(held.next_obs[rows[bootstrap_rows, bootstrap_columns]])
        used = np.zeros(len(held), bool)
        used[rows] = True
        # The episodes ended in the rollout: by env id, each env's in the order they ended (Rollout).
        ended = by_env[(used & (held.terminated | held.truncated))[by_env]]
        self.blocks = [held.take(~used)] if self.held > steps * n else []
        self.held -= steps * n
        return Rollout(
            obs=held.obs[rows],
            actions=held.action[rows],
            log_probs=held.log_prob[rows],
            values=held.value[rows],
            rewards=held.reward[rows].astype(np.float32),
            terminations=terminations,
            truncations=truncations,
            final_values=final_values,
            last_values=policy.value(held.next_obs[rows[-1]]).astype(np.float32),  # V(each column's last next obs)
            env_ids=np.arange(n, dtype=np.int64),
            episode_returns=held.episode_return[ended],
            episode_lengths=held.episode_length[ended],
            episode_env_ids=held.env[ended],
            policy_version=policy.version,
        )

    def _empty(self) -> Transitions:
        return Transitions(
            env=np.zeros(0, np.int64),
            obs=np.zeros((0, self.obs_dim), np.float32),
            action=np.zeros((0, *self.action.action_shape), self.action.action_dtype),
            log_prob=np.zeros(0, np.float32),
            value=np.zeros(0, np.float32),
            reward=np.zeros(0),
            terminated=np.zeros(0, bool),
            truncated=np.zeros(0, bool),
            next_obs=np.zeros((0, self.obs_dim), np.float32),
            episode_return=np.zeros(0),
            episode_length=np.zeros(0, np.int64),
        )
