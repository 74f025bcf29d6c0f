"""How numbers become table cells, and what every table receives: one place for formats and wording."""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from harness.analysis import CaseStats, baseline_case
from harness.metrics import METRICS
from harness.stats import MIN_SAMPLES_FOR_INTERVAL, Comparison, Estimate, compare

# The research report's own column headers (section 4), and the words around them, for `--lang zh`.
HEADERS = {
    "en": {
        "config": "Config",
        "workers": "Workers",
        "fps": "FPS (steps/s)",
        "speedup": "Speedup",
        "steps_to": "Steps to {threshold:g}",
        "final": "Final mean return",
        "comm_type": "Type",
        "mean_ms": "Mean time (ms)",
        "share": "Share of total time (%)",
        "weight_sync": "Weight sync",
        "transfer": "Trajectory transfer",
        "dispatch": "Request dispatch",
        "geomean": "geometric mean of repeats",
        "ratio": "ratio of geometric means",
        "of_runs": "mean of runs",
        "report": "Report's figure",
        "not_recorded": "not recorded",
        "fps_ci": "FPS 95% CI",
        "speedup_ci": "Speedup 95% CI",
        "envs": "Envs",
        "schedule": "Schedule",
        "efficiency": "Efficiency (speedup / parallelism)",
        "report_fps_speedup": "Report's figure (FPS / speedup)",
        "notes": "Notes",
        "sync_fps": "Sync FPS (geometric mean)",
        "overlap_fps": "Overlap FPS (geometric mean)",
        "overlap_ratio": "Overlap / sync (95% CI)",
        "change": "Change (Welch on log FPS)",
        "steps_sync": "Steps to {threshold:g}, sync (median of seeds)",
        "seconds_sync": "Seconds to {threshold:g}, sync (median)",
        "then_overlap": "…overlap",
        "env_cost": "Env cost per step",
        "tool": "Tool",
        "best_config": "Its fastest configuration",
        "best_tool": "Fastest configuration",
        "speedup_vs_serial": "Speedup over serial (95% CI)",
        "torch_threads": "Torch threads",
        "best_layout": "Fastest layout",
    },
    "zh": {
        "config": "配置",
        "workers": "工作器数量",
        "fps": "FPS（步/秒）",
        "speedup": "相对加速比",
        "steps_to": "达到{threshold:g}分阈值的步数",
        "final": "最终性能（平均奖励）",
        "comm_type": "通信类型",
        "mean_ms": "平均时间（毫秒）",
        "share": "占总时间比例（%）",
        "weight_sync": "权重同步",
        "transfer": "轨迹传输",
        "dispatch": "请求分发",
        "geomean": "重复运行的几何平均",
        "ratio": "几何平均之比",
        "of_runs": "各次运行的平均",
        "report": "报告数值",
        "not_recorded": "未记录",
        "fps_ci": "FPS 95% 置信区间",
        "speedup_ci": "加速比 95% 置信区间",
        "envs": "环境数",
        "schedule": "调度",
        "efficiency": "并行效率（加速比 / 并行度）",
        "report_fps_speedup": "报告数值（FPS / 加速比）",
        "notes": "备注",
        "sync_fps": "同步 FPS（几何平均）",
        "overlap_fps": "重叠 FPS（几何平均）",
        "overlap_ratio": "重叠 / 同步（95% 置信区间）",
        "change": "变化（对数 FPS 的 Welch 检验）",
        "steps_sync": "达到{threshold:g}分阈值的步数，同步（各种子的中位数）",
        "seconds_sync": "达到{threshold:g}分阈值的秒数，同步（中位数）",
        "then_overlap": "…重叠",
        "env_cost": "每步环境开销",
        "tool": "工具",
        "best_config": "其最快配置",
        "best_tool": "最快配置",
        "speedup_vs_serial": "相对串行的加速比（95% 置信区间）",
        "torch_threads": "Torch 线程数",
        "best_layout": "最快布局",
    },
}


@dataclass(frozen=True)
class TableContext:
    """What a table or claim check may use: the part's cases, its baseline and the header words."""

    cases: list[CaseStats]
    baseline_label: str | None
    h: dict[str, str]
    lang: str = "en"
    """The report's language: `h` holds its words, and each metric its own header (harness/metrics.py)."""

    def header(self, metric: str) -> str:
        """A metric's column header in this report's language."""
        return METRICS[metric].header[self.lang]

    @property
    def baseline(self) -> CaseStats | None:
        return baseline_case(self.cases, self.baseline_label)

    def speedup(self, case: CaseStats) -> Comparison | None:
        """The case's FPS over the baseline's, with the interval of the ratio (both cases' repeats count)."""
        base = self.baseline
        if base is None or not case.samples("fps") or not base.samples("fps"):
            return None
        return compare(base.samples("fps"), case.samples("fps"))


def num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def value(estimate: Estimate | None, digits: int = 0, scale: float = 1.0) -> str:
    return "n/a" if estimate is None else f"{scale * estimate.value:,.{digits}f}"


def interval(estimate: Estimate | None, digits: int = 0, scale: float = 1.0) -> str:
    """`low – high`, or why there is none."""
    if estimate is None:
        return "n/a"
    if not estimate.has_interval:
        return f"n={estimate.n}: too few for an interval"
    return f"{scale * estimate.low:,.{digits}f} – {scale * estimate.high:,.{digits}f}"  # type: ignore[operator]


def with_interval(estimate: Estimate | None, digits: int = 0, scale: float = 1.0) -> str:
    """`value (low – high)` in one cell, or `value (n=2)` without an interval."""
    if estimate is None:
        return "n/a"
    if not estimate.has_interval:
        return f"{value(estimate, digits, scale)} (n={estimate.n})"
    return f"{value(estimate, digits, scale)} ({interval(estimate, digits, scale)})"


def recorded(ctx: TableContext, case: CaseStats, figure: str, text: str) -> str:
    """`text`, the cell of `figure` (a metric of harness/metrics.py), or "not recorded" where the case's record
    lacks it: a run written by an older harness that did not measure it (never a 0 or an "n/a")."""
    return ctx.h["not_recorded"] if figure in case.not_recorded else text


def config(case: CaseStats) -> str:
    """The case's unique name, marked when it is oversubscribed."""
    return case.name + (" ⚠" if case.oversubscribed else "")


def notes(case: CaseStats) -> str:
    out = []
    if case.oversubscribed:
        crowded = [f"{n} busy on {host} ({cap:g} CPUs)" for host, (n, cap) in case.busy_per_host.items() if cap and n > cap]
        out.append("oversubscribed: " + "; ".join(crowded))
    if case.worker_restarts:
        out.append(restarts(case))
    if case.errors:
        out.append(f"{len(case.errors)} run(s) failed: {case.errors[0]}")
    return "; ".join(out)


def restarts(case: CaseStats) -> str:
    """`2 worker restarts in 1 run`."""
    n, runs = case.worker_restarts, case.restarted_runs
    return f"{n} worker restart{'s' * (n != 1)} in {runs} run{'s' * (runs != 1)}"


def restart_lines(ctx: TableContext) -> list[str]:
    """The sentence under a table whose cases lost and replaced workers; none when no case did."""
    restarted = [f"{c.name}: {restarts(c)}" for c in ctx.cases if c.worker_restarts]
    if not restarted:
        return []
    return [
        f'Workers lost and replaced (on_worker_failure = "restart"): {"; ".join(restarted)}. The iterations they fell in '
        "count in the times (finding the loss, starting the replacement, sampling its share again), and a replacement's "
        "envs start from reset with the same seeds, so those runs' rollouts differ from an uninterrupted run's."
    ]


def claimed(case: CaseStats, *keys: str, digits: int = 0, suffix: str = "") -> str:
    """The report's own figure(s) for this cell, or empty."""
    return " / ".join(f"{case.claims[k]:,.{digits}f}{suffix}" for k in keys if k in case.claims)


def table(rows: list[list[object]], headers: list[str]) -> str:
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


INTERVAL_RULE = (
    f"an interval needs at least {MIN_SAMPLES_FOR_INTERVAL} independent runs (with 2, Student's t-quantile is 12.7 and "
    "the interval spans an order of magnitude)"
)
