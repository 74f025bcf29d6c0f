"""`backends.streams` alone: how `pack` lays per-env streams into columns, and what `StreamRollouts` makes of
them (cuts bootstrapped, episodes listed once, the surplus carried over), on hand-made transitions."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.inference import InferencePolicy
from backends.base import PolicySpec
from backends.streams import StreamRollouts, pack

POLICY = PolicySpec(3, 1, (8, 8))


def test_equal_streams_are_one_env_per_column():
    assert pack([3, 3, 3], 3) == [[(0, 0, 3)], [(1, 0, 3)], [(2, 0, 3)]]


def test_short_columns_take_the_surplus_of_other_envs_in_env_order():
    # env 2 is short by 2: its column takes env 0's surplus; env 1's surplus of 1 is left to carry over.
    assert pack([5, 4, 1], 3) == [[(0, 0, 3)], [(1, 0, 3)], [(2, 0, 1), (0, 3, 5)]]


def test_too_few_transitions_are_refused():
    with pytest.raises(ValueError, match="5 transitions cannot fill 2 columns of 3"):
        pack([4, 1], 3)


def test_stream_rollouts_cut_episodes_and_carry_over():
    policy = InferencePolicy(POLICY)
    policy.load_flat(np.random.default_rng(0).normal(0, 0.3, POLICY.num_params).astype(np.float32), 3)
    rollouts = StreamRollouts(2, 3, POLICY.action)
    obs = lambda x: np.full(3, x, np.float32)  # noqa: E731 - a tiny helper
    # env 0: four steps, the second ends an episode by its time limit; env 1: one step.
    for step in range(4):
        rollouts.add(0, obs(step), np.zeros(1, np.float32), 0.0, 0.0, 1.0, False, step == 1, obs(10 + step))
    rollouts.add(1, obs(20), np.zeros(1, np.float32), 0.0, 0.0, 2.0, False, False, obs(21))
    rollout = rollouts.rollout(2, policy)
    assert rollouts.last_layout == [[(0, 0, 2)], [(1, 0, 1), (0, 2, 3)]]
    assert rollouts.held == 1 and rollouts.stream(0).obs[:, 0].tolist() == [3.0]  # env 0's fourth step carries over
    assert rollout.truncations.tolist() == [[False, True], [True, False]]  # env 0's time limit; the cut after env 1
    value = lambda x: float(policy.value(obs(x)[None])[0])  # noqa: E731
    assert rollout.final_values[1, 0] == pytest.approx(value(11))  # the ended episode's last obs
    assert rollout.final_values[0, 1] == pytest.approx(value(21))  # the cut: V(env 1's next obs)
    assert rollout.last_values.tolist() == pytest.approx([value(11), value(12)])
    assert rollout.episode_lengths.tolist() == [2] and rollout.episode_returns.tolist() == [2.0]
    assert rollout.policy_version == 3


def test_a_block_of_envs_is_the_same_as_their_transitions_one_by_one():
    """One `add` per step of several envs (how samplers add) or one per transition: the same rollout, bit for bit."""
    policy = InferencePolicy(POLICY)
    policy.load_flat(np.random.default_rng(0).normal(0, 0.3, POLICY.num_params).astype(np.float32), 0)
    rng = np.random.default_rng(1)
    steps = []  # per step: the envs stepped and their fields, some ending episodes
    for _ in range(12):
        envs = np.flatnonzero(rng.random(3) < 0.7)
        k = len(envs)
        steps.append((envs, rng.normal(size=(k, 3)).astype(np.float32), rng.normal(size=(k, 1)).astype(np.float32),
                      rng.normal(size=k).astype(np.float32), rng.normal(size=k).astype(np.float32), rng.normal(size=k),
                      rng.random(k) < 0.1, rng.random(k) < 0.2, rng.normal(size=(k, 3)).astype(np.float32)))  # fmt: skip
    blocks, single = StreamRollouts(3, 3, POLICY.action), StreamRollouts(3, 3, POLICY.action)
    for step in steps:
        blocks.add(*step)
        for k in range(len(step[0])):
            single.add(*(field[k] for field in step))
    size = blocks.held // 3 - 1  # most of the streams, then one more step each from what carried over
    for ours, theirs in zip((blocks.rollout(size, policy), blocks.rollout(1, policy)),
                            (single.rollout(size, policy), single.rollout(1, policy)), strict=True):  # fmt: skip
        for name, value in vars(ours).items():
            np.testing.assert_array_equal(value, vars(theirs)[name], err_msg=name)
    assert blocks.held == single.held and blocks.last_layout == single.last_layout


def test_a_block_takes_each_env_once():
    rollouts = StreamRollouts(2, 3, POLICY.action)
    with pytest.raises(ValueError, match="one transition per env"):
        rollouts.add(
            [1, 1], np.zeros((2, 3)), np.zeros((2, 1)), [0, 0], [0, 0], [1, 1], [False] * 2, [False] * 2, np.zeros((2, 3))
        )
