"""`collect(2048)` per backend and inference mode, against the env-only ceiling.

All sit in one group, so one table shows each backend beside the ceiling: 8
Pendulum envs stepped with random actions and no policy at all, which no
sampling backend can beat on one core. Local process backends run 2 workers x
4 envs, the same 8 envs as `vecenv`; `serial` is the report's single-process
PPO (one env, one policy call per step), the baseline of every speedup.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import BackendSpec
from backends.sampling import EnvBlock
from benchmarks.common import ENV, POLICY, SEED, STEPS, started_backend

GROUP = "collect-2048"
CEILING_ENVS = 8
TIMEOUT = {"timeout_s": 60}

# (backend, workers, envs per worker, inference)
CONFIGS = [
    ("serial", 1, 1, "worker"),
    ("vecenv", 1, 8, "worker"),
    ("multiprocessing", 2, 4, "worker"),
    ("multiprocessing", 2, 4, "central"),
    ("ray_local", 2, 4, "worker"),
    ("ray_local", 2, 4, "central"),
    ("ray_cluster", 2, 4, "worker"),
    ("ray_cluster", 2, 4, "central"),
    # The samplers people choose between, run as themselves (issue 21): the same 8 envs, central inference.
    ("gym_async", 1, 8, "central"),
    ("sb3_subproc", 1, 8, "central"),
    ("envpool", 1, 8, "central"),
]
# Rounds per config: a round of `serial` or Ray central inference takes about half a second here.
ROUNDS = 5


def _param(config: tuple[str, int, int, str]):
    name, workers, envs, inference = config
    marks = [pytest.mark.ray_cluster] if name == "ray_cluster" else []
    return pytest.param(config, id=f"{name}-w{workers}xe{envs}-{inference}", marks=marks)


@pytest.mark.benchmark(group=GROUP)
def test_env_only_ceiling(benchmark, record_rate):
    """2048 steps of 8 envs (256 vector steps), pre-drawn random actions, same-step autoreset, no policy."""
    block = EnvBlock(ENV, np.arange(CEILING_ENVS), SEED)
    try:
        block.reset()
        low, high = block.action_space.low, block.action_space.high
        actions = np.random.default_rng(SEED).uniform(low, high, (STEPS // CEILING_ENVS, CEILING_ENVS, POLICY.act_dim))

        def step_all() -> float:
            total = 0.0
            for step_actions in actions:
                total += float(block.step(step_actions.astype(np.float32)).rewards.sum())
            return total

        total_reward = benchmark.pedantic(step_all, rounds=3 * ROUNDS, warmup_rounds=1)
    finally:
        block.close()
    record_rate(STEPS)
    assert -16.3 * STEPS <= total_reward <= 0  # Pendulum's reward lies in [-16.27, 0]


@pytest.fixture(scope="module", params=[_param(c) for c in CONFIGS])
def backend(request):
    """Started once per config, outside the timed region, and closed (Ray shut down) before the next
    starts: one fixture for all configs, so that two Ray backends never overlap in this process."""
    name, workers, envs, inference = request.param
    options = {} if workers == 1 else dict(TIMEOUT)
    if name == "ray_cluster":
        options["address"] = request.getfixturevalue("ray_cluster_address")
    yield from started_backend(BackendSpec(name, workers, envs, inference, options))


@pytest.mark.benchmark(group=GROUP)
def test_collect(benchmark, record_rate, backend):
    collected = benchmark.pedantic(backend.collect, args=(STEPS,), rounds=ROUNDS, warmup_rounds=1)
    record_rate(STEPS)
    benchmark.extra_info |= {k: backend.describe()[k] for k in ("backend", "workers", "envs_per_worker", "inference")}
    rollout = collected.rollout
    num_envs = backend.spec.num_envs
    assert rollout.num_steps == STEPS and rollout.obs.shape == (STEPS // num_envs, num_envs, POLICY.obs_dim)
    assert rollout.policy_version == 0 and np.isfinite(rollout.rewards).all()
    np.testing.assert_array_equal(rollout.env_ids, np.arange(num_envs))  # every env once, in order
