"""The policy's sizes and the layout of its flat weight buffer, without torch.

The learner trains an `ActorCritic` (algorithms/model.py) and broadcasts its
parameters as one flat float32 buffer; this module says where each parameter
lies in that buffer. Everything that slices the buffer (the fast PPO update,
and the numpy inference to come) reads this one layout, and a test checks it
against the torch module's own parameter order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

Array = TypeVar("Array")  # a numpy array or a torch tensor: both slice and reshape alike


@dataclass(frozen=True)
class PolicySpec:
    """The sizes of the actor-critic: what a learner builds and a worker's policy copy loads."""

    obs_dim: int
    act_dim: int
    hidden_size: int

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Name and shape of each parameter, in flat-buffer order.

        That order is `ActorCritic.parameters()`'s: the module's own `log_std` first, then
        the trunk's two layers, then the mean and value heads (weight before bias).
        """
        h = self.hidden_size
        return {
            "log_std": (self.act_dim,),
            "trunk.0.weight": (h, self.obs_dim),
            "trunk.0.bias": (h,),
            "trunk.2.weight": (h, h),
            "trunk.2.bias": (h,),
            "mean_head.weight": (self.act_dim, h),
            "mean_head.bias": (self.act_dim,),
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
