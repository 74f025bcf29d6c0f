"""The cost model: one iteration's time for a configuration, from the profile alone.

Notation: S env steps per iteration (the preset's batch), W workers (or env processes), E envs per worker,
N = W E envs, T = S / N steps per env per iteration, C usable cores per node. From the profile: t the env's
mean step cost (resets spread over the episode), f the CPU part of it, inf(b) a policy call at batch b, the
loops' own costs, train the learner's update, and each backend's broadcast, round and transfer costs.

In words, per kind of backend:
- **In the learner's process** (`serial`, `vecenv`, `envpool`): sampling is T vector steps, each the envs'
  steps one after another (EnvPool: its own measured step), one policy call and the loop; then the update.
  Nothing runs beside anything else, so nothing competes.
- **Central inference** (`gym_async`, `sb3_subproc`, `multiprocessing`/`ray_local` with `inference =
  "central"`): each of T steps waits for the slowest of the env processes, then pays the transport and the loop
  (measured against process count) and one policy call at batch N.
- **Worker inference, `sync`**: a broadcast that waits, then the slowest worker's fragment (T steps of E envs,
  its policy calls and loop), the round's fixed cost and the per-step transfer, then the update:
  `sync(W) + round(W) + slowest fragment + S x transfer + train`.
- **Worker inference, `overlap`**: the workers sample while the learner trains, so the iteration is the longer
  of the two, plus handing the weights over: `max(train, round(W) + slowest fragment + S x transfer) + nowait(W)`.

**Contention** is processor sharing: the work that runs side by side (the workers' fragments; under overlap the
update too) lasts at least as long as its longest part alone, and at least its total CPU time over the cores:
`max(longest, CPU total / C)`. Busy work is so stretched by (busy processes / C) once there are more busy
processes than cores. The CPU a step costs is measured, not assumed: the kernel's per-thread accounting of every
process outside the learner's (workers, env processes, Ray's daemons) over a long request, at 1, 2 and 4 workers,
as a line against workers per core, which carries it to a machine with more cores. A sleeping env costs little of
it, a busy one its whole step, and workers beyond the cores add what switching between more processes costs.

**Stragglers**: the slowest of k workers is the expected maximum of k sums of measured step times (resampled
from the profile's steps with a fixed seed), so a heavy-tailed env costs more the more workers wait on it.

**Across nodes** (projection only; nothing here measures a second node): the weights reach every other node once
(bytes / bandwidth + latency each), and the remote workers' share of the batch crosses the head's link.

What it leaves out, and says so: the OS's cost of switching between more processes than cores, Ray's own
processes, memory bandwidth, and envs that differ from one another (each env is the profiled one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from harness.advise.profile import EnvProfile, Profile

TERMS = ("env", "inference", "overhead", "contention", "learner", "sync", "network")
"""The parts of an iteration's critical path a prediction names; the largest one `dominates`."""
IN_PROCESS = ("serial", "vecenv", "envpool")
ENV_PROCESSES = ("gym_async", "sb3_subproc")
"""Central-inference tools with one process per env."""
STRAGGLER_DRAWS = 200
"""Resampled iterations behind each expected maximum."""


@dataclass(frozen=True)
class Config:
    """One way to sample: what a suite's case says."""

    backend: str
    workers: int = 1
    envs_per_worker: int = 1
    inference: str = "worker"
    schedule: str = "sync"

    @property
    def num_envs(self) -> int:
        return self.workers * self.envs_per_worker

    @property
    def processes(self) -> int:
        """Processes that step envs beside the learner's (one per env for AsyncVectorEnv and SubprocVecEnv)."""
        if self.backend in IN_PROCESS:
            return 0
        return self.num_envs if self.backend in ENV_PROCESSES else self.workers

    @property
    def label(self) -> str:
        mode = "" if self.backend in IN_PROCESS + ENV_PROCESSES else f" {self.inference} {self.schedule}"
        return f"{self.backend} {self.workers}x{self.envs_per_worker}{mode}"


@dataclass(frozen=True)
class Hardware:
    """Where the model places the configuration: this machine, or a described target."""

    cores: float
    """Usable cores per node."""
    nodes: int = 1
    bandwidth_gbps: float | None = None
    latency_ms: float | None = None


DEFAULT_BANDWIDTH_GBPS = 10.0
DEFAULT_LATENCY_MS = 0.2


@dataclass(frozen=True)
class Prediction:
    config: Config
    iteration_s: float
    fps: float
    terms: dict[str, float]
    """Seconds of the critical path per term (`TERMS`); they add up to `iteration_s`."""
    assumptions: tuple[str, ...] = field(default=())
    """Numbers the model took as given rather than measured."""

    @property
    def dominant(self) -> str:
        return max(self.terms, key=lambda term: self.terms[term])


def expected_max_of_sums(env: EnvProfile, groups: int, envs: int, steps: int) -> float:
    """Expected wall time of the slowest of `groups` groups, each stepping `envs` envs for `steps` steps one after
    another, every step an independent draw from the measured step times (resets spread over steps)."""
    return _max_of_sums(env.step_samples_s, env.reset_per_step_s, groups, envs * steps)


@lru_cache(maxsize=4096)
def _max_of_sums(samples: tuple[float, ...], per_step_extra: float, groups: int, draws: int) -> float:
    values = np.asarray(samples)
    if groups == 1 or values.std() == 0:
        return draws * (float(values.mean()) + per_step_extra)
    rng = np.random.default_rng(0)
    # Sums of many draws: the central limit theorem, with the mean and spread of the measured steps, keeps the
    # estimate cheap for long fragments; a few draws are resampled as they are (their tail is what matters).
    if draws > 64:
        mean, std = values.mean() * draws, values.std() * math.sqrt(draws)
        slowest = (mean + std * rng.standard_normal((STRAGGLER_DRAWS, groups))).max(axis=1)
    else:
        slowest = rng.choice(values, size=(STRAGGLER_DRAWS, groups, draws)).sum(axis=2).max(axis=1)
    return float(slowest.mean()) + draws * per_step_extra


def predict(profile: Profile, config: Config, machine: Hardware) -> Prediction:
    """One iteration of `config` on `machine`, from the profile alone."""
    steps = profile.steps_per_iteration
    if steps % config.num_envs:
        raise ValueError(f"{config.label}: {steps} steps do not split over {config.num_envs} envs")
    if config.backend in IN_PROCESS:
        terms, notes = _in_process(profile, config), ()
    elif config.inference == "central":
        terms, notes = _central(profile, config, machine), ()
    else:
        terms, notes = _workers(profile, config, machine)
    total = sum(terms.values())
    return Prediction(config, total, steps / total, {t: terms.get(t, 0.0) for t in TERMS}, notes)


def _in_process(profile: Profile, config: Config) -> dict[str, float]:
    steps, envs = profile.steps_per_iteration, config.num_envs
    vector_steps = steps // envs
    t = profile.env.cost_s
    if config.backend == "serial":  # one policy call per env step
        return {"env": steps * t, "inference": steps * profile.inference_at(1), "overhead": steps * profile.serial_loop_s,
                "learner": profile.train_s}  # fmt: skip
    if config.backend == "envpool":
        if profile.envpool_step_s is None:
            raise ValueError("EnvPool does not implement this env")
        return {"env": vector_steps * profile.envpool_step_s.at(envs), "inference": vector_steps * profile.inference_at(envs),
                "learner": profile.train_s}  # fmt: skip
    return {"env": vector_steps * envs * t, "inference": vector_steps * profile.inference_at(envs),
            "overhead": vector_steps * profile.vecenv_loop_s.at(envs), "learner": profile.train_s}  # fmt: skip


def _central(profile: Profile, config: Config, machine: Hardware) -> dict[str, float]:
    """Lockstep: each step waits for the slowest env process, then the transport, the loop and one policy call."""
    steps, envs = profile.steps_per_iteration, config.num_envs
    vector_steps = steps // envs
    processes = config.processes
    per_process = envs // processes
    env = profile.env
    slowest = expected_max_of_sums(env, processes, per_process, steps=1)
    # The env processes step side by side while the learner waits: the CPU their steps cost shares the cores.
    part = profile.central[config.backend]
    cpu = envs * part.cpu_per_step_s.at(processes / machine.cores)
    stepped = max(slowest, cpu / machine.cores)
    return {"env": vector_steps * slowest, "contention": vector_steps * (stepped - slowest),
            "inference": vector_steps * profile.inference_at(envs), "overhead": vector_steps * part.overhead_s.at(processes),
            "learner": profile.train_s}  # fmt: skip


def _workers(profile: Profile, config: Config, machine: Hardware) -> tuple[dict[str, float], tuple[str, ...]]:
    """Worker inference, sync or overlap, on one node or several."""
    steps, workers, envs = profile.steps_per_iteration, config.workers, config.envs_per_worker
    vector_steps = steps // config.num_envs
    part = profile.remote[config.backend]
    env = profile.env
    # A worker's own time per vector step beyond its envs: the policy call at its batch and its loop (the loop's
    # cost per extra env is the vector env's, measured in-process).
    inference = vector_steps * profile.inference_at(envs)
    loop = vector_steps * (part.worker_loop_s + (envs - 1) * profile.vecenv_loop_s.slope)
    slowest_env = expected_max_of_sums(env, workers, envs, vector_steps)
    slowest = slowest_env + inference + loop
    # What a fragment costs the cores: per env step, the CPU measured outside the learner's process at this many
    # workers (env, framework, switching) less the one-env policy call and loop it included, plus this layout's own.
    per_node = math.ceil(workers / machine.nodes)
    env_cpu = max(0.0, part.cpu_per_step_s.at(per_node / machine.cores) - profile.inference_at(1) - part.worker_loop_s)
    worker_cpu = vector_steps * envs * env_cpu + inference + loop
    rounds = part.round_s.at(workers) + steps * part.transfer_per_step_s
    network, notes = _network(profile, config, machine, part.transfer_bytes_per_step)
    if config.schedule == "sync":
        sampled = max(slowest, per_node * worker_cpu / machine.cores)
        terms = {"env": slowest_env, "inference": inference, "overhead": loop + rounds, "contention": sampled - slowest,
                 "learner": profile.train_s, "sync": part.sync_s.at(workers)}  # fmt: skip
        terms["network"] = network
        return terms, notes
    # Overlap: the update runs beside the workers on the learner's node, so it shares those cores too.
    sampling_path = slowest + rounds + network
    shared = (per_node * worker_cpu + profile.train_s) / machine.cores
    longest = max(profile.train_s, sampling_path)
    iteration = max(longest, shared + rounds)
    nowait = part.sync_nowait_s.at(workers)
    if profile.train_s >= sampling_path:
        terms = {"learner": profile.train_s}
    else:
        terms = {"env": slowest_env, "inference": inference, "overhead": loop + rounds, "network": network}
    terms["contention"] = iteration - longest
    terms["sync"] = nowait
    return terms, notes


def _network(profile: Profile, config: Config, machine: Hardware, bytes_per_step: float) -> tuple[float, tuple[str, ...]]:
    """Seconds per iteration on the network between nodes: the weights to every other node hosting workers, and
    the remote workers' fragments to the learner's node, each paying one latency."""
    nodes_used = min(machine.nodes, config.workers)
    if nodes_used <= 1:
        return 0.0, ()
    notes = []
    bandwidth, latency = machine.bandwidth_gbps, machine.latency_ms
    if bandwidth is None:
        bandwidth = DEFAULT_BANDWIDTH_GBPS
        notes.append(f"bandwidth {DEFAULT_BANDWIDTH_GBPS:g} Gbit/s assumed (not given, and no second node measured here)")
    if latency is None:
        latency = DEFAULT_LATENCY_MS
        notes.append(f"latency {DEFAULT_LATENCY_MS:g} ms assumed (not given, and no second node measured here)")
    bytes_per_s = bandwidth * 1e9 / 8
    remote_share = (config.workers - math.ceil(config.workers / nodes_used)) / config.workers
    weights = (nodes_used - 1) * profile.remote[config.backend].sync_bytes / bytes_per_s
    fragments = remote_share * profile.steps_per_iteration * bytes_per_step / bytes_per_s
    return weights + fragments + 2 * latency / 1000, tuple(notes)
