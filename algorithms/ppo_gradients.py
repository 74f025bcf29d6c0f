"""PPO's minibatch loss and its exact gradient, written out for the actor-critic we train.

Why not autograd: at the report's settings (minibatch 64, a 256-wide two-layer trunk)
the arithmetic of one gradient step is three 64x256x256 matrix products, about 0.3 ms on
one core; autograd, `nn.Module` calls and `torch.optim.Adam`'s per-tensor loop added
~1.5 ms of per-op overhead on top (issue 8). The gradient below is the same maths, op for
op the chain rule of `ActorCritic` + the clipped surrogate; `tests/test_ppo_update.py`
checks it against autograd on the reference implementation (`benchmarks/reference_ppo.py`).

Notation: B samples, a trunk of L layers h_i = act(h_{i-1} Wi' + bi) with h_0 = x (the report's:
L = 2, act = tanh); heads head = h_L Wp' + bp and value = h_L Wv' + bv; the policy head is the Gaussian's mean or
the Categorical's logits, and the distribution (`distributions.py`) supplies the
log-probability, the entropy and their gradients w.r.t. the head.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from algorithms.distributions import Distribution


def _tanh_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # tanh(u) = 2 sigmoid(2u) - 1: the same function, but ATen's sigmoid runs ~5x faster than its tanh
    # on a 64x256 block here (8 vs 45 us), and the factor 2 folds into the matrix product.
    return torch.addmm(bias, x, weight.t(), beta=2, alpha=2).sigmoid_().mul_(2).sub_(1)


def _relu_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.addmm(bias, x, weight.t()).relu_()


# Each of `policy.ACTIVATIONS`: a layer's forward (activation of x W' + b), and the gradient w.r.t. the layer's
# pre-activation from the gradient w.r.t. its output and that output (tanh: times 1 - out^2; relu: where out > 0).
_LAYERS = {"tanh": _tanh_layer, "relu": _relu_layer}
_BACKWARD = {
    "tanh": torch.ops.aten.tanh_backward,
    "relu": lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),
}


class _Forward(NamedTuple):
    """What a forward pass computes and the backward pass needs."""

    hidden: list[torch.Tensor]
    """Each trunk layer's output, input side first."""
    w_heads: torch.Tensor
    value: torch.Tensor
    saved: tuple[torch.Tensor, ...]
    log_prob: torch.Tensor
    entropy: torch.Tensor


def _forward(
    action: Distribution, activation: str, params: tuple[torch.Tensor, ...], obs: torch.Tensor, actions: torch.Tensor
) -> _Forward:
    """ActorCritic.forward plus the log-probability of `actions`, keeping what the backward pass needs."""
    distribution, trunk, (w_head, b_head, w_value, b_value) = _split(action, params)
    layer, hidden, features = _LAYERS[activation], [], obs
    for weight, bias in trunk:
        features = layer(features, weight, bias)
        hidden.append(features)
    w_heads, b_heads = torch.cat([w_head, w_value]), torch.cat([b_head, b_value])  # both heads in one product
    heads = torch.addmm(b_heads, features, w_heads.t())
    head, value = heads[:, : action.head_size], heads[:, action.head_size]
    log_prob, entropy, saved = action.log_prob(head, distribution, actions)
    return _Forward(hidden, w_heads, value, saved, log_prob, entropy)


def _split(
    action: Distribution, params: tuple[torch.Tensor, ...]
) -> tuple[tuple[torch.Tensor, ...], list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, ...]]:
    """The distribution's own parameters, the trunk's (weight, bias) pairs, and the two heads' weights and biases."""
    count = len(action.params)
    trunk = params[count:-4]
    return params[:count], list(zip(trunk[::2], trunk[1::2], strict=True)), params[-4:]


def log_probs(
    action: Distribution, activation: str, params: tuple[torch.Tensor, ...], obs: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """The current policy's log-probabilities of `actions` (no gradient)."""
    return _forward(action, activation, params, obs, actions).log_prob


def log_probs_and_values(
    action: Distribution, activation: str, params: tuple[torch.Tensor, ...], obs: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The current policy's log-probabilities of `actions`, and the current values of `obs` (no gradient)."""
    out = _forward(action, activation, params, obs, actions)
    return out.log_prob, out.value


def minibatch_gradients(
    action: Distribution,
    activation: str,
    params: tuple[torch.Tensor, ...],
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    clip_range: float,
    value_coef: float,
    entropy_coef: float,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of `policy_loss + value_coef * value_loss - entropy_coef * entropy` for one minibatch.

    `params` are the actor-critic's parameters in flat-buffer order (`PolicySpec.layout()`);
    the gradients come back in the same order. `action` is the policy's distribution: it
    supplies the log-probability and its gradient w.r.t. the policy head (and its own
    parameters). `advantages` are already standardised if the config asks for it (and
    importance-weighted under the decoupled objective). `old_log_probs` are the policy the
    ratio is clipped against. Also returned: each sample's log-ratio, value error and entropy,
    from which `update_statistics` derives the losses once per update instead of once per minibatch.
    """
    trunk = _split(action, params)[1]
    batch = obs.shape[0]
    hidden, w_heads, value, saved, log_prob, entropy = _forward(action, activation, params, obs, actions)

    # The clipped surrogate (Schulman et al. 2017): loss = mean(max(unclipped, clipped)).
    log_ratio = log_prob - old_log_probs
    ratio = log_ratio.exp()
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    value_error = value - returns  # value loss = 0.5 mean(value_error^2)

    # Backward. The max picks the unclipped term where it is the larger (or they tie, inside the
    # clip range); where the clipped term wins the ratio lies outside the range and clamp's
    # gradient is 0. d ratio / d log_prob = ratio.
    d_log_prob = torch.where(unclipped >= clipped, -advantages, 0.0) * ratio / batch
    d_head, d_distribution = action.backward(saved, d_log_prob, entropy_coef, batch)  # entropy's gradient included
    d_heads = torch.cat([d_head, (value_coef / batch) * value_error[:, None]], 1)
    g_heads, g_b_heads = d_heads.t() @ hidden[-1], d_heads.sum(0)
    backward, d_out, trunk_grads = _BACKWARD[activation], d_heads @ w_heads, []
    for index in range(len(trunk) - 1, -1, -1):  # from the last layer back to the first
        d_z = backward(d_out, hidden[index])  # w.r.t. the layer's pre-activation
        if index:
            trunk_grads[:0] = [d_z.t() @ hidden[index - 1], d_z.sum(0)]
            d_out = d_z @ trunk[index][0]
        else:
            trunk_grads[:0] = [(obs.t() @ d_z).t(), d_z.sum(0)]  # this orientation of the thin product is 4x faster

    size = action.head_size
    grads = (*d_distribution, *trunk_grads, g_heads[:size], g_b_heads[:size], g_heads[size:], g_b_heads[size:])
    return grads, log_ratio, value_error, entropy


def standardize_per_minibatch(advantages: torch.Tensor, minibatch_size: int) -> torch.Tensor:
    """Each minibatch's advantages to mean 0, std 1 (unbiased std, + 1e-8), all minibatches of an epoch at once."""
    full = advantages.numel() // minibatch_size * minibatch_size
    parts = []
    if full:
        blocks = advantages[:full].view(-1, minibatch_size)
        parts.append(((blocks - blocks.mean(1, keepdim=True)) / (blocks.std(1, keepdim=True) + 1e-8)).view(-1))
    rest = advantages[full:]
    if rest.numel() > 1:  # a one-sample minibatch has no spread: left as it is
        rest = (rest - rest.mean()) / (rest.std() + 1e-8)
    parts.append(rest)
    return torch.cat(parts)


STATISTICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


def update_statistics(
    log_ratio: torch.Tensor,
    value_error: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    sample_weight: torch.Tensor,
    clip_range: float,
) -> dict[str, float]:
    """The `STATISTICS`: each minibatch's mean, averaged over the update's minibatches.

    Inputs hold every sample of every minibatch, in training order, each with the policy
    before that minibatch's step; `sample_weight` is 1 / (minibatch size x minibatch count) per sample.
    """
    ratio = log_ratio.exp()
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    per_sample = torch.stack([
        torch.maximum(unclipped, clipped),
        0.5 * value_error.square(),
        entropy,
        (ratio - 1) - log_ratio,  # Schulman's low-variance KL estimator
        ((ratio - 1).abs() > clip_range).float(),
    ])  # fmt: skip
    values = (per_sample @ sample_weight).tolist()  # the one host round trip
    return dict(zip(STATISTICS, values, strict=True))
