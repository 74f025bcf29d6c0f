"""Envs a user might bring, loaded by entry point (`tests.custom_envs:LineWalk`), never registered.

`LineWalk` is a small simulator the PPO core supports: a flat Box observation, a Discrete action
whose values start at -1 (so the Categorical's index must be shifted), and episodes that
terminate at different steps in each env. `PixelWalk` observes images, which it does not.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class LineWalk(gym.Env):
    """Walk from a random start on [-length, length] to 0: actions -1, 0, +1; reward -1 per step."""

    def __init__(self, length: int = 5) -> None:
        self.length = length
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(3, start=-1)
        self.position = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.position / self.length, float(self.position == 0)], np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN206 - gymnasium's signature
        super().reset(seed=seed)
        self.position = int(self.np_random.choice([-1, 1]) * self.np_random.integers(1, self.length + 1))
        return self._obs(), {}

    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self.position = int(np.clip(self.position + int(action), -self.length, self.length))
        return self._obs(), -1.0, self.position == 0, False, {}


class PixelWalk(LineWalk):
    """LineWalk seen through a 16x16 RGB image: an observation space this PPO does not take."""

    def __init__(self, length: int = 5) -> None:
        super().__init__(length)
        self.observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)

    def _obs(self) -> np.ndarray:
        return np.zeros((16, 16, 3), np.uint8)


class ImportProbe(gym.Env):
    """Observes whether the process it runs in has imported torch: 1.0 if so. Episodes of 5 steps."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def _obs(self) -> np.ndarray:
        import sys

        return np.array([float("torch" in sys.modules)], np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN206 - gymnasium's signature
        super().reset(seed=seed)
        self.steps = 0
        return self._obs(), {}

    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        self.steps += 1
        return self._obs(), 0.0, self.steps == 5, False, {}


class BusyPendulum(gym.Env):
    """Pendulum whose every step also computes for a lognormal time: mean `cost_ms`, coefficient of variation `cv`,
    drawn from the env's own generator. A CPU-bound simulator of uneven cost that the harness's tuning never saw:
    `harness advise`'s brute-force check (tests/test_advise.py) runs on it."""

    def __init__(self, cost_ms: float = 0.5, cv: float = 0.5) -> None:
        from gymnasium.envs.classic_control.pendulum import PendulumEnv

        self.inner = PendulumEnv()
        self.observation_space, self.action_space = self.inner.observation_space, self.inner.action_space
        self.sigma = float(np.sqrt(np.log1p(cv**2)))
        self.mu = float(np.log(cost_ms / 1000) - self.sigma**2 / 2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: ANN206 - gymnasium's signature
        super().reset(seed=seed)
        return self.inner.reset(seed=seed, options=options)

    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        import time

        until = time.perf_counter() + self.np_random.lognormal(self.mu, self.sigma)
        while time.perf_counter() < until:
            pass
        return self.inner.step(action)
