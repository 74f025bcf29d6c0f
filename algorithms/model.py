"""The learner's actor-critic network (torch), and its flat weight buffer. Samplers run the same
network in numpy (`algorithms/inference.py`), from that buffer."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from algorithms.distributions import LOG_SQRT_2PI
from algorithms.policy import PolicySpec

__all__ = ["LOG_SQRT_2PI", "ActorCritic", "flatten_weights"]


_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}  # policy.ACTIVATIONS


class ActorCritic(nn.Module):
    """A shared trunk (`policy.hidden_sizes`, each layer followed by `policy.activation`), a policy head
    (the Gaussian's mean, or Categorical logits), a value head, and the distribution's own parameters
    (the Gaussian's state-independent log-std). The report's architecture is two 256-wide tanh layers."""

    def __init__(self, policy: PolicySpec, init_log_std: float = 0.0) -> None:
        super().__init__()
        self.distribution = policy.distribution
        head_size = policy.action.head_size
        if self.distribution == "gaussian":  # registered first: parameters() yields it first (PolicySpec.layout)
            self.log_std = nn.Parameter(torch.full((policy.act_dim,), float(init_log_std)))
        layers: list[nn.Module] = []
        for inputs, width in zip((policy.obs_dim, *policy.hidden_sizes), policy.hidden_sizes, strict=False):
            layers += [nn.Linear(inputs, width), _ACTIVATION_MODULES[policy.activation]()]
        self.trunk = nn.Sequential(*layers)
        self.policy_head = nn.Linear(policy.hidden_sizes[-1], head_size)
        self.value_head = nn.Linear(policy.hidden_sizes[-1], 1)
        # Small final layers: actions start near zero (or uniform) and values near zero (CleanRL, SB3).
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(self.policy_head.weight, 0.01)
        nn.init.zeros_(self.policy_head.bias)
        nn.init.orthogonal_(self.value_head.weight, 1.0)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy head outputs `(B, head_size)` (means or logits) and values `(B,)`."""
        features = self.trunk(obs)
        return self.policy_head(features), self.value_head(features).squeeze(-1)

    def distribution_at(self, obs: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """torch's own distribution object for `obs` (the reference the hand-written maths is checked against), and values."""
        head, value = self(obs)
        if self.distribution == "gaussian":
            return torch.distributions.Independent(torch.distributions.Normal(head, self.log_std.exp().expand_as(head)), 1), value
        return torch.distributions.Categorical(logits=head), value

    def log_prob_and_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of `actions`, the policy entropy, and values."""
        dist, value = self.distribution_at(obs)
        return dist.log_prob(actions), dist.entropy(), value


def flatten_weights(model: nn.Module) -> np.ndarray:
    """All parameters as one contiguous float32 buffer (what backends broadcast)."""
    return nn.utils.parameters_to_vector(model.parameters()).detach().cpu().numpy().astype(np.float32, copy=False)
