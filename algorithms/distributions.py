"""Action distributions: a Gaussian for `Box` actions, a Categorical for `Discrete` ones.

One small interface serves every side of the harness:

- workers sample with numpy (`sample`, `mode`), from exploration noise that each env draws
  from its own generator (`draw_noise`), so the same env takes the same action whichever
  process or batch it is sampled in (the property cross-backend equivalence rests on);
- the env gets `to_env(actions)` (the Gaussian's sample clipped to the bounds, the
  Categorical's index shifted by the space's `start`), while PPO keeps the raw sample;
- the learner's hand-written gradient (`ppo_gradients.py`) calls `log_prob` and `backward`,
  written with tensor methods only, so this module imports no torch and a numpy-only worker
  can load it.

A distribution's own parameters (the Gaussian's state-independent log-std) sit at the front
of the flat weight buffer, before the network (`PolicySpec.layout`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class Gaussian:
    """Diagonal Gaussian with a state-independent log-std; the head outputs the mean.

    Sample: `mean + exp(log_std) * noise`, noise standard normal. Evaluation: the mean.
    """

    act_dim: int
    name: ClassVar[str] = "gaussian"

    @property
    def params(self) -> dict[str, tuple[int, ...]]:
        return {"log_std": (self.act_dim,)}

    @property
    def head_size(self) -> int:
        return self.act_dim

    @property
    def action_shape(self) -> tuple[int, ...]:
        return (self.act_dim,)

    action_dtype: ClassVar[np.dtype] = np.dtype(np.float32)

    def draw_noise(self, generator: np.random.Generator) -> np.ndarray:
        return generator.standard_normal(self.act_dim, dtype=np.float32)

    def sample(self, head: np.ndarray, params: tuple[np.ndarray, ...], noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions `(B, act_dim)`, unclipped, and their log-probabilities `(B,)`."""
        (log_std,) = params
        actions = head + np.exp(log_std) * noise
        log_prob = (-0.5 * noise**2 - log_std - np.float32(LOG_SQRT_2PI)).sum(-1)
        return actions.astype(np.float32, copy=False), log_prob.astype(np.float32, copy=False)

    def mode(self, head: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        return head

    def to_env(self, actions: np.ndarray, space: Any) -> np.ndarray:
        # The env gets the clipped action; PPO keeps the unclipped sample and its log-prob.
        return np.clip(actions, space.low, space.high)

    # The learner's side: torch tensors in, tensor methods only.
    def log_prob(self, head: Any, params: tuple[Any, ...], actions: Any) -> tuple[Any, Any, tuple[Any, ...]]:
        """Log-probabilities `(B,)`, entropies `(B,)`, and what `backward` needs."""
        (log_std,) = params
        inv_std = (-log_std).exp()
        z = (actions - head) * inv_std
        log_prob = -0.5 * z.square().sum(1) - (log_std.sum() + self.act_dim * LOG_SQRT_2PI)
        entropy = (0.5 + LOG_SQRT_2PI + log_std).sum().expand(head.shape[0])
        return log_prob, entropy, (inv_std, z)

    def backward(self, saved: tuple[Any, ...], d_log_prob: Any, entropy_coef: float, batch: int) -> tuple[Any, tuple[Any, ...]]:
        """Gradient of `sum(d_log_prob * log_prob) - entropy_coef * mean(entropy)` w.r.t. the head and params."""
        inv_std, z = saved
        d_head = (d_log_prob[:, None] * inv_std) * z  # d log_prob / d mean = z / std
        # d log_prob / d log_std = z^2 - 1; the entropy is state-independent, d mean(entropy) / d log_std = 1.
        d_log_std = (d_log_prob[:, None] * (z.square() - 1)).sum(0) - entropy_coef
        return d_head, (d_log_std,)


@dataclass(frozen=True)
class Categorical:
    """Categorical over `num_actions` choices; the head outputs the logits.

    Sample: Gumbel-max, `argmax(logits - log(-log(u)))` with `u` uniform per action, drawn
    from the env's own generator: an exact sample of softmax(logits) that depends on nothing
    but this env's draws. Evaluation: the argmax.
    """

    num_actions: int
    name: ClassVar[str] = "categorical"
    params: ClassVar[dict[str, tuple[int, ...]]] = {}
    action_shape: ClassVar[tuple[int, ...]] = ()
    action_dtype: ClassVar[np.dtype] = np.dtype(np.int64)

    @property
    def head_size(self) -> int:
        return self.num_actions

    def draw_noise(self, generator: np.random.Generator) -> np.ndarray:
        return generator.random(self.num_actions)  # float64: Gumbel ties need a near-zero-probability coincidence

    def sample(self, head: np.ndarray, params: tuple[np.ndarray, ...], noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions `(B,)` int64 and their log-probabilities `(B,)`."""
        with np.errstate(divide="ignore"):  # u = 0 gives a Gumbel of -inf: that action is never picked
            gumbel = -np.log(-np.log(noise))
        actions = np.argmax(head + gumbel, axis=-1).astype(np.int64)
        log_prob = np.take_along_axis(_log_softmax(head), actions[:, None], axis=-1)[:, 0]
        return actions, log_prob.astype(np.float32, copy=False)

    def mode(self, head: np.ndarray, params: tuple[np.ndarray, ...]) -> np.ndarray:
        return np.argmax(head, axis=-1).astype(np.int64)

    def to_env(self, actions: np.ndarray, space: Any) -> np.ndarray:
        return actions + space.start

    def log_prob(self, head: Any, params: tuple[Any, ...], actions: Any) -> tuple[Any, Any, tuple[Any, ...]]:
        log_p = head.log_softmax(1)
        p = log_p.exp()
        log_prob = log_p.gather(1, actions[:, None]).squeeze(1)
        entropy = -(p * log_p).sum(1)
        return log_prob, entropy, (p, log_p, entropy, actions)

    def backward(self, saved: tuple[Any, ...], d_log_prob: Any, entropy_coef: float, batch: int) -> tuple[Any, tuple[Any, ...]]:
        p, log_p, entropy, actions = saved
        # d log_prob / d logits = onehot(action) - p.
        d_head = (-p).scatter_add(1, actions[:, None], p.new_ones(actions.shape[0], 1)) * d_log_prob[:, None]
        # d entropy / d logits_i = -p_i (log p_i + entropy); the loss carries -entropy_coef * mean(entropy).
        return d_head + (entropy_coef / batch) * p * (log_p + entropy[:, None]), ()


Distribution = Gaussian | Categorical

DISTRIBUTIONS: dict[str, type[Gaussian] | type[Categorical]] = {"gaussian": Gaussian, "categorical": Categorical}
"""Name (recorded in `PolicySpec`) -> distribution class, built with the action size."""


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def for_action_space(space: Any) -> tuple[str, int]:
    """The distribution (name, action size) for a gymnasium action space; ValueError if none fits."""
    from gymnasium import spaces  # here, not at import: a worker that only samples never needs it

    if isinstance(space, spaces.Box) and len(space.shape) == 1 and np.issubdtype(space.dtype, np.floating):
        return "gaussian", int(space.shape[0])
    if isinstance(space, spaces.Discrete):
        return "categorical", int(space.n)
    raise ValueError(
        f"action space {space} is not supported: this PPO takes a flat float Box (Gaussian) or Discrete (Categorical)"
    )


def distribution_of(space: Any) -> Distribution:
    """The distribution object for a gymnasium action space (see `for_action_space`)."""
    name, size = for_action_space(space)
    return DISTRIBUTIONS[name](size)
