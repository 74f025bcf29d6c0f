"""`multiprocessing` with async central inference (`options.batch_size`, backends/async_central.py), on real
worker processes: exact counts with carry-over, a slow env stepping less, each env's trajectory the one lockstep
sampling gives, GAE over the packed rollout, lost workers, the figures, and the refusals at suite load.

Where a rollout alone cannot say which env a row came from, the sampler's `last_layout` says (pieces per column).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import warnings
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest

from algorithms.gae import compute_gae
from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout
from backends import create_backend
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvSpec
from backends.workers import WorkerError
from harness.errors import HarnessError
from harness.suite import load_suite

POLICY = PolicySpec(3, 1, (64, 64))
SEED = 7
# Env 3 of 4 ten times slower (`EnvSpec.is_slow`): sleeps, so the 2 cores are not what makes it slow.
HETEROGENEOUS = EnvSpec(step_cost_ms=0.5, step_cost_kind="sleep", slow_env_fraction=0.25, slow_env_factor=10.0)
SLOW_ENV = 3
PENDULUM = EnvSpec()


def weights(scale: float = 0.3) -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, scale, POLICY.num_params).astype(np.float32)


@contextlib.contextmanager
def sampling(
    workers: int = 4, envs: int = 1, batch_size: int | None = 2, env: EnvSpec = PENDULUM, timeout_s: float = 60
) -> Iterator:
    options = {"timeout_s": timeout_s} | ({} if batch_size is None else {"batch_size": batch_size})
    backend = create_backend(BackendSpec("multiprocessing", workers, envs, "central", options))
    try:
        backend.start(env, POLICY, SEED)
        backend.set_weights(weights(), 0)
        yield backend
    finally:
        backend.close()


def collect(backend, sizes: list[int]) -> list[tuple[Rollout, list]]:
    """Requests of `sizes` steps in a row, each with the layout its columns were packed in."""
    out = []
    for size in sizes:
        rollout = backend.collect(size).rollout
        # Lockstep: column j is env j, whole (its layout written out for `pieces`).
        layout = getattr(
            backend.sampler, "last_layout", [[(j, 0, rollout.rewards.shape[0])] for j in range(rollout.rewards.shape[1])]
        )
        out.append((rollout, layout))
    return out


def pieces(layout: list) -> Iterator[tuple[int, int, int, int, int]]:
    """(column, env, position in the env's stream, first row, rows) of every piece."""
    for column, column_pieces in enumerate(layout):
        row = 0
        for env, start, stop in column_pieces:
            yield column, env, start, row, stop - start
            row += stop - start


def per_env(layout: list, num_envs: int) -> np.ndarray:
    counts = np.zeros(num_envs, int)
    for _, env, _, _, rows in pieces(layout):
        counts[env] += rows
    return counts


def streams(collected: list[tuple[Rollout, list]], field: str) -> dict[int, np.ndarray]:
    """Each env's values of `field` in stream order, over requests in a row (each request consumes a prefix)."""
    out: dict[int, list] = {}
    for rollout, layout in collected:
        for column, env, _, first, rows in sorted(pieces(layout), key=lambda p: (p[1], p[2])):
            out.setdefault(env, []).append(getattr(rollout, field)[first : first + rows, column])
    return {env: np.concatenate(parts) for env, parts in out.items()}


def pendulum_step(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Gymnasium's Pendulum physics from an obs: the next obs (independent of the backend)."""
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    env.state = np.array([np.arctan2(obs[1], obs[0]), obs[2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's warning about the state set by hand is not ours
        return env.step(np.clip(action, -2.0, 2.0))[0].astype(np.float32)


# --- exact accounting, carry-over --------------------------------------------------------------------


@pytest.mark.parametrize(("workers", "envs", "batch_size"), [(4, 1, 2), (2, 2, 2), (4, 1, 1)])
def test_exact_step_counts_over_requests_in_a_row_with_every_env_present(workers, envs, batch_size):
    sizes = [64, 256, 128, 64, 256]
    with sampling(workers, envs, batch_size) as backend:
        collected = [(backend.collect(size), backend.sampler.last_layout) for size in sizes]
        carried = backend.sampler.rollouts.held
        description = backend.describe()
    assert description["mode"] == "async" and description["batch_size"] == batch_size
    n = workers * envs
    for (batch, layout), size in zip(collected, sizes, strict=True):
        rollout = batch.rollout
        assert rollout.num_steps == size and rollout.rewards.shape == (size // n, n)
        counts = per_env(layout, n)
        assert counts.sum() == size and (counts > 0).all()  # every env appears
        # The figures: per worker its stepping and bytes, adding up to the aggregates.
        assert len(batch.workers) == workers and all(share.compute_s > 0 and share.bytes > 0 for share in batch.workers)
        assert batch.transfer_bytes == sum(share.bytes for share in batch.workers)
        assert batch.worker_compute_s == max(share.compute_s for share in batch.workers)
        assert batch.transfer_s > 0 and batch.sample_env_s > 0 and batch.sample_inference_s > 0
    assert carried < n  # fewer than num_envs steps beyond the last request


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_slow_env_contributes_fewer_transitions_than_each_fast_env(batch_size):
    """Causal, on counts: the learner acts on whichever envs are ready, so the env that sleeps ten times longer
    per step is stepped fewer times (under lockstep every env has exactly the same count)."""
    with sampling(batch_size=batch_size, env=HETEROGENEOUS) as backend:
        collected = collect(backend, [400, 400, 400])
    counts = sum(per_env(layout, 4) for _, layout in collected)
    fast = np.delete(counts, SLOW_ENV)
    assert counts[SLOW_ENV] < fast.min(), counts


# --- semantics: each env's trajectory, GAE ------------------------------------------------------------


def test_each_env_continues_its_own_trajectory_as_lockstep_sampling_does():
    """Env i's stream (its pieces in stream order, over requests with carry-over) is the trajectory lockstep
    central inference gives env i with the same seed and weights: its noise is drawn per env, its episodes reset
    in the same step; and within a piece obs[t + 1] follows from obs[t] by Pendulum's physics, or begins the
    next episode."""
    with sampling(batch_size=1, env=HETEROGENEOUS) as backend:
        collected = collect(backend, [400, 800, 400])
    with sampling(batch_size=None) as backend:
        lockstep = collect(backend, [4 * 700])
    assert sum(len(layout[j]) > 1 for _, layout in collected for j in range(4)) > 0, "expected some column filled by a cut"
    for field in ("obs", "actions", "rewards", "terminations", "log_probs", "values"):
        ours, theirs = streams(collected, field), streams(lockstep, field)
        for env in range(4):
            assert len(ours[env]) <= len(theirs[env])
            np.testing.assert_allclose(ours[env], theirs[env][: len(ours[env])], atol=1e-4, err_msg=f"{field}, env {env}")
    episode_ends = 0
    for rollout, layout in collected:
        for column, _, _, first, rows in pieces(layout):
            for t in range(first, first + rows - 1):
                expected = pendulum_step(rollout.obs[t, column], rollout.actions[t, column])
                if rollout.truncations[t, column]:  # Pendulum's time limit, inside a piece: the next episode begins
                    episode_ends += 1
                    assert not np.allclose(rollout.obs[t + 1, column], expected, atol=1e-3)
                else:
                    np.testing.assert_allclose(rollout.obs[t + 1, column], expected, atol=1e-4)
    assert episode_ends > 0, "the fast envs should have passed step 200"


def test_gae_on_the_packed_async_rollout_equals_gae_per_env_piece_by_hand():
    """Each piece of an env's stream computed alone: its end (and a time limit inside it) bootstrapped from V(next
    obs), the next obs from Pendulum's physics, not from the backend's final values."""
    gamma, lam = 0.99, 0.95
    with sampling(batch_size=1, env=HETEROGENEOUS) as backend:
        collected = collect(backend, [400, 400, 400])
    value = InferencePolicy(POLICY)
    value.load_flat(weights(), 0)
    packed_with_cut = 0
    for rollout, layout in collected:
        advantages, _ = compute_gae(rollout, gamma, lam)
        for column, _, _, first, rows in pieces(layout):
            packed_with_cut += rows < rollout.rewards.shape[0]
            r = rollout.rewards[first : first + rows, column].astype(np.float64)
            v = rollout.values[first : first + rows, column].astype(np.float64)
            done = rollout.terminations[first : first + rows, column]
            expected, running = np.zeros(rows), 0.0
            for i in reversed(range(rows)):
                t = first + i
                time_limit = i < rows - 1 and rollout.truncations[t, column]  # inside a piece only an episode's end
                if done[i]:
                    next_value, carry = 0.0, 0.0
                elif time_limit or i == rows - 1:
                    next_obs = pendulum_step(rollout.obs[t, column], rollout.actions[t, column])
                    next_value, carry = float(value.value(next_obs[None])[0]), 0.0
                else:
                    next_value, carry = v[i + 1], running
                running = r[i] + gamma * next_value - v[i] + gamma * lam * carry
                expected[i] = running
            np.testing.assert_allclose(advantages[first : first + rows, column], expected, atol=1e-3)
    assert packed_with_cut > 0


# --- lost workers ----------------------------------------------------------------------------------------


def test_a_worker_killed_mid_fragment_is_detected_not_waited_on():
    with sampling(batch_size=2, env=HETEROGENEOUS, timeout_s=30) as backend:
        backend.collect(64)
        victim = backend.describe()["placement"][1]["pid"]
        # Enough steps that the fragment is still being sampled when the kill lands (a slow env sleeps 5 ms a step).
        timer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
        timer.start()
        try:
            with pytest.raises(WorkerError, match=r"worker 1 .*(died|is gone)") as caught:
                backend.collect(4 * 20_000)
        finally:
            timer.cancel()
        assert "within" not in str(caught.value)  # found by its death, not by the deadline


def test_a_hung_worker_fails_the_case_within_the_timeout():
    with sampling(batch_size=1, timeout_s=60) as backend:
        backend.collect(64)
        # Only the hang gets the short deadline: starting the workers (a fork, imports, the envs) took over 2 s on a
        # loaded 2-core machine, and that is no hang.
        backend.options = dataclasses.replace(backend.options, timeout_s=2.0)
        victim = backend.describe()["placement"][2]["pid"]
        os.kill(victim, signal.SIGSTOP)
        try:
            with pytest.raises(WorkerError, match=r"worker 2 \(pid \d+\) sent no 'ok' within 2 s"):
                backend.collect(4 * 20_000)
        finally:
            os.kill(victim, signal.SIGCONT)


# --- refusals at suite load --------------------------------------------------------------------------------

SUITE = """
[suite]
name = "t"
[ppo]
preset = "report"
steps_per_iteration = 64
[measure]
iterations = 1
[[cases]]
backend = "multiprocessing"
"""


def test_an_async_central_case_loads(tmp_path):
    (tmp_path / "s.toml").write_text(
        SUITE + 'inference = "central"\nworkers = 4\nenvs_per_worker = 2\noptions = { batch_size = 4 }\n'
    )
    (case,) = load_suite(tmp_path / "s.toml").cases
    assert case.backend.settings.batch_size == 4


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ('inference = "worker"\nworkers = 4\noptions = { batch_size = 2 }', 'options.batch_size needs inference = "central"'),
        ('inference = "central"\nworkers = 3\nenvs_per_worker = 2\noptions = { batch_size = 3 }',
         "options.batch_size 3 is not a multiple of envs_per_worker 2: a worker's envs step together"),
        ('inference = "central"\nworkers = 4\noptions = { batch_size = 3 }', "options.batch_size 3 does not divide the 4 envs"),
        ('inference = "central"\nworkers = 4\noptions = { batch_size = 8 }', "options.batch_size 8 does not divide the 4 envs"),
    ],
)  # fmt: skip
def test_refusals_are_one_line_at_suite_load(tmp_path, case, message):
    (tmp_path / "s.toml").write_text(SUITE + case + "\n")
    with pytest.raises(HarnessError, match=message) as error:
        load_suite(tmp_path / "s.toml")
    assert "\n" not in str(error.value)
