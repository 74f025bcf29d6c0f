"""Actor-critic network and the inference-only policy that workers hold."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class ActorCritic(nn.Module):
    """Shared two-layer tanh trunk, a Gaussian policy head with a
    state-independent log-std, and a value head (the report's architecture)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_size: int = 256, init_log_std: float = 0.0) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden_size), nn.Tanh(), nn.Linear(hidden_size, hidden_size), nn.Tanh())
        self.mean_head = nn.Linear(hidden_size, act_dim)
        self.value_head = nn.Linear(hidden_size, 1)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        # Small final layers: actions start near zero and values near zero (CleanRL, SB3).
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(self.mean_head.weight, 0.01)
        nn.init.zeros_(self.mean_head.bias)
        nn.init.orthogonal_(self.value_head.weight, 1.0)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action means `(B, act_dim)` and values `(B,)`."""
        features = self.trunk(obs)
        return self.mean_head(features), self.value_head(features).squeeze(-1)

    def log_prob_and_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of `actions`, the policy entropy, and values."""
        mean, value = self(obs)
        log_std = self.log_std.expand_as(mean)
        log_prob = (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - LOG_SQRT_2PI).sum(-1)
        entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1)
        return log_prob, entropy, value


def flatten_weights(model: nn.Module) -> np.ndarray:
    """All parameters as one contiguous float32 buffer (what backends broadcast)."""
    return nn.utils.parameters_to_vector(model.parameters()).detach().cpu().numpy().astype(np.float32, copy=False)


class InferencePolicy:
    """Numpy in, numpy out; no optimizer. Workers hold one and load flat weights.

    Exploration noise is passed in, not drawn here, so that the same env draws
    the same noise whichever process or batch it is sampled in.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_size: int, torch_threads: int | None = None) -> None:
        if torch_threads is not None:
            # Workers are one process per core (or fewer): more intra-op threads only contend.
            torch.set_num_threads(torch_threads)
        self.model = ActorCritic(obs_dim, act_dim, hidden_size)
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

    @torch.no_grad()
    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample `mean + std * noise`: actions (unclipped), their log-probs, values."""
        mean, value = self.model(torch.from_numpy(obs))
        log_std = self.model.log_std
        noise_t = torch.from_numpy(noise)
        actions = mean + log_std.exp() * noise_t
        log_prob = (-0.5 * noise_t**2 - log_std - LOG_SQRT_2PI).sum(-1)
        return actions.numpy(), log_prob.numpy(), value.numpy()

    @torch.no_grad()
    def value(self, obs: np.ndarray) -> np.ndarray:
        """State values `(B,)`."""
        return self.model(torch.from_numpy(obs))[1].numpy()

    @torch.no_grad()
    def mean_action(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action used for evaluation."""
        return self.model(torch.from_numpy(obs))[0].numpy()
