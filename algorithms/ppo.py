"""The PPO learner: clipped surrogate, value loss, entropy bonus, minibatch epochs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from algorithms.config import PPOConfig
from algorithms.gae import compute_gae
from algorithms.model import ActorCritic, flatten_weights
from algorithms.rollout import Rollout


@dataclass(frozen=True)
class UpdateStats:
    """Means over all minibatches of one update."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float


class PPOLearner:
    """Owns the trainable actor-critic and its optimizer; versions its weights."""

    def __init__(self, config: PPOConfig, obs_dim: int, act_dim: int, seed: int, total_steps: int | None = None) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.model = ActorCritic(obs_dim, act_dim, config.hidden_size, config.init_log_std)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate, eps=1e-5)
        self.shuffle_rng = np.random.default_rng(seed)
        self.total_steps = total_steps
        self.steps_trained = 0
        self.version = 0

    def weights(self) -> np.ndarray:
        """Current weights as one flat float32 buffer; pair with `self.version`."""
        return flatten_weights(self.model)

    def advantages(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """GAE advantages and value targets for a rollout of the current version."""
        cfg = self.config
        return compute_gae(rollout, cfg.gamma, cfg.gae_lambda, cfg.reward_scale)

    def update(self, rollout: Rollout, advantages: np.ndarray, returns: np.ndarray) -> UpdateStats:
        """Several epochs of shuffled minibatches over the rollout; bumps the version."""
        if rollout.policy_version != self.version:
            # On-policy: a stale fragment would silently bias the gradient.
            raise RuntimeError(f"rollout sampled with policy version {rollout.policy_version}, learner is at {self.version}")
        cfg = self.config
        self._anneal_learning_rate()
        obs = torch.from_numpy(rollout.obs.reshape(-1, rollout.obs.shape[-1]))
        actions = torch.from_numpy(rollout.actions.reshape(-1, rollout.actions.shape[-1]))
        old_log_probs = torch.from_numpy(rollout.log_probs.reshape(-1))
        adv_all = torch.from_numpy(advantages.reshape(-1))
        ret_all = torch.from_numpy(returns.reshape(-1))
        batch = obs.shape[0]
        totals = np.zeros(5)
        count = 0
        for _ in range(cfg.epochs):
            order = torch.from_numpy(self.shuffle_rng.permutation(batch))
            for start in range(0, batch, cfg.minibatch_size):
                idx = order[start : start + cfg.minibatch_size]
                log_prob, entropy, value = self.model.log_prob_and_entropy(obs[idx], actions[idx])
                adv = adv_all[idx]
                if cfg.normalize_advantages and len(idx) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                log_ratio = log_prob - old_log_probs[idx]
                ratio = log_ratio.exp()
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)).mean()
                value_loss = 0.5 * ((value - ret_all[idx]) ** 2).mean()
                entropy_mean = entropy.mean()
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy_mean
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()  # Schulman's low-variance estimator
                    clip_fraction = ((ratio - 1).abs() > cfg.clip_range).float().mean()
                totals += [policy_loss.item(), value_loss.item(), entropy_mean.item(), approx_kl.item(), clip_fraction.item()]
                count += 1
        self.steps_trained += rollout.num_steps
        self.version += 1
        return UpdateStats(*(totals / max(count, 1)))

    def _anneal_learning_rate(self) -> None:
        if self.config.anneal_lr and self.total_steps:
            remaining = max(0.0, 1.0 - self.steps_trained / self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.learning_rate * remaining
