"""The PPO update as it was before issue 8, kept as the reference the fast update is measured and checked against.

Autograd through `ActorCritic`, `torch.optim.Adam`'s default per-tensor loop,
`clip_grad_norm_` per tensor, a fancy-index gather and five `.item()` host round
trips per minibatch. Same maths as `algorithms.ppo.PPOLearner.update`: a test
(`tests/test_ppo_update.py`) trains both from the same weights on the same
minibatch order and compares, and `benchmarks/test_bench_learner.py` times both in
one run so the speedup is always measurable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from algorithms.config import PPOConfig
from algorithms.model import ActorCritic, flatten_weights
from algorithms.policy import PolicySpec
from algorithms.ppo_gradients import STATISTICS
from algorithms.rollout import Rollout


class ReferencePPOLearner:
    """The pre-issue-8 learner: same initial weights and minibatch order as `PPOLearner` for a seed."""

    def __init__(self, config: PPOConfig, policy: PolicySpec, seed: int, total_steps: int | None = None) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.model = ActorCritic(policy, config.init_log_std)
        self.action_shape = policy.action.action_shape
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate, eps=1e-5)
        self.shuffle_rng = np.random.default_rng(seed)
        self.total_steps = total_steps
        self.steps_trained = 0
        self.version = 0

    def weights(self) -> np.ndarray:
        return flatten_weights(self.model)

    def update(self, rollout: Rollout, advantages: np.ndarray, returns: np.ndarray) -> dict[str, float]:
        if rollout.policy_version != self.version:
            raise RuntimeError(f"rollout sampled with policy version {rollout.policy_version}, learner is at {self.version}")
        cfg = self.config
        if cfg.anneal_lr and self.total_steps:
            remaining = max(0.0, 1.0 - self.steps_trained / self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.learning_rate * remaining
        obs = torch.from_numpy(rollout.obs.reshape(-1, rollout.obs.shape[-1]))
        actions = torch.from_numpy(rollout.actions.reshape(-1, *self.action_shape))
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
                    approx_kl = ((ratio - 1) - log_ratio).mean()
                    clip_fraction = ((ratio - 1).abs() > cfg.clip_range).float().mean()
                totals += [policy_loss.item(), value_loss.item(), entropy_mean.item(), approx_kl.item(), clip_fraction.item()]
                count += 1
        self.steps_trained += rollout.num_steps
        self.version += 1
        return dict(zip(STATISTICS, (totals / max(count, 1)).tolist(), strict=True))
