"""Env construction: gymnasium ids, env options, and a synthetic per-step cost."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

STEP_COST_KINDS = ("sleep", "busy")


@dataclass(frozen=True)
class EnvSpec:
    """Which env to make and how. Picklable, so workers can make their own."""

    id: str = "Pendulum-v1"
    """A registered gymnasium id."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `gymnasium.make`."""
    step_cost_ms: float = 0.0
    """Synthetic cost added to every step, to study scaling with a heavier simulator."""
    step_cost_kind: str = "sleep"
    """`sleep` (a simulator waiting on I/O: frees the core) or `busy` (CPU-bound physics)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_cost_ms) and self.step_cost_ms >= 0):  # TOML has inf and nan
            raise ValueError(f"step_cost_ms must be a finite number >= 0, got {self.step_cost_ms}")
        if self.step_cost_kind not in STEP_COST_KINDS:
            raise ValueError(f"step_cost_kind must be one of {', '.join(STEP_COST_KINDS)}, got {self.step_cost_kind!r}")


@dataclass(frozen=True)
class EnvCost:
    """Wall seconds spent inside the synthetic step cost, summed, and how many steps paid it."""

    seconds: float = 0.0
    steps: int = 0

    def __add__(self, other: EnvCost) -> EnvCost:
        return EnvCost(self.seconds + other.seconds, self.steps + other.steps)

    def __sub__(self, other: EnvCost) -> EnvCost:
        return EnvCost(self.seconds - other.seconds, self.steps - other.steps)

    @property
    def mean_ms(self) -> float | None:
        """Measured cost of one step in milliseconds; None when no step paid a cost (none configured)."""
        return 1000.0 * self.seconds / self.steps if self.steps else None


class CostMeter:
    """What every `StepCost` in this process has spent so far; callers difference two readings.

    One meter per process, not per env: a worker reads it around a fragment (or a step), an
    in-process backend's caller around an iteration, and nobody has to reach into wrapped envs.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0

    def reading(self) -> EnvCost:
        return EnvCost(self.seconds, self.steps)


STEP_COST_METER = CostMeter()


class StepCost(gym.Wrapper):
    """Adds a fixed cost to every `step`: a sleep, or a busy-wait that holds a core.

    The wall time actually spent goes to `STEP_COST_METER`: a sleep overshoots by 50-100 us, and a
    busy-wait descheduled on an oversubscribed machine takes longer than its CPU time.
    """

    def __init__(self, env: gym.Env, cost_ms: float, kind: str) -> None:
        super().__init__(env)
        self.cost_s = cost_ms / 1000.0
        self.busy = kind == "busy"

    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        started = time.perf_counter()
        if self.busy:
            # Spin on this thread's own CPU time, not the wall clock: a worker descheduled on an
            # oversubscribed machine must still burn the CPU it was asked to (issue 10).
            deadline = time.thread_time() + self.cost_s
            while time.thread_time() < deadline:
                pass
        else:
            time.sleep(self.cost_s)
        STEP_COST_METER.seconds += time.perf_counter() - started
        STEP_COST_METER.steps += 1
        return self.env.step(action)


def registered_env_ids() -> list[str]:
    """Every id gymnasium can make."""
    return sorted(gym.envs.registry.keys())


def make_env(spec: EnvSpec) -> gym.Env:
    """One env per the spec, with the step cost wrapper when a cost is set."""
    env = gym.make(spec.id, **spec.options)
    if spec.step_cost_ms > 0:
        env = StepCost(env, spec.step_cost_ms, spec.step_cost_kind)
    return env


def env_dims(spec: EnvSpec) -> tuple[int, int]:
    """Flat observation and action sizes (continuous Box spaces only, as PPO here needs)."""
    env = make_env(spec)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        if not (isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)):
            raise ValueError(f"{spec.id} needs Box observation and action spaces for this PPO, has {obs_space} and {act_space}")
        return int(obs_space.shape[0]), int(act_space.shape[0])
    finally:
        env.close()
