"""The `envpool` backend against real EnvPool: next-step autoreset turned into the harness's semantics,
the packing of per-env streams into `(T, N)` columns and its cuts, exact step counts in both modes, the
env's statistics against gymnasium's, and the suite's refusals.

Where a rollout alone cannot say which env a row came from, `backend.last_layout` says (pieces per column).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats

from algorithms.gae import compute_gae
from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout
from backends import available, create_backend
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvSpec
from harness.errors import HarnessError
from harness.suite import load_suite

pytestmark = pytest.mark.skipif(not available("envpool"), reason="needs envpool")

CARTPOLE = (EnvSpec("CartPole-v1"), PolicySpec(4, 2, (64, 64), "categorical"))
PENDULUM = (EnvSpec(), PolicySpec(3, 1, (64, 64)))
SEED = 7


def weights(policy: PolicySpec, scale: float = 0.3) -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, scale, policy.num_params).astype(np.float32)


@contextlib.contextmanager
def sampling(workload, num_envs: int = 4, batch_size: int | None = None, scale: float = 0.3) -> Iterator:
    env, policy = workload
    options = {} if batch_size is None else {"batch_size": batch_size}
    backend = create_backend(BackendSpec("envpool", 1, num_envs, "central", options))
    try:
        backend.start(env, policy, SEED)
        backend.set_weights(weights(policy, scale), 0)
        yield backend
    finally:
        backend.close()


def collect(backend, sizes: list[int]) -> list[tuple[Rollout, list]]:
    """Requests of `sizes` steps in a row, each with the layout its columns were packed in."""
    return [(backend.collect(size).rollout, backend.last_layout) for size in sizes]


def pieces(layout: list) -> Iterator[tuple[int, int, int, int, int]]:
    """(column, env, position in the env's stream, first row, rows) of every piece."""
    for column, column_pieces in enumerate(layout):
        row = 0
        for env, start, stop in column_pieces:
            yield column, env, start, row, stop - start
            row += stop - start


def streams(collected: list[tuple[Rollout, list]]) -> dict[int, np.ndarray]:
    """Each env's observations in stream order, over requests in a row (each request consumes a prefix)."""
    out: dict[int, list] = {}
    for rollout, layout in collected:
        for column, env, _, first, rows in sorted(pieces(layout), key=lambda p: (p[1], p[2])):
            out.setdefault(env, []).append(rollout.obs[first : first + rows, column])
    return {env: np.concatenate(parts) for env, parts in out.items()}


def cartpole_step(obs: np.ndarray, action: int) -> tuple[np.ndarray, bool]:
    """Gymnasium's CartPole physics from a state: the next obs and whether it terminates (EnvPool's are the same)."""
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    env.state = np.asarray(obs, np.float64)
    next_obs, _, terminated, _, _ = env.step(int(action))
    return next_obs, terminated


def pendulum_step(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    env.state = np.array([np.arctan2(obs[1], obs[0]), obs[2]])
    return env.step(np.clip(action, -2.0, 2.0))[0]


def is_reset_obs(obs: np.ndarray) -> bool:
    return bool(np.all(np.abs(obs) <= 0.05))  # CartPole's reset draws every state variable from U(-0.05, 0.05)


# --- semantics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 2])
def test_cartpole_transitions_continue_and_no_reset_step_leaks_in(batch_size):
    env, policy = CARTPOLE
    with sampling(CARTPOLE, batch_size=batch_size) as backend:
        collected = collect(backend, [256] * 10)
    value = InferencePolicy(policy)
    value.load_flat(weights(policy), 0)
    cuts = 0
    for rollout, layout in collected:
        assert np.all(rollout.rewards == 1.0), "a reward of 0 is EnvPool's reset step leaking in as a transition"
        assert rollout.terminations.any()
        T = rollout.rewards.shape[0]
        for column, _, _, first, rows in pieces(layout):
            for t in range(first, first + rows):
                obs, action = rollout.obs[t, column], rollout.actions[t, column]
                next_obs, terminates = cartpole_step(obs, action)
                assert bool(rollout.terminations[t, column]) == terminates
                last = t == first + rows - 1
                if rollout.terminations[t, column]:
                    if not last:  # the same env's next episode begins in the next row
                        assert is_reset_obs(rollout.obs[t + 1, column])
                elif not last:
                    np.testing.assert_allclose(rollout.obs[t + 1, column], next_obs, atol=1e-4)
                elif t < T - 1:  # a cut, not an episode end: bootstrapped like a truncation from V(next obs)
                    cuts += 1
                    assert rollout.truncations[t, column]
                    assert rollout.final_values[t, column] == pytest.approx(float(value.value(next_obs[None])[0]), abs=1e-4)
                else:
                    assert rollout.last_values[column] == pytest.approx(float(value.value(next_obs[None])[0]), abs=1e-4)
    assert cuts > 0, "some column should have been filled from another env's surplus"


def test_pendulum_time_limit_is_a_truncation_bootstrapped_from_the_last_obs():
    env, policy = PENDULUM
    with sampling(PENDULUM) as backend:
        collected = collect(backend, [4 * 150, 4 * 150])
    value = InferencePolicy(policy)
    value.load_flat(weights(policy), 0)
    second, layout = collected[1]
    assert layout == [[(j, 0, 150)] for j in range(4)]  # every env truncates together: column j is env j
    assert not any(r.terminations.any() for r, _ in collected)
    rows, columns = np.nonzero(second.truncations)
    assert list(rows) == [49] * 4  # step 200 of every env (150 in the first request, 50 in this one)
    for t, j in zip(rows, columns, strict=True):
        last_obs = pendulum_step(second.obs[t, j], second.actions[t, j])
        assert second.final_values[t, j] != 0.0
        assert second.final_values[t, j] == pytest.approx(float(value.value(last_obs[None].astype(np.float32))[0]), abs=1e-4)
    assert list(second.episode_lengths) == [200] * 4 and list(second.episode_env_ids) == [0, 1, 2, 3]


def test_gae_on_a_packed_rollout_equals_gae_per_env_piece_by_hand():
    """Each piece of an env's stream, computed alone: episode ends inside it as GAE has them, and its end
    bootstrapped from V(next obs), the next obs from CartPole's physics (not from the backend's final values)."""
    env, policy = CARTPOLE
    gamma, lam = 0.99, 0.95
    with sampling(CARTPOLE) as backend:
        collected = collect(backend, [256] * 10)
    value = InferencePolicy(policy)
    value.load_flat(weights(policy), 0)
    packed_with_cut = 0
    for rollout, layout in collected:
        advantages, _ = compute_gae(rollout, gamma, lam)
        for column, _, _, first, rows in pieces(layout):
            if rows < rollout.rewards.shape[0]:
                packed_with_cut += 1
            r = rollout.rewards[first : first + rows, column].astype(np.float64)
            v = rollout.values[first : first + rows, column].astype(np.float64)
            done = rollout.terminations[first : first + rows, column]
            last_obs, _ = cartpole_step(rollout.obs[first + rows - 1, column], rollout.actions[first + rows - 1, column])
            bootstrap = float(value.value(last_obs[None].astype(np.float32))[0])
            expected, running = np.zeros(rows), 0.0
            for i in reversed(range(rows)):
                next_value = 0.0 if done[i] else (bootstrap if i == rows - 1 else v[i + 1])
                carry = 0.0 if done[i] or i == rows - 1 else running
                running = r[i] + gamma * next_value - v[i] + gamma * lam * carry
                expected[i] = running
            np.testing.assert_allclose(advantages[first : first + rows, column], expected, atol=1e-3)
    assert packed_with_cut > 0


# --- exact accounting, carry-over, async -------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 2])
def test_exact_step_counts_over_requests_in_a_row_and_streams_independent_of_request_sizes(batch_size):
    sizes = [64, 256, 128, 64, 256]
    with sampling(CARTPOLE, batch_size=batch_size) as backend:
        collected = collect(backend, sizes)
        carried = backend.rollouts.held
    for (rollout, layout), size in zip(collected, sizes, strict=True):
        assert rollout.num_steps == size and rollout.rewards.shape == (size // 4, 4)
        assert sum(p[-1] for p in pieces(layout)) == size
    # Each env's transitions depend only on its seed, its noise and the weights: one request, or several with
    # carry-over between them, or async batches, sample the same stream.
    with sampling(CARTPOLE) as backend:
        whole = collect(backend, [sum(sizes) + 4 * 64])
    split_obs, whole_obs = streams(collected), streams(whole)
    for env in range(4):
        np.testing.assert_allclose(split_obs[env], whole_obs[env][: len(split_obs[env])], atol=1e-5)
    assert carried < 4  # fewer than num_envs steps beyond the request


def test_async_mode_acts_on_ready_envs_with_exact_counts():
    with sampling(CARTPOLE, num_envs=8, batch_size=2) as backend:
        collected = collect(backend, [512, 512])
        description = backend.describe()
    assert description["mode"] == "async" and description["batch_size"] == 2
    for rollout, layout in collected:
        assert rollout.num_steps == 512
        per_env = np.zeros(8, int)
        for _, env, _, _, rows in pieces(layout):
            per_env[env] += rows
        assert per_env.sum() == 512 and (per_env > 0).all()  # every env appears
        assert len(set(per_env.tolist())) > 1  # envs that reset at different steps give different counts
        assert len(rollout.episode_lengths) == rollout.terminations.sum()  # every ended episode listed, once
        assert set(rollout.episode_env_ids.tolist()) <= set(range(8))


# --- the envs are EnvPool's: the same distributions as gymnasium's ------------------------------------


def gymnasium_episodes(env_id: str, episodes: int, reward_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A random policy's episode returns and lengths: uniform actions (CartPole), N(0, 1) clipped (Pendulum),
    what zero weights make the backend's policy."""
    env, rng = gym.make(env_id), np.random.default_rng(1)
    returns, lengths = [], []
    for episode in range(episodes):
        env.reset(seed=1000 + episode)
        total, length, done = 0.0, 0, False
        while not done:
            if isinstance(env.action_space, gym.spaces.Discrete):
                action = int(rng.integers(env.action_space.n))
            else:
                action = np.clip(rng.standard_normal(1), -2.0, 2.0).astype(np.float32)
            _, reward, terminated, truncated, _ = env.step(action)
            total, length, done = total + reward * reward_scale, length + 1, terminated or truncated
        returns.append(total)
        lengths.append(length)
    env.close()
    return np.asarray(returns), np.asarray(lengths)


def envpool_episodes(workload, steps: int, reward_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    with sampling(workload, num_envs=8, scale=0.0) as backend:
        rollout = backend.collect(steps).rollout
    return rollout.episode_returns * reward_scale, rollout.episode_lengths


@pytest.mark.parametrize(("workload", "statistic", "steps"), [(CARTPOLE, "lengths", 8 * 200), (PENDULUM, "returns", 8 * 1400)])
def test_random_policy_episodes_match_gymnasiums(workload, statistic, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's warning about the state set by hand is not ours
        ours = envpool_episodes(workload, steps)
        theirs = gymnasium_episodes(workload[0].id, 60)
    pick = 0 if statistic == "returns" else 1
    assert len(ours[pick]) >= 50
    assert stats.mannwhitneyu(ours[pick], theirs[pick]).pvalue > 0.01
    # The test can tell: twice the reward (CartPole: its return is its length) is caught.
    assert stats.mannwhitneyu(ours[pick] * 2, theirs[pick]).pvalue < 0.01


# --- refusals at suite load ----------------------------------------------------------------------------

SUITE = """
[suite]
name = "t"
[ppo]
preset = "report"
steps_per_iteration = 64
[measure]
iterations = 1
[[cases]]
backend = "envpool"
inference = "central"
envs_per_worker = 4
"""


def test_an_envpool_case_loads(tmp_path):
    (tmp_path / "s.toml").write_text(SUITE + 'options = { batch_size = 2, num_threads = 2 }\nenv = { id = "CartPole-v1" }\n')
    (case,) = load_suite(tmp_path / "s.toml").cases
    assert case.backend.settings.batch_size == 2 and case.env.id == "CartPole-v1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'env = { id = "tests.custom_envs:ImportProbe" }',
            r"EnvPool has no env 'tests.custom_envs:ImportProbe'; it has Pendulum-v1, CartPole-v1, .* in all: envpool.list_all_envs\(\)\)",
        ),
        ("env = { kwargs = { g = 9.81 } }", "EnvPool's own env config, not gymnasium kwargs: remove g"),
        ("env = { step_cost_ms = 2.0 }", "cannot add a synthetic step or reset cost"),
        ("env = { reset_cost_ms = 2.0 }", "cannot add a synthetic step or reset cost"),
        ("options = { batch_size = 3 }", "batch_size 3 does not divide the 4 envs"),
        ("workers = 2\nenvs_per_worker = 2", "is one vector env, stepped by the learner"),
        ('inference = "worker"', "has no inference mode 'worker'; choose central"),
    ],
)
def test_refusals_are_one_line_at_suite_load(tmp_path, extra, message):
    text = SUITE.replace('inference = "central"\n', "") if extra.startswith("inference") else SUITE
    text = text.replace("envs_per_worker = 4\n", "") if extra.startswith("workers") else text
    (tmp_path / "s.toml").write_text(text + extra + "\n")
    with pytest.raises(HarnessError, match=message) as error:
        load_suite(tmp_path / "s.toml")
    assert "\n" not in str(error.value)


def test_max_episode_steps_maps_onto_envpools_config():
    env = EnvSpec("CartPole-v1", kwargs={"max_episode_steps": 10})
    with sampling((env, CARTPOLE[1]), scale=0.0) as backend:
        rollout = backend.collect(400).rollout
    assert rollout.episode_lengths.max() <= 10 and (rollout.episode_lengths == 10).any()
    assert rollout.truncations.any()
