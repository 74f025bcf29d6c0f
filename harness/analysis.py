"""Per-case statistics from a run record (pure data in, data out; no rendering).

A case's structural facts (label, backend, shape, oversubscription, errors, convergence per seed) are fields
of `CaseStats`; every figure is a metric of harness/metrics.py, looked up by name and computed on demand
from the raw samples. The unit of every interval is an independent sample: a fresh-process repeat
(throughput) or a seed (convergence).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from algorithms.config import PRESETS, SETTINGS_TABLES
from backends import REGISTRY
from harness.metrics import METRICS, PHASES

__all__ = ["PHASES", "RunSamples", "CaseStats", "Convergence", "baseline_case", "case_stats", "run_fps", "run_stats"]


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
    diverged: list[int] = field(default_factory=list)
    """Seeds with an evaluation whose mean return is not a finite number: the policy's weights became NaN or
    infinite (the update diverged). A NaN never reaches the threshold; their final return is left out of its mean."""

    @property
    def reached(self) -> list[int]:
        return [s for s in self.steps_to_threshold if s is not None]


@dataclass(frozen=True)
class RunSamples:
    """One ok run of a case: its record and its measured iterations (warm-up excluded)."""

    record: dict[str, Any]
    measured: list[dict[str, Any]]

    @property
    def steps(self) -> int:
        return sum(it["steps"] for it in self.measured)

    @property
    def total_s(self) -> float:
        return sum(it["total_s"] for it in self.measured)


@dataclass(frozen=True)
class CaseStats:
    """One case of a run record, over its repeats or seeds: its structural facts as fields, and every metric
    of harness/metrics.py by name, computed on demand from the raw samples (`stats["fps"]`)."""

    id: str
    part: str
    label: str
    backend: str
    inference: str
    workers: int
    envs_per_worker: int
    remote: bool
    oversubscribed: bool
    errors: list[str]
    runs: list[RunSamples]
    """The ok runs: every metric's samples come from these."""
    schedule: str = "sync"
    env_cost_set: float = 0.0
    """The synthetic per-step env cost the suite set, ms (0: none)."""
    env_cost_kind: str = "sleep"
    """`sleep` or `busy`: whether that cost holds a core."""
    torch_threads: int | None = None
    """The learner's intra-op threads the case asked for (null: its part's `[measure]` setting)."""
    threads: int | None = None
    """Env threads of a backend that steps its envs on threads (`options.num_threads`); null otherwise."""
    convergence: Convergence | None = None
    claims: dict[str, float] = field(default_factory=dict)
    sampling_key: str = ""
    """Equal for cases that sample identical rollouts by construction (same envs, seeds, learner; sync)."""
    pair_key: str = ""
    """Equal for cases that differ only in their schedule (and PPO's off-policy correction): what `overlap` is compared with."""
    busy_per_host: dict[str, tuple[int, float | None]] = field(default_factory=dict)
    """Host -> (CPU-busy processes there, CPUs usable there if known): what `oversubscribed` is judged on."""
    deviations: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """PPO settings that differ from the research report's: name -> (report's value, this case's)."""
    worker_restarts: int = 0
    """Workers lost and replaced (`on_worker_failure = "restart"`), summed over every run of the case, failed ones too."""
    restarted_runs: int = 0
    """Runs with at least one worker restart."""
    _computed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, metric: str) -> Any:
        """The metric's figure (an Estimate, or a pooled float), or None where it does not apply or was not recorded."""
        if metric not in self._computed:
            self._computed[metric] = None if metric in self.not_recorded else METRICS[metric].compute(self)
        return self._computed[metric]

    def samples(self, metric: str) -> list[float]:
        """A per-run metric's samples, one per run that gave one: what comparisons between cases test."""
        per_run = METRICS[metric].per_run
        assert per_run is not None, f"{metric} is pooled over iterations: it has no per-run samples"
        return [v for v in (per_run(self, run) for run in self.runs) if v is not None]

    @functools.cached_property
    def not_recorded(self) -> frozenset[str]:
        """The metrics that apply to this case but that the record lacks because the harness that wrote it did not
        measure them (their `recorded_by` key is absent, not null): a record migrated from an older schema version
        (harness/migrations.py lists those today's schema requires in the record's `not_recorded`). The report says
        "not recorded" for these, where None alone means "does not apply"."""
        records = {
            "run": [r.record for r in self.runs],
            "learner": [r.record.get("learner") or {} for r in self.runs],
            "iteration": self.iterations,
            "policy_lag": [it.get("policy_lag") or {} for it in self.iterations],
        }
        return frozenset(
            name
            for name, metric in METRICS.items()
            if metric.recorded_by
            and metric.applies(self)
            and any(metric.recorded_by[1] not in r for r in records[metric.recorded_by[0]])
        )

    @property
    def iterations(self) -> list[dict[str, Any]]:
        """Every measured iteration of every ok run, pooled."""
        return [it for run in self.runs for it in run.measured]

    @property
    def runs_ok(self) -> int:
        return len(self.runs)

    @property
    def envs(self) -> int:
        return self.workers * self.envs_per_worker

    @property
    def layout(self) -> tuple[int, int]:
        """(parallel units, envs each): workers × envs per worker, or for a tool that runs its envs on threads of the
        learner's process (EnvPool's `num_threads`) threads × envs per thread."""
        if self.threads:
            return self.threads, self.envs // self.threads
        return self.workers, self.envs_per_worker

    @property
    def parallelism(self) -> int:
        """What a scaling sweep varies: worker processes, or envs for an in-process vector env."""
        return self.workers if self.remote else self.envs

    @property
    def name(self) -> str:
        """The case's label plus its shape: unique within a part (its id is part/label/shape)."""
        shape = f"{self.workers}w×{self.envs_per_worker}e" if self.remote else f"{self.envs} env{'s' * (self.envs > 1)}"
        return f"{self.label} · {shape}"


def _measured(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [it for it in run.get("iterations", []) if not it.get("warmup")]


def run_fps(run: dict[str, Any]) -> float | None:
    """One case run's end-to-end FPS (harness.metrics' `fps`, one sample): env steps of its measured
    iterations over their wall time (warm-up excluded); None when it measured none."""
    return METRICS["fps"].per_run(None, RunSamples(run, _measured(run)))  # type: ignore[arg-type,misc]


def is_remote(backend_name: str) -> bool:
    """From the registry; a backend no longer registered counts as in-process."""
    entry = REGISTRY.get(backend_name)
    return bool(entry and entry.remote)


def case_stats(case: dict[str, Any], part: dict[str, Any], cpus: float, host: str | None = None) -> CaseStats:
    """One case of a run record; `cpus` and `host`: the learner's machine. Its metrics are computed when asked."""
    ok_runs = [r for r in case["runs"] if r.get("status") == "ok"]
    runs = [RunSamples(r, _measured(r)) for r in ok_runs]
    backend = case["backend"]
    placements = [(r.get("backend") or {}).get("placement") or [] for r in ok_runs if _measured(r)]
    busy = _busy_per_host(case, placements, cpus, host)
    restarts = [_restarts(run) for run in case["runs"]]
    measure = part["measure"]
    return CaseStats(
        id=case["id"],
        part=case["part"],
        label=case["label"],
        backend=backend["name"],
        inference=backend["inference"],
        workers=backend["workers"],
        envs_per_worker=backend["envs_per_worker"],
        remote=is_remote(backend["name"]),
        oversubscribed=any(cap is not None and n > cap for n, cap in busy.values()),
        errors=[r.get("error") or "unknown error" for r in case["runs"] if r.get("status") != "ok"],
        runs=runs,
        schedule=backend.get("schedule", "sync"),
        env_cost_set=case["env"].get("step_cost_ms") or 0.0,
        env_cost_kind=case["env"].get("step_cost_kind") or "sleep",
        torch_threads=case.get("torch_threads"),
        threads=backend.get("options", {}).get("num_threads"),
        convergence=_convergence(ok_runs, measure) if measure["mode"] == "convergence" else None,
        claims=case.get("claims", {}),
        sampling_key=sampling_key(case),
        pair_key=schedule_free_key(case),
        busy_per_host=busy,
        deviations=report_deviations(case.get("hyperparameters") or {}),
        worker_restarts=sum(restarts),
        restarted_runs=sum(1 for n in restarts if n),
    )


def _restarts(run: dict[str, Any]) -> int:
    """Worker restarts of one run: its iterations' events (warm-up included), counted."""
    return sum(len(it.get("worker_restarts") or []) for it in run.get("iterations", []))


def report_deviations(settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Where a case's learner settings leave the research report's (PPO's `report` preset); none for a learner
    whose settings are not PPO's (the report has no figures of another algorithm to stand beside)."""
    report = json.loads(json.dumps(dataclasses.asdict(PRESETS["report"])))  # as a record holds it: a layer list is a list
    if set(settings) != set(report):
        return {}
    return {k: (report[k], v) for k, v in settings.items() if report[k] != v}


def _busy_per_host(
    case: dict[str, Any], placements: list[list[dict[str, Any]]], cpus: float, host: str | None
) -> dict[str, tuple[int, float | None]]:
    """CPU-busy processes on each host against the CPUs usable there (known for the learner's host, and
    for worker hosts that reported theirs). Workers whose env mostly sleeps (a synthetic sleep cost)
    wait rather than contend: they do not count. The learner counts when it samples (in-process
    backends, central inference); while remote workers sample, it waits. A tool whose envs live in
    processes of their own (gymnasium's AsyncVectorEnv, SB3's SubprocVecEnv: their placement lists
    them) adds those; one that steps them on threads of the learner's process (EnvPool) its threads."""
    backend = case["backend"]
    learner_host = host or "learner host"
    env = case["env"]
    sleeping = (env.get("step_cost_ms") or 0) > 0 and env.get("step_cost_kind") == "sleep"
    placement = max(placements, key=len, default=[])
    if not is_remote(backend["name"]):
        threads = (backend.get("options") or {}).get("num_threads") or 0
        return {learner_host: (max(1, threads) + (0 if sleeping else len(placement)), cpus)}
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
        **{k: case.get(k) for k in ("env", "hyperparameters", "algorithm")},
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


_CORRECTIONS = frozenset(name for table in SETTINGS_TABLES.values() for name in table.staleness_corrections)
"""Every settings table's staleness corrections: a case's settings are one table's, so the union sets aside exactly
its own, without importing its learner (and torch) to ask which table that is."""


def schedule_free_key(case: dict[str, Any]) -> str:
    """The case's configuration without what the `overlap` comparison varies: schedule, lag, the learner's corrections
    for staleness (each overlap variant is compared with the plain sync case)."""
    config = {k: v for k, v in case.items() if k not in ("id", "label", "runs", "claims")}
    config["backend"] = {
        k: v for k, v in config["backend"].items() if k not in ("schedule", "max_lag", "publish_every", "publications_per_batch")
    }
    config["hyperparameters"] = {k: v for k, v in (case.get("hyperparameters") or {}).items() if k not in _CORRECTIONS}
    return json.dumps(config, sort_keys=True)


def _convergence(runs: list[dict[str, Any]], measure: dict[str, Any]) -> Convergence:
    threshold = measure["threshold"]
    steps, seconds, finals, curves, seeds, diverged = [], [], [], [], [], []
    for run in runs:
        evaluations = run.get("evaluations", [])
        curves.append([(e["steps"], e["mean_return"]) for e in evaluations])
        first = next((e for e in evaluations if e["mean_return"] >= threshold), None)
        steps.append(first["steps"] if first else None)
        seconds.append(first.get("train_wall_s") if first else None)
        seeds.append(run.get("seed"))
        returns = [e["mean_return"] for e in evaluations]
        if "final_evaluation" in run:
            finals.append(run["final_evaluation"]["mean_return"])
            returns.append(finals[-1])
        if not all(map(math.isfinite, returns)):
            diverged.append(run.get("seed"))
    trained = max((r["iterations"][-1]["steps_trained"] for r in runs if r.get("iterations")), default=measure["total_steps"])
    return Convergence(threshold, trained, measure["eval_every"], steps, seconds, finals, curves, seeds, diverged)


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
    candidates = [c for c in cases if (label is None or c.label == label) and c["fps"] is not None]
    return min(candidates, key=lambda c: (c.workers, c.envs)) if candidates else None
