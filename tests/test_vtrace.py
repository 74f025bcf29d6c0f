"""V-trace against a hand-computed case, the paper's sum form, and GAE on a fresh batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from algorithms.appo import APPOLearner
from algorithms.base import LearnerSetup
from algorithms.config import APPOConfig, PPOConfig
from algorithms.gae import compute_gae
from algorithms.policy import PolicySpec
from algorithms.ppo_gradients import log_probs_and_values
from algorithms.vtrace import VTraceClips, vtrace
from tests.test_gae import CASE, make_rollout
from tests.test_ppo_update import on_policy_rollout

# Columns are envs; gamma 0.5, lambda 1, every clip at 1.
# Env 0: pi/mu = 2, 0.5, 1 (so rho = c = 1, 0.5, 1); truncated at t=1 (last observation worth 2.0).
#   t2: delta = 1 (1 + .5*1.0 - .5) = 1.0;       v = .5 + 1.0 = 1.5;     A = 1 + .5*1.0 - .5 = 1.0 (v_3 = last value)
#   t1: delta = .5 (1 + .5*2.0 - .5) = .75;      v = .5 + .75 = 1.25;    A = .5 (1 + .5*2.0 - .5) = .75 (no carry)
#   t0: delta = 1 (1 + .5*.5 - .5) = .75;        v = .5 + .75 + .5*1*(1.25 - .5) = 1.625;  A = 1 + .5*1.25 - .5 = 1.125
# Env 1: pi/mu = 1, 1, 3 (rho = 1 throughout: capped); terminates at t=0.
#   t2: delta = 0 + .5*4.0 - 1 = 1.0;            v = 2.0;                A = 1.0
#   t1: delta = 2 + .5*1.0 - 1 = 1.5;            v = 1 + 1.5 + .5*(2 - 1) = 3.0;           A = 2 + .5*2.0 - 1 = 2.0
#   t0: delta = 0 + 0 - 1 = -1.0;                v = 0.0;                A = -1.0 (terminated: next value 0)
LOG_RATIO = np.log([[2.0, 1.0], [0.5, 1.0], [1.0, 3.0]])
EXPECTED_TARGETS = np.array([[1.625, 0.0], [1.25, 3.0], [1.5, 2.0]], np.float32)
EXPECTED_ADVANTAGES = np.array([[1.125, -1.0], [0.75, 2.0], [1.0, 1.0]], np.float32)


def _vtrace(rollout, log_ratio, gamma, trace_lambda=1.0, clips=None):
    fields = ("rewards", "values", "terminations", "truncations", "final_values", "last_values")
    return vtrace(log_ratio, *(getattr(rollout, f) for f in fields), gamma, trace_lambda, clips or VTraceClips())


def test_vtrace_matches_hand_computation():
    targets, advantages = _vtrace(make_rollout(**CASE), LOG_RATIO, gamma=0.5)
    np.testing.assert_allclose(targets, EXPECTED_TARGETS, rtol=1e-6)
    np.testing.assert_allclose(advantages, EXPECTED_ADVANTAGES, rtol=1e-6)
    assert targets.dtype == np.float32 and advantages.dtype == np.float32


def test_vtrace_matches_the_papers_sum_form():
    """Equation (1) of Espeholt et al.: v_s = V(x_s) + sum_t gamma^(t-s) (prod_{i<t} c_i) delta_t, one long episode."""
    rng = np.random.default_rng(0)
    steps, gamma, lam, clips = 7, 0.9, 0.8, VTraceClips(rho=1.2, pg_rho=0.9, c=0.7)
    log_ratio = rng.normal(0, 0.6, (steps, 1))
    rewards, values = rng.normal(size=(steps, 1)).astype(np.float32), rng.normal(size=(steps, 1)).astype(np.float32)
    last = np.array([0.3], np.float32)
    no = np.zeros((steps, 1), bool)
    targets, advantages = vtrace(log_ratio, rewards, values, no, no, np.zeros_like(values), last, gamma, lam, clips)

    ratio = np.exp(log_ratio[:, 0])
    rho, c, pg = np.minimum(1.2, ratio), lam * np.minimum(0.7, ratio), np.minimum(0.9, ratio)
    v = np.append(values[:, 0].astype(np.float64), last[0])
    delta = rho * (rewards[:, 0] + gamma * v[1:] - v[:-1])
    expected = [v[s] + sum(gamma ** (t - s) * np.prod(c[s:t]) * delta[t] for t in range(s, steps)) for s in range(steps)]
    next_targets = np.append(expected[1:], last[0])
    np.testing.assert_allclose(targets[:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(advantages[:, 0], pg * (rewards[:, 0] + gamma * next_targets - v[:-1]), rtol=1e-5, atol=1e-6)


def test_on_a_fresh_batch_the_targets_are_gaes_returns():
    """pi = mu and clips >= 1: v_t - V(x_t) obeys GAE's recursion with lambda, boundaries included."""
    rollout = make_rollout(**CASE)
    targets, _ = _vtrace(rollout, np.zeros((3, 2)), gamma=0.5, trace_lambda=0.5)
    _, returns = compute_gae(rollout, gamma=0.5, gae_lambda=0.5)
    np.testing.assert_allclose(targets, returns, rtol=1e-6)


def test_a_lower_c_clip_shortens_the_trace_and_leaves_one_step_targets_alone():
    rollout = make_rollout(**CASE)
    full, _ = _vtrace(rollout, LOG_RATIO, gamma=0.5)
    cut, _ = _vtrace(rollout, LOG_RATIO, gamma=0.5, clips=VTraceClips(c=0.0))
    np.testing.assert_allclose([cut[0, 0], cut[1, 1]], [0.5 + 0.75, 1 + 1.5])  # delta only, nothing carried back
    np.testing.assert_allclose([cut[1, 0], *cut[2]], [full[1, 0], *full[2]])  # an episode's end, the fragment's end


# --- the APPO learner: V-trace from its own critic and policy, PPO's update -------------------------


def _appo_and_batch(seed: int = 0, clip_against: str = "proximal"):
    spec = PolicySpec(3, 1, (32, 32))
    config = APPOConfig(
        hidden_sizes=(32, 32), steps_per_iteration=256, epochs=2, trace_lambda=0.9, gamma=0.95, clip_against=clip_against
    )
    rollout = on_policy_rollout(spec, PPOConfig(hidden_sizes=(32, 32), steps_per_iteration=256), seed=seed)
    learner = APPOLearner(LearnerSetup(config, spec, seed=seed, max_policy_lag=1))
    return learner, rollout


def test_appo_on_a_fresh_batch_targets_are_gaes_returns_from_its_own_critic():
    """Sampled by the learner's own weights: V-trace's targets are GAE's returns (lambda = trace_lambda). The values
    come from the learner's critic, not the rollout's column: zeroing that column changes nothing."""
    learner, rollout = _appo_and_batch()
    advantages, targets = learner.advantages(rollout)
    _, returns = compute_gae(rollout, gamma=0.95, gae_lambda=0.9)
    np.testing.assert_allclose(targets, returns, rtol=1e-4, atol=1e-4)
    blind = dataclasses.replace(rollout, values=np.zeros_like(rollout.values))
    again_advantages, again_targets = learner.advantages(blind)
    np.testing.assert_array_equal(again_targets, targets)
    np.testing.assert_array_equal(again_advantages, advantages)


def test_appo_weighs_a_stale_batch_by_the_truncated_ratio():
    """After one update the same batch is a version old: its targets move, by exactly V-trace of the new log-ratio."""
    learner, rollout = _appo_and_batch(seed=1)
    fresh, _ = learner.advantages(rollout)
    stats = learner.train(rollout)
    assert learner.version == 1 and stats["optimizer_steps"] == 2 * 256 / 64 and "vtrace_s" in stats
    stale = dataclasses.replace(rollout, policy_version=0)
    advantages, targets = learner.advantages(stale)
    assert not np.allclose(advantages, fresh)
    obs = torch.from_numpy(rollout.obs.reshape(-1, 3))
    log_prob, values = log_probs_and_values(
        learner.action, learner.policy.activation, learner.params, obs, torch.from_numpy(rollout.actions.reshape(-1, 1))
    )
    log_ratio = log_prob.numpy().reshape(rollout.rewards.shape) - rollout.log_probs
    assert np.abs(log_ratio).max() > 1e-3  # the policy moved
    fields = ("rewards", "terminations", "truncations", "final_values", "last_values")
    r, term, trunc, final, last = (getattr(rollout, f) for f in fields)
    expected_targets, expected_advantages = vtrace(
        log_ratio, r, values.numpy().reshape(r.shape), term, trunc, final, last, 0.95, 0.9
    )
    np.testing.assert_allclose(targets, expected_targets, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(advantages, expected_advantages, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clip_against", ["proximal", "behaviour"])
def test_appo_clips_against_the_policy_it_is_told(clip_against):
    """`proximal` (RLlib's APPO: its target network) or `behaviour` (PPO's anchor). The first minibatch of an update
    on a stale batch shows which log-probabilities the ratio is taken against."""
    learner, rollout = _appo_and_batch(seed=2, clip_against=clip_against)
    learner.train(rollout)  # the batch is now a version old
    stale = dataclasses.replace(rollout, policy_version=0)
    seen = []
    step = learner.gradient_step

    def recording(params, obs, actions, old_log_probs, *rest):
        if not seen:
            current, _ = log_probs_and_values(learner.action, learner.policy.activation, params, obs, actions)
            seen.append((obs.clone(), old_log_probs.clone(), current))
        return step(params, obs, actions, old_log_probs, *rest)

    learner.gradient_step = recording
    learner.train(stale)
    obs, anchor, current = seen[0]  # `current`: before the first step, the policy at the update's start
    rows = {row.tobytes(): i for i, row in enumerate(rollout.obs.reshape(-1, 3))}  # the shuffled samples' places
    behaviour = torch.from_numpy(rollout.log_probs.reshape(-1)[[rows[row.tobytes()] for row in obs.numpy()]])
    assert (current - behaviour).abs().max() > 1e-3  # the two candidates differ
    torch.testing.assert_close(anchor, current if clip_against == "proximal" else behaviour)
