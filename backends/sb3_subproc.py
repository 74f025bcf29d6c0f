"""`sb3_subproc`: Stable-Baselines3's own `SubprocVecEnv`, run as itself: one subprocess per env, the learner's
policy batching every env's step (central inference), the same sampling loop as `vecenv`.

SB3's VecEnv API differs from gymnasium's in what a step returns, and this stepper translates it back
(stable_baselines3/common/vec_env/subproc_vec_env.py, `_worker`):
- one `dones` = terminated or truncated, with `infos[j]["TimeLimit.truncated"] = truncated and not terminated`;
  so an episode that ends both ways at once reads as terminated only (gymnasium's vector envs flag both). The
  sampler bootstraps only a truncation that is not also a termination, so GAE is the same either way.
- it resets an ended env in the same step and puts the ended episode's last observation in
  `infos[j]["terminal_observation"]`: same-step autoreset, as every backend here samples.
- seeds are given by `VecEnv.seed(s)`, which seeds env i with `s + i` at the next `reset()`; the autoresets
  that follow pass no seed, as gymnasium's do.
- an env's exception ends its process (`_worker` catches only EOFError and KeyboardInterrupt) and the learner
  sees the pipe close (EOFError, BrokenPipeError), with the cause printed on the process's stderr only. So each
  env here reports its own exception to a file the learner reads when a pipe breaks, and the learner re-raises
  it as the env raised it, noting which env and its traceback (as gymnasium's AsyncVectorEnv re-raises).
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import SubprocVecEnv

from algorithms.distributions import distribution_of
from backends import SB3SubprocOptions
from backends.envs import EnvSpec
from backends.gym_async import EnvProcessesBackend, metered_env
from backends.sampling import StepResult
from backends.workers import WorkerError

CLOSE_WAIT_S = 10.0
"""How long an env process may take to exit after being told to close, or terminated, before it is killed."""


class ReportedEnv(gym.Wrapper):
    """Writes the exception its env raises in `reset` or `step` to `report` (pickled, with its traceback), then
    lets it end the process, as SB3's worker does with any exception."""

    def __init__(self, env: gym.Env, report: Path) -> None:
        super().__init__(env)
        self.report = report

    def reset(self, **kwargs):  # noqa: ANN003, ANN201 - gymnasium's signature
        try:
            return super().reset(**kwargs)
        except Exception as error:
            write_report(self.report, error)
            raise

    def step(self, action):  # noqa: ANN001, ANN201 - gymnasium's signature
        try:
            return super().step(action)
        except Exception as error:
            write_report(self.report, error)
            raise


def write_report(path: Path, error: Exception) -> None:
    """The exception and its traceback, for the learner; an exception that does not pickle goes as its text."""
    trace = traceback.format_exc()
    try:
        data = pickle.dumps((error, trace))
    except Exception:
        data = pickle.dumps((RuntimeError(f"{type(error).__name__}: {error}"), trace))
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)  # whole or absent: the learner may look the moment the pipe breaks


@dataclass(frozen=True)
class ReportingEnvFn:
    """What SB3 is given for one env (it cloudpickles it into the env's process): the metered env, in a
    `ReportedEnv` that writes its exception to `report`."""

    spec: EnvSpec
    report: Path
    env_index: int = 0
    seed: int = 0
    """The run's seed: with the env's global index, what seeds its synthetic costs (`backends.envs.CostModel`)."""

    def __call__(self) -> gym.Env:
        try:
            env = metered_env(self.spec, self.env_index, self.seed)
        except Exception as error:
            write_report(self.report, error)
            raise
        return ReportedEnv(env, self.report)


class SubprocBlock:
    """Envs `env_ids` in an SB3 `SubprocVecEnv`, stepped like an `EnvBlock` (the `Stepper` the sampler drives)."""

    def __init__(self, spec: EnvSpec, env_ids: np.ndarray, seed: int, start_method: str) -> None:
        self.env_ids = np.asarray(env_ids, dtype=np.int64)
        self.seed = seed
        self.broken = False
        """A call to SB3 found an env's pipe closed: SB3's own close can no longer be used."""
        self.reports = Path(tempfile.mkdtemp(prefix="sb3_subproc-"))
        """Where each env writes the exception that ends its process: env-<i>.pickle."""
        fns = [ReportingEnvFn(spec, self.reports / f"env-{int(i)}.pickle", int(i), seed) for i in self.env_ids]
        try:
            self.vec = self._call(SubprocVecEnv, fns, start_method=start_method)
        except BaseException:
            shutil.rmtree(self.reports, ignore_errors=True)
            raise
        self.action_space = self.vec.action_space
        self.action = distribution_of(self.action_space)

    def reset(self) -> np.ndarray:
        # SB3 seeds its env j with `s + j` at the next reset: env ids are contiguous, so env i gets `seed + i`.
        self.vec.seed(self.seed + int(self.env_ids[0]))
        return np.asarray(self._call(self.vec.reset), dtype=np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        obs, rewards, dones, infos = self._call(self.vec.step, self.action.to_env(actions, self.action_space))
        obs = np.asarray(obs, dtype=np.float32)
        dones = np.asarray(dones, dtype=bool)
        truncations = dones & np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
        final_obs = obs.copy()
        for j in np.flatnonzero(dones):
            final_obs[j] = infos[j]["terminal_observation"]
        return StepResult(obs, np.asarray(rewards, dtype=np.float32), dones & ~truncations, truncations, final_obs)

    def pids(self) -> list[int]:
        """Each env's process, in env order."""
        return [process.pid for process in self.vec.processes]

    def cost_readings(self) -> list[tuple[float, int]]:
        """Each env's process's step cost meter (`MeteredEnv`)."""
        return self._call(self.vec.env_method, "step_cost_reading")

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """`method(*args)` of SB3; a pipe that broke becomes the exception the env raised, or a `WorkerError` naming
        the env whose process died without one (killed)."""
        try:
            return method(*args, **kwargs)
        except (EOFError, BrokenPipeError, ConnectionResetError) as broken:
            self.broken = True
            raise self._failure() from broken

    def _failure(self) -> BaseException:
        reports = sorted(self.reports.glob("env-*.pickle"), key=lambda p: int(p.stem.split("-")[1]))
        if reports:
            env = int(reports[0].stem.split("-")[1])
            error, trace = pickle.loads(reports[0].read_bytes())
            error.add_note(f"raised in env {env}'s process (Stable-Baselines3 SubprocVecEnv):\n{trace}")
            return error
        processes = getattr(getattr(self, "vec", None), "processes", [])
        for process in processes:
            process.join(timeout=1.0)  # a killed process: reap it, to name it
        dead = [f"env {int(i)} (pid {p.pid}, exit code {p.exitcode})" for i, p in zip(self.env_ids, processes, strict=False)
                if p.exitcode is not None]  # fmt: skip
        return WorkerError(f"worker {', '.join(dead) or '?'}: Stable-Baselines3 SubprocVecEnv process died without an exception")

    def close(self) -> None:
        vec = self.vec
        try:
            # SB3's close waits for every env to answer, and for a step it was waiting on: after a broken pipe some
            # answers were read and one never comes, so it would wait forever. Then the processes are ended below.
            if not self.broken:
                vec.close()
        except (EOFError, OSError):
            pass  # an env process went while closing
        finally:
            for process in vec.processes:  # all joined already, unless an env's process broke SB3's close
                if process.is_alive():
                    process.terminate()
                    process.join(timeout=CLOSE_WAIT_S)
                if process.is_alive():
                    process.kill()
                process.join()
            for remote in vec.remotes:
                remote.close()
            shutil.rmtree(self.reports, ignore_errors=True)


class SB3SubprocBackend(EnvProcessesBackend):
    """Envs in SB3's SubprocVecEnv subprocesses; each step's actions and results are pickled through one pipe per env."""

    def _block(self, env: EnvSpec, env_ids: np.ndarray, seed: int) -> SubprocBlock:
        options = self.spec.settings
        assert isinstance(options, SB3SubprocOptions)
        return SubprocBlock(env, env_ids, seed, options.start_method)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "transport": "Stable-Baselines3 SubprocVecEnv: actions and step results pickled through one pipe per env",
        }
