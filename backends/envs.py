"""Env construction: gymnasium ids or a user's own env class, its kwargs, the spaces the PPO core
supports, and a synthetic per-step cost."""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from algorithms.distributions import for_action_space

STEP_COST_KINDS = ("sleep", "busy")


@dataclass(frozen=True)
class EnvSpec:
    """Which env to make and how. Picklable, so workers can make their own."""

    id: str = "Pendulum-v1"
    """A registered gymnasium id (`CartPole-v1`, or `my_pkg:MyEnv-v0` to import the module that
    registers it), or a user's env class by entry point (`my_pkg.envs:MySim`)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `gymnasium.make`: the env's own (`g = 9.81`) and make's (`max_episode_steps = 500`)."""
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


class EnvError(ValueError):
    """An env that cannot be made, or whose spaces the PPO core does not support: one line for the user."""


def _make(spec: EnvSpec) -> gym.Env:
    """`gymnasium.make` for a registered id; for `module:Name` that registers nothing, the class `Name`."""
    if ":" in spec.id and spec.id.split(":", 1)[1] not in gym.envs.registry:
        module_name, _, attribute = spec.id.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise EnvError(
                f"env '{spec.id}': cannot import {module_name} ({error}); install it or put it on PYTHONPATH"
            ) from None
        # Importing may have registered the id (gymnasium's own `module:EnvId` form).
        if attribute not in gym.envs.registry:
            if not callable(getattr(module, attribute, None)):
                raise EnvError(f"env '{spec.id}': {module_name} has no env class or registered id '{attribute}'")
            return gym.make(gym.envs.registration.EnvSpec(attribute, entry_point=spec.id), **spec.kwargs)
    elif spec.id not in gym.envs.registry:
        raise EnvError(f"'{spec.id}' is not a registered gymnasium env id: use one (e.g. Pendulum-v1, CartPole-v1) "
                       "or your own class as 'module:Class'")  # fmt: skip
    return gym.make(spec.id, **spec.kwargs)


def make_env(spec: EnvSpec) -> gym.Env:
    """One env per the spec: Discrete observations one-hot, plus the step cost wrapper when a cost is set."""
    env = _make(spec)
    if isinstance(env.observation_space, gym.spaces.Discrete):
        env = gym.wrappers.FlattenObservation(env)  # a Discrete observation flattens to its one-hot vector
    if spec.step_cost_ms > 0:
        env = StepCost(env, spec.step_cost_ms, spec.step_cost_kind)
    return env


@dataclass(frozen=True)
class EnvSpaces:
    """What the policy needs to know of an env: observation length, action size and distribution."""

    obs_dim: int
    act_dim: int
    distribution: str


SUPPORTED_SPACES = (
    "observations: a 1-D Box, or Discrete (one-hot encoded); actions: a 1-D float Box (Gaussian) or Discrete (Categorical)"
)


def describe_env(spec: EnvSpec) -> EnvSpaces:
    """Make the env once and check its spaces; `EnvError` with one line if it cannot be made or used."""
    try:
        env = make_env(spec)
    except EnvError:
        raise
    except Exception as error:  # the user's kwargs or env constructor: name the env and the cause
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise EnvError(f"env '{spec.id}' with kwargs {spec.kwargs}: gymnasium.make failed: {message}") from None
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
        raise EnvError(f"env '{spec.id}': observation space {obs_space} is not supported ({SUPPORTED_SPACES}; "
                       "images, Dict and Tuple are not)")  # fmt: skip
    try:
        distribution, act_dim = for_action_space(act_space)
    except ValueError:
        raise EnvError(f"env '{spec.id}': action space {act_space} is not supported ({SUPPORTED_SPACES})") from None
    return EnvSpaces(int(obs_space.shape[0]), act_dim, distribution)
