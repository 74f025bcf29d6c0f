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


@dataclass(frozen=True)
class PolicySpec:
    """The sizes of the actor-critic: what a learner builds and a worker's policy copy loads."""

    obs_dim: int
    """Length of the (flattened) observation."""
    act_dim: int
    """A Box action's length, or a Discrete space's number of actions: the policy head's width."""
    hidden_size: int
    distribution: str = "gaussian"
    """The action distribution, a key of `DISTRIBUTIONS` (chosen from the env's action space)."""

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown action distribution {self.distribution!r}; one of {', '.join(DISTRIBUTIONS)}")

    @property
    def action(self) -> Distribution:
        """The action distribution, with its sampling, log-probability and gradient."""
        return DISTRIBUTIONS[self.distribution](self.act_dim)

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of each parameter, in flat-buffer order.

        That order is `ActorCritic.parameters()`'s: the module's own distribution parameters
        first (the Gaussian's `log_std`), then the trunk's two layers, then the policy and
        value heads (weight before bias).
        """
        h, head = self.hidden_size, self.action.head_size
        return {
            **self.action.params,
            "trunk.0.weight": (h, self.obs_dim),
            "trunk.0.bias": (h,),
            "trunk.2.weight": (h, h),
            "trunk.2.bias": (h,),
            "policy_head.weight": (head, h),
            "policy_head.bias": (head,),
            "value_head.weight": (1, h),
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
