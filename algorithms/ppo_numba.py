"""PPO's minibatch step as two compiled functions: the gradient, and gradient clipping with Adam (issue 24).

Why: the torch step (`ppo_gradients.py` plus the fused Adam in `ppo.py`) spends most of its time in per-op
overhead, ~40 small ATen calls a step each costing a few microseconds on 64x256 blocks, not in the three
64x256x256 products that are its arithmetic. Here every elementwise pass is a loop that LLVM vectorises,
fused with its neighbours, the products are BLAS calls (`np.dot`), and the gradient is written straight
into the flat buffer's slices, so a step is two calls from Python instead of ~40.

The maths is `ppo_gradients.minibatch_gradients` for the Gaussian policy, op for op (the notation there),
and `torch.optim.Adam`'s update with PPO's global-norm clip; `tests/test_ppo_update.py` checks the gradient
against autograd and whole updates against the reference learner, as it does the torch kernel's.
Two differences in rounding, not in maths: tanh is Eigen's float rational approximation (within 3e-7 of
the exact value; `tests/test_ppo_numba.py`), since a call into libm per element does not vectorise, and
sums are reassociated (`fastmath`), as BLAS reassociates them anyway.

`fastmath=True` lets LLVM reorder float sums (vectorised reductions) and assume no NaN or infinity in
them; `error_model="numpy"` drops Python's division-by-zero check, which blocks vectorisation.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from algorithms.policy import PolicySpec

_JIT = {"fastmath": True, "error_model": "numpy", "cache": True, "nogil": True}
_TANH, _RELU = 0, 1
ACTIVATION_CODES = {"tanh": _TANH, "relu": _RELU}
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@numba.njit(**_JIT)
def tanh(value: np.float32) -> np.float32:
    """tanh(value) in float32: Eigen's `ptanh_float`, a 13/6 rational approximation on [-7.9, 7.9] (beyond that
    float32's tanh is +-1 to within half an ulp), with no branch or libm call, so loops over it vectorise."""
    x = min(max(value, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p * x / q


@numba.njit(**_JIT)
def _activate(z: np.ndarray, bias: np.ndarray, activation: int) -> None:
    """z <- act(z + bias), in place, row by row."""
    rows, cols = z.shape
    for i in range(rows):
        row = z[i]
        if activation == _TANH:
            for j in range(cols):
                row[j] = tanh(row[j] + bias[j])
        else:
            for j in range(cols):
                row[j] = max(row[j] + bias[j], np.float32(0.0))


@numba.njit(**_JIT)
def _activation_backward(d_out: np.ndarray, out: np.ndarray, activation: int) -> None:
    """d_out <- the gradient w.r.t. the pre-activation, in place (tanh: times 1 - out^2; relu: where out > 0)."""
    rows, cols = d_out.shape
    one = np.float32(1.0)
    for i in range(rows):
        d, o = d_out[i], out[i]
        if activation == _TANH:
            for j in range(cols):
                d[j] *= one - o[j] * o[j]
        else:
            for j in range(cols):
                d[j] = d[j] if o[j] > 0 else np.float32(0.0)


@numba.njit(**_JIT)
def _column_sums(matrix: np.ndarray, out: np.ndarray) -> None:
    for j in range(matrix.shape[1]):
        out[j] = 0
    for i in range(matrix.shape[0]):
        row = matrix[i]
        for j in range(matrix.shape[1]):
            out[j] += row[j]


@numba.njit(**_JIT)
def gaussian_gradients(
    flat: np.ndarray,
    grad: np.ndarray,
    trunk: np.ndarray,
    heads: np.ndarray,
    activation: int,
    obs: np.ndarray,
    actions: np.ndarray,
    old_log_probs: np.ndarray,
    advantages: np.ndarray,
    returns: np.ndarray,
    clip_range: float,
    value_coef: float,
    entropy_coef: float,
    log_ratio: np.ndarray,
    value_error: np.ndarray,
    entropy: np.ndarray,
) -> None:
    """`ppo_gradients.minibatch_gradients` for a Gaussian policy, written into `grad` (the flat buffer's layout).

    `trunk` holds one row per layer: weight offset, bias offset, output width, input width; `heads` the offsets of
    the policy head's weight and bias and of the value head's weight and bias. `log_std` is at offset 0. Also fills
    each sample's log-ratio, value error and entropy (for `update_statistics`).
    """
    batch, act_dim = actions.shape
    one, zero = np.float32(1.0), np.float32(0.0)
    hidden = []
    features = obs
    for layer in range(trunk.shape[0]):
        w_at, b_at, rows, cols = trunk[layer, 0], trunk[layer, 1], trunk[layer, 2], trunk[layer, 3]
        weight = flat[w_at : w_at + rows * cols].reshape(rows, cols)
        z = np.dot(features, weight.T)
        _activate(z, flat[b_at : b_at + rows], activation)
        hidden.append(z)
        features = z
    width = features.shape[1]
    w_head = flat[heads[0] : heads[0] + act_dim * width].reshape(act_dim, width)
    b_head = flat[heads[1] : heads[1] + act_dim]
    w_value = flat[heads[2] : heads[2] + width]
    b_value = flat[heads[3]]
    log_std = flat[:act_dim]

    # Forward through the heads, the log-probability, the clipped surrogate and their gradients w.r.t. the heads.
    inv_std = np.exp(-log_std)
    log_norm = zero
    sample_entropy = zero
    for a in range(act_dim):
        log_norm += log_std[a] + np.float32(LOG_SQRT_2PI)
        sample_entropy += np.float32(0.5 + LOG_SQRT_2PI) + log_std[a]
    d_head = np.empty((batch, act_dim), np.float32)
    d_value = np.empty(batch, np.float32)
    d_log_std = np.zeros(act_dim, np.float32)
    z = np.empty(act_dim, np.float32)
    low, high = one - np.float32(clip_range), one + np.float32(clip_range)
    for i in range(batch):
        h = features[i]
        square = zero
        for a in range(act_dim):
            mean = b_head[a]
            for j in range(width):
                mean += h[j] * w_head[a, j]
            z[a] = (actions[i, a] - mean) * inv_std[a]
            square += z[a] * z[a]
        value = b_value
        for j in range(width):
            value += h[j] * w_value[j]
        log_prob = np.float32(-0.5) * square - log_norm
        log_ratio[i] = log_prob - old_log_probs[i]
        ratio = np.float32(math.exp(log_ratio[i]))
        unclipped = -advantages[i] * ratio
        clipped = -advantages[i] * min(max(ratio, low), high)
        # The max picks the unclipped term where it is the larger (or they tie); elsewhere clamp's gradient is 0.
        d_log_prob = (-advantages[i] if unclipped >= clipped else zero) * ratio / batch
        for a in range(act_dim):
            d_head[i, a] = d_log_prob * inv_std[a] * z[a]
            d_log_std[a] += d_log_prob * (z[a] * z[a] - one)
        value_error[i] = value - returns[i]
        d_value[i] = np.float32(value_coef) / batch * value_error[i]
        entropy[i] = sample_entropy
    for a in range(act_dim):
        grad[a] = d_log_std[a] - np.float32(entropy_coef)

    # The heads' gradients, and the gradient w.r.t. the last hidden layer.
    # Products write into the buffer's slices (`out=`): a slice assignment in numba copies element by element, and
    # for a 256x256 weight that copy took longer than the product.
    np.dot(d_head.T, features, grad[heads[0] : heads[0] + act_dim * width].reshape(act_dim, width))
    _column_sums(d_head, grad[heads[1] : heads[1] + act_dim])
    g_w_value = grad[heads[2] : heads[2] + width]
    for j in range(width):
        g_w_value[j] = zero
    g_b_value = zero
    d_out = np.empty((batch, width), np.float32)
    for i in range(batch):
        h, d = features[i], d_out[i]
        for j in range(width):
            g_w_value[j] += d_value[i] * h[j]
            d[j] = d_value[i] * w_value[j]
        for a in range(act_dim):
            for j in range(width):
                d[j] += d_head[i, a] * w_head[a, j]
        g_b_value += d_value[i]
    grad[heads[3]] = g_b_value

    # Back through the trunk, last layer first.
    for layer in range(trunk.shape[0] - 1, -1, -1):
        w_at, b_at, rows, cols = trunk[layer, 0], trunk[layer, 1], trunk[layer, 2], trunk[layer, 3]
        _activation_backward(d_out, hidden[layer], activation)  # now w.r.t. the layer's pre-activation
        below = hidden[layer - 1] if layer else obs
        np.dot(d_out.T, below, grad[w_at : w_at + rows * cols].reshape(rows, cols))
        _column_sums(d_out, grad[b_at : b_at + rows])
        if layer:
            d_out = np.dot(d_out, flat[w_at : w_at + rows * cols].reshape(rows, cols))


@numba.njit(**_JIT)
def clipped_adam(
    flat: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    step: int,
    learning_rate: float,
    max_grad_norm: float,
) -> None:
    """Scale `grad` to global norm at most `max_grad_norm` (clip_grad_norm_'s max_norm / (norm + 1e-6), capped at 1),
    then take Adam's step `step` (1-based; betas 0.9, 0.999, eps 1e-5 as the torch kernel) on `flat`, in place."""
    total = np.float32(0.0)
    for i in range(grad.size):
        total += grad[i] * grad[i]
    scale = np.float32(min(max_grad_norm / (math.sqrt(total) + 1e-6), 1.0))
    beta1, beta2 = np.float32(0.9), np.float32(0.999)
    step_size = np.float32(learning_rate / (1.0 - 0.9**step))
    root_correction = np.float32(math.sqrt(1.0 - 0.999**step))
    eps = np.float32(1e-5)
    for i in range(flat.size):
        g = grad[i] * scale
        grad[i] = g
        exp_avg[i] = beta1 * exp_avg[i] + (np.float32(1.0) - beta1) * g
        exp_avg_sq[i] = beta2 * exp_avg_sq[i] + (np.float32(1.0) - beta2) * g * g
        flat[i] -= step_size * exp_avg[i] / (np.sqrt(exp_avg_sq[i]) / root_correction + eps)


class NumbaStep:
    """The minibatch step of one learner's network, on numpy views of its flat weights, gradient and Adam state."""

    def __init__(self, policy: PolicySpec) -> None:
        if policy.distribution != "gaussian":
            raise ValueError(f"kernel 'numba' runs the gaussian policy only, not {policy.distribution!r}; use kernel 'torch'")
        offsets, at = {}, 0
        for name, shape in policy.layout().items():
            offsets[name] = at
            at += math.prod(shape)
        widths = zip(policy.hidden_sizes, (policy.obs_dim, *policy.hidden_sizes[:-1]), strict=True)
        self.trunk = np.array(
            [
                (offsets[f"{n}.weight"], offsets[f"{n}.bias"], out, inp)
                for n, (out, inp) in zip(policy.trunk_layers, widths, strict=True)
            ],
            np.int64,
        )
        self.heads = np.array([offsets[k] for k in ("policy_head.weight", "policy_head.bias", "value_head.weight",
                                                     "value_head.bias")], np.int64)  # fmt: skip
        self.activation = ACTIVATION_CODES[policy.activation]

    def gradients(self, flat: np.ndarray, grad: np.ndarray, *inputs: np.ndarray | float) -> tuple[np.ndarray, ...]:
        """The minibatch's gradient into `grad`; each sample's log-ratio, value error and entropy. `inputs` are what
        `ppo_gradients.minibatch_gradients` takes after the parameters, in its order: observations, actions, the
        log-probabilities clipped against, advantages, returns (float32 arrays), then clip_range, value_coef and
        entropy_coef."""
        batch = len(inputs[0])
        outputs = tuple(np.empty(batch, np.float32) for _ in range(3))
        gaussian_gradients(flat, grad, self.trunk, self.heads, self.activation, *inputs, *outputs)
        return outputs
