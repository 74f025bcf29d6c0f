"""The metric registry (harness/metrics.py): each metric's figure against the same figure computed here,
independently, from the raw samples with scipy and numpy; every entry complete; tables name registry
metrics; the Chinese report has no English column header left in the speed, phases and overlap tables."""

from __future__ import annotations

import inspect
import json
import math
import re
from functools import partial

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness import stats
from harness.analysis import case_stats, run_stats
from harness.metrics import METRICS
from harness.migrations import migrate
from harness.report import HEADERS, TABLES, TableContext
from tests.conftest import REPO

THROUGHPUT = {"measure": {"mode": "throughput"}}
FIXTURE = REPO / "tests/fixtures/runs/v4/smoke/run.json"


def _iteration(rng: np.random.Generator, warmup: bool = False) -> dict:
    sync, collect, train = rng.uniform(0.001, 0.02), rng.uniform(0.05, 0.2), rng.uniform(0.02, 0.1)
    return {"steps": 256, "warmup": warmup, "sync_s": sync, "collect_s": collect, "train_s": train,
            "total_s": sync + collect + train, "transfer_s": rng.uniform(0, 0.01), "dispatch_s": rng.uniform(0, 0.002),
            "worker_compute_s": collect * 0.8, "transfer_bytes": int(rng.integers(1000, 2000)),
            "sync_bytes_serialized": 5000, "sync_bytes_network": 0, "clock_violations": int(rng.integers(0, 2)),
            "policy_lag": {"min": 0, "mean": float(rng.uniform(0, 1)), "max": 1}, "env_cost_ms_mean": rng.uniform(1, 2),
            "learner": {"initial_kl": float(rng.uniform(0, 0.01))}}  # fmt: skip


def _case(runs: int = 5, iterations: int = 4, inference: str = "worker") -> dict:
    rng = np.random.default_rng(7)
    return {
        "id": "p/mp/w2xe2", "part": "p", "label": "mp",
        "runs": [{"status": "ok", "startup_s": rng.uniform(1, 2), "learner": {"startup_s": rng.uniform(0.1, 0.2)},
                  "memory": {"workers_pss_mib": [rng.uniform(40, 50), rng.uniform(40, 50)], "tree_pss_mib": rng.uniform(300, 400)},
                  "iterations": [_iteration(rng, warmup=True), *(_iteration(rng) for _ in range(iterations))]}
                 for _ in range(runs)],
        "backend": {"name": "multiprocessing", "workers": 2, "envs_per_worker": 2, "inference": inference, "options": {},
                    "schedule": "sync"},
        "env": {"id": "Pendulum-v1", "step_cost_ms": 1.5}, "hyperparameters": {}, "preset": "report",
    }  # fmt: skip


def _measured(case: dict) -> list[list[dict]]:
    return [[it for it in run["iterations"] if not it["warmup"]] for run in case["runs"]]


def _t_interval(samples: list[float]) -> tuple[float, float]:
    """scipy's 95% Student-t interval of the mean."""
    return scipy_stats.t.interval(0.95, len(samples) - 1, loc=np.mean(samples), scale=scipy_stats.sem(samples))


def test_fps_is_the_geometric_mean_of_each_runs_fps_with_a_t_interval_on_logs():
    case = _case()
    fps = [sum(it["steps"] for it in m) / sum(it["total_s"] for it in m) for m in _measured(case)]
    got = case_stats(case, THROUGHPUT, cpus=8)["fps"]
    low, high = _t_interval(list(np.log(fps)))
    assert got.value == pytest.approx(scipy_stats.gmean(fps), rel=1e-12)
    assert (got.low, got.high) == pytest.approx((math.exp(low), math.exp(high)), rel=1e-12)
    assert got.n == 5 and got.estimator == "geometric mean"


def test_start_up_is_the_geometric_mean_of_backend_plus_learner_start_up():
    case = _case()
    startup = [r["startup_s"] + r["learner"]["startup_s"] for r in case["runs"]]
    assert case_stats(case, THROUGHPUT, cpus=8)["startup_s"].value == pytest.approx(scipy_stats.gmean(startup), rel=1e-12)


@pytest.mark.parametrize("metric, keys", [("sync_share", ["sync_s"]), ("communication_share", ["sync_s", "transfer_s"])])
def test_a_share_is_the_mean_of_each_runs_share_with_a_t_interval(metric, keys):
    case = _case()
    shares = [sum(it[k] for it in m for k in keys) / sum(it["total_s"] for it in m) for m in _measured(case)]
    got = case_stats(case, THROUGHPUT, cpus=8)[metric]
    assert got.value == pytest.approx(np.mean(shares), rel=1e-12)
    assert (got.low, got.high) == pytest.approx(_t_interval(shares), rel=1e-12)


def test_transfer_ms_is_the_mean_over_runs_of_each_runs_mean_per_iteration():
    case = _case()
    per_run = [1000 * np.mean([it["transfer_s"] for it in m]) for m in _measured(case)]
    got = case_stats(case, THROUGHPUT, cpus=8)["transfer_ms"]
    assert got.value == pytest.approx(np.mean(per_run), rel=1e-12)
    assert (got.low, got.high) == pytest.approx(_t_interval(per_run), rel=1e-12)


def test_pooled_metrics_are_plain_means_of_every_measured_iteration():
    case = _case()
    pooled = [it for m in _measured(case) for it in m]
    got = case_stats(case, THROUGHPUT, cpus=8)
    assert got["transfer_bytes"] == pytest.approx(np.mean([it["transfer_bytes"] for it in pooled]))
    assert got["lag_mean"] == pytest.approx(np.mean([it["policy_lag"]["mean"] for it in pooled]))
    assert got["env_cost_ms"] == pytest.approx(np.mean([it["env_cost_ms_mean"] for it in pooled]))
    assert got["clock_violations"] == sum(it["clock_violations"] for it in pooled)
    assert got["iteration_ms"] == pytest.approx(1000 * np.mean([it["sync_s"] + it["collect_s"] + it["train_s"] for it in pooled]))
    collect = sum(it["collect_s"] for it in pooled) / sum(it["sync_s"] + it["collect_s"] + it["train_s"] for it in pooled)
    assert got["collect_time_share"] == pytest.approx(collect)
    workers = np.mean([np.mean(r["memory"]["workers_pss_mib"]) for r in case["runs"]])
    assert got["worker_pss_mib"] == pytest.approx(workers)


def test_straggler_spread_is_the_mean_over_iterations_of_slowest_minus_fastest_worker():
    case = _case()
    rng = np.random.default_rng(3)
    for run in case["runs"]:
        for it in run["iterations"]:
            it["workers"] = [{"compute_s": float(s)} for s in rng.uniform(0.01, 0.05, 2)]
    spreads = [1000 * np.ptp([w["compute_s"] for w in it["workers"]]) for m in _measured(case) for it in m]
    assert case_stats(case, THROUGHPUT, cpus=8)["straggler_ms"] == pytest.approx(np.mean(spreads))


def test_fragment_spread_and_the_wait_on_the_slowest_against_numbers_worked_by_hand():
    case = _case(runs=2, iterations=1)
    for run in case["runs"]:
        for it in run["iterations"]:
            # Fragment times 10..50 ms; the last worker ready 7 ms after the median one (3 ms).
            it["workers"] = [
                {"compute_s": c / 1000, "ready_s": r / 1000} for c, r in zip((10, 20, 30, 40, 50), (1, 2, 3, 4, 10), strict=True)
            ]
    got = case_stats(case, THROUGHPUT, cpus=8)
    # Linear interpolation over 5 ordered values: p50 is the 3rd; p99 sits at 0.99 * 4 = 3.96, 96% of the way from 40 to 50.
    assert got["fragment_p50_ms"] == pytest.approx(30.0)
    assert got["fragment_p99_ms"] == pytest.approx(49.6)
    assert got["fragment_max_ms"] == pytest.approx(50.0)
    assert got["wait_on_slowest_ms"] == pytest.approx(7.0)


def test_sampling_split_shares_pool_each_part_over_the_samplers_time():
    case = _case(runs=1, iterations=2)
    measured = case["runs"][0]["iterations"][1:]
    for it, (env, inference, other) in zip(measured, ((0.6, 0.3, 0.1), (0.2, 0.1, 0.1)), strict=True):
        it |= {"sample_env_s": env, "sample_inference_s": inference, "sample_other_s": other}
    case["runs"][0]["iterations"][0] |= {"sample_env_s": 9.0, "sample_inference_s": 9.0, "sample_other_s": 9.0}  # warm-up
    got = case_stats(case, THROUGHPUT, cpus=8)
    assert got["sampling_env_share"] == pytest.approx(0.8 / 1.4)  # (0.6 + 0.2) / (1.0 + 0.4)
    assert got["sampling_inference_share"] == pytest.approx(0.4 / 1.4)
    assert got["sampling_other_share"] == pytest.approx(0.2 / 1.4)


def test_a_metric_that_does_not_apply_is_none():
    central = case_stats(_case(inference="central"), THROUGHPUT, cpus=8)
    assert central["sync_ms"] is None and central["sync_share"] is None and central["transfer_ms"] is not None
    vecenv = _case()
    vecenv["backend"]["name"] = "vecenv"
    assert case_stats(vecenv, THROUGHPUT, cpus=8)["transfer_time_share"] is None


def test_every_metric_declares_source_unit_estimator_and_both_headers():
    for name, metric in METRICS.items():
        assert set(metric.header) == set(HEADERS) and all(metric.header.values()), name
        assert metric.unit, name
        assert (metric.per_run is None) != (metric.per_iteration is None), f"{name}: per run or pooled, not both"
        estimator = metric.estimator.func if isinstance(metric.estimator, partial) else metric.estimator
        assert inspect.getmodule(estimator) is stats, f"{name}: estimators come from harness/stats.py only"


def test_every_metric_computes_on_every_committed_fixture():
    for path in sorted((REPO / "tests/fixtures/runs").glob("v*/*/run.json")):
        for cases in run_stats(migrate(json.loads(path.read_text()))).values():
            for case in cases:
                for name in METRICS:
                    case[name]  # noqa: B018  (raises if a metric cannot read a record it should)


def test_tables_name_only_registry_metrics():
    """Every `recorded(..., "name", ...)`, `ctx.header("name")` and `c["name"]` in the report names a metric."""
    named = set()
    for module in (REPO / "harness/report").glob("*.py"):
        if module.name == "document.py":  # the header reads the raw record (machine, runs), not a case's metrics
            continue
        text = module.read_text()
        named |= set(re.findall(r'(?:recorded\(ctx, \w+, |header\(|\b(?:c|case|over|sync|base|fastest)\[)"(\w+)"', text))
    assert named and named <= set(METRICS), named - set(METRICS)


@pytest.mark.parametrize("table", ["speed", "phases", "overlap"])
def test_chinese_headers_leave_no_english_word_in_the_speed_module(table):
    sync, overlap = _case(), _case()
    overlap["backend"]["schedule"], overlap["id"] = "overlap", "p/mp-overlap/w2xe2"
    ctx = TableContext([case_stats(c, THROUGHPUT, cpus=8) for c in (sync, overlap)], None, HEADERS["zh"], "zh")
    header = TABLES[table].render(ctx)[0].splitlines()[0]
    words = set(re.findall(r"[A-Za-z]{2,}", header)) - {"FPS", "CI", "KL", "MiB", "PSS", "Welch"}
    assert words == set(), header
