"""Actor-critic, inference policy and flat weight buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms.base import LearnerSetup
from algorithms.config import PRESETS, PPOConfig
from algorithms.inference import InferencePolicy
from algorithms.model import ActorCritic, flatten_weights
from algorithms.policy import PolicySpec
from algorithms.ppo import PPOLearner
from backends.envs import EnvSpec
from backends.sampling import EnvBlock

# numpy's matrix products (OpenBLAS) and torch's (MKL, whose kernels differ by CPU) sum 256 float32
# products in different orders: measured up to 1.2e-6 of the outputs' scale over these cases (AMD EPYC,
# with and without MKL_CBWR=COMPATIBLE). The bound is 1e-5 of it.
NUMPY_VS_TORCH = 1e-5


def ppo_learner(config: PPOConfig = PRESETS["report"], seed: int = 0) -> PPOLearner:
    return PPOLearner(LearnerSetup(config, PolicySpec(3, 1, config.hidden_sizes, activation=config.activation), seed))


def test_flat_weights_round_trip_into_inference_policy():
    learner = ppo_learner()
    policy = InferencePolicy(PolicySpec(3, 1, (256, 256)))
    policy.load_flat(learner.weights(), learner.version)
    # The round trip itself is exact: the policy holds bit for bit the learner's weights ...
    np.testing.assert_array_equal(policy.flat, learner.weights())
    # ... and computes what a module built from the same seed computes: numpy's float32 forward pass
    # against torch's, within NUMPY_VS_TORCH of the outputs' scale (not of each tiny value).
    torch.manual_seed(0)
    reference = ActorCritic(PolicySpec(3, 1, (256, 256)))
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        mean, value = reference(torch.from_numpy(obs))
    for got, expected in ((policy.mode(obs), mean.numpy()), (policy.value(obs), value.numpy())):
        np.testing.assert_allclose(got, expected, rtol=NUMPY_VS_TORCH, atol=NUMPY_VS_TORCH * np.abs(expected).max())
    assert learner.weights().dtype == np.float32 and learner.weights().ndim == 1
    assert policy.num_params == 67_331  # (3*256+256) + (256*256+256) + 257 + 257 + 1


# The report's network, and others a suite may describe (issue 23): three uneven relu layers, one tanh layer.
NETWORKS = {"report": ((256, 256), "tanh"), "relu-three-layers": ((32, 48, 16), "relu"), "one-layer": ((40,), "tanh")}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize(("distribution", "act_dim"), [("gaussian", 1), ("gaussian", 3), ("categorical", 2), ("categorical", 5)])
def test_numpy_inference_matches_the_torch_model(distribution, act_dim, batch, network):
    """Random weights (not the small initial heads) and inputs: the numpy policy computes what the learner's
    torch model does, samples the distribution's own draw, and its log-probs are torch.distributions'."""
    hidden_sizes, activation = NETWORKS[network]
    spec = PolicySpec(4, act_dim, hidden_sizes, distribution, activation)
    rng = np.random.default_rng(batch + act_dim)
    weights = rng.normal(0, 0.1, spec.num_params).astype(np.float32)
    model = ActorCritic(spec)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(weights.copy()), model.parameters())
    policy = InferencePolicy(spec)
    policy.load_flat(weights, 3)
    obs = rng.normal(0, 2, (batch, 4)).astype(np.float32)
    noise = np.stack([spec.action.draw_noise(rng) for _ in range(batch)])
    actions, log_probs, values = policy.act(obs, noise)
    with torch.no_grad():
        head, value = model(torch.from_numpy(obs))
        dist, _ = model.distribution_at(torch.from_numpy(obs))
        expected_log_probs = dist.log_prob(torch.from_numpy(actions)).numpy()
    head, value = head.numpy(), value.numpy()
    for got, want in ((policy.forward(obs)[0], head), (values, value), (log_probs, expected_log_probs)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=NUMPY_VS_TORCH, atol=NUMPY_VS_TORCH * np.abs(want).max())
    if distribution == "gaussian":  # mean + std * noise, std from the buffer's log-std
        std = np.exp(weights[:act_dim])
        np.testing.assert_allclose(actions, head + std * noise, rtol=NUMPY_VS_TORCH, atol=NUMPY_VS_TORCH * np.abs(head).max())
        np.testing.assert_allclose(policy.mode(obs), head, rtol=NUMPY_VS_TORCH, atol=NUMPY_VS_TORCH * np.abs(head).max())
    else:  # Gumbel-max on torch's logits picks the same actions
        np.testing.assert_array_equal(actions, np.argmax(head - np.log(-np.log(noise)), axis=1))
        np.testing.assert_array_equal(policy.mode(obs), np.argmax(head, axis=1))
    assert policy.version == 3


def test_inference_policy_owns_its_weights():
    """A load copies into the policy's own arrays, made once: the broadcast buffer (a shared-memory slot the
    learner reuses) may change afterwards without changing the policy, and a second load replaces every value."""
    spec = PolicySpec(3, 1, (16, 16))
    policy = InferencePolicy(spec)
    arrays = (policy.flat, *(a for layer in policy.layers for a in layer), policy.w_heads, policy.b_heads)
    rng = np.random.default_rng(0)
    broadcast = rng.normal(size=spec.num_params).astype(np.float32)
    obs = np.ones((1, 3), np.float32)
    policy.load_flat(broadcast, 0)
    before = policy.value(obs)
    broadcast[:] = 0
    assert policy.value(obs) == before
    second = rng.normal(size=spec.num_params).astype(np.float32)
    policy.load_flat(second, 1)
    fresh = InferencePolicy(spec)
    fresh.load_flat(second, 1)
    assert policy.value(obs) == fresh.value(obs) != before and policy.version == 1
    now = (policy.flat, *(a for layer in policy.layers for a in layer), policy.w_heads, policy.b_heads)
    assert len(policy.layers) == 2 and all(a is b for a, b in zip(arrays, now, strict=True))
    assert all(np.shares_memory(bias, policy.flat) for _, bias in policy.layers)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("distribution", ["gaussian", "categorical"])
def test_layout_matches_the_torch_modules_parameter_order(distribution, network):
    hidden_sizes, activation = NETWORKS[network]
    spec = PolicySpec(5, 2, hidden_sizes, distribution, activation)
    model = ActorCritic(spec)
    assert spec.layout() == {name: tuple(p.shape) for name, p in model.named_parameters()}
    views = spec.unflatten(torch.from_numpy(flatten_weights(model)))
    for name, p in model.named_parameters():
        assert torch.equal(views[name], p.detach()), name


def test_layer_list_sizes_by_hand():
    """The buffer's length for a network worked out by hand: log-std 2; layers 5x16+16, 16x8+8, 8x4+4; the policy
    head 4x2+2 and the value head 4+1. A Categorical head has no log-std."""
    assert PolicySpec(5, 2, (16, 8, 4), activation="relu").num_params == 2 + 96 + 136 + 36 + 10 + 5 == 285
    assert PolicySpec(5, 2, (16, 8, 4), "categorical").num_params == 283
    assert PolicySpec(3, 1, [7]).hidden_sizes == (7,)  # a list from a suite is held as a tuple
    trunk = ActorCritic(PolicySpec(5, 2, (16, 8, 4), activation="relu")).trunk
    assert [type(m).__name__ for m in trunk] == ["Linear", "ReLU"] * 3


@pytest.mark.parametrize(
    ("hidden_sizes", "activation", "message"),
    [((), "tanh", "at least one layer"), ((8, 0), "tanh", "positive"), ((8, -3), "tanh", "positive"),
     ((8,), "sigmoid", "unknown activation")],
)  # fmt: skip
def test_bad_network_is_refused(hidden_sizes, activation, message):
    with pytest.raises(ValueError, match=message):
        PolicySpec(3, 1, hidden_sizes, activation=activation)


def test_load_rejects_wrong_size():
    with pytest.raises(ValueError, match="shape"):
        InferencePolicy(PolicySpec(3, 1, (64, 64))).load_flat(np.zeros(10, np.float32), 0)


def test_act_log_prob_matches_torch_normal():
    model = ActorCritic(PolicySpec(3, 2, (32, 32)), init_log_std=-0.3)
    policy = InferencePolicy(PolicySpec(3, 2, (32, 32)))
    policy.load_flat(flatten_weights(model), 0)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(4, 3)).astype(np.float32)
    noise = rng.normal(size=(4, 2)).astype(np.float32)
    actions, log_probs, _ = policy.act(obs, noise)
    with torch.no_grad():
        mean, _ = model(torch.from_numpy(obs))
        dist = torch.distributions.Normal(mean, model.log_std.exp())
        expected = dist.log_prob(torch.from_numpy(actions)).sum(-1).numpy()
        train_log_prob, entropy, _ = model.log_prob_and_entropy(torch.from_numpy(obs), torch.from_numpy(actions))
    np.testing.assert_allclose(log_probs, expected, rtol=1e-5)
    np.testing.assert_allclose(train_log_prob.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(entropy.numpy(), dist.entropy().sum(-1).numpy(), rtol=1e-5)


def test_categorical_act_matches_torch_categorical_and_samples_its_probabilities():
    spec = PolicySpec(4, 3, (32, 32), "categorical")
    torch.manual_seed(2)
    model = ActorCritic(spec)
    with torch.no_grad():
        model.policy_head.weight.normal_(0, 0.5)  # logits far from uniform, so frequencies can tell
    policy = InferencePolicy(spec)
    policy.load_flat(flatten_weights(model), 0)
    rng = np.random.default_rng(3)
    obs = np.repeat(rng.normal(size=(1, 4)).astype(np.float32), 20_000, axis=0)
    noise = rng.random((20_000, 3))
    actions, log_probs, _ = policy.act(obs, noise)
    with torch.no_grad():
        dist = torch.distributions.Categorical(logits=model(torch.from_numpy(obs[:1]))[0])
        train_log_prob, entropy, _ = model.log_prob_and_entropy(torch.from_numpy(obs[:1]), torch.tensor([2]))
    probs = dist.probs[0].numpy()
    assert actions.dtype == np.int64 and set(np.unique(actions)) <= {0, 1, 2}
    np.testing.assert_allclose(log_probs, np.log(probs)[actions], rtol=1e-5)
    np.testing.assert_allclose(train_log_prob.numpy(), np.log(probs[2]), rtol=1e-5)
    # Gumbel-max draws softmax(logits): 20,000 draws put each frequency within 4 standard errors.
    frequencies = np.bincount(actions, minlength=3) / len(actions)
    assert probs.min() < 0.25 and probs.max() > 0.45  # the weights above made the test informative
    assert np.all(np.abs(frequencies - probs) < 4 * np.sqrt(probs * (1 - probs) / len(actions)))
    assert policy.mode(obs[:1])[0] == int(np.argmax(probs))
    assert entropy.item() == pytest.approx(float(-(probs * np.log(probs)).sum()), rel=1e-5)


def test_env_receives_clipped_action():
    block = EnvBlock(EnvSpec(), np.arange(2), seed=0)
    try:
        block.reset()
        env = block.vec.envs[0].unwrapped
        block.step(np.array([[50.0], [-50.0]], np.float32))
        assert env.last_u == pytest.approx(2.0)  # Pendulum's max torque
        assert block.vec.envs[1].unwrapped.last_u == pytest.approx(-2.0)
    finally:
        block.close()


def test_stale_rollout_is_refused():
    from tests.test_gae import CASE, make_rollout

    learner = ppo_learner(PPOConfig())
    rollout = make_rollout(**CASE)
    learner.version = 3
    with pytest.raises(RuntimeError, match="policy version 0"):
        learner.train(rollout)


def test_update_changes_weights_and_bumps_version():
    from backends.base import BackendSpec, PolicySpec
    from backends.vecenv import VecEnvBackend

    config = PPOConfig(steps_per_iteration=256, epochs=2, minibatch_size=64)
    learner = ppo_learner(config)
    backend = VecEnvBackend(BackendSpec("vecenv", 1, 2))
    backend.start(EnvSpec(), PolicySpec(3, 1, (256, 256)), seed=0)
    try:
        before = learner.weights().copy()
        backend.set_weights(before, learner.version)
        rollout = backend.collect(256).rollout
        stats = learner.train(rollout)
    finally:
        backend.close()
    assert learner.version == 1
    assert not np.allclose(before, learner.weights())
    assert np.isfinite([stats["policy_loss"], stats["value_loss"], stats["approx_kl"]]).all()
