"""The policy's sizes and the layout of its flat weight buffer, without torch.

The learner trains an `ActorCritic` (algorithms/model.py) and broadcasts its
parameters as one flat float32 buffer; this module says where each parameter
lies in that buffer. Everything that slices the buffer (the fast PPO update,
and the workers' numpy inference in algorithms/inference.py) reads this one
layout, and a test checks it against the torch module's own parameter order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from algorithms.distributions import DISTRIBUTIONS, Distribution

Array = TypeVar("Array")  # a numpy array or a torch tensor: both slice and reshape alike

ACTIVATIONS = ("tanh", "relu")
"""The trunk's nonlinearities: each is written three times, in torch (`model.py`), numpy (`inference.py`) and the
hand-written gradient (`ppo_gradients.py`), and `tests/test_model.py` checks the three agree for each."""


def check_network(hidden_sizes: tuple[int, ...] | list[int], activation: str) -> tuple[int, ...]:
    """The layer widths as a tuple (a suite or a record gives a list; a frozen spec holds a tuple), or `ValueError`
    naming what is wrong with the network's description: no layers, a width < 1, an unknown activation."""
    if not hidden_sizes:
        raise ValueError("hidden_sizes must name at least one layer width, e.g. [256, 256]")
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in hidden_sizes):
        raise ValueError(f"hidden_sizes must be positive integers, got {list(hidden_sizes)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; one of {', '.join(ACTIVATIONS)}")
    return tuple(hidden_sizes)


@dataclass(frozen=True)
class PolicySpec:
    """The sizes of the actor-critic: what a learner builds and a worker's policy copy loads."""

    obs_dim: int
    """Length of the (flattened) observation."""
    act_dim: int
    """A Box action's length, or a Discrete space's number of actions: the policy head's width."""
    hidden_sizes: tuple[int, ...]
    """The shared trunk's layer widths, input side first (the report's: `(256, 256)`)."""
    distribution: str = "gaussian"
    """The action distribution, a key of `DISTRIBUTIONS` (chosen from the env's action space)."""
    activation: str = "tanh"
    """The trunk's nonlinearity after each layer, one of `ACTIVATIONS`."""

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown action distribution {self.distribution!r}; one of {', '.join(DISTRIBUTIONS)}")
        object.__setattr__(self, "hidden_sizes", check_network(self.hidden_sizes, self.activation))

    @property
    def trunk_layers(self) -> tuple[str, ...]:
        """The trunk's layer names in the flat buffer (`trunk.0`, `trunk.2`, ...: `nn.Sequential` indices, each
        linear layer followed by its activation)."""
        return tuple(f"trunk.{2 * i}" for i in range(len(self.hidden_sizes)))

    @property
    def action(self) -> Distribution:
        """The action distribution, with its sampling, log-probability and gradient."""
        return DISTRIBUTIONS[self.distribution](self.act_dim)

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of each parameter, in flat-buffer order.

        That order is `ActorCritic.parameters()`'s: the module's own distribution parameters
        first (the Gaussian's `log_std`), then the trunk's layers, then the policy and
        value heads (weight before bias).
        """
        layout: dict[str, tuple[int, ...]] = dict(self.action.params)
        inputs = self.obs_dim
        for name, width in zip(self.trunk_layers, self.hidden_sizes, strict=True):
            layout[f"{name}.weight"], layout[f"{name}.bias"] = (width, inputs), (width,)
            inputs = width
        head = self.action.head_size
        return layout | {
            "policy_head.weight": (head, inputs),
            "policy_head.bias": (head,),
            "value_head.weight": (1, inputs),
            "value_head.bias": (1,),
        }

    @property
    def num_params(self) -> int:
        """Length of the flat weight buffer."""
        return sum(math.prod(shape) for shape in self.layout().values())

    def unflatten(self, flat: Array) -> dict[str, Array]:
        """Views of a flat buffer shaped as the parameters (no copy: writes go through to `flat`)."""
        if flat.shape != (self.num_params,):
            raise ValueError(f"weight buffer has shape {tuple(flat.shape)}, expected ({self.num_params},)")
        views, offset = {}, 0
        for name, shape in self.layout().items():
            size = math.prod(shape)
            views[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return views
