"""Env construction: gymnasium ids or a user's own env class, its kwargs, the spaces the PPO core
supports, and a synthetic cost per step and per reset that looks like a real simulator's.

Real envs rarely cost a fixed time per step: a physics step varies with contacts, a game with what is
on screen, and in a batch of envs some are slower than others. The cost model (`CostModel`) gives each
step a cost drawn from a distribution of a given mean (constant, lognormal, or heavy-tailed Pareto at a
given coefficient of variation), makes a fraction of envs k times slower, and adds a cost to every reset.
Each env draws its costs from its own generator, seeded by the run's seed and the env's global index, so
every backend pays the same cost at the same step of the same env, wherever that env lives.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from algorithms.distributions import for_action_space

STEP_COST_KINDS = ("sleep", "busy")
STEP_COST_DISTRIBUTIONS = ("constant", "lognormal", "pareto")
COST_STREAM = 0xC057
"""Third word of a cost generator's seed, `(seed, env index, COST_STREAM)`: apart from the exploration
noise's `(seed, env index)`, so costs and actions never share draws."""


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
    """`sleep` (a simulator waiting on I/O: frees the core) or `busy` (CPU-bound physics); resets too."""
    step_cost_distribution: str = "constant"
    """How one step's cost varies around `step_cost_ms`, its mean: `constant`, `lognormal` or `pareto`
    (heavy-tailed), the last two at coefficient of variation `step_cost_cv`."""
    step_cost_cv: float = 0.0
    """Standard deviation over mean of a step's cost (lognormal, pareto); 0 for constant."""
    slow_env_fraction: float = 0.0
    """Fraction of envs whose every step and reset cost `slow_env_factor` times more: env i is slow when
    floor((i + 1) f) > floor(i f), the last env of every 1/f (f = 1/8: envs 7, 15, ...)."""
    slow_env_factor: float = 1.0
    reset_cost_ms: float = 0.0
    """Synthetic cost of every reset (autoresets included), of `step_cost_kind`."""

    def __post_init__(self) -> None:
        for name in ("step_cost_ms", "step_cost_cv", "reset_cost_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):  # TOML has inf and nan
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.step_cost_kind not in STEP_COST_KINDS:
            raise ValueError(f"step_cost_kind must be one of {', '.join(STEP_COST_KINDS)}, got {self.step_cost_kind!r}")
        if self.step_cost_distribution not in STEP_COST_DISTRIBUTIONS:
            raise ValueError(f"step_cost_distribution must be one of {', '.join(STEP_COST_DISTRIBUTIONS)}, "
                             f"got {self.step_cost_distribution!r}")  # fmt: skip
        if (self.step_cost_distribution == "constant") != (self.step_cost_cv == 0):
            raise ValueError("step_cost_cv > 0 goes with step_cost_distribution = \"lognormal\" or \"pareto\", and "
                             f"only with them; got {self.step_cost_distribution!r} with step_cost_cv = {self.step_cost_cv}")  # fmt: skip
        if not (0 <= self.slow_env_fraction < 1):
            raise ValueError(f"slow_env_fraction must be in [0, 1), got {self.slow_env_fraction}")
        if not (math.isfinite(self.slow_env_factor) and self.slow_env_factor >= 1):
            raise ValueError(f"slow_env_factor must be a finite number >= 1, got {self.slow_env_factor}")

    @property
    def has_cost(self) -> bool:
        """Whether a step or a reset pays a synthetic cost."""
        return self.step_cost_ms > 0 or self.reset_cost_ms > 0

    def is_slow(self, env_index: int) -> bool:
        """Whether global env `env_index` is one of the `slow_env_fraction` that cost `slow_env_factor` times more."""
        f = self.slow_env_fraction
        return math.floor((env_index + 1) * f) > math.floor(env_index * f)

    @property
    def worst_step_cost_ms(self) -> float:
        """A generous bound on one step's cost for deadlines: a slow env's mean plus one standard deviation, plus a
        reset (a margin, not an estimate: a Pareto draw may exceed it, but not a fragment's sum by much)."""
        return self.step_cost_ms * self.slow_env_factor * (1 + self.step_cost_cv) + self.reset_cost_ms

    def mean_step_cost_ms(self, num_envs: int) -> float:
        """The configured step cost averaged over `num_envs` envs (0..num_envs-1), slow ones included."""
        slow = sum(self.is_slow(i) for i in range(num_envs))
        return self.step_cost_ms * (1 + (self.slow_env_factor - 1) * slow / num_envs)


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


class CostModel:
    """One env's step costs, drawn from its own generator: the same sequence for the same (seed, env index)
    in any process. Lognormal with mean m and coefficient of variation c: sigma^2 = ln(1 + c^2), mu = ln m -
    sigma^2 / 2. Pareto (type I) at the same mean and c: shape a = 1 + sqrt(1 + 1/c^2) (so a > 2, finite
    variance), scale m (a - 1) / a."""

    def __init__(self, spec: EnvSpec, env_index: int, seed: int) -> None:
        factor = spec.slow_env_factor if spec.is_slow(env_index) else 1.0
        self.mean_ms = spec.step_cost_ms * factor
        self.reset_ms = spec.reset_cost_ms * factor
        self.distribution = spec.step_cost_distribution
        self.generator = np.random.default_rng([seed, env_index, COST_STREAM])
        cv = spec.step_cost_cv
        self.sigma = math.sqrt(math.log1p(cv * cv)) if self.distribution == "lognormal" else 0.0
        self.shape = 1 + math.sqrt(1 + 1 / (cv * cv)) if self.distribution == "pareto" else math.inf

    def draw_ms(self) -> float:
        """The next step's cost in milliseconds."""
        if self.distribution == "lognormal":
            return float(self.generator.lognormal(math.log(self.mean_ms) - self.sigma**2 / 2, self.sigma))
        if self.distribution == "pareto":
            # numpy's pareto is Lomax (Pareto II, from 0): + 1 makes it Pareto I with scale 1.
            return float((self.generator.pareto(self.shape) + 1) * self.mean_ms * (self.shape - 1) / self.shape)
        return self.mean_ms


def pay(cost_ms: float, busy: bool) -> float:
    """Spend `cost_ms`: a sleep, or a busy-wait that holds a core. Returns the wall seconds it took."""
    started = time.perf_counter()
    if busy:
        # Spin on this thread's own CPU time, not the wall clock: a worker descheduled on an
        # oversubscribed machine must still burn the CPU it was asked to (issue 10).
        deadline = time.thread_time() + cost_ms / 1000.0
        while time.thread_time() < deadline:
            pass
    else:
        time.sleep(cost_ms / 1000.0)
    return time.perf_counter() - started


class StepCost(gym.Wrapper):
    """Adds the cost model's cost to every `step` and `reset` of one env.

    The wall time actually spent goes to `STEP_COST_METER` (resets' included; only steps are counted):
    a sleep overshoots by 50-100 us, and a busy-wait descheduled on an oversubscribed machine takes longer
    than its CPU time.
    """

    def __init__(self, env: gym.Env, spec: EnvSpec, env_index: int, seed: int) -> None:
        super().__init__(env)
        self.costs = CostModel(spec, env_index, seed)
        self.busy = spec.step_cost_kind == "busy"

    def reset(self, **kwargs):  # noqa: ANN003, ANN201 - gymnasium's signature
        if self.costs.reset_ms > 0:
            STEP_COST_METER.seconds += pay(self.costs.reset_ms, self.busy)
        return self.env.reset(**kwargs)

    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        if self.costs.mean_ms > 0:
            STEP_COST_METER.seconds += pay(self.costs.draw_ms(), self.busy)
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


def make_env(spec: EnvSpec, env_index: int = 0, seed: int = 0) -> gym.Env:
    """Global env `env_index` of a run seeded `seed`: Discrete observations one-hot, plus the cost wrapper when a
    cost is set (its draws seeded by `(seed, env_index)`; the env itself is seeded at its first reset)."""
    env = _make(spec)
    if isinstance(env.observation_space, gym.spaces.Discrete):
        env = gym.wrappers.FlattenObservation(env)  # a Discrete observation flattens to its one-hot vector
    if spec.has_cost:
        env = StepCost(env, spec, env_index, seed)
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
