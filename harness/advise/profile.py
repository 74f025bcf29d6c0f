"""The profile: what `harness advise` measures of a user's env and of this machine, and the parameters the cost
model (`harness/advise/model.py`) reads from it.

Each part is measured by `harness/advise/probe.py` in a fresh process. The raw measurements are kept (they go
into run.json) and turned into model parameters here, by arithmetic a reader can redo: medians, differences,
and straight lines through two or three probe points. A probe point is never a configuration the model is then
asked to predict end to end: the probes time pieces (one env, one policy call, one broadcast, one worker's
fragment, a round of one step per worker) with no learner beside them.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Batch sizes at which numpy inference is timed; the model interpolates between them."""
WORKER_COUNTS = (1, 2, 4)
"""Worker counts at which broadcast, the round's fixed cost, start-up and memory are timed."""
LOOP_ENVS = (1, 4)
"""Env counts of the in-process loop probe (one process, so no contention at either)."""
CENTRAL_PROCESSES = (1, 2)
"""Process counts of the central-inference probes: no more than two, so no busy env competes for a core here."""
ENVPOOL_ENVS = (1, 8)
STEP_SAMPLES_KEPT = 4000
"""Env step times kept for the model's straggler estimate (a random sample of those measured, in order)."""


@dataclass(frozen=True)
class Line:
    """`intercept + slope * x`, through probe points (least squares; a negative part clamped to 0, since no cost here
    falls as workers are added, and timer noise must not make one)."""

    intercept: float
    slope: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x

    @classmethod
    def through(cls, xs: list[float], ys: list[float]) -> Line:
        if len(xs) == 1:
            return cls(max(0.0, ys[0]), 0.0)
        slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
        slope = max(0.0, float(slope))
        if intercept < 0:  # keep the line through the points' mean, flat at 0 on the left
            intercept = 0.0
            slope = max(0.0, float(np.mean(ys) / np.mean(xs)))
        return cls(float(intercept), slope)


@dataclass(frozen=True)
class EnvProfile:
    """The env under a random policy, stepped alone in one process."""

    step_mean_s: float
    step_cv: float
    step_p99_s: float
    cpu_fraction: float
    """CPU time over wall time of a step, in [0, 1]: 1 for physics, near 0 for an env that waits (I/O, a remote
    simulator). Only the CPU part competes for cores."""
    reset_mean_s: float
    episode_length_mean: float | None
    """Steps per episode under a random policy (None: no episode ended while it was measured)."""
    obs_dim: int
    act_dim: int
    obs_bytes: int
    step_samples_s: tuple[float, ...] = field(repr=False)
    """Measured step times, for the slowest-of-k estimates (stragglers)."""

    @property
    def reset_per_step_s(self) -> float:
        """A reset's cost spread over the steps of an episode."""
        return self.reset_mean_s / self.episode_length_mean if self.episode_length_mean else 0.0

    @property
    def cost_s(self) -> float:
        """Mean cost of one env step, resets included."""
        return self.step_mean_s + self.reset_per_step_s


@dataclass(frozen=True)
class RemoteProfile:
    """A worker backend (worker inference): what a round, a broadcast and a worker's step cost."""

    startup_s: Line
    """Start-up against worker count."""
    sync_s: Line
    """A broadcast that waits for every worker to load the weights (sync), against worker count."""
    sync_nowait_s: Line
    """Handing the weights over without waiting (overlap), against worker count."""
    round_s: Line
    """A request of one step per worker, from dispatch to the joined rollout: the fixed cost of a round."""
    sync_bytes: int
    """Serialized bytes of one broadcast (stored once whatever the worker count)."""
    worker_mib: float | None
    """Median proportional set size of a worker process."""
    worker_loop_s: float
    """A worker's own time per step beyond the env and the policy call (its loop, buffers), one env."""
    transfer_per_step_s: float
    """Per env step, what a long fragment cost the learner beyond the worker's sampling and a round's fixed cost
    (serialising, moving and joining the steps)."""
    transfer_bytes_per_step: float
    cpu_per_step_s: Line
    """CPU seconds one env step costs outside the learner's process (the workers, the framework's daemons), one
    env per worker, against workers per usable core: what competes for the cores. It grows once workers outnumber
    cores: more processes switch on each core, and each does more per step than it would alone."""


@dataclass(frozen=True)
class CentralProfile:
    """A backend whose envs live in other processes while the learner acts for them, one env per process."""

    overhead_s: Line
    """Per vector step, the sampler's time beyond the slowest env's step and the policy call (actions out,
    results back, its loop), against process count."""
    startup_s: float
    process_mib: float | None
    cpu_per_step_s: Line
    """CPU seconds one env step costs in the env processes (and the framework's), against processes per usable core."""


@dataclass(frozen=True)
class Profile:
    """Everything the cost model knows. Measured here, on this machine, for one env and one preset."""

    env_spec: dict[str, Any]
    """What was profiled, as `EnvSpec` fields."""
    preset: str
    steps_per_iteration: int
    usable_cpus: float
    env: EnvProfile
    inference_s: dict[int, float]
    """Seconds per policy call at each batch size (numpy, one thread)."""
    serial_loop_s: float
    """`serial`: per env step, its loop beyond the env's own step and the policy call."""
    vecenv_loop_s: Line
    """`vecenv`: per vector step, the loop and the vector env's own work beyond the envs' steps and the policy
    call, against env count."""
    train_s: float
    """The learner's update of one iteration's batch, alone on one thread."""
    weights_bytes: int
    remote: dict[str, RemoteProfile]
    """Per worker backend (`multiprocessing`, `ray_local`)."""
    central: dict[str, CentralProfile]
    """Per central-inference backend (`gym_async`, `sb3_subproc`, `multiprocessing`, `ray_local`)."""
    envpool_step_s: Line | None
    """EnvPool: per vector step, its whole step (its C++ envs and threads) against env count; None where EnvPool
    does not implement the env."""
    probe_seconds: dict[str, float]
    """How long each probe process took, start-up included."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Probes left out, with why (the budget): their backends are not in the search space."""

    def inference_at(self, batch: int) -> float:
        """A policy call at `batch`: interpolated between the measured batch sizes, straight beyond the last two."""
        sizes = sorted(self.inference_s)
        times = [self.inference_s[s] for s in sizes]
        if batch <= sizes[-1]:
            return float(np.interp(batch, sizes, times))
        slope = (times[-1] - times[-2]) / (sizes[-1] - sizes[-2])
        return times[-1] + max(0.0, slope) * (batch - sizes[-1])

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["inference_s"] = {str(k): v for k, v in self.inference_s.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        data = dict(data)
        data["env"] = EnvProfile(**{**data["env"], "step_samples_s": tuple(data["env"]["step_samples_s"])})
        data["inference_s"] = {int(k): v for k, v in data["inference_s"].items()}
        data["vecenv_loop_s"] = Line(**data["vecenv_loop_s"])
        data["envpool_step_s"] = Line(**data["envpool_step_s"]) if data["envpool_step_s"] else None
        data["remote"] = {
            name: RemoteProfile(**{k: Line(**v) if isinstance(v, dict) else v for k, v in part.items()})
            for name, part in data["remote"].items()
        }
        data["central"] = {
            name: CentralProfile(**{k: Line(**v) if isinstance(v, dict) else v for k, v in part.items()})
            for name, part in data["central"].items()
        }
        return cls(**data)


# --- measuring -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRequest:
    """What to profile: the env, the preset's batch and network, and which backends this machine can run."""

    env: dict[str, Any]
    """The env as `EnvSpec` fields: its id and kwargs, and a synthetic step cost if the study sets one."""
    preset: str
    ppo: dict[str, Any]
    """The preset's PPO settings as `PPOConfig` fields."""
    algorithm: str = "ppo"
    remote_backends: tuple[str, ...] = ("multiprocessing", "ray_local")
    central_backends: tuple[str, ...] = ("gym_async", "sb3_subproc", "multiprocessing", "ray_local")
    envpool: bool = False
    env_seconds: float = 5.0


Progress = Callable[[str], None]


PROBE_GUESS_S = {"ray_local": 20.0}
"""How long a backend's probe may take (Ray starts a cluster in each); others about 5 s."""


def measure_profile(request: ProfileRequest, progress: Progress, raw: dict[str, Any], deadline: float | None = None) -> Profile:
    """Run every probe, each in a fresh process, and turn what they measured into a `Profile`. `raw` receives each
    probe's measurements as they come (run.json keeps them). A backend's probe that would end after `deadline`
    (`time.monotonic()`) is left out, and its backend with it; the env's own probe always runs."""
    from backends.host import usable_cpus

    network = {
        "hidden_sizes": list(request.ppo.get("hidden_sizes", (256, 256))),
        "activation": request.ppo.get("activation", "tanh"),
    }
    base = {"env": request.env, **network}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}

    def fits(name: str, backend: str) -> bool:
        if deadline is None or time.monotonic() + PROBE_GUESS_S.get(backend, 5.0) <= deadline:
            return True
        skipped[name] = f"left out: about {PROBE_GUESS_S.get(backend, 5.0):.0f} s, more than the budget had left"
        progress(f"profile: {name} {skipped[name]}")
        return False

    def probe(name: str, part: dict[str, Any]) -> dict[str, Any]:
        progress(f"profile: {name}")
        started = time.perf_counter()
        raw[name] = run_probe(base | part)
        seconds[name] = time.perf_counter() - started
        return raw[name]

    local = probe("local", {"part": "local", "env_seconds": request.env_seconds, "env_max_steps": 20_000,
                            "batch_sizes": list(BATCH_SIZES), "loop_envs": list(LOOP_ENVS), "loop_steps_per_env": 256,
                            "torch_threads": 1, "algorithm": request.algorithm, "ppo": request.ppo})  # fmt: skip
    env = _env_profile(local["env"])
    remote = {}
    for name in request.remote_backends:
        if not fits(f"remote {name}", name):
            continue
        got = probe(f"remote {name}", {"part": "remote", "backend": name, "worker_counts": list(WORKER_COUNTS),
                                       "fragment_steps": _fragment_steps(env),
                                       "cpu_steps": _fragment_steps(env) // 2})  # fmt: skip
        remote[name] = _remote_profile(got, env, local, usable_cpus())
    central = {}
    for name in request.central_backends:
        if not fits(f"central {name}", name):
            continue
        got = probe(f"central {name}", {"part": "central", "backend": name, "process_counts": list(CENTRAL_PROCESSES),
                                        "steps_per_env": _fragment_steps(env) // 2})  # fmt: skip
        central[name] = _central_profile(got, env, usable_cpus())
    envpool = None
    if request.envpool and fits("envpool", "envpool"):
        got = probe("envpool", {"part": "envpool", "env_counts": list(ENVPOOL_ENVS), "steps_per_env": 256})
        points = sorted((int(k), v["env_s"] + v["other_s"]) for k, v in got["by_envs"].items())
        envpool = Line.through([p[0] for p in points], [p[1] for p in points])
    loops = local["loops"]
    serial = loops["serial:1"]
    vec_points = sorted((v["envs"], v["env_s"] + v["other_s"] - v["envs"] * env.step_mean_s)
                        for k, v in loops.items() if k.startswith("vecenv:"))  # fmt: skip
    return Profile(
        env_spec=request.env,
        preset=request.preset,
        steps_per_iteration=int(local["learner"]["steps"]),
        usable_cpus=usable_cpus(),
        env=env,
        inference_s={int(k): float(v) for k, v in local["inference"].items()},
        serial_loop_s=max(0.0, serial["env_s"] + serial["other_s"] - env.step_mean_s),
        vecenv_loop_s=Line.through([p[0] for p in vec_points], [p[1] for p in vec_points]),
        train_s=float(local["learner"]["train_s"]),
        weights_bytes=int(local["learner"]["weights_bytes"]),
        remote=remote,
        central=central,
        envpool_step_s=envpool,
        probe_seconds=seconds,
        skipped=skipped,
    )


def _fragment_steps(env: EnvProfile) -> int:
    """A long fragment that still takes about a second at most."""
    return int(np.clip(1.0 / max(env.cost_s, 1e-6), 64, 512))


def _env_profile(raw: dict[str, Any]) -> EnvProfile:
    wall = np.asarray(raw["step_wall_s"], float)
    cpu = np.asarray(raw["step_cpu_s"], float)
    kept = (
        wall
        if len(wall) <= STEP_SAMPLES_KEPT
        else wall[np.random.default_rng(0).choice(len(wall), STEP_SAMPLES_KEPT, replace=False)]
    )
    lengths = raw["episode_lengths"]
    return EnvProfile(
        step_mean_s=float(wall.mean()),
        step_cv=float(wall.std() / wall.mean()) if wall.mean() > 0 else 0.0,
        step_p99_s=float(np.quantile(wall, 0.99)),
        cpu_fraction=float(np.clip(cpu.sum() / wall.sum(), 0.0, 1.0)) if wall.sum() > 0 else 1.0,
        reset_mean_s=float(np.mean(raw["reset_wall_s"])) if raw["reset_wall_s"] else 0.0,
        episode_length_mean=float(np.mean(lengths)) if lengths else None,
        obs_dim=int(raw["obs_dim"]),
        act_dim=int(raw["act_dim"]),
        obs_bytes=int(raw["obs_bytes"]),
        step_samples_s=tuple(float(x) for x in kept),
    )


def _remote_profile(raw: dict[str, Any], env: EnvProfile, local: dict[str, Any], cpus: float) -> RemoteProfile:
    rows = sorted((int(k), v) for k, v in raw["by_workers"].items())
    counts = [k for k, _ in rows]

    def line(key: str) -> Line:
        return Line.through(counts, [v[key] for _, v in rows])

    fragment, one = raw["fragment"], dict(rows)[1]
    steps = fragment["steps"]
    inference_1 = float(local["inference"]["1"])
    memories = [v["worker_pss_mib"] for _, v in rows if v["worker_pss_mib"]]
    return RemoteProfile(
        startup_s=line("startup_s"),
        sync_s=line("sync_s"),
        sync_nowait_s=line("sync_nowait_s"),
        round_s=line("round_s"),
        sync_bytes=int(max(v["sync_bytes"] for _, v in rows)),
        worker_mib=float(np.median(memories)) if memories else None,
        worker_loop_s=max(0.0, fragment["compute_s"] / steps - env.cost_s - inference_1),
        transfer_per_step_s=max(0.0, (fragment["wall_s"] - fragment["compute_s"] - one["round_s"]) / steps),
        transfer_bytes_per_step=fragment["transfer_bytes"] / steps,
        cpu_per_step_s=Line.through([k / cpus for k in counts], [v["cpu_per_step_s"] for _, v in rows]),
    )


def _central_profile(raw: dict[str, Any], env: EnvProfile, cpus: float) -> CentralProfile:
    from harness.advise.model import expected_max_of_sums

    rows = sorted((int(k), v) for k, v in raw["by_processes"].items())
    overhead = [v["env_s"] + v["other_s"] - expected_max_of_sums(env, procs, 1, steps=1) for procs, v in rows]
    memories = [v["process_pss_mib"] for _, v in rows if v["process_pss_mib"]]
    return CentralProfile(
        overhead_s=Line.through([p for p, _ in rows], overhead),
        startup_s=float(rows[0][1]["startup_s"]),
        process_mib=float(min(memories)) if memories else None,
        cpu_per_step_s=Line.through([p / cpus for p, _ in rows], [v["cpu_per_step_s"] for _, v in rows]),
    )


def run_probe(request: dict[str, Any], timeout_s: float = 300.0) -> dict[str, Any]:
    """One probe in a fresh Python process; its failure is one line naming the part and the cause."""
    with tempfile.TemporaryDirectory(prefix="advise-") as scratch:
        request_path, result_path = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_path.write_text(json.dumps(request))
        try:
            done = subprocess.run([sys.executable, "-m", "harness.advise.probe", str(request_path), str(result_path)],
                                  capture_output=True, text=True, timeout=timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise HarnessError(f"profile part '{request['part']}' took over {timeout_s:.0f} s; is the env hanging?") from None
        if done.returncode != 0 or not result_path.exists():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            cause = lines[-1] if lines else f"exit status {done.returncode}"
            what = request.get("backend", request["part"])
            raise HarnessError(f"profile part '{request['part']}' ({what}) failed: {cause}")
        return json.loads(result_path.read_text())
