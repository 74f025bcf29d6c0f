"""`gym_async`: gymnasium's own `AsyncVectorEnv`, run as itself: one subprocess per env, the learner's policy
batching every env's step (central inference), the same sampling loop and stepper as `vecenv`."""

from __future__ import annotations

import dataclasses
import functools
from abc import abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv

from algorithms.inference import InferencePolicy
from backends import GymAsyncOptions
from backends.base import BackendSpec, Collected, PolicySpec
from backends.envs import STEP_COST_METER, EnvCost, EnvSpec, make_env
from backends.sampling import EnvBlock, FragmentSampler, NoiseSource, SamplingSplit, StepResult
from backends.vecenv import VecEnvBackend


class MeteredEnv(gym.Wrapper):
    """`make_env`'s env, plus a way to read, from the learner, the step cost meter of the process it lives in
    (`STEP_COST_METER` is per process: an env in a subprocess spends its synthetic cost on that process's meter).
    With one env per process, as both tools run them, the process's meter is the env's."""

    def step_cost_reading(self) -> tuple[float, int]:
        reading = STEP_COST_METER.reading()
        return reading.seconds, reading.steps


def metered_env(spec: EnvSpec, env_index: int = 0, seed: int = 0) -> gym.Env:
    """`make_env(spec, env_index, seed)` in a `MeteredEnv` (picklable: a module-level function, for the tools'
    subprocesses)."""
    return MeteredEnv(make_env(spec, env_index, seed))


def env_cost_of(readings: list[tuple[float, int]]) -> EnvCost:
    """Every env's `step_cost_reading`, summed."""
    return sum((EnvCost(seconds, steps) for seconds, steps in readings), EnvCost())


class AsyncEnvBlock(EnvBlock):
    """An `EnvBlock` whose vector env is an `AsyncVectorEnv`: what it adds is which env failed."""

    def step(self, actions: np.ndarray) -> StepResult:
        try:
            return super().step(actions)
        except Exception as error:
            # gymnasium re-raises a worker's exception as `type(value)` in this process and logs its traceback, having
            # dropped the failed worker's pipe (`parent_pipes[i] = None`): that names the env.
            failed = [int(self.env_ids[i]) for i, pipe in enumerate(self.vec.parent_pipes) if pipe is None]
            error.add_note(f"raised in env {', '.join(map(str, failed)) or '?'}'s process (gymnasium AsyncVectorEnv); "
                           "gymnasium logged its traceback above")  # fmt: skip
            raise

    def pids(self) -> list[int]:
        """Each env's process, in env order."""
        return [process.pid for process in self.vec.processes]

    def cost_readings(self) -> list[tuple[float, int]]:
        """Each env's process's step cost meter (`MeteredEnv`)."""
        return list(self.vec.call("step_cost_reading"))


class EnvProcessesBackend(VecEnvBackend):
    """A tool that runs each env in a process of its own while the learner's policy batches every env's step
    (central inference): gymnasium's AsyncVectorEnv, SB3's SubprocVecEnv. The policy copy is the learner's own, so
    weights load in-process, as in `vecenv`. Subclasses make the block of env processes (`_block`): a `Stepper` that
    also says each env's process (`pids`) and reads each process's cost meter (`cost_readings`)."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.placement: list[dict[str, Any]] = []
        """Per env, its process: filled by `start`."""
        self.env_cost_set = False

    @abstractmethod
    def _block(self, env: EnvSpec, env_ids: np.ndarray, seed: int) -> Any:
        """The tool's vector env over `env_ids`, as a stepper with `pids()` and `cost_readings()`."""

    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        env_ids = np.arange(self.spec.num_envs)
        self.block = self._block(env, env_ids, seed)
        self.placement = [{"worker": int(i), "pid": pid} for i, pid in zip(env_ids, self.block.pids(), strict=True)]
        self.env_cost_set = env.has_cost
        self.policy = InferencePolicy(policy)
        noise = NoiseSource(env_ids, seed, policy.action)
        self.sampler = FragmentSampler(self.block, self.policy, noise, batched=self.batched_inference)

    def take(self) -> Collected:
        # The envs pay their synthetic cost in their own processes: read their meters around the fragment (one more
        # round trip each way, only when a cost is set; without one the harness's in-process reading, 0, is right).
        if not self.env_cost_set:
            return super().take()
        before = env_cost_of(self.block.cost_readings())
        collected = super().take()
        return dataclasses.replace(collected, env_cost=env_cost_of(self.block.cost_readings()) - before)

    @property
    def last_split(self) -> SamplingSplit:
        """Where the last fragment's sampling time went (env: each step's wait on the slowest env process)."""
        return self.sampler.last_split

    def describe(self) -> dict[str, Any]:
        # Each env's process, for the memory record (harness.case.memory_by_process) and the leak checks.
        return super().describe() | {"placement": self.placement}


class GymAsyncBackend(EnvProcessesBackend):
    """Envs in gymnasium's AsyncVectorEnv subprocesses; each step's actions and results cross the pipes (observations
    through shared memory unless `shared_memory = false`)."""

    def _block(self, env: EnvSpec, env_ids: np.ndarray, seed: int) -> AsyncEnvBlock:
        options = self.spec.settings
        assert isinstance(options, GymAsyncOptions)
        vector = functools.partial(AsyncVectorEnv, shared_memory=options.shared_memory, context=options.context)
        return AsyncEnvBlock(env, env_ids, seed, vector=vector, make=metered_env)

    def describe(self) -> dict[str, Any]:
        options = self.spec.settings
        assert isinstance(options, GymAsyncOptions)
        observations = "shared memory" if options.shared_memory else "pickled through the pipes"
        return super().describe() | {
            "transport": f"gymnasium AsyncVectorEnv: actions and step results through one pipe per env, observations {observations}",
        }
