"""Derive per-case statistics from a run record (pure data in, data out; no rendering).

The unit of every interval is an independent sample: a fresh-process repeat (throughput) or a seed
(convergence). Per-iteration values are first reduced within their run, then summarised over runs.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.config import PRESETS
from backends import REGISTRY
from harness.stats import Estimate, geometric_mean, mean

PHASES = ("sync", "collect", "train")  # train: the learner's whole call (PPO: GAE + update)


@dataclass(frozen=True)
class Convergence:
    """Learning outcome over seeds."""

    threshold: float
    budget: int
    """Env steps each seed trained: the suite's budget rounded up to whole iterations."""
    eval_every: int
    """Env steps between evaluations: the granularity of every steps-to-threshold figure."""
    steps_to_threshold: list[int | None]
    """Per seed; None: not reached within the budget."""
    seconds_to_threshold: list[float | None]
    """Per seed: wall time of the iterations before the first evaluation that reached it (evaluations excluded)."""
    final_returns: list[float]
    curves: list[list[tuple[int, float]]]
    """Per seed: (env steps, mean evaluation return)."""
    seeds: list[int] = field(default_factory=list)

    @property
    def reached(self) -> list[int]:
        return [s for s in self.steps_to_threshold if s is not None]


@dataclass(frozen=True)
class CaseStats:
    """What the tables need to know about one case, over its repeats or seeds."""

    id: str
    part: str
    label: str
    backend: str
    inference: str
    workers: int
    envs_per_worker: int
    remote: bool
    oversubscribed: bool
    runs_ok: int
    errors: list[str]
    fps: Estimate | None
    """Env steps per second end to end: geometric mean over repeats (see harness.stats)."""
    fps_samples: list[float]
    sampling_fps: Estimate | None
    phase_seconds: dict[str, float]
    """Total seconds per phase over measured iterations of all runs (plus `transfer`, `worker_compute`)."""
    total_seconds: float
    measured_iterations: int = 0
    sync_ms: Estimate | None = None
    """Weight sync per iteration, ms: the mean within each run, then the mean over runs. None in-process."""
    transfer_ms: Estimate | None = None
    dispatch_ms: Estimate | None = None
    """Sending the sample request to every worker, per iteration (in neither compute nor transfer)."""
    clock_violations: int = 0
    """Worker times that broke causality by more than their clock uncertainty (see backends/remote.py)."""
    sync_share: Estimate | None = None
    """Fraction of each run's iteration time spent in weight sync, mean over runs (interval clipped to [0, 1])."""
    transfer_share: Estimate | None = None
    communication_share: Estimate | None = None
    """Weight sync + trajectory transfer, per run, then the mean over runs: what the report's 13.8% is."""
    sync_bytes: float | None = None
    """Bytes serialized per weight broadcast (measured), mean over iterations."""
    sync_network_bytes: float | None = None
    """Bytes of each broadcast that crossed the network (other nodes fetching it), mean over iterations."""
    transfer_bytes: float | None = None
    """Bytes serialized of the fragments per iteration (measured), mean over iterations."""
    startup_s: Estimate | None = None
    nodes: list[str] = field(default_factory=list)
    convergence: Convergence | None = None
    claims: dict[str, float] = field(default_factory=dict)
    schedule: str = "sync"
    sampling_key: str = ""
    """Equal for cases that sample identical rollouts by construction (same envs, seeds, learner; sync)."""
    pair_key: str = ""
    """Equal for cases that differ only in their schedule (and PPO's off-policy correction): what `overlap` is compared with."""
    lag_mean: float | None = None
    """Mean policy lag over measured iterations (0 under `sync`)."""
    initial_kl: float | None = None
    """Mean KL of each batch from the policy about to train on it (PPO's `initial_kl`), if the learner reports it."""
    worker_compute_ms: float | None = None
    """Mean of the slowest worker's own sampling time per iteration (remote backends)."""
    env_cost_ms: tuple[float, float | None] | None = None
    """(configured, measured mean) synthetic per-step env cost in ms; None without one."""
    busy_per_host: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    """Host -> (CPU-busy processes there, CPUs usable there if known): what `oversubscribed` is judged on."""
    deviations: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """PPO settings that differ from the research report's: name -> (report's value, this case's)."""
    worker_restarts: int = 0
    """Workers lost and replaced (`on_worker_failure = "restart"`), summed over every run of the case, failed ones too."""
    restarted_runs: int = 0
    """Runs with at least one worker restart."""
    worker_pss_mib: float | None = None
    """Memory of one worker process: its peak PSS, the mean over workers, then over runs (None in-process)."""
    total_pss_mib: float | None = None
    """Memory of the whole process tree (learner, workers, Ray's daemons): each run's peak PSS, mean over runs."""
    not_recorded: frozenset[str] = frozenset()
    """The figures above (by attribute name) that the record lacks because the harness that wrote it did not
    measure them: a record migrated from an older schema version (harness/migrations.py). The report says
    "not recorded" for these, where None alone means "does not apply"."""

    @property
    def envs(self) -> int:
        return self.workers * self.envs_per_worker

    @property
    def parallelism(self) -> int:
        """What a scaling sweep varies: worker processes, or envs for an in-process vector env."""
        return self.workers if self.remote else self.envs

    @property
    def name(self) -> str:
        """The case's label plus its shape: unique within a part (its id is part/label/shape)."""
        shape = f"{self.workers}w×{self.envs_per_worker}e" if self.remote else f"{self.envs} env{'s' * (self.envs > 1)}"
        return f"{self.label} · {shape}"

    def share(self, phase: str) -> float | None:
        if not self.total_seconds or phase not in self.phase_seconds:
            return None
        return self.phase_seconds[phase] / self.total_seconds


def _measured(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [it for it in run.get("iterations", []) if not it.get("warmup")]


def run_fps(run: dict[str, Any]) -> float | None:
    """One case run's end-to-end FPS: env steps of its measured iterations over their wall time (warm-up
    excluded); None when it measured none."""
    measured = _measured(run)
    steps, total = sum(it["steps"] for it in measured), sum(it["total_s"] for it in measured)
    return steps / total if measured and total > 0 else None


def is_remote(backend_name: str) -> bool:
    """From the registry; a backend no longer registered counts as in-process."""
    entry = REGISTRY.get(backend_name)
    return bool(entry and entry.remote)


def case_stats(case: dict[str, Any], part: dict[str, Any], cpus: float, host: str | None = None) -> CaseStats:
    """Statistics of one case of a run record; `cpus` and `host`: the learner's machine."""
    ok_runs = [r for r in case["runs"] if r.get("status") == "ok"]
    errors = [r.get("error") or "unknown error" for r in case["runs"] if r.get("status") != "ok"]
    backend = case["backend"]
    remote = is_remote(backend["name"])
    central = backend["inference"] == "central"
    overlapped = backend.get("schedule") == "overlap"
    per_run: dict[str, list[float]] = {k: [] for k in ("fps", "sampling", "startup", "sync_ms", "transfer_ms",
                                                       "sync_share", "transfer_share", "comm_share", "dispatch_ms")}  # fmt: skip
    phase_seconds = dict.fromkeys((*PHASES, "transfer", "worker_compute"), 0.0)
    iterations = []
    nodes: set[str] = set()
    placements: list[list[dict[str, Any]]] = []
    for run in ok_runs:
        measured = _measured(run)
        if not measured:
            continue
        iterations += measured
        steps, total = sum(it["steps"] for it in measured), sum(it["total_s"] for it in measured)
        per_run["fps"].append(run_fps(run))
        # Sampling FPS: the batch over the time it took to sample. Under overlap the learner's collect_s is
        # only its wait, so the workers' own (slowest) sampling time stands in.
        sampling_s = sum((it.get("worker_compute_s") or 0.0) if overlapped else it["collect_s"] for it in measured)
        per_run["sampling"].append(steps / sampling_s if sampling_s > 0 else None)
        # Start-up: the backend's workers plus building the learner (a compiled learner compiles then).
        learner_s = (run.get("learner") or {}).get("startup_s")  # absent before version 2: no figure, not a smaller one
        per_run["startup"].append(None if learner_s is None else (run.get("startup_s") or 0.0) + learner_s)
        if remote:
            # Central inference: the policy never leaves the learner, so its weight load is not communication.
            sync = 0.0 if central else sum(it["sync_s"] for it in measured)
            transfer = sum(it.get("transfer_s") or 0.0 for it in measured)
            if not central:
                per_run["sync_ms"].append(1000 * sync / len(measured))
            per_run["transfer_ms"].append(1000 * transfer / len(measured))
            dispatch = [it["dispatch_s"] for it in measured if it.get("dispatch_s") is not None]
            if dispatch:
                per_run["dispatch_ms"].append(1000 * sum(dispatch) / len(dispatch))
            if total > 0:
                per_run["sync_share"].append(sync / total)
                per_run["transfer_share"].append(transfer / total)
                per_run["comm_share"].append((sync + transfer) / total)
        for phase in PHASES:
            phase_seconds[phase] += sum(it[f"{phase}_s"] for it in measured)
        for key in ("transfer", "worker_compute"):
            phase_seconds[key] += sum(it.get(f"{key}_s") or 0.0 for it in measured)
        placement = (run.get("backend") or {}).get("placement") or []
        placements.append(placement)
        nodes.update(w.get("node", "") for w in placement)
    if not remote:
        phase_seconds.pop("transfer")
        phase_seconds.pop("worker_compute")
    lags = [it["policy_lag"]["mean"] for it in iterations if "policy_lag" in it]
    kls = [it["learner"]["initial_kl"] for it in iterations if "initial_kl" in it.get("learner", {})]
    busy = _busy_per_host(case, placements, cpus, host)
    restarts = [_restarts(run) for run in case["runs"]]
    measure = part["measure"]
    unit = (0.0, 1.0)
    missing = _not_recorded(ok_runs, iterations)
    return CaseStats(
        id=case["id"],
        part=case["part"],
        label=case["label"],
        backend=backend["name"],
        inference=backend["inference"],
        workers=backend["workers"],
        envs_per_worker=backend["envs_per_worker"],
        remote=remote,
        oversubscribed=any(cap is not None and n > cap for n, cap in busy.values()),
        runs_ok=len(ok_runs),
        errors=errors,
        fps=geometric_mean(per_run["fps"]),
        fps_samples=[v for v in per_run["fps"] if v is not None],
        sampling_fps=geometric_mean(per_run["sampling"]),
        phase_seconds=phase_seconds,
        total_seconds=sum(phase_seconds[p] for p in PHASES),
        measured_iterations=len(iterations),
        sync_ms=mean(per_run["sync_ms"], (0.0, math.inf)),
        transfer_ms=mean(per_run["transfer_ms"], (0.0, math.inf)),
        dispatch_ms=mean(per_run["dispatch_ms"], (0.0, math.inf)),
        clock_violations=sum(it.get("clock_violations") or 0 for it in iterations),
        sync_share=mean(per_run["sync_share"], unit) if not central else None,
        transfer_share=mean(per_run["transfer_share"], unit),
        communication_share=mean(per_run["comm_share"], unit),
        sync_bytes=_mean([it.get("sync_bytes_serialized") for it in iterations]) if not central else None,
        sync_network_bytes=_mean([it.get("sync_bytes_network") for it in iterations]) if not central else None,
        # Before version 3, transfer_bytes were a formula (harness/migrations.py): not this figure.
        transfer_bytes=_mean([it.get("transfer_bytes") for it in iterations]) if "transfer_bytes" not in missing else None,
        startup_s=geometric_mean(per_run["startup"]),
        nodes=sorted(n for n in nodes if n),
        convergence=_convergence(ok_runs, measure) if measure["mode"] == "convergence" else None,
        claims=case.get("claims", {}),
        schedule=backend.get("schedule", "sync"),
        sampling_key=sampling_key(case),
        pair_key=schedule_free_key(case),
        lag_mean=_mean(lags),
        initial_kl=_mean(kls),
        worker_compute_ms=1000 * phase_seconds["worker_compute"] / len(iterations) if remote and iterations else None,
        env_cost_ms=_env_cost(case, iterations),
        busy_per_host=busy,
        deviations=report_deviations(case.get("ppo") or {}),
        worker_restarts=sum(restarts),
        restarted_runs=sum(1 for n in restarts if n),
        worker_pss_mib=_mean([_mean((r.get("memory") or {}).get("workers_pss_mib") or []) for r in ok_runs]),
        total_pss_mib=_mean([(r.get("memory") or {}).get("tree_pss_mib") for r in ok_runs]),
        not_recorded=missing,
    )


# Each figure an older record may lack: CaseStats attribute -> (where its key lives, the key).
FIGURE_KEYS = {
    "startup_s": ("learner", "startup_s"),  # building the learner: timed since version 2
    "worker_pss_mib": ("run", "memory"),  # since 80e3465 (version 4)
    "total_pss_mib": ("run", "memory"),
    "dispatch_ms": ("iteration", "dispatch_s"),  # since version 3, as is every measured byte
    "sync_bytes": ("iteration", "sync_bytes_serialized"),  # before, bytes were a formula: not these figures
    "transfer_bytes": ("iteration", "sync_bytes_serialized"),
    "env_cost_ms": ("iteration", "env_cost_ms_mean"),
}


def _not_recorded(runs: list[dict[str, Any]], iterations: list[dict[str, Any]]) -> frozenset[str]:
    """The figures whose keys the record lacks (absent, not null): an older harness did not measure them
    (harness/migrations.py lists those today's schema requires in the record's `not_recorded`)."""
    records = {"run": runs, "learner": [r.get("learner") or {} for r in runs], "iteration": iterations}
    return frozenset(figure for figure, (where, key) in FIGURE_KEYS.items() if any(key not in r for r in records[where]))


def _restarts(run: dict[str, Any]) -> int:
    """Worker restarts of one run: its iterations' events (warm-up included), counted."""
    return sum(len(it.get("worker_restarts") or []) for it in run.get("iterations", []))


def report_deviations(ppo: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Where a case's PPO settings leave the research report's (the `report` preset)."""
    report = PRESETS["report"]
    return {k: (getattr(report, k), v) for k, v in ppo.items() if hasattr(report, k) and getattr(report, k) != v}


def _env_cost(case: dict[str, Any], iterations: list[dict[str, Any]]) -> tuple[float, float | None] | None:
    configured = case["env"].get("step_cost_ms") or 0.0
    if not configured:
        return None
    return configured, _mean([it.get("env_cost_ms_mean") for it in iterations])


def _busy_per_host(
    case: dict[str, Any], placements: list[list[dict[str, Any]]], cpus: float, host: str | None
) -> dict[str, tuple[int, float | None]]:
    """CPU-busy processes on each host against the CPUs usable there (known for the learner's host, and
    for worker hosts that reported theirs). Workers whose env mostly sleeps (a synthetic sleep cost)
    wait rather than contend: they do not count. The learner counts when it samples (in-process
    backends, central inference); while remote workers sample, it waits."""
    backend = case["backend"]
    learner_host = host or "learner host"
    env = case["env"]
    sleeping = (env.get("step_cost_ms") or 0) > 0 and env.get("step_cost_kind") == "sleep"
    if not is_remote(backend["name"]):
        return {learner_host: (1, cpus)}
    placement = max(placements, key=len, default=[])
    counts: Counter[str] = Counter()
    capacity: dict[str, float | None] = {learner_host: cpus}
    if placement:
        for worker in placement:
            where = worker.get("host") or learner_host
            counts[where] += 0 if sleeping else 1
            capacity.setdefault(where, worker.get("cpus"))
    else:  # no placement recorded (the run failed early): all workers on the learner's host
        counts[learner_host] += 0 if sleeping else backend["workers"]
    if backend["inference"] == "central":
        counts[learner_host] += 1
    return {h: (counts[h], capacity.get(h)) for h in sorted(set(counts) | {learner_host})}


def sampling_key(case: dict[str, Any]) -> str:
    """What decides a sync run's rollouts: every backend and inference mode samples env i with seed
    `seed + i` and its own noise generator, so the env count, env, learner and schedule matter, and the
    batch of each policy call: float32 results differ in the last bits between batch shapes (BLAS picks
    kernels by shape), and training amplifies that (CartPole, held-out seeds: vecenv 8 and
    multiprocessing 4x2 reached 475 at medians of 65,536 and 49,152 steps, multiprocessing and Ray 4x2 alike)."""
    backend = case["backend"]
    config = {
        "num_envs": backend["workers"] * backend["envs_per_worker"],
        "inference_batch": _inference_batch(case),
        "schedule": backend.get("schedule", "sync"),
        **{k: case.get(k) for k in ("env", "ppo", "algorithm")},
    }
    return json.dumps(config, sort_keys=True)


def _inference_batch(case: dict[str, Any]) -> int:
    """Observations per policy call: 1 unbatched (serial), a worker's envs, or every env (vecenv, central)."""
    backend = case["backend"]
    if (entry := REGISTRY.get(backend["name"])) is not None and not entry.batched_inference:
        return 1
    if is_remote(backend["name"]) and backend["inference"] == "worker":
        return backend["envs_per_worker"]
    return backend["workers"] * backend["envs_per_worker"]


def schedule_free_key(case: dict[str, Any]) -> str:
    """The case's configuration without what the `overlap` comparison varies: schedule, lag, off-policy correction."""
    config = {k: v for k, v in case.items() if k not in ("id", "label", "runs", "claims")}
    config["backend"] = {k: v for k, v in config["backend"].items() if k not in ("schedule", "max_lag")}
    config["ppo"] = {k: v for k, v in config["ppo"].items() if k not in ("decoupled", "importance_weight_cap")}
    return json.dumps(config, sort_keys=True)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _convergence(runs: list[dict[str, Any]], measure: dict[str, Any]) -> Convergence:
    threshold = measure["threshold"]
    steps, seconds, finals, curves, seeds = [], [], [], [], []
    for run in runs:
        evaluations = run.get("evaluations", [])
        curves.append([(e["steps"], e["mean_return"]) for e in evaluations])
        first = next((e for e in evaluations if e["mean_return"] >= threshold), None)
        steps.append(first["steps"] if first else None)
        seconds.append(first.get("train_wall_s") if first else None)
        seeds.append(run.get("seed"))
        if "final_evaluation" in run:
            finals.append(run["final_evaluation"]["mean_return"])
    trained = max((r["iterations"][-1]["steps_trained"] for r in runs if r.get("iterations")), default=measure["total_steps"])
    return Convergence(threshold, trained, measure["eval_every"], steps, seconds, finals, curves, seeds)


def run_stats(run: dict[str, Any]) -> dict[str, list[CaseStats]]:
    """Case statistics grouped by part name, in suite order."""
    machine = run["machine"]
    cpus = machine.get("usable_cpus") or machine.get("logical_cores") or 1  # older runs lack usable_cpus
    parts = {p["name"]: p for p in run["parts"]}
    grouped: dict[str, list[CaseStats]] = {name: [] for name in parts}
    for case in run["cases"]:
        grouped[case["part"]].append(case_stats(case, parts[case["part"]], cpus, machine.get("hostname")))
    return grouped


def baseline_case(cases: list[CaseStats], label: str | None) -> CaseStats | None:
    """The named baseline (its smallest worker and env count), or the first case with a result."""
    candidates = [c for c in cases if (label is None or c.label == label) and c.fps is not None]
    return min(candidates, key=lambda c: (c.workers, c.envs)) if candidates else None
