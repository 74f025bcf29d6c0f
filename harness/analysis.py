"""Derive per-case statistics from a run record (pure data in, data out; no rendering)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.stats import Summary, summarize

PHASES = ("sync", "collect", "train")  # train: the learner's whole call (PPO: GAE + update)
REMOTE_BACKENDS = ("multiprocessing", "ray_local", "ray_cluster")


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
    envs: int
    remote: bool
    oversubscribed: bool
    runs_ok: int
    errors: list[str]
    fps: Summary | None
    fps_samples: list[float]
    sampling_fps: Summary | None
    phase_seconds: dict[str, float]
    """Total seconds per phase over measured iterations of all runs (plus `transfer`, `worker_compute`)."""
    total_seconds: float
    measured_iterations: int = 0
    sync_ms: Summary | None = None
    transfer_ms: Summary | None = None
    sync_bytes: float | None = None
    transfer_bytes: float | None = None
    startup_s: Summary | None = None
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

    @property
    def parallelism(self) -> int:
        """What a scaling sweep varies: worker processes, or envs for an in-process vector env."""
        return self.workers if self.remote else self.envs

    def share(self, phase: str) -> float | None:
        if not self.total_seconds or phase not in self.phase_seconds:
            return None
        return self.phase_seconds[phase] / self.total_seconds


def _measured(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [it for it in run.get("iterations", []) if not it.get("warmup")]


def _ms_summary(values: list[float | None]) -> Summary | None:
    present = [v * 1000 for v in values if v is not None]
    return summarize(present) if present else None


def case_stats(case: dict[str, Any], part: dict[str, Any], logical_cores: float) -> CaseStats:
    """Statistics of one case of a run record."""
    ok_runs = [r for r in case["runs"] if r.get("status") == "ok"]
    errors = [r.get("error", "unknown error") for r in case["runs"] if r.get("status") != "ok"]
    backend = case["backend"]
    remote = backend["name"] in REMOTE_BACKENDS
    fps, sampling, startup = [], [], []
    phase_seconds = dict.fromkeys((*PHASES, "transfer", "worker_compute"), 0.0)
    iterations = []
    nodes: set[str] = set()
    for run in ok_runs:
        measured = _measured(run)
        if not measured:
            continue
        iterations += measured
        steps = sum(it["steps"] for it in measured)
        fps.append(steps / sum(it["total_s"] for it in measured))
        # Sampling FPS: the batch over the time it took to sample. Under overlap the learner's collect_s is
        # only its wait, so the workers' own (slowest) sampling time stands in.
        overlapped = backend.get("schedule") == "overlap"
        sampling.append(steps / sum(it["worker_compute_s"] if overlapped else it["collect_s"] for it in measured))
        # Start-up: the backend's workers plus building the learner (a compiled learner compiles then).
        startup.append((run.get("startup_s") or 0.0) + (run.get("learner") or {}).get("startup_s", 0.0))
        for phase in PHASES:
            phase_seconds[phase] += sum(it[f"{phase}_s"] for it in measured)
        for key in ("transfer", "worker_compute"):
            phase_seconds[key] += sum(it.get(f"{key}_s") or 0.0 for it in measured)
        nodes.update(w.get("node", "") for w in run.get("backend", {}).get("placement", []))
    if not remote:
        phase_seconds.pop("transfer")
        phase_seconds.pop("worker_compute")
    lags = [it["policy_lag"]["mean"] for it in iterations if "policy_lag" in it]
    kls = [it["learner"]["initial_kl"] for it in iterations if "initial_kl" in it.get("learner", {})]
    total = sum(phase_seconds[p] for p in PHASES)
    # CPU-busy processes: each worker, plus the learner when it does the inference itself. Workers whose
    # env mostly sleeps (a synthetic sleep cost) wait rather than contend: they do not count.
    sleeping = case["env"].get("step_cost_ms", 0) > 0 and case["env"].get("step_cost_kind") == "sleep"
    busy = (0 if sleeping else backend["workers"]) + (1 if backend["inference"] == "central" else 0) if remote else 1
    measure = part["measure"]
    return CaseStats(
        id=case["id"],
        part=case["part"],
        label=case["label"],
        backend=backend["name"],
        inference=backend["inference"],
        workers=backend["workers"],
        envs=backend["workers"] * backend["envs_per_worker"],
        remote=remote,
        oversubscribed=busy > logical_cores,
        runs_ok=len(ok_runs),
        errors=errors,
        fps=summarize(fps),
        fps_samples=fps,
        sampling_fps=summarize(sampling),
        phase_seconds=phase_seconds,
        total_seconds=total,
        measured_iterations=len(iterations),
        sync_ms=_ms_summary([it["sync_s"] for it in iterations])
        if remote and iterations and iterations[0].get("sync_bytes") is not None
        else None,
        transfer_ms=_ms_summary([it.get("transfer_s") for it in iterations]) if remote else None,
        sync_bytes=_mean([it.get("sync_bytes") for it in iterations]),
        transfer_bytes=_mean([it.get("transfer_bytes") for it in iterations]),
        startup_s=summarize([s for s in startup if s is not None]),
        nodes=sorted(n for n in nodes if n),
        convergence=_convergence(ok_runs, measure) if measure["mode"] == "convergence" else None,
        claims=case.get("claims", {}),
        schedule=backend.get("schedule", "sync"),
        sampling_key=sampling_key(case),
        pair_key=schedule_free_key(case),
        lag_mean=_mean(lags),
        initial_kl=_mean(kls),
        worker_compute_ms=1000 * phase_seconds["worker_compute"] / len(iterations) if remote and iterations else None,
    )


def sampling_key(case: dict[str, Any]) -> str:
    """What decides a sync run's rollouts: every backend and inference mode samples env i with seed
    `seed + i` and its own noise generator, so only the env count, env, learner and schedule matter."""
    backend = case["backend"]
    config = {
        "num_envs": backend["workers"] * backend["envs_per_worker"],
        "schedule": backend.get("schedule", "sync"),
        **{k: case.get(k) for k in ("env", "ppo", "algorithm")},
    }
    return json.dumps(config, sort_keys=True)


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
    steps, seconds, finals, curves = [], [], [], []
    for run in runs:
        evaluations = run.get("evaluations", [])
        curves.append([(e["steps"], e["mean_return"]) for e in evaluations])
        first = next((e for e in evaluations if e["mean_return"] >= threshold), None)
        steps.append(first["steps"] if first else None)
        seconds.append(first.get("train_wall_s") if first else None)
        if "final_evaluation" in run:
            finals.append(run["final_evaluation"]["mean_return"])
    trained = max((r["iterations"][-1]["steps_trained"] for r in runs if r.get("iterations")), default=measure["total_steps"])
    return Convergence(threshold, trained, measure["eval_every"], steps, seconds, finals, curves)


def run_stats(run: dict[str, Any]) -> dict[str, list[CaseStats]]:
    """Case statistics grouped by part name, in suite order."""
    machine = run["machine"]
    cores = machine.get("usable_cpus") or machine.get("logical_cores") or 1  # older runs lack usable_cpus
    parts = {p["name"]: p for p in run["parts"]}
    grouped: dict[str, list[CaseStats]] = {name: [] for name in parts}
    for case in run["cases"]:
        grouped[case["part"]].append(case_stats(case, parts[case["part"]], cores))
    return grouped


def baseline_case(cases: list[CaseStats], label: str | None) -> CaseStats | None:
    """The named baseline (its smallest worker and env count), or the first case with a result."""
    candidates = [c for c in cases if (label is None or c.label == label) and c.fps is not None]
    return min(candidates, key=lambda c: (c.workers, c.envs)) if candidates else None


def speedup(case: CaseStats, baseline: CaseStats | None) -> float | None:
    if case.fps is None or baseline is None or baseline.fps is None:
        return None
    return case.fps.median / baseline.fps.median
