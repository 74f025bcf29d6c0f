"""The metrics a table may show: name -> where it comes from in a run record, its unit, its estimator and
its header. A new metric is one entry here plus its column in one table (harness/report/).

Each metric is computed on demand from a case's raw samples (`harness.analysis.CaseStats[name]`), in one of
two ways, and nowhere else:

- **per run**: `per_run(case, run)` gives one sample per independent run (a fresh-process repeat, or a
  seed), and the estimator summarises them with an interval (`geometric_mean` for speeds and durations,
  `mean` for shares and milliseconds);
- **pooled**: `per_iteration(case, iteration)` gives one sample per measured iteration of every run, and
  the estimator pools them into a point figure without an interval (iterations of one run are not
  independent): `pooled_mean`, `total`, or `pooled_share` of (part, whole) pairs.

A metric whose record keys an older harness did not write (`recorded_by`) is None and shows as "not
recorded"; one that does not apply to the case (`applies`) is None and shows as "n/a". Estimators come from
harness/stats.py only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.stats import geometric_mean, mean, pooled_mean, pooled_share, total

if TYPE_CHECKING:
    from harness.analysis import CaseStats, RunSamples

Record = dict[str, Any]
PHASES = ("between", "sync", "collect", "train")  # train: the learner's whole call (PPO: GAE + update)


@dataclass(frozen=True)
class Metric:
    """One figure of a case: how to get its samples from the record, and how to summarise them."""

    header: dict[str, str]
    """Its column header, by report language (`en`, `zh`)."""
    unit: str
    estimator: Callable[[Sequence[Any]], Any]
    """From harness.stats: an `Estimate` over runs, or a pooled point figure (a float)."""
    per_run: Callable[[CaseStats, RunSamples], float | None] | None = None
    """One sample per ok run of the case (None: the run gives none)."""
    per_iteration: Callable[[CaseStats, Record], Any] | None = None
    """One sample per measured iteration of every ok run, pooled (when `per_run` is None)."""
    applies: Callable[[CaseStats], bool] = lambda case: True
    """False: the figure means nothing for this case (weight sync with central inference, transfer in-process)."""
    recorded_by: tuple[str, str] | None = None
    """(`run`, `learner`, `iteration` or an iteration's `policy_lag`, key): a record lacking that key was written
    before the harness measured this figure (harness/migrations.py), and the figure is "not recorded" rather than
    computed from nothing."""

    def compute(self, case: CaseStats) -> Any:
        """The figure for `case` (harness.analysis.CaseStats[name] caches it and checks `recorded_by` first)."""
        if not self.applies(case):
            return None
        if self.per_run is not None:
            return self.estimator([self.per_run(case, run) for run in case.runs])
        assert self.per_iteration is not None, "a metric has per-run or per-iteration samples"
        return self.estimator([self.per_iteration(case, it) for it in case.iterations])


def _remote(case: CaseStats) -> bool:
    return case.remote


def _moves_weights(case: CaseStats) -> bool:
    """Weight sync crosses a process boundary: remote workers holding policy copies (not central inference)."""
    return case.remote and case.inference != "central"


def _per_iteration_ms(key: str, run: RunSamples) -> float | None:
    """A run's mean of `key` per measured iteration, in ms (absent or null counted as 0)."""
    return 1000 * sum(it.get(key) or 0.0 for it in run.measured) / len(run.measured) if run.measured else None


def _sampling_fps(case: CaseStats, run: RunSamples) -> float | None:
    # The batch over the time it took to sample. Under overlap the learner's collect_s is only its wait, so
    # the workers' own (slowest) sampling time stands in.
    overlapped = case.schedule == "overlap"
    seconds = sum((it.get("worker_compute_s") or 0.0) if overlapped else it["collect_s"] for it in run.measured)
    return run.steps / seconds if run.measured and seconds > 0 else None


def _startup_s(case: CaseStats, run: RunSamples) -> float | None:
    # The backend's workers plus building the learner (a compiled learner compiles then).
    learner_s = (run.record.get("learner") or {}).get("startup_s")  # absent before version 2: no figure, not a smaller one
    return None if learner_s is None or not run.measured else (run.record.get("startup_s") or 0.0) + learner_s


def _share(*keys: str) -> Callable[[CaseStats, RunSamples], float | None]:
    """Per run: the summed `keys` of its measured iterations over their total_s (weight sync counts 0 with
    central inference: the policy never leaves the learner, so its load is not communication)."""

    def share(case: CaseStats, run: RunSamples) -> float | None:
        if not run.measured or run.total_s <= 0:
            return None
        moved = sum(it.get(k) or 0.0 for k in keys if k != "sync_s" or _moves_weights(case) for it in run.measured)
        return moved / run.total_s

    return share


def _dispatch_ms(case: CaseStats, run: RunSamples) -> float | None:
    dispatch = [it["dispatch_s"] for it in run.measured if it.get("dispatch_s") is not None]
    return 1000 * sum(dispatch) / len(dispatch) if dispatch else None


def _worker_pss_mib(case: CaseStats, run: RunSamples) -> float | None:
    """The mean over the run's workers of each one's peak PSS (None for a worker outside the process tree)."""
    return pooled_mean((run.record.get("memory") or {}).get("workers_pss_mib") or [])


def _total_pss_mib(case: CaseStats, run: RunSamples) -> float | None:
    return (run.record.get("memory") or {}).get("tree_pss_mib")


def _straggler_ms(case: CaseStats, it: Record) -> float | None:
    """The slowest worker's sampling time minus the fastest's, in ms: how long the fastest waited for the batch."""
    compute = [w["compute_s"] for w in it.get("workers") or []]
    return 1000 * (max(compute) - min(compute)) if compute else None


def _fragment_quantile(q: float) -> Callable[[CaseStats, Record], float | None]:
    """Per iteration, quantile `q` (numpy's linear interpolation) of the workers' fragment times, in ms."""

    def quantile(case: CaseStats, it: Record) -> float | None:
        compute = [w["compute_s"] for w in it.get("workers") or []]
        return 1000 * float(np.quantile(compute, q)) if compute else None

    return quantile


def _wait_on_slowest_ms(case: CaseStats, it: Record) -> float | None:
    """How much later the last fragment was ready than the median one, in ms: what the learner waited beyond the
    typical worker for the slowest (ready times where recorded, on the learner's clock; else sampling times)."""
    workers = it.get("workers") or []
    ready = [w["ready_s"] if w.get("ready_s") is not None else w["compute_s"] for w in workers]
    return 1000 * (max(ready) - float(np.median(ready))) if ready else None


def _sampling_part(key: str) -> Callable[[CaseStats, Record], tuple[float, float] | None]:
    """(this part's seconds, the sampler's seconds) of one iteration: the parts of a pooled share."""

    def part(case: CaseStats, it: Record) -> tuple[float, float] | None:
        parts = [it.get(k) for k in SAMPLING_PARTS]
        return (0.0, 0.0) if None in parts else (it[key], sum(parts))  # an iteration without the split adds nothing

    return part


SAMPLING_PARTS = ("sample_env_s", "sample_inference_s", "sample_other_s")


def _phase(phase: str) -> Callable[[CaseStats, Record], tuple[float, float]]:
    """(this phase's seconds, all phases' seconds) of one iteration: the parts of a pooled share."""
    return lambda case, it: (it.get(f"{phase}_s") or 0.0, _phases_s(it))


def _phases_s(it: Record) -> float:
    """The iteration's phases summed: its total_s (between_s counts 0 in a record from before version 6)."""
    return sum(it.get(f"{p}_s") or 0.0 for p in PHASES)


_MS = partial(mean, bounds=(0.0, math.inf))
_SHARE = partial(mean, bounds=(0.0, 1.0))


METRICS: dict[str, Metric] = {
    # --- speed, per run ----------------------------------------------------------------------------
    "fps": Metric(
        {"en": "FPS (steps/s), geometric mean of repeats", "zh": "FPS（步/秒）, 重复运行的几何平均"},
        "steps/s",
        geometric_mean,
        per_run=lambda case, run: run.steps / run.total_s if run.measured and run.total_s > 0 else None,
    ),
    "sampling_fps": Metric(
        {"en": "Sampling FPS (geometric mean)", "zh": "采样 FPS（几何平均）"}, "steps/s", geometric_mean, per_run=_sampling_fps
    ),
    "startup_s": Metric(
        {"en": "Start-up (s, geometric mean)", "zh": "启动时间（秒，几何平均）"},
        "s",
        geometric_mean,
        per_run=_startup_s,
        recorded_by=("learner", "startup_s"),  # building the learner: timed since version 2
    ),
    # --- communication, per run ----------------------------------------------------------------------
    "sync_ms": Metric(
        {"en": "Weight sync (ms per iteration, mean of runs)", "zh": "权重同步（毫秒/迭代，各次运行的平均）"},
        "ms",
        _MS,
        per_run=lambda case, run: _per_iteration_ms("sync_s", run),
        applies=_moves_weights,
    ),
    "transfer_ms": Metric(
        {"en": "Trajectory transfer (ms per iteration, mean of runs)", "zh": "轨迹传输（毫秒/迭代，各次运行的平均）"},
        "ms",
        _MS,
        per_run=lambda case, run: _per_iteration_ms("transfer_s", run),
        applies=_remote,
    ),
    "dispatch_ms": Metric(
        {"en": "Request dispatch (ms per iteration, mean of runs)", "zh": "请求分发（毫秒/迭代，各次运行的平均）"},
        "ms",
        _MS,
        per_run=_dispatch_ms,
        applies=_remote,
        recorded_by=("iteration", "dispatch_s"),  # since version 3, as is every measured byte
    ),
    "sync_share": Metric(
        {"en": "Weight sync share of total time", "zh": "权重同步占总时间比例"},
        "fraction",
        _SHARE,
        per_run=_share("sync_s"),
        applies=_moves_weights,
    ),
    "transfer_share": Metric(
        {"en": "Trajectory transfer share of total time", "zh": "轨迹传输占总时间比例"},
        "fraction",
        _SHARE,
        per_run=_share("transfer_s"),
        applies=_remote,
    ),
    "communication_share": Metric(
        {"en": "Communication share of total time", "zh": "通信占总时间比例"},
        "fraction",
        _SHARE,
        per_run=_share("sync_s", "transfer_s"),  # what the report's 13.8% is
        applies=_remote,
    ),
    # --- bytes, pooled over iterations ---------------------------------------------------------------
    "sync_bytes": Metric(
        {"en": "Bytes serialized per weight broadcast", "zh": "每次权重广播序列化字节数"},
        "bytes",
        pooled_mean,
        per_iteration=lambda case, it: it.get("sync_bytes_serialized"),
        applies=lambda case: case.inference != "central",
        recorded_by=("iteration", "sync_bytes_serialized"),  # before, bytes were a formula: not this figure
    ),
    "sync_network_bytes": Metric(
        {"en": "Bytes over the network per weight broadcast", "zh": "每次权重广播经网络的字节数"},
        "bytes",
        pooled_mean,
        per_iteration=lambda case, it: it.get("sync_bytes_network"),
        applies=lambda case: case.inference != "central",
    ),
    "transfer_bytes": Metric(
        {"en": "Bytes serialized per iteration's fragments", "zh": "每次迭代轨迹片段序列化字节数"},
        "bytes",
        pooled_mean,
        per_iteration=lambda case, it: it.get("transfer_bytes"),
        recorded_by=("iteration", "sync_bytes_serialized"),  # formula bytes before version 3 (harness/migrations.py)
    ),
    "clock_violations": Metric(
        {"en": "Clock violations", "zh": "时钟因果冲突次数"},
        "worker times",
        total,
        per_iteration=lambda case, it: it.get("clock_violations") or 0,
    ),
    # --- where the time goes, pooled over iterations -------------------------------------------------
    **{
        f"{phase}_time_share": Metric(
            {"en": f"{label} %", "zh": f"{zh}占比（%）"},
            "fraction",
            pooled_share,
            per_iteration=_phase(phase),
            applies=_remote if phase == "transfer" else lambda case: True,
            recorded_by=("iteration", "between_s") if phase == "between" else None,  # since version 6 (issue 23)
        )
        for phase, label, zh in (
            ("between", "Between", "迭代之间"),
            ("sync", "Sync", "同步"),
            ("collect", "Collect", "采集"),
            ("transfer", "…transfer", "…其中传输"),
            ("train", "Train", "训练"),
        )
    },
    "iteration_ms": Metric(
        {"en": "Iteration (ms, mean)", "zh": "每次迭代（毫秒，平均）"},
        "ms",
        pooled_mean,
        per_iteration=lambda case, it: 1000 * _phases_s(it),
    ),
    "worker_compute_ms": Metric(
        {"en": "Workers sampling (ms, mean)", "zh": "工作器采样（毫秒，平均）"},
        "ms",
        pooled_mean,
        per_iteration=lambda case, it: 1000 * (it.get("worker_compute_s") or 0.0),
        applies=_remote,
    ),
    "straggler_ms": Metric(
        {"en": "Straggler spread (ms, mean)", "zh": "工作器快慢之差（毫秒，平均）"},
        "ms",
        pooled_mean,
        per_iteration=_straggler_ms,
        applies=_remote,
        recorded_by=("iteration", "workers"),  # per-worker times since version 3
    ),
    **{
        f"fragment_{name}_ms": Metric(
            {"en": f"Fragment time {name} over workers (ms, mean)", "zh": f"各工作器片段时间 {name}（毫秒，平均）"},
            "ms",
            pooled_mean,
            per_iteration=_fragment_quantile(q),
            applies=_remote,
            recorded_by=("iteration", "workers"),
        )
        for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    },
    "wait_on_slowest_ms": Metric(
        {"en": "Wait on the slowest (ms, mean)", "zh": "等待最慢工作器（毫秒，平均）"},
        "ms",
        pooled_mean,
        per_iteration=_wait_on_slowest_ms,
        applies=_remote,
        recorded_by=("iteration", "workers"),
    ),
    **{
        f"sampling_{part}_share": Metric(
            {"en": f"Sampling: {label} %", "zh": f"采样：{zh}占比（%）"},
            "fraction",
            pooled_share,
            per_iteration=_sampling_part(f"sample_{part}_s"),
            recorded_by=("iteration", "sample_env_s"),  # since version 5 (issue 21)
        )
        for part, label, zh in (("env", "env step", "环境步进"), ("inference", "inference", "推理"), ("other", "rest", "其他"))
    },
    "env_cost_ms": Metric(
        {"en": "Env cost per step (ms, set → measured mean)", "zh": "每步环境开销（毫秒，设定 → 实测平均）"},
        "ms",
        pooled_mean,
        per_iteration=lambda case, it: it.get("env_cost_ms_mean"),
        applies=lambda case: bool(case.env_cost_set),
        recorded_by=("iteration", "env_cost_ms_mean"),
    ),
    # --- overlap, pooled over iterations -------------------------------------------------------------
    "lag_mean": Metric(
        {"en": "Mean lag", "zh": "平均策略滞后"},
        "policy versions",
        pooled_mean,
        per_iteration=lambda case, it: it["policy_lag"]["mean"] if "policy_lag" in it else None,
    ),
    "lag_sgd_steps_mean": Metric(
        {"en": "Mean lag (SGD steps)", "zh": "平均策略滞后（优化步）"},
        "optimiser steps",
        pooled_mean,
        per_iteration=lambda case, it: it["policy_lag"].get("sgd_steps_mean") if "policy_lag" in it else None,
        recorded_by=("policy_lag", "sgd_steps_mean"),  # since version 6 (issue 23)
    ),
    "initial_kl": Metric(
        {"en": "Initial KL", "zh": "初始 KL"},
        "nats",
        pooled_mean,
        per_iteration=lambda case, it: (it.get("learner") or {}).get("initial_kl"),
    ),
    # --- memory, per run -----------------------------------------------------------------------------
    "worker_pss_mib": Metric(
        {"en": "Memory per worker (MiB PSS, peak; mean)", "zh": "每个工作器内存（MiB PSS，峰值；平均）"},
        "MiB",
        pooled_mean,  # each worker's peak, the mean over workers, then over runs: a point figure
        per_run=_worker_pss_mib,
        recorded_by=("run", "memory"),  # since 80e3465 (version 4)
    ),
    "total_pss_mib": Metric(
        {"en": "Memory in total (MiB PSS, peak; mean)", "zh": "总内存（MiB PSS，峰值；平均）"},
        "MiB",
        pooled_mean,
        per_run=_total_pss_mib,
        recorded_by=("run", "memory"),
    ),
}
