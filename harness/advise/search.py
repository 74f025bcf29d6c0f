"""Which configurations `harness advise` considers, how it ranks them, and how far it projects them.

The search space is every backend this machine can run (the registry's, the tools people use included) at the
layouts a suite would try: in-process vector envs of 2 to 64 envs, one process per env up to 16, and 2 to 16
workers of 1 to 8 envs each, with every inference mode and schedule the backend's registry entry allows. A
configuration is feasible when the preset's batch splits evenly over its envs and its workers fit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.advise.model import IN_PROCESS, Config, Hardware, Prediction, predict
from harness.advise.profile import Profile

VECTOR_ENVS = (2, 4, 8, 16, 32, 64)
ENV_PROCESSES = (2, 4, 8, 16)
WORKERS = (2, 4, 8, 16)
ENVS_PER_WORKER = (1, 2, 4, 8)
MAX_ENVS = 64
MEMORY_SHARE = 0.5
"""Workers may take at most this share of the machine's available memory."""
PROJECTED_WORKERS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STOPS_PAYING = 1.05
"""Doubling the workers must gain at least this factor to count as paying."""


def search_space(profile: Profile, backends: tuple[str, ...], available_mib: float, max_envs: int = MAX_ENVS) -> list[Config]:
    """Every configuration of `backends` worth predicting here, with at most `max_envs` envs (serial always, as the
    baseline)."""
    from backends import REGISTRY

    configs = [Config("serial")]
    for name in backends:
        entry = REGISTRY[name]
        if name == "serial":
            continue
        if name == "envpool" and profile.envpool_step_s is None:
            continue
        if not entry.multi_worker:
            sizes = VECTOR_ENVS if name in IN_PROCESS else ENV_PROCESSES
            configs += [Config(name, 1, envs, entry.inference_modes[0]) for envs in sizes]
            continue
        if name not in profile.remote:
            continue
        for workers in WORKERS:
            for envs in ENVS_PER_WORKER:
                if workers * envs > MAX_ENVS:
                    continue
                for inference in entry.inference_modes:
                    for schedule in entry.schedules:
                        if inference == "central" and (schedule == "overlap" or workers * envs > 16):
                            continue
                        configs.append(Config(name, workers, envs, inference, schedule))
    return [c for c in configs if c.num_envs <= max_envs and _feasible(profile, c, available_mib)]


def _feasible(profile: Profile, config: Config, available_mib: float) -> bool:
    if profile.steps_per_iteration % config.num_envs:
        return False
    if config.inference == "central" and config.backend not in profile.central and config.backend not in IN_PROCESS:
        return False
    mib = _process_mib(profile, config)
    return mib is None or config.processes * mib <= MEMORY_SHARE * available_mib


def _process_mib(profile: Profile, config: Config) -> float | None:
    if config.backend in profile.remote and config.inference == "worker":
        return profile.remote[config.backend].worker_mib
    part = profile.central.get(config.backend)
    return part.process_mib if part else None


def rank(profile: Profile, configs: list[Config], machine: Hardware) -> list[Prediction]:
    """Predictions, fastest first; within 1% of each other, the one with fewer processes and envs first (the
    model cannot tell them apart, and the smaller one costs less memory and start-up)."""
    predictions = [predict(profile, c, machine) for c in configs]
    best = max(p.fps for p in predictions)
    return sorted(predictions, key=lambda p: (-round(math.log(p.fps / best) / math.log(1.01)), p.config.processes,
                                              p.config.num_envs, -p.fps))  # fmt: skip


def distinct_top(ranked: list[Prediction], count: int) -> list[Prediction]:
    """The best `count` of different kinds (backend, inference, schedule), serial left out: the validation then
    tells tools apart rather than measuring one tool at three layouts the model already calls equal."""
    chosen, kinds = [], set()
    for prediction in ranked:
        c = prediction.config
        kind = (c.backend, c.inference, c.schedule)
        if c.backend != "serial" and kind not in kinds:
            chosen.append(prediction)
            kinds.add(kind)
        if len(chosen) == count:
            break
    return chosen


@dataclass(frozen=True)
class ProjectionRow:
    workers: int
    schedule: str
    prediction: Prediction
    speedup: float
    """Over `serial` on the same machine."""


@dataclass(frozen=True)
class Projection:
    backend: str
    machine: Hardware
    rows: tuple[ProjectionRow, ...]
    stops_paying: dict[str, int]
    """Per schedule, the worker count past which doubling gains less than `STOPS_PAYING`."""
    assumptions: tuple[str, ...]


def project(profile: Profile, machine: Hardware) -> Projection:
    """Worker inference at 1 to 256 workers of one env each, sync and overlap, on `machine`: multiprocessing on one
    node, Ray across several (its measured costs here stand for `ray_cluster`'s)."""
    preferred = ("multiprocessing", "ray_local") if machine.nodes == 1 else ("ray_local",)
    backend = next((name for name in preferred if name in profile.remote), None)
    if backend is None:
        raise ValueError(f"projecting to {machine.nodes} node(s) needs {' or '.join(preferred)} profiled; add it to --backends")
    serial = predict(profile, Config("serial"), machine)
    rows, notes = [], set()
    for schedule in ("sync", "overlap"):
        for workers in PROJECTED_WORKERS:
            if profile.steps_per_iteration % workers:
                continue
            prediction = predict(profile, Config(backend, workers, 1, "worker", schedule), machine)
            notes.update(prediction.assumptions)
            rows.append(ProjectionRow(workers, schedule, prediction, prediction.fps / serial.fps))
    stops = {}
    for schedule in ("sync", "overlap"):
        mine = [r for r in rows if r.schedule == schedule]
        stops[schedule] = next(
            (a.workers for a, b in zip(mine, mine[1:], strict=False) if b.prediction.fps < STOPS_PAYING * a.prediction.fps),
            mine[-1].workers,
        )
    notes.add(f"per-core speed and every per-step cost are this machine's ({profile.usable_cpus:g} usable CPUs)")
    if machine.nodes > 1:
        notes.add("Ray across nodes is modelled with ray_local's measured costs plus the network terms")
    return Projection(backend, machine, tuple(rows), stops, tuple(sorted(notes)))
