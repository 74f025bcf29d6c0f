"""PNG plots for report.md: learning curves, scaling curves, time breakdown.

Each plot is built by a `*_figure` function that returns the figure, so tests can check its labels;
every case is named by `CaseStats.name`, unique within a part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a CI machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.analysis import CaseStats, baseline_case, run_stats  # noqa: E402
from harness.stats import compare, mean  # noqa: E402

BREAKDOWN = (
    ("sync", "weight sync"),
    ("worker_compute", "collect (sampling, or waiting under overlap)"),
    ("transfer", "transfer"),
    ("train", "learner (train)"),
)


def render_plots(run: dict[str, Any], run_dir: Path) -> dict[str, list[str]]:
    """Draw every plot the data supports; returns part name -> image paths relative to run_dir."""
    out: dict[str, list[str]] = {}
    plot_dir = Path(run_dir) / "plots"
    stats = run_stats(run)
    for part in run["parts"]:
        cases = [c for c in stats[part["name"]] if c.runs_ok]
        if not cases:
            continue
        plot_dir.mkdir(exist_ok=True)
        slug = part["name"].replace("/", "_")
        figures = []
        if any(c.convergence for c in cases):
            figures.append((learning_figure(cases), f"{slug}-learning.png"))
        if "crossover" in part["tables"]:
            figures.append((crossover_figure(cases), f"{slug}-crossover.png"))
        if "scaling" in part["tables"]:
            figures.append((scaling_figure(cases, part.get("baseline")), f"{slug}-scaling.png"))
        if any(c["iteration_ms"] for c in cases) and part["measure"]["mode"] == "throughput":
            figures.append((breakdown_figure(cases), f"{slug}-breakdown.png"))
        out[part["name"]] = [str(_save(fig, plot_dir / name).relative_to(run_dir)) for fig, name in figures]
    return out


def learning_figure(cases: list[CaseStats]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    threshold = None
    for case in cases:
        conv = case.convergence
        if conv is None or not any(conv.curves):
            continue
        steps = sorted({s for curve in conv.curves for s, _ in curve})
        summaries = [mean([r for curve in conv.curves for s, r in curve if s == step]) for step in steps]
        ax.plot(steps, [s.value for s in summaries], label=case.name)
        with_interval = [(x, s) for x, s in zip(steps, summaries, strict=True) if s.has_interval]
        if with_interval:
            ax.fill_between([x for x, _ in with_interval], [s.low for _, s in with_interval],
                            [s.high for _, s in with_interval], alpha=0.2)  # fmt: skip
        threshold = conv.threshold
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="env steps (summed over envs)", ylabel="deterministic evaluation return",
           title="Learning curves (mean of seeds, 95% t-interval)")  # fmt: skip
    _legend_outside(ax)
    return fig


def scaling_figure(cases: list[CaseStats], baseline_label: str | None) -> plt.Figure:
    base = baseline_case(cases, baseline_label)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups: dict[str, list[CaseStats]] = {}
    for case in cases:
        groups.setdefault(case.label, []).append(case)
    max_count = max(c.parallelism for c in cases)
    for label, members in groups.items():
        members = sorted((c for c in members if c.samples("fps")), key=lambda c: c.parallelism)
        if len(members) > 1 and base is not None:
            ratios = [compare(base.samples("fps"), c.samples("fps")).ratio for c in members]
            ax.plot([c.parallelism for c in members], [r.value for r in ratios], marker="o", label=label)
    ax.plot([1, max_count], [1, max_count], color="grey", linestyle="--", label="ideal (linear)")
    ax.set(xscale="log", yscale="log", xlabel="workers (vecenv: envs)",
           ylabel=f"speedup vs {base.name if base else 'baseline'}", title="Scaling (ratio of geometric means)")  # fmt: skip
    _legend_outside(ax)
    return fig


def crossover_figure(cases: list[CaseStats]) -> plt.Figure:
    """Speedup over serial at the same cost against the step cost, one line per tool (its best configuration at
    each cost), one panel per cost kind; the cost-free point (0 ms) starts every panel's lines."""
    from harness.report.tools import SERIAL, cost_key, fastest, speedup_over

    kinds = sorted({cost_key(c)[1] for c in cases if cost_key(c)[1]}) or [""]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        keys = sorted({cost_key(c) for c in cases if cost_key(c)[1] in (kind, "")})
        for tool in sorted({c.backend for c in cases}):
            points = []
            for key in keys:
                at_cost = [c for c in cases if cost_key(c) == key]
                serial, best = (
                    fastest(c for c in at_cost if c.backend == SERIAL),
                    fastest(c for c in at_cost if c.backend == tool),
                )
                ratio = speedup_over(serial, best) if best else None
                if ratio is not None:
                    points.append((key[0], ratio))
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=tool)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("symlog", linthresh=0.05)
        ax.set(xlabel=f"env step cost (ms, {kind or 'none'})", ylabel="speedup over serial (best configuration)",
               title=f"Crossover: {kind} cost" if kind else "Crossover")  # fmt: skip
    _legend_outside(axes[0][-1])
    return fig


def breakdown_figure(cases: list[CaseStats]) -> plt.Figure:
    """Stacked ms per iteration, one bar per case, named uniquely; the axis always holds the tallest bar."""
    fig, ax = plt.subplots(figsize=(max(8, len(cases) * 1.1), 5))
    positions = np.arange(len(cases))
    bottom = np.zeros(len(cases))
    for key, label in BREAKDOWN:
        ms = []
        for c in cases:
            share = c[f"{key}_time_share"] if key != "worker_compute" else None
            if key == "worker_compute":  # collect time not accounted for by transfer
                share = (c["collect_time_share"] or 0.0) - (c["transfer_time_share"] or 0.0)
            ms.append(max(share or 0.0, 0.0) * (c["iteration_ms"] or 0.0))
        ax.bar(positions, ms, bottom=bottom, label=label)
        bottom += ms
    ax.set_xticks(positions, [c.name.replace(" · ", "\n") for c in cases], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, max(float(bottom.max()), 1e-9) * 1.08)
    ax.set(ylabel="ms per iteration (mean)", title="Time breakdown per iteration")
    _legend_outside(ax)
    return fig


def _legend_outside(ax: plt.Axes) -> None:
    """Beside the axes, never over the data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
