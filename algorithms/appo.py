"""APPO: PPO's clipped-surrogate update on V-trace targets and advantages (`algorithms/vtrace.py`).

The update is PPO's (`PPOLearner.update`: epochs of shuffled minibatches, one flat Adam step each),
with the ratio clipped against the policy at the update's start; what changes is the estimate it is given.
GAE assumes the batch was sampled by the policy it trains; V-trace weighs each TD error by the
truncated ratio of the learner's policy to the one that sampled it, so a batch that is a
version (or several) old under `overlap` still gives unbiased-in-the-limit value targets
(Espeholt et al. 2018, section 4). The values and log-probabilities are the learner's own,
computed once as the update starts; the bootstrap values of a truncation and of the fragment's
end are the sampler's, as recorded in the rollout (it holds no final observations to re-evaluate).
"""

from __future__ import annotations

import numpy as np
import torch

from algorithms.config import APPOConfig
from algorithms.ppo import PPOLearner
from algorithms.rollout import Rollout
from algorithms.vtrace import VTraceClips, vtrace


class APPOLearner(PPOLearner):
    """PPO's update with V-trace in place of GAE, clipped against the policy at the update's start by default."""

    settings_table = "appo"
    advantages_timer = "vtrace_s"
    config: APPOConfig

    def _clip_anchor(
        self, behaviour: torch.Tensor, proximal: torch.Tensor, ratio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip against the policy `clip_against` names; no further weight, since V-trace's rho_pg already carries
        proximal / behaviour in each advantage. On Pendulum under overlap (316 optimiser steps of lag) clipping
        against the behaviour policy diverged (initial KL from 0.02 to 8 in 12 updates; seeds 0-4 all failed)."""
        return (proximal if self.config.clip_against == "proximal" else behaviour), torch.ones_like(ratio)

    def advantages(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """V-trace policy-gradient advantages and value targets, `(T, N)`, under the learner's current policy."""
        cfg = self.config
        log_prob, values = self.current_policy(rollout)
        targets, advantages = vtrace(
            log_prob - rollout.log_probs,
            rollout.rewards.astype(np.float32) * cfg.reward_scale,
            values,
            rollout.terminations,
            rollout.truncations,
            rollout.final_values,
            rollout.last_values,
            cfg.gamma,
            cfg.trace_lambda,
            VTraceClips(rho=cfg.clip_rho, pg_rho=cfg.clip_pg_rho, c=cfg.clip_c),
        )
        return advantages, targets
