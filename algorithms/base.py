"""The learner interface: the seam between the harness, which owns time, and an algorithm.

The harness drives any learner the same way (SB3's `collect_rollouts`/`train` seam):
broadcast `weights()` as `version`, have a backend sample a rollout with them, hand the
rollout to `train`, record the named statistics it returns. It never knows which
algorithm it is timing, nor the names of its statistics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from algorithms.config import LearnerConfig, network_of
from algorithms.policy import PolicySpec
from algorithms.rollout import Rollout

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class AlgorithmSpec:
    """A suite's `[algorithm]` table: which learner, on which device."""

    name: str = "ppo"
    """A name in `algorithms.registry.LEARNERS`, or a learner class as `module:Class`."""
    device: str = "cpu"
    """`cpu`, `cuda`, or `auto` (CUDA when torch sees a GPU). Workers always infer on the CPU."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")


@dataclass(frozen=True)
class LearnerSetup:
    """Everything a learner is built from."""

    config: LearnerConfig
    """The learner's settings (the model of its `settings_table`): the batch size (`steps_per_iteration`) and the
    network (`hidden_sizes`, `activation`) are read by the harness too."""
    policy: PolicySpec
    """The actor-critic whose flat weights the backends' policy copies load."""
    seed: int
    total_steps: int | None = None
    """The step budget, for schedules such as learning-rate annealing (None: unknown)."""
    device: str = "cpu"
    """Where the learner computes: `cpu`, `cuda`, or `auto` (CUDA when torch sees a GPU)."""
    max_policy_lag: int = 0
    """How many versions behind the learner a batch may have been sampled (0: on-policy; the
    `overlap` schedule hands the learner batches up to `max_lag` versions old)."""
    publish_every: str | int = "iteration"
    """When `train` hands out weights through `Learner.on_publish` besides its end: `iteration` (never), `epoch`
    (after each epoch but the last), or every N optimiser steps (but not after the last). Only a learner whose
    settings count them (`publications`) can; the suite refuses it for others."""

    def __post_init__(self) -> None:
        network, configured = (self.policy.hidden_sizes, self.policy.activation), network_of(self.config)
        if network != configured:
            raise ValueError(f"the policy's network {network} differs from the config's {configured}")


INITIAL_KL = "initial_kl"
"""A statistic any learner may return from `train`: the mean KL from the policy that sampled the batch to the
learner's policy as the update starts (0 on a fresh batch; what staleness costs under `overlap`)."""


class Learner(ABC):
    """An algorithm that trains the actor-critic on rollouts and versions its weights."""

    #: The suite table its settings are read from: a name in `algorithms.config.SETTINGS_TABLES`.
    settings_table: ClassVar[str] = "ppo"

    #: Bumped by every `train`; the version the weights of `weights()` carry.
    version: int = 0
    #: Env steps trained on so far.
    steps_trained: int = 0
    #: Optimiser steps taken so far (None: this learner does not count them). The schedule measures policy
    #: lag in these as well as in versions: an update's size varies with the algorithm and its settings.
    optimizer_steps: int | None = None

    #: Called by `train` at each of `LearnerSetup.publish_every`'s points during the update, with the weights then
    #: (a flat float32 host copy) and the optimiser steps taken so far; the schedule that set it broadcasts them.
    on_publish: Callable[[np.ndarray, int], None] | None = None

    @abstractmethod
    def __init__(self, setup: LearnerSetup) -> None: ...

    @abstractmethod
    def weights(self) -> np.ndarray:
        """The current weights as one flat float32 host buffer in `PolicySpec.layout()` order."""

    @abstractmethod
    def train(self, rollout: Rollout) -> dict[str, float]:
        """Learn from a rollout; bump `version` and `steps_trained`; return named statistics.

        A statistic named `*_s` is a duration the learner measured inside the call
        (e.g. PPO's advantage estimation); the harness times the call itself from outside.
        """

    def describe(self) -> dict[str, Any]:
        """Self-description recorded in results (device, options)."""
        return {}
