"""V-trace targets and policy-gradient advantages (Espeholt et al. 2018, "IMPALA", section 4.1).

For a batch sampled by a behaviour policy mu and trained on by the target policy pi, with
truncated importance weights rho_t = min(rho_bar, pi/mu) and c_t = lambda min(c_bar, pi/mu):

    delta_t = rho_t (r_t + gamma V(x_{t+1}) - V(x_t))
    v_t     = V(x_t) + delta_t + gamma c_t (v_{t+1} - V(x_{t+1}))        (remark 1, the recursion)
    A_t     = rho_pg_t (r_t + gamma v_{t+1} - V(x_t))                     (the policy-gradient advantage)

with rho_pg_t = min(rho_pg_bar, pi/mu). Episode boundaries are handled as GAE does (`gae.py`):
a terminated episode's next value is 0; a truncated one is bootstrapped with the value of its
last observation (Pardo et al. 2018), and the recursion does not carry across either. On a fresh
batch (pi = mu) with the clip thresholds >= 1, v_t is the lambda-return and A_t the one-step
advantage towards it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VTraceClips:
    """The truncation levels of the three importance weights."""

    rho: float = 1.0
    """rho_bar: caps the weight of each TD error in the value target (the fixed point it converges to)."""
    pg_rho: float = 1.0
    """rho_bar of the policy-gradient advantage."""
    c: float = 1.0
    """c_bar: caps the trace (how far a correction propagates back; the speed of convergence)."""


def vtrace(
    log_ratio: np.ndarray,
    rewards: np.ndarray,
    values: np.ndarray,
    terminations: np.ndarray,
    truncations: np.ndarray,
    final_values: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    trace_lambda: float = 1.0,
    clips: VTraceClips = VTraceClips(),
) -> tuple[np.ndarray, np.ndarray]:
    """V-trace value targets `v` and policy-gradient advantages `A`, both `(T, N)` float32.

    `log_ratio` is log pi - log mu of each sampled action, `values` V(x_t) under the value
    function being trained; `final_values[t]` bootstraps a truncation at step t and
    `last_values` the step after the last one (`Rollout`'s fields of the same names).
    """
    ratio = np.exp(log_ratio.astype(np.float64))
    rho = np.minimum(clips.rho, ratio)
    c = trace_lambda * np.minimum(clips.c, ratio)
    pg_rho = np.minimum(clips.pg_rho, ratio)
    steps = rewards.shape[0]
    targets = np.zeros(rewards.shape, np.float64)
    advantages = np.zeros(rewards.shape, np.float64)
    next_value = last_values.astype(np.float64)  # V(x_{t+1}) within the fragment
    next_target = next_value  # v_{t+1}; at the fragment's end the value itself (no correction beyond it)
    for t in reversed(range(steps)):
        ended = terminations[t] | truncations[t]
        after_end = np.where(terminations[t], 0.0, final_values[t])  # the episode's own next value
        bootstrap = np.where(ended, after_end, next_value)
        bootstrap_target = np.where(ended, after_end, next_target)
        delta = rho[t] * (rewards[t] + gamma * bootstrap - values[t])
        carried = np.where(ended, 0.0, next_target - next_value)
        targets[t] = values[t] + delta + gamma * c[t] * carried
        advantages[t] = pg_rho[t] * (rewards[t] + gamma * bootstrap_target - values[t])
        next_value, next_target = values[t].astype(np.float64), targets[t]
    return targets.astype(np.float32), advantages.astype(np.float32)
