"""Actor-critic network and the inference-only policy that workers hold."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from algorithms.distributions import LOG_SQRT_2PI
from algorithms.policy import PolicySpec

__all__ = ["LOG_SQRT_2PI", "ActorCritic", "InferencePolicy", "flatten_weights"]


class ActorCritic(nn.Module):
    """Shared two-layer tanh trunk, a policy head (the Gaussian's mean, or Categorical logits),
    a value head, and the distribution's own parameters (the Gaussian's state-independent
    log-std): the report's architecture, for any action space `policy.distribution` covers."""

    def __init__(self, policy: PolicySpec, init_log_std: float = 0.0) -> None:
        super().__init__()
        hidden_size, self.distribution = policy.hidden_size, policy.distribution
        head_size = policy.action.head_size
        if self.distribution == "gaussian":  # registered first: parameters() yields it first (PolicySpec.layout)
            self.log_std = nn.Parameter(torch.full((policy.act_dim,), float(init_log_std)))
        self.trunk = nn.Sequential(
            nn.Linear(policy.obs_dim, hidden_size), nn.Tanh(), nn.Linear(hidden_size, hidden_size), nn.Tanh()
        )
        self.policy_head = nn.Linear(hidden_size, head_size)
        self.value_head = nn.Linear(hidden_size, 1)
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


class InferencePolicy:
    """Numpy in, numpy out; no optimizer. Workers hold one and load flat weights.

    Exploration noise is passed in, not drawn here, so that the same env draws
    the same noise whichever process or batch it is sampled in.
    """

    def __init__(self, policy: PolicySpec, torch_threads: int | None = None) -> None:
        if torch_threads is not None:
            # Workers are one process per core (or fewer): more intra-op threads only contend.
            torch.set_num_threads(torch_threads)
        self.spec = policy
        self.action = policy.action
        self.model = ActorCritic(policy)
        self.model.requires_grad_(False)
        self.version = -1
        self.num_params = sum(p.numel() for p in self.model.parameters())

    def load_flat(self, weights: np.ndarray, version: int) -> None:
        """Load a flat float32 buffer exported by `flatten_weights`."""
        if weights.shape != (self.num_params,):
            raise ValueError(f"weight buffer has shape {weights.shape}, expected ({self.num_params},)")
        # Copy: buffers from shared memory or Ray's object store are read-only or reused.
        nn.utils.vector_to_parameters(torch.from_numpy(np.array(weights, dtype=np.float32)), self.model.parameters())
        self.version = version

    def _distribution_params(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self.model, name).numpy() for name in self.action.params)

    @torch.no_grad()
    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample from the policy with the given noise: actions (unclipped), their log-probs, values."""
        head, value = self.model(torch.from_numpy(obs))
        actions, log_prob = self.action.sample(head.numpy(), self._distribution_params(), noise)
        return actions, log_prob, value.numpy()

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        """State values `(B,)`."""
        return self.model(torch.from_numpy(obs))[1].numpy()

    @torch.no_grad()
    def mode(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action used for evaluation: the mean, or the most likely action."""
        return self.action.mode(self.model(torch.from_numpy(obs))[0].numpy(), self._distribution_params())
