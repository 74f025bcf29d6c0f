"""Any gymnasium env a user brings: supported spaces, their own class by entry point, refusals.

The spaces an env has decide the policy (`describe_env`); an env the PPO core cannot use is refused
at suite load, in one line, before any process starts; a user's own env runs end to end through the
CLI on every kind of backend; and GAE's terminated-vs-truncated rule holds on rollouts a real
multi-process backend sampled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from algorithms.gae import compute_gae
from backends import create_backend
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvError, EnvSpaces, EnvSpec, describe_env
from harness.errors import HarnessError
from harness.suite import load_suite
from tests.conftest import REPO

LINE_WALK = "tests.custom_envs:LineWalk"
LINE_WALK_KWARGS = "length = 4, max_episode_steps = 30"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (EnvSpec(), EnvSpaces(3, 1, "gaussian")),
        (EnvSpec("CartPole-v1"), EnvSpaces(4, 2, "categorical")),
        (EnvSpec("FrozenLake-v1"), EnvSpaces(16, 4, "categorical")),  # a Discrete observation, one-hot
        (EnvSpec(LINE_WALK, {"length": 3}), EnvSpaces(2, 3, "categorical")),  # a class by entry point
    ],
    ids=["Pendulum", "CartPole", "FrozenLake", "LineWalk"],
)
def test_supported_spaces_choose_the_policy(env, expected):
    assert describe_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (EnvSpec("tests.custom_envs:PixelWalk"), "observation space Box(0, 255, (16, 16, 3), uint8) is not supported"),
        (EnvSpec("Blackjack-v1"), "observation space Tuple(Discrete(32), Discrete(11), Discrete(2)) is not supported"),
        (EnvSpec("no_such_package.envs:Sim"), "cannot import no_such_package.envs"),
        (EnvSpec("tests.custom_envs:NoSuchSim"), "tests.custom_envs has no env class or registered id 'NoSuchSim'"),
        (EnvSpec("CartPole-v1", {"gravity": 1.0}), "gymnasium.make failed"),
        (EnvSpec("CartPol-v1"), "'CartPol-v1' is not a registered gymnasium env id"),
    ],
    ids=["image", "tuple", "no-module", "no-class", "bad-kwargs", "typo"],
)
def test_unusable_envs_are_one_line_naming_the_cause(env, message):
    with pytest.raises(EnvError) as error:
        describe_env(env)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_discrete_actions_reach_the_env_shifted_by_the_spaces_start():
    """LineWalk's actions are -1, 0, 1 (it raises on anything else): the Categorical's 0..2 must be shifted."""
    from backends.sampling import EnvBlock

    block = EnvBlock(EnvSpec(LINE_WALK), np.arange(2), seed=0)
    try:
        block.reset()
        before = [env.unwrapped.position for env in block.vec.envs]
        block.step(np.array([0, 2]))
        after = [env.unwrapped.position for env in block.vec.envs]
    finally:
        block.close()
    assert after[0] == max(before[0] - 1, -5) and after[1] == min(before[1] + 1, 5)


SUITE = """
[suite]
name = "own-env"
baseline = "vecenv"
[env]
id = "{env_id}"
kwargs = {{ {kwargs} }}
[ppo]
preset = "report"
steps_per_iteration = 64
epochs = 1
hidden_sizes = [16, 16]
[measure]
warmup_iterations = 0
iterations = 2
repeats = 1
[[cases]]
backend = "vecenv"
envs_per_worker = 2
{more_cases}
"""

REMOTE_CASES = """
[[cases]]
backend = "multiprocessing"
workers = 2
[[cases]]
backend = "ray_local"
workers = 2
"""


def run_cli(tmp_path: Path, text: str, timeout: float) -> subprocess.CompletedProcess:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("env_id", ["tests.custom_envs:PixelWalk", "Blackjack-v1"])
def test_an_unsupported_env_stops_the_cli_before_anything_starts(tmp_path, env_id):
    proc = run_cli(tmp_path, SUITE.format(env_id=env_id, kwargs="", more_cases=REMOTE_CASES), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is not supported" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()  # no run folder: no case process, so no worker, ever started


def test_a_suite_names_its_own_env_by_entry_point_and_kwargs(tmp_path):
    with pytest.raises(HarnessError, match=r"\[\[cases\]\] #1 env: .*gymnasium.make failed"):
        load_suite_text(
            tmp_path, SUITE.format(env_id=LINE_WALK, kwargs=LINE_WALK_KWARGS, more_cases="env = { kwargs = { lenght = 4 } }")
        )
    suite = load_suite_text(tmp_path, SUITE.format(env_id=LINE_WALK, kwargs=LINE_WALK_KWARGS, more_cases=""))
    assert suite.cases[0].env == EnvSpec(LINE_WALK, {"length": 4, "max_episode_steps": 30})


def load_suite_text(tmp_path: Path, text: str):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return load_suite(path)


@pytest.mark.skipif(not __import__("backends").available("ray_local"), reason="needs ray")
@pytest.mark.slow
def test_a_users_own_env_runs_end_to_end_on_every_kind_of_backend(tmp_path):
    proc = run_cli(tmp_path, SUITE.format(env_id=LINE_WALK, kwargs=LINE_WALK_KWARGS, more_cases=REMOTE_CASES), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "out").iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert {case["backend"]["name"] for case in run["cases"]} == {"vecenv", "multiprocessing", "ray_local"}
    for case in run["cases"]:
        assert case["env"] == {"id": LINE_WALK, "kwargs": {"length": 4, "max_episode_steps": 30},
                               "step_cost_ms": 0.0, "step_cost_kind": "sleep", "step_cost_distribution": "constant",
                               "step_cost_cv": 0.0, "slow_env_fraction": 0.0, "slow_env_factor": 1.0,
                               "reset_cost_ms": 0.0}  # fmt: skip
        (result,) = case["runs"]
        assert result["status"] == "ok", result.get("error")
        assert sum(it["steps"] for it in result["iterations"]) == 2 * 64
    assert "ray_local · 2w×1e" in (run_dir / "report.md").read_text()


def test_gae_on_a_real_backends_rollout_bootstraps_truncations_and_not_terminations():
    """LineWalk episodes end both ways within 6 steps (reaching 0 terminates, the limit truncates), sampled
    by worker processes; GAE with lambda 0 leaves each episode's last step as a one-step TD error."""
    env = EnvSpec(LINE_WALK, {"length": 5, "max_episode_steps": 6})
    policy = PolicySpec(2, 3, (16, 16), "categorical")
    backend = create_backend(BackendSpec("multiprocessing", 2, 2, options={"timeout_s": 60}))
    try:
        backend.start(env, policy, seed=11)
        backend.set_weights(np.random.default_rng(0).normal(0, 0.5, policy.num_params).astype(np.float32), 0)
        rollout = backend.collect(4 * 40).rollout
    finally:
        backend.close()
    terminated, truncated = rollout.terminations, rollout.truncations & ~rollout.terminations
    assert terminated.any() and truncated.any(), "the fragment should end episodes both ways"
    # The sampler stored V(last observation) exactly where an episode was truncated, and nowhere else.
    assert np.all(rollout.final_values[~truncated] == 0) and np.all(rollout.final_values[truncated] != 0)
    gamma = 0.9
    advantages, returns = compute_gae(rollout, gamma, gae_lambda=0.0)
    rewards, values = rollout.rewards, rollout.values
    np.testing.assert_allclose(advantages[terminated], (rewards - values)[terminated], rtol=1e-6)
    np.testing.assert_allclose(advantages[truncated], (rewards + gamma * rollout.final_values - values)[truncated], rtol=1e-6)
    # Inside episodes, the next step's value: the same recursion, written per env without vectorising.
    for env_index in range(rollout.rewards.shape[1]):
        for t in range(len(rewards) - 1):
            if not (rollout.terminations[t, env_index] or rollout.truncations[t, env_index]):
                expected = rewards[t, env_index] + gamma * values[t + 1, env_index] - values[t, env_index]
                assert advantages[t, env_index] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(returns, advantages + values)
