"""The statistics behind report.md: one named estimator per column with its own interval, speedup intervals
of the ratio, a real significance test with an effect size, per-host oversubscription, unique case names,
and the report's own figures judged by granularity-aware checks that never divide by zero."""

from __future__ import annotations

import math

import pytest

from harness.analysis import case_stats
from harness.report import CLAIMS, HEADERS, TABLES, TableContext, claim_lines
from harness.stats import EFFECT_THRESHOLD, compare, geometric_mean, mean

H = HEADERS["en"]
THROUGHPUT = {"measure": {"mode": "throughput"}}


def _iteration(total_s: float, steps: int = 2048, **extra: float) -> dict:
    return {"steps": steps, "total_s": total_s, "sync_s": 0.01, "collect_s": total_s / 2, "train_s": total_s / 2 - 0.01,
            "warmup": False, "transfer_s": 0.02, "worker_compute_s": total_s / 3, **extra}  # fmt: skip


def _case(label: str, backend: str, fps_per_repeat: list[float], workers: int = 1, envs: int = 1, **extra) -> dict:
    runs = [{"status": "ok", "iterations": [_iteration(2048 / fps)]} for fps in fps_per_repeat]
    return {
        "id": f"p/{label}/w{workers}xe{envs}", "part": "p", "label": label, "runs": runs,
        "backend": {"name": backend, "workers": workers, "envs_per_worker": envs, "inference": "worker", "options": {},
                    "schedule": "sync"},
        "env": {"id": "Pendulum-v1"}, "hyperparameters": {}, "preset": "report", **extra,
    }  # fmt: skip


def _ctx(*cases: dict, baseline: str | None = None) -> TableContext:
    return TableContext([case_stats(c, THROUGHPUT, cpus=2) for c in cases], baseline, H)


def test_fps_cell_is_the_geometric_mean_its_header_names_not_a_median():
    table, _ = TABLES["speed"].render(_ctx(_case("serial", "serial", [1000, 1000, 8000])))
    assert "geometric mean of repeats" in table
    assert "2,000" in table  # (1000 * 1000 * 8000) ** (1/3); the median would be 1,000, the mean 3,333
    assert "Mean FPS" not in table


def test_an_interval_stays_positive_and_is_withheld_when_n_is_too_small():
    wide = geometric_mean([300.0, 6000.0, 900.0])
    assert wide.low > 0 and wide.low < wide.value < wide.high
    two = geometric_mean([500.0, 6500.0])  # the old t-interval of the mean: -2,546 – 6,539 style
    assert two.n == 2 and not two.has_interval
    table, _ = TABLES["speed"].render(_ctx(_case("mp", "multiprocessing", [500, 6500], workers=4)))
    assert "n=2: too few for an interval" in table and "-" not in table.split("\n")[2].replace("---", "")


def test_speedup_interval_counts_the_baselines_spread():
    steady = [2000.0, 2000.0, 2000.0]
    noisy_base = compare([800.0, 1000.0, 1250.0], steady).ratio
    quiet_base = compare([1000.0, 1000.0, 1000.0], steady).ratio
    assert noisy_base.has_interval and noisy_base.low < 2.0 < noisy_base.high
    assert noisy_base.high - noisy_base.low > 0.3  # the old interval scaled by the baseline median had zero width here
    assert quiet_base.value == pytest.approx(2.0)
    ctx = _ctx(_case("serial", "serial", [800, 1000, 1250]), _case("ray", "ray_local", steady, workers=4), baseline="serial")
    table, _ = TABLES["speed"].render(ctx)
    assert f"{noisy_base.low:.2f} – {noisy_base.high:.2f}" in table


def test_a_change_counts_only_if_significant_and_large_enough():
    tiny = compare([1000, 1001, 1002, 1000], [1010, 1011, 1012, 1011])
    assert tiny.p_value < 0.05 and abs(tiny.ratio.value - 1) < EFFECT_THRESHOLD and tiny.significant is False
    assert "under 5%" in tiny.verdict()
    big = compare([1000, 1010, 990], [1500, 1490, 1520])
    assert big.significant and big.verdict().startswith("faster")
    noisy = compare([1000, 1500, 700], [1300, 900, 1600])
    assert noisy.significant is False
    assert compare([1000], [2000]).significant is None  # one repeat: no test, said so
    # Overlapping 95% intervals, yet a significant difference: what the old overlap rule got wrong.
    a = [100 * x for x in (1, 1.05, 0.95, 1.03, 0.97, 1.0)]
    b = [1.065 * x for x in a]
    ga, gb = geometric_mean(a), geometric_mean(b)
    assert ga.high > gb.low and compare(a, b).significant


def test_slower_than_the_fastest_is_decided_by_the_test():
    ctx = _ctx(_case("a", "vecenv", [1000, 1010, 990], envs=8), _case("b", "vecenv", [1500, 1490, 1520], envs=16),
               _case("c", "vecenv", [1480, 1530, 1470], envs=4))  # fmt: skip
    _, lines = TABLES["speed"].render(ctx)
    ties = next(line for line in lines if line.startswith("Not measurably slower"))
    assert "c · 4 envs" in ties and "a · 8 envs" not in ties


def test_every_case_has_a_unique_name_in_tables():
    cases = [_case("vecenv", "vecenv", [1000.0 * n] * 3, envs=n) for n in (1, 2, 4, 8, 16)]
    cases += [
        _case("ray_local", "ray_local", [900.0] * 3, workers=4),
        _case("ray_local", "ray_local", [900.0] * 3, workers=2, envs=2),
    ]
    ctx = _ctx(*cases)
    names = [c.name for c in ctx.cases]
    assert len(set(names)) == len(names)
    for table_name in ("speed", "phases"):
        table, _ = TABLES[table_name].render(ctx)
        rows = [line.split("|")[1].strip().removesuffix(" ⚠") for line in table.splitlines()[2:]]
        assert rows == names, table_name


def test_plots_label_every_case_and_keep_bars_inside_the_axes():
    from harness.plots import breakdown_figure

    cases = _ctx(*[_case("vecenv", "vecenv", [1000.0 * n] * 3, envs=n) for n in (1, 2, 4, 8, 16)]).cases
    fig = breakdown_figure(cases)
    ax = fig.axes[0]
    labels = [t.get_text().replace("\n", " · ") for t in ax.get_xticklabels()]
    assert labels == [c.name for c in cases]
    tops = [bar.get_y() + bar.get_height() for container in ax.containers for bar in container]
    positions = {round(bar.get_x() + bar.get_width() / 2, 6) for bar in ax.containers[0]}
    assert len(positions) == len(cases)  # one x position per case: none hidden behind another
    assert max(tops) <= ax.get_ylim()[1]


def test_oversubscription_is_counted_per_host():
    case = _case("ray_cluster", "ray_cluster", [1000] * 3, workers=4)
    placement = [{"worker": i, "host": "a" if i < 2 else "b", "cpus": 2} for i in range(4)]
    for run in case["runs"]:
        run["backend"] = {"placement": placement}
    stats = case_stats(case, THROUGHPUT, cpus=2, host="a")
    assert stats.busy_per_host == {"a": (2, 2), "b": (2, 2)} and not stats.oversubscribed  # 4 workers, 2 hosts of 2
    crowded = [{"worker": i, "host": "b", "cpus": 2} for i in range(4)]
    for run in case["runs"]:
        run["backend"] = {"placement": crowded}
    assert case_stats(case, THROUGHPUT, cpus=2, host="a").oversubscribed  # all four on host b


def _evaluations(reached_at: int | None) -> list[dict]:
    return [{"steps": s, "train_wall_s": s / 1000, "mean_return": -150.0 if reached_at and s >= reached_at else -900.0}
            for s in range(8192, 40_961, 8192)]  # fmt: skip


def _convergence_case(reached: list[int | None], claims: dict) -> dict:
    runs = [{"status": "ok", "seed": i, "iterations": [_iteration(1.0, steps_trained=40_960)], "evaluations": _evaluations(r),
             "final_evaluation": {"mean_return": -150.0 - i}} for i, r in enumerate(reached)]  # fmt: skip
    case = _case("serial", "serial", [1000])
    return case | {"runs": runs, "claims": claims}


def test_steps_claim_respects_the_evaluation_granularity():
    part = {"measure": {"mode": "convergence", "threshold": -200.0, "total_steps": 40_000, "eval_every": 8192}}
    stats = case_stats(_convergence_case([24_576, 24_576, 32_768], {"steps_to_threshold": 23_800}), part, cpus=2)
    (line,) = claim_lines(TableContext([stats], None, H), "convergence", ["convergence"])
    # 23,800 lies between the evaluations at 16,384 and 24,576: a seed seen first at 24,576 may have crossed there.
    assert "the claim is inside it" in line and "evaluated every 8,192" in line
    early = case_stats(_convergence_case([24_576, 24_576, 32_768], {"steps_to_threshold": 12_000}), part, cpus=2)
    (line,) = claim_lines(TableContext([early], None, H), "convergence", ["convergence"])
    assert "the claim is outside it" in line


def test_communication_share_claim_has_an_interval_and_never_divides_by_zero():
    case = _case("ray_local", "ray_local", [1000, 1100, 900], workers=4, claims={"communication_share": 13.8, "sync_ms": 58.3})
    for run in case["runs"]:
        for it in run["iterations"]:
            it["sync_s"] = it["transfer_s"] = 0.0  # no communication at all: the old check divided by it
    ctx = _ctx(case)
    lines = claim_lines(ctx, "communication", ["communication"])
    assert len(lines) == 2 and all("95% CI" in line for line in lines)
    assert "we measure 0.0%" in lines[0] and "outside" in lines[0]
    share = ctx.cases[0]["communication_share"]
    assert share.has_interval and share.low == 0.0


def test_central_inference_counts_no_weight_sync_in_table_or_claim():
    case = _case("ray_local", "ray_local", [1000, 1100, 900], workers=4, claims={"communication_share": 13.8})
    case["backend"]["inference"] = "central"
    ctx = _ctx(case)
    stats = ctx.cases[0]
    assert stats["sync_ms"] is None and stats["sync_share"] is None
    assert stats["communication_share"].value == pytest.approx(stats["transfer_share"].value)  # the claim's figure
    table, lines = TABLES["communication"].render(ctx)
    assert "n/a: in-process" in table
    assert any("trajectory transfer (weight loads stay in-process)" in line for line in lines)


def test_every_claim_names_a_table_that_exists():
    assert {claim.table for claim in CLAIMS.values()} <= set(TABLES)


def test_mean_interval_is_clipped_to_its_bounds():
    share = mean([0.01, 0.0, 0.3], bounds=(0.0, 1.0))
    assert share.low == 0.0 and share.high <= 1.0
    assert not math.isnan(share.value)


def test_memory_columns_show_pss_per_worker_and_in_total_from_the_run_record():
    """Per worker: each worker's peak PSS, mean over workers, then over runs; in total: the tree's peak, mean over runs."""
    memory = [{"learner_pss_mib": 150.0, "workers_pss_mib": [40.0, 50.0], "others_pss_mib": 0.0, "tree_pss_mib": 240.0},
              {"learner_pss_mib": 160.0, "workers_pss_mib": [60.0, None], "others_pss_mib": 0.0, "tree_pss_mib": 260.0}]  # fmt: skip
    remote = _case("mp", "multiprocessing", [1000, 1000], workers=2)
    for run, record in zip(remote["runs"], memory, strict=True):
        run["memory"] = record  # a None worker (outside the process tree) is left out, not counted as 0
    local = _case("serial", "serial", [500])
    local["runs"][0]["memory"] = {"learner_pss_mib": 170.0, "workers_pss_mib": [], "others_pss_mib": 0.0, "tree_pss_mib": 171.0}
    table, lines = TABLES["speed"].render(_ctx(local, remote, baseline="serial"))
    header = table.splitlines()[0]
    assert "Memory per worker (MiB PSS, peak; mean)" in header and "Memory in total (MiB PSS, peak; mean)" in header
    rows = {row.split("|")[1].strip(): [cell.strip() for cell in row.split("|")] for row in table.splitlines()[2:]}
    columns = [cell.strip() for cell in header.split("|")]
    per_worker, total = (
        columns.index("Memory per worker (MiB PSS, peak; mean)"),
        columns.index("Memory in total (MiB PSS, peak; mean)"),
    )
    assert rows["mp · 2w×1e"][per_worker] == "52" and rows["mp · 2w×1e"][total] == "250"  # (45 + 60) / 2; (240 + 260) / 2
    assert rows["serial · 1 env"][per_worker] == "n/a: in-process" and rows["serial · 1 env"][total] == "171"
    assert any(line.startswith("Memory: PSS") for line in lines)
