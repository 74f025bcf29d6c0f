"""The PPO learner: GAE, then epochs of shuffled minibatches of the clipped surrogate.

The update keeps every parameter in one flat float32 buffer (the buffer the backends
broadcast), computes each minibatch's gradient with `ppo_gradients.minibatch_gradients`
into one flat gradient buffer, clips its norm and takes a fused Adam step on it. Each
epoch is gathered with one index operation, and the statistics are derived once per
update from what the steps recorded: no host round trip inside the loop (issue 8).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.optim.adam import adam

from algorithms.base import INITIAL_KL, Learner, LearnerSetup
from algorithms.gae import compute_gae
from algorithms.model import ActorCritic, flatten_weights
from algorithms.policy import PolicySpec
from algorithms.ppo_gradients import (
    log_probs,
    log_probs_and_values,
    minibatch_gradients,
    standardize_per_minibatch,
    update_statistics,
)
from algorithms.rollout import Rollout

_TORCH_DTYPE = {"float32": torch.float32, "int64": torch.int64}


def resolve_device(device: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; `cuda` without one is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU (or is a CPU build); use 'auto' or 'cpu'")
    return torch.device(device)


class WeightAverage:
    """PPO-EWMA's proximal policy: a normalised moving average of the flat weights, from the first (openai/ppo-ewma's
    `EwmaModel`), with views of it as the network's parameters."""

    def __init__(self, weights: torch.Tensor, decay: float, policy: PolicySpec) -> None:
        self.average = weights.clone()
        self.params = tuple(policy.unflatten(self.average).values())
        self.decay = decay
        self.total = 1.0  # the sum of the weights' coefficients so far: the first weights count 1

    def fold(self, weights: torch.Tensor) -> None:
        """Fold in the weights after an optimiser step: with total T the average becomes (decay T average + weights) /
        (decay T + 1), so it is sum_i decay^(k - i) weights_i / sum_i decay^(k - i)."""
        total = self.decay * self.total + 1.0
        self.average.mul_(self.decay * self.total / total).add_(weights, alpha=1.0 / total)
        self.total = total


class PPOLearner(Learner):
    """Owns the actor-critic's flat weights, the Adam state and the minibatch shuffling."""

    #: The statistic that times the advantage estimate.
    advantages_timer = "gae_s"

    def __init__(self, setup: LearnerSetup) -> None:
        config, policy = setup.config, setup.policy
        self.config = config
        self.device = resolve_device(setup.device)
        torch.manual_seed(setup.seed)  # the initial weights depend on the seed alone
        init = ActorCritic(policy, config.init_log_std)
        self.flat = torch.from_numpy(flatten_weights(init)).to(self.device)
        self.grad = torch.zeros_like(self.flat)
        views = policy.unflatten(self.flat)  # views: Adam's in-place step updates them
        self.params = tuple(views.values())
        self.policy = policy
        self.action = policy.action
        # Adam's state, for torch's functional Adam with fused=True: one kernel over the flat
        # buffer (the CPU default is a Python loop over tensors; torch.optim.Adam.step alone
        # costs more than the kernel at this size).
        self.adam_state = ([torch.zeros_like(self.flat)], [torch.zeros_like(self.flat)], [torch.zeros((), device=self.device)])
        self.learning_rate = config.learning_rate
        self.shuffle_rng = np.random.default_rng(setup.seed)
        self.total_steps = setup.total_steps
        self.max_policy_lag = setup.max_policy_lag
        self.publish_every = setup.publish_every
        self.steps_trained = 0
        self.optimizer_steps = 0
        self.version = 0
        self._host_weights: tuple[int, np.ndarray] | None = None
        self.gradient_step = partial(minibatch_gradients, self.action, policy.activation)
        # KL early stopping is PPO's setting; a learner built on this update may have none (APPO).
        self.target_kl = getattr(config, "target_kl", None)
        # PPO-EWMA's proximal policy (PPO's setting, as target_kl).
        decay = getattr(config, "ewma_decay", None)
        self.ewma = WeightAverage(self.flat, decay, policy) if decay is not None else None
        self.compile_s = 0.0
        if config.compile:
            self._compile()
        self.numba_step = self._numba_step() if config.kernel == "numba" else None

    def weights(self) -> np.ndarray:
        """Current weights as one flat float32 host buffer; pair with `self.version`."""
        # Cached per version: on a GPU the buffer crosses to the host once per update.
        if self._host_weights is None or self._host_weights[0] != self.version:
            self._host_weights = (self.version, self.flat.detach().cpu().numpy().copy())
        return self._host_weights[1]

    def train(self, rollout: Rollout) -> dict[str, float]:
        """GAE advantages, then the update; statistics are means over all minibatches."""
        started = time.perf_counter()
        advantages, returns = self.advantages(rollout)
        gae_done = time.perf_counter()
        stats = self.update(rollout, advantages, returns)
        return stats | {self.advantages_timer: gae_done - started, "update_s": time.perf_counter() - gae_done}

    def advantages(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """GAE advantages and value targets: from the values the sampler recorded, or (`recompute_advantages`) from
        the learner's critic as the update starts."""
        cfg = self.config
        if cfg.recompute_advantages:
            rollout = dataclasses.replace(rollout, values=self.current_policy(rollout)[1])
        return compute_gae(rollout, cfg.gamma, cfg.gae_lambda, cfg.reward_scale)

    def current_policy(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """The learner's log-probabilities of the rollout's actions and values of its observations now, `(T, N)`."""
        steps, envs = rollout.rewards.shape
        obs = torch.from_numpy(np.ascontiguousarray(rollout.obs.reshape(steps * envs, -1))).to(self.device)
        actions = torch.from_numpy(np.ascontiguousarray(rollout.actions.reshape(steps * envs, *self.action.action_shape)))
        log_prob, values = log_probs_and_values(self.action, self.policy.activation, self.params, obs, actions.to(self.device))
        return log_prob.cpu().numpy().reshape(steps, envs), values.cpu().numpy().reshape(steps, envs)

    def update(self, rollout: Rollout, advantages: np.ndarray, returns: np.ndarray) -> dict[str, float]:
        """Several epochs of shuffled minibatches over the rollout; bumps the version."""
        if not 0 <= self.version - rollout.policy_version <= self.max_policy_lag:
            # A batch staler than the schedule allows would silently bias the gradient.
            raise RuntimeError(
                f"rollout sampled with policy version {rollout.policy_version}, learner is at {self.version} "
                f"(a batch may lag by at most {self.max_policy_lag})"
            )
        cfg = self.config
        self._anneal_learning_rate()
        columns = [
            rollout.obs.reshape(-1, rollout.obs.shape[-1]),
            rollout.actions.reshape(-1, *self.action.action_shape),
            rollout.log_probs.reshape(-1),
            advantages.reshape(-1),
            returns.reshape(-1),
        ]
        obs, actions, behaviour, advantages_t, returns_t = (
            torch.from_numpy(np.ascontiguousarray(c)).to(self.device) for c in columns
        )
        # How far the batch already is from the policy about to train on it: 0 for a fresh batch,
        # the cost of staleness under `overlap`.
        proximal = log_probs(
            self.action, self.policy.activation, self.params, obs, actions
        )  # the policy at the start of this update
        staleness = proximal - behaviour
        ratio = staleness.exp()
        initial = torch.stack([((ratio - 1) - staleness).mean(), ((ratio - 1).abs() > cfg.clip_range).float().mean()])
        clip_against, importance = self._clip_anchor(behaviour, proximal, ratio)
        data = [obs, actions, clip_against, advantages_t, returns_t, importance]
        batch, size = obs.shape[0], cfg.minibatch_size
        starts = range(0, batch, size)
        # What each step records, in training order, for the statistics (update_statistics).
        recorded: dict[str, list[torch.Tensor]] = {"log_ratio": [], "value_error": [], "advantages": [], "entropy": []}
        steps_taken = 0
        planned = cfg.epochs * len(starts)
        for epoch in range(cfg.epochs):
            # The same shuffle as ever (numpy, seeded): one gather per epoch, then minibatches are slices.
            order = torch.from_numpy(self.shuffle_rng.permutation(batch)).to(self.device)
            obs, actions, old_log_probs, advantages, returns, importance = (column[order] for column in data)
            if cfg.normalize_advantages:
                advantages = standardize_per_minibatch(advantages, size)
            advantages = advantages * importance  # w * max(-A r, -A clip(r)) = max(-wA r, -wA clip(r)) for w >= 0
            recorded["advantages"].append(advantages)
            stopped = False
            for start in starts:
                end = start + size
                if self.ewma is not None:
                    self._anchor_on_ewma(obs[start:end], actions[start:end], old_log_probs[start:end], advantages[start:end])
                log_ratio, value_error, entropy, stopped = self._step(
                    obs[start:end], actions[start:end], old_log_probs[start:end], advantages[start:end], returns[start:end]
                )
                recorded["log_ratio"].append(log_ratio)
                recorded["value_error"].append(value_error)
                recorded["entropy"].append(entropy)
                if stopped:
                    recorded["advantages"][-1] = advantages[:end]  # the minibatches this epoch evaluated
                    break
                steps_taken += 1
                if self.ewma is not None:
                    self.ewma.fold(self.flat)
                if isinstance(self.publish_every, int) and steps_taken % self.publish_every == 0 and steps_taken < planned:
                    self._publish(steps_taken)
            if stopped:
                break
            if self.publish_every == "epoch" and epoch < cfg.epochs - 1:
                self._publish(steps_taken)
        self.steps_trained += rollout.num_steps
        self.optimizer_steps += steps_taken
        self.version += 1
        minibatch_sizes = torch.tensor([len(r) for r in recorded["log_ratio"]], device=self.device)
        sample_weight = (1.0 / (minibatch_sizes * len(minibatch_sizes))).repeat_interleave(minibatch_sizes)
        stats = update_statistics(
            torch.cat(recorded["log_ratio"]),
            torch.cat(recorded["value_error"]),
            torch.cat(recorded["advantages"]),
            torch.cat(recorded["entropy"]),
            sample_weight,
            cfg.clip_range,
        )
        initial_kl, initial_clip_fraction = initial.tolist()
        return stats | {
            "learning_rate": self.learning_rate,
            INITIAL_KL: initial_kl,
            "initial_clip_fraction": initial_clip_fraction,
            "optimizer_steps": float(steps_taken),
        }

    def _publish(self, steps_taken: int) -> None:
        """Hand the weights as they are now to `on_publish` (a schedule that broadcasts them)."""
        if self.on_publish is not None:
            self.on_publish(self.flat.detach().cpu().numpy().copy(), self.optimizer_steps + steps_taken)

    def _clip_anchor(
        self, behaviour: torch.Tensor, proximal: torch.Tensor, ratio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probabilities the ratio is clipped against, and each sample's weight on its advantage. Under
        PPO-EWMA these are the behaviour policy's and 1 here, and each minibatch's own as it is taken
        (`_anchor_on_ewma`)."""
        if self.config.decoupled and self.ewma is None:  # clip against the proximal policy; reweight by it / behaviour
            return proximal, ratio.clamp(max=self.config.importance_weight_cap)
        return behaviour, torch.ones_like(ratio)

    def _anchor_on_ewma(self, obs: torch.Tensor, actions: torch.Tensor, anchor: torch.Tensor, advantages: torch.Tensor) -> None:
        """PPO-EWMA: the minibatch is clipped against the moving-average policy as it is now, and each advantage is
        weighted by that policy's probability over the behaviour policy's (capped, as the decoupled objective's).
        In place: `anchor` holds the behaviour log-probabilities on entry and the average policy's on return."""
        proximal = log_probs(self.action, self.policy.activation, self.ewma.params, obs, actions)
        advantages.mul_((proximal - anchor).exp().clamp_(max=self.config.importance_weight_cap))
        anchor.copy_(proximal)

    def _step(self, *minibatch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """One minibatch's gradient and Adam step; True (and no step) where `target_kl` stops the update."""
        cfg = self.config
        if self.numba_step is not None:
            return self._numba(*minibatch)
        grads, log_ratio, value_error, entropy = self.gradient_step(
            self.params, *minibatch, cfg.clip_range, cfg.value_coef, cfg.entropy_coef
        )
        if self.target_kl is not None:  # one host round trip a minibatch, only when asked for
            approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean().item()
            if approx_kl > 1.5 * self.target_kl:
                return log_ratio, value_error, entropy, True
        torch.cat([g.reshape(-1) for g in grads], out=self.grad)
        # clip_grad_norm_'s rule (max_norm / (norm + 1e-6), capped at 1) on the one buffer, without a host sync.
        norm = torch.linalg.vector_norm(self.grad)
        self.grad.mul_((cfg.max_grad_norm / (norm + 1e-6)).clamp_(max=1.0))
        exp_avg, exp_avg_sq, step = self.adam_state
        adam([self.flat], [self.grad], exp_avg, exp_avg_sq, [], step, fused=True,
             amsgrad=False, beta1=0.9, beta2=0.999, lr=self.learning_rate, weight_decay=0.0, eps=1e-5, maximize=False)  # fmt: skip
        return log_ratio, value_error, entropy, False

    def _numba_step(self) -> Any:
        """The compiled step of `kernel = "numba"`, compiled now (numba caches it on disk), so no iteration pays."""
        from algorithms.ppo_numba import NumbaStep  # only here: the torch kernel needs no numba

        if self.device.type != "cpu":
            raise ValueError(f"kernel 'numba' runs on the CPU, not on {self.device.type!r}; use kernel 'torch' there")
        started = time.perf_counter()
        kernel = NumbaStep(self.policy)
        self._host = tuple(t.numpy() for t in (self.flat, self.grad, self.adam_state[0][0], self.adam_state[1][0]))
        self._adam_step = self.adam_state[2][0].numpy()  # a 0-d view: the step count torch's Adam would keep
        size = self.config.minibatch_size
        dummy = (np.zeros((size, self.policy.obs_dim), np.float32), np.zeros((size, self.policy.act_dim), np.float32),
                 *(np.zeros(size, np.float32) for _ in range(3)))  # fmt: skip
        kernel.gradients(self.flat.numpy().copy(), np.zeros_like(self._host[1]), *dummy, 0.2, 0.5, 0.0)
        # Its products run on the BLAS that scipy loaded just now, for numba: with torch's thread count, not that
        # library's default of one per core, whose idle threads spin on cores the sampling workers need.
        threadpool_limits(torch.get_num_threads(), user_api="blas")
        self.compile_s = time.perf_counter() - started
        return kernel

    def _numba(self, *minibatch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """`_step` with the numba kernel: the same gradient, clip and Adam step, on numpy views of the same buffers."""
        from algorithms.ppo_numba import clipped_adam

        cfg = self.config
        flat, grad, exp_avg, exp_avg_sq = self._host
        arrays = [np.ascontiguousarray(m.numpy()) for m in minibatch]
        log_ratio, value_error, entropy = self.numba_step.gradients(
            flat, grad, *arrays, cfg.clip_range, cfg.value_coef, cfg.entropy_coef
        )
        recorded = torch.from_numpy(log_ratio), torch.from_numpy(value_error), torch.from_numpy(entropy)
        if self.target_kl is not None and float(np.mean((np.exp(log_ratio) - 1) - log_ratio)) > 1.5 * self.target_kl:
            return *recorded, True
        self._adam_step += 1
        clipped_adam(flat, grad, exp_avg, exp_avg_sq, int(self._adam_step), self.learning_rate, cfg.max_grad_norm)
        return *recorded, False

    def _anneal_learning_rate(self) -> None:
        self.learning_rate = self.config.learning_rate
        if self.config.anneal_lr and self.total_steps:
            self.learning_rate *= max(0.0, 1.0 - self.steps_trained / self.total_steps)

    def _compile(self) -> None:
        """`torch.compile` the gradient step, and compile it now, so no measured iteration pays for it."""
        started = time.perf_counter()
        self.gradient_step = partial(torch.compile(minibatch_gradients, dynamic=False), self.action, self.policy.activation)
        cfg = self.config
        # Every minibatch size an update will see: full ones, and the remainder of an uneven split.
        sizes = {cfg.minibatch_size, cfg.steps_per_iteration % cfg.minibatch_size} - {0}
        for size in sizes:
            dummy = [
                torch.zeros(size, self.policy.obs_dim, device=self.device),
                torch.zeros(
                    size, *self.action.action_shape, dtype=_TORCH_DTYPE[self.action.action_dtype.name], device=self.device
                ),
                *(torch.zeros(size, device=self.device) for _ in range(3)),
            ]
            self.gradient_step(self.params, *dummy, cfg.clip_range, cfg.value_coef, cfg.entropy_coef)
        self.compile_s = time.perf_counter() - started

    def describe(self) -> dict[str, Any]:
        return {
            "algorithm": self.settings_table,
            "device": str(self.device),
            "compiled": self.config.compile,
            "kernel": self.config.kernel,
            "compile_s": self.compile_s,
            "optimizer": "Adam (fused, one flat buffer)",
        }
