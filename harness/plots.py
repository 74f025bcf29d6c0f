"""PNG plots for report.md: learning curves, scaling curves, time breakdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a CI machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.analysis import CaseStats, baseline_case, run_stats, speedup  # noqa: E402
from harness.stats import summarize  # noqa: E402

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
        images = []
        slug = part["name"].replace("/", "_")
        if any(c.convergence for c in cases):
            images.append(_learning_curves(cases, plot_dir / f"{slug}-learning.png"))
        if "scaling" in part["tables"]:
            images.append(_scaling(cases, part.get("baseline"), plot_dir / f"{slug}-scaling.png"))
        if any(c.total_seconds for c in cases) and part["measure"]["mode"] == "throughput":
            images.append(_breakdown(cases, plot_dir / f"{slug}-breakdown.png"))
        out[part["name"]] = [str(Path(p).relative_to(run_dir)) for p in images]
    return out


def _learning_curves(cases: list[CaseStats], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for case in cases:
        conv = case.convergence
        if conv is None or not any(conv.curves):
            continue
        steps = sorted({s for curve in conv.curves for s, _ in curve})
        means, lows, highs = [], [], []
        for step in steps:
            summary = summarize([r for curve in conv.curves for s, r in curve if s == step])
            means.append(summary.mean)
            lows.append(summary.ci_low)
            highs.append(summary.ci_high)
        ax.plot(steps, means, label=f"{case.label} ({case.workers}w)")
        ax.fill_between(steps, lows, highs, alpha=0.2)
        threshold = conv.threshold
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set(
        xlabel="env steps (summed over envs)",
        ylabel="deterministic evaluation return",
        title="Learning curves (mean, 95% CI over seeds)",
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def _scaling(cases: list[CaseStats], baseline_label: str | None, path: Path) -> Path:
    base = baseline_case(cases, baseline_label)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    groups: dict[str, list[CaseStats]] = {}
    for case in cases:
        groups.setdefault(case.label, []).append(case)
    max_workers = max(c.parallelism for c in cases)
    for label, members in groups.items():
        members = sorted((c for c in members if c.fps), key=lambda c: c.parallelism)
        if len(members) > 1:
            ax.plot([c.parallelism for c in members], [speedup(c, base) for c in members], marker="o", label=label)
    ax.plot([1, max_workers], [1, max_workers], color="grey", linestyle="--", label="ideal (linear)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="workers (vecenv: envs)",
        ylabel=f"speedup vs {base.label if base else 'baseline'}",
        title="Scaling",
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def _breakdown(cases: list[CaseStats], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, len(cases) * 0.9), 4.5))
    names = [f"{c.label}\n{c.workers}w" for c in cases]
    bottom = np.zeros(len(cases))
    for key, label in BREAKDOWN:
        ms = []
        for c in cases:
            seconds = c.phase_seconds.get(key, 0.0)
            if key == "worker_compute":  # collect time not accounted for by transfer
                seconds = c.phase_seconds["collect"] - c.phase_seconds.get("transfer", 0.0)
            ms.append(1000 * seconds / c.measured_iterations if c.measured_iterations else 0.0)
        ax.bar(names, ms, bottom=bottom, label=label)
        bottom += ms
    ax.set(ylabel="ms per iteration", title="Time breakdown per iteration")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
