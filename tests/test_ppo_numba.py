"""The numba kernel of the minibatch step (`algorithms/ppo_numba.py`, issue 24) against independent references.

Its gradient is checked against autograd in `tests/test_ppo_update.py` (with the torch kernel's), and one whole
update against the reference learner there. Here: its tanh against float64's, its clip and Adam against
`torch.nn.utils.clip_grad_norm_` and `torch.optim.Adam`, every step of two updates against the torch kernel's
from the same state, and the settings it refuses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from algorithms.base import LearnerSetup
from algorithms.config import PRESETS, PPOConfig
from algorithms.gae import compute_gae
from algorithms.policy import PolicySpec
from algorithms.ppo import PPOLearner
from algorithms.ppo_gradients import minibatch_gradients
from algorithms.ppo_numba import NumbaStep, clipped_adam, tanh
from tests.test_ppo_update import VARIANTS, on_policy_rollout


def test_tanh_is_within_3e_7_of_the_exact_value():
    values = np.concatenate([np.linspace(-10, 10, 200_001), [-1e30, -8.0, -7.9, 0.0, 1e-30, 7.9, 8.0, 1e30]])
    exact = np.tanh(values)  # float64
    got = np.array([tanh(np.float32(v)) for v in values], np.float64)
    assert np.abs(got - exact).max() < 3e-7
    assert tanh(np.float32(0.0)) == 0.0 and tanh(np.float32(-3.0)) == -tanh(np.float32(3.0))  # odd, exactly


@pytest.mark.parametrize("max_grad_norm", [0.5, 1e6], ids=["clipped", "unclipped"])
def test_clipped_adam_is_torch_adam_after_clip_grad_norm(max_grad_norm):
    rng = np.random.default_rng(0)
    start = rng.normal(0, 1, 1000).astype(np.float32)
    gradients = [rng.normal(0, 0.3, 1000).astype(np.float32) for _ in range(30)]
    parameter = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = torch.optim.Adam([parameter], lr=3e-4, betas=(0.9, 0.999), eps=1e-5)
    flat, exp_avg, exp_avg_sq = start.copy(), np.zeros_like(start), np.zeros_like(start)
    for step, gradient in enumerate(gradients, start=1):
        parameter.grad = torch.from_numpy(gradient.copy())
        torch.nn.utils.clip_grad_norm_([parameter], max_grad_norm)
        optimizer.step()
        clipped_adam(flat, gradient.copy(), exp_avg, exp_avg_sq, step, 3e-4, max_grad_norm)
    want = parameter.detach().numpy()
    assert np.abs(want - start).max() > 1e-3
    # Compared as movement: a wrong bias correction or eps changes early steps by percents. The weights are O(1), so
    # each sits within a float32 ulp or two (2.4e-7) of torch's, which the movement inherits.
    np.testing.assert_allclose(flat - start, want - start, rtol=1e-3, atol=5e-7)
    np.testing.assert_allclose(exp_avg, optimizer.state[parameter]["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["report", "branches", "relu-three-layers"])
def test_every_step_of_two_updates_matches_the_torch_kernel_from_the_same_state(variant):
    """Two whole updates are not compared here: a rounding difference of 1e-7 grows along a trajectory (measured on
    the report preset's second update: log_std apart by 18% of its movement, while every step from the same state
    agreed to 3e-7), so each step of the torch learner is taken again with the numba kernel from its state."""
    spec, config = VARIANTS[variant]
    config = config.replace(epochs=3)  # three epochs' steps per update, for time: what differs is the state
    rollout = on_policy_rollout(spec, config)
    advantages, returns = compute_gae(rollout, config.gamma, config.gae_lambda)
    learner = PPOLearner(LearnerSetup(config, spec, seed=3))
    kernel = NumbaStep(spec)
    torch_step, checked = learner._step, []

    def both(*minibatch: torch.Tensor):
        flat = learner.flat.numpy().copy()
        state = [t.numpy().copy() for t in (learner.adam_state[0][0], learner.adam_state[1][0])]
        step = int(learner.adam_state[2][0]) + 1
        gradient = np.zeros_like(flat)
        arrays = [np.ascontiguousarray(m.numpy()) for m in minibatch]
        log_ratio, value_error, _ = kernel.gradients(flat, gradient, *arrays, config.clip_range, config.value_coef,
                                                     config.entropy_coef)  # fmt: skip
        grads, want_log_ratio, want_value_error, _ = minibatch_gradients(
            spec.action, spec.activation, learner.params, *minibatch, config.clip_range, config.value_coef, config.entropy_coef
        )
        want = torch.cat([g.reshape(-1) for g in grads]).numpy()
        # The value head's gradient sums 64 terms of ~0.08 to ~0.003 once the critic fits: what rounding leaves of that
        # cancellation (measured up to 1.7e-6 in the report preset's second update) sets the absolute tolerance.
        np.testing.assert_allclose(gradient, want, rtol=1e-4, atol=5e-5 * np.abs(want).max())
        np.testing.assert_allclose(log_ratio, want_log_ratio.numpy(), rtol=0, atol=1e-5)
        # value - return, returns up to ~30: the difference inherits the float32 rounding of both (1e-6 of them).
        np.testing.assert_allclose(value_error, want_value_error.numpy(), rtol=0, atol=1e-5 * np.abs(arrays[4]).max())
        clipped_adam(flat, gradient, *state, step, learner.learning_rate, config.max_grad_norm)
        result = torch_step(*minibatch)
        checked.append(np.abs(flat - learner.flat.numpy()).max())
        return result

    learner._step = both
    for version in range(2):
        learner.update(dataclasses.replace(rollout, policy_version=version), advantages, returns)
    assert len(checked) == 2 * config.epochs * -(-config.steps_per_iteration // config.minibatch_size)
    # Each numba step lands where the torch step did, to float32 rounding of the weights (|w| < 2 here).
    assert max(checked) < 1e-6, max(checked)


def test_a_categorical_policy_or_compile_with_the_numba_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel 'numba' runs the gaussian policy only"):
        NumbaStep(PolicySpec(4, 2, (64, 64), "categorical"))
    with pytest.raises(ValueError, match="compile = true compiles the torch kernel"):
        PPOConfig(kernel="numba", compile=True)
    with pytest.raises(ValueError, match="unknown kernel 'jax'; one of torch, numba"):
        PRESETS["report"].replace(kernel="jax")
