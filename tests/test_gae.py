"""GAE against a hand-computed case with a truncated and a terminated episode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from algorithms.gae import compute_gae
from algorithms.rollout import Rollout


def make_rollout(rewards, values, terminations, truncations, final_values, last_values) -> Rollout:
    rewards = np.asarray(rewards, np.float32)
    steps, envs = rewards.shape
    return Rollout(
        obs=np.zeros((steps, envs, 3), np.float32),
        actions=np.zeros((steps, envs, 1), np.float32),
        log_probs=np.zeros((steps, envs), np.float32),
        values=np.asarray(values, np.float32),
        rewards=rewards,
        terminations=np.asarray(terminations, bool),
        truncations=np.asarray(truncations, bool),
        final_values=np.asarray(final_values, np.float32),
        last_values=np.asarray(last_values, np.float32),
        env_ids=np.arange(envs),
        episode_returns=np.zeros(0),
        episode_lengths=np.zeros(0, np.int64),
        episode_env_ids=np.zeros(0, np.int64),
        policy_version=0,
    )


# Columns are envs. Env 0 is truncated at t=1 (its last observation is worth 2.0);
# env 1 terminates at t=0. gamma = lambda = 0.5 keeps the arithmetic by hand:
#   env 0: t2: 1 + .5*1.0 - .5 = 1.0          (bootstrap from last_values)
#          t1: 1 + .5*2.0 - .5 = 1.5          (truncated: bootstrap from final value, no carry)
#          t0: 1 + .5*.5 - .5 + .25*1.5 = 1.125
#   env 1: t2: 0 + .5*4.0 - 1 = 1.0
#          t1: 2 + .5*1.0 - 1 + .25*1.0 = 1.75
#          t0: 0 + 0 - 1 = -1.0               (terminated: next value 0, no carry)
CASE = dict(
    rewards=[[1, 0], [1, 2], [1, 0]],
    values=[[0.5, 1.0], [0.5, 1.0], [0.5, 1.0]],
    terminations=[[False, True], [False, False], [False, False]],
    truncations=[[False, False], [True, False], [False, False]],
    final_values=[[0, 0], [2.0, 0], [0, 0]],
    last_values=[1.0, 4.0],
)
EXPECTED_ADVANTAGES = np.array([[1.125, -1.0], [1.5, 1.75], [1.0, 1.0]], np.float32)


def test_gae_matches_hand_computation():
    rollout = make_rollout(**CASE)
    advantages, returns = compute_gae(rollout, gamma=0.5, gae_lambda=0.5)
    np.testing.assert_allclose(advantages, EXPECTED_ADVANTAGES, rtol=1e-6)
    np.testing.assert_allclose(returns, EXPECTED_ADVANTAGES + rollout.values, rtol=1e-6)
    assert advantages.dtype == np.float32 and returns.dtype == np.float32


def test_truncation_bootstraps_but_termination_does_not():
    """Treating the truncation as a termination (CleanRL's shortcut) changes the answer."""
    as_terminal = make_rollout(**{**CASE, "terminations": [[False, True], [True, False], [False, False]]})
    advantages, _ = compute_gae(as_terminal, gamma=0.5, gae_lambda=0.5)
    assert advantages[1, 0] == pytest.approx(0.5)  # 1 + 0 - 0.5, instead of 1.5
    assert advantages[1, 0] != pytest.approx(EXPECTED_ADVANTAGES[1, 0])


def test_reward_scale_scales_rewards_only():
    rollout = make_rollout(**{**CASE, "values": np.zeros((3, 2)), "final_values": np.zeros((3, 2)), "last_values": [0, 0]})
    plain, _ = compute_gae(rollout, 0.5, 0.5)
    scaled, _ = compute_gae(rollout, 0.5, 0.5, reward_scale=0.1)
    np.testing.assert_allclose(scaled, 0.1 * plain, rtol=1e-6)


def test_parts_joined_in_time_are_the_whole_and_give_the_hand_computed_advantages():
    """The hand-computed case asked for in two parts (publish_every): steps 0-1 sampled with version 3, step 2 with
    version 4. Joined, the bootstrap is the last part's, the version the oldest, episodes by env then in time order,
    and GAE gives the hand-computed advantages: the first part's own last_values (here 9.0) play no part."""
    whole = make_rollout(**CASE)
    first = dataclasses.replace(
        make_rollout(**{k: v[:2] for k, v in CASE.items() if k != "last_values"}, last_values=[9.0, 9.0]),
        episode_returns=np.array([5.0, 1.0]), episode_lengths=np.array([7, 3]), episode_env_ids=np.array([1, 0]),
        policy_version=3,
    )  # fmt: skip
    second = dataclasses.replace(
        make_rollout(**{k: v[2:] for k, v in CASE.items() if k != "last_values"}, last_values=CASE["last_values"]),
        episode_returns=np.array([2.0]), episode_lengths=np.array([4]), episode_env_ids=np.array([0]), policy_version=4,
    )  # fmt: skip
    joined = Rollout.concat_time([first, second])
    for name in ("rewards", "values", "terminations", "truncations", "final_values", "last_values", "env_ids"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name), err_msg=name)
    assert joined.policy_version == 3 and joined.num_steps == 6
    np.testing.assert_array_equal(joined.episode_env_ids, [0, 0, 1])
    np.testing.assert_array_equal(joined.episode_returns, [1.0, 2.0, 5.0])  # env 0's first episode ended first
    np.testing.assert_array_equal(joined.episode_lengths, [3, 4, 7])
    advantages, _ = compute_gae(joined, gamma=0.5, gae_lambda=0.5)
    np.testing.assert_allclose(advantages, EXPECTED_ADVANTAGES)
    with pytest.raises(ValueError, match="same envs"):
        Rollout.concat_time([first, dataclasses.replace(second, env_ids=np.array([1, 0]))])
