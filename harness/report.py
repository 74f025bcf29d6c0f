"""Render `report.md` from `run.json` alone: the report's tables, with statistics and analysis.

Every sentence under a table is computed from the numbers above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.analysis import CaseStats, baseline_case, run_stats, speedup
from harness.results import load_run
from harness.stats import Summary, censored_median, summarize

REPORT_FILE = "report.md"

# The research report's own column headers (section 4), for `--lang zh`.
HEADERS = {
    "en": {
        "config": "Config",
        "workers": "Workers",
        "fps": "Mean FPS (steps/s)",
        "speedup": "Speedup",
        "steps_to": "Steps to {threshold:g}",
        "final": "Final mean return",
        "comm_type": "Type",
        "mean_ms": "Mean time (ms)",
        "share": "Share of total time (%)",
        "weight_sync": "Weight sync",
        "transfer": "Trajectory transfer",
    },
    "zh": {
        "config": "配置",
        "workers": "工作器数量",
        "fps": "平均FPS（步/秒）",
        "speedup": "相对加速比",
        "steps_to": "达到{threshold:g}分阈值的步数",
        "final": "最终性能（平均奖励）",
        "comm_type": "通信类型",
        "mean_ms": "平均时间（毫秒）",
        "share": "占总时间比例",
        "weight_sync": "权重同步",
        "transfer": "轨迹传输",
    },
}
TITLES = {
    "speed": "Training speed",
    "phases": "Where the time goes",
    "convergence": "Convergence",
    "scaling": "Scaling",
    "communication": "Communication overhead",
    "overlap": "What overlap buys",
}
EFFICIENCY_FLOOR = 0.5


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ci(summary: Summary | None, digits: int = 0) -> str:
    if summary is None:
        return "n/a"
    if summary.n < 2:
        return "n=1"
    return f"{summary.ci_low:,.{digits}f} – {summary.ci_high:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _config(case: CaseStats) -> str:
    marks = " ⚠" if case.oversubscribed else ""
    return f"{case.label}{marks}"


def _notes(case: CaseStats) -> str:
    notes = []
    if case.oversubscribed:
        notes.append("oversubscribed")
    if case.errors:
        notes.append(f"{len(case.errors)} run(s) failed: {case.errors[0]}")
    return "; ".join(notes)


# --- tables ---------------------------------------------------------------------------------------


def speed_table(cases: list[CaseStats], baseline_label: str | None, h: dict[str, str]) -> tuple[str, list[str]]:
    base = baseline_case(cases, baseline_label)
    rows = []
    for c in cases:
        s = speedup(c, base)
        rows.append([
            _config(c), c.workers, _num(c.fps.median if c.fps else None), _num(s, 2), _ci(c.fps), c.envs, c.schedule,
            _num(c.sampling_fps.median if c.sampling_fps else None), _num(s / c.parallelism if s else None, 2),
            _num(c.startup_s.median if c.startup_s else None, 1), _notes(c),
        ])  # fmt: skip
    headers = [
        h["config"],
        h["workers"],
        h["fps"],
        h["speedup"],
        "FPS 95% CI",
        "Envs",
        "Schedule",
        "Sampling FPS",
        "Efficiency",
        "Start-up (s)",
        "Notes",
    ]
    lines = []
    measured = [c for c in cases if c.fps]
    if measured and base:
        fastest = max(measured, key=lambda c: c.fps.median)
        lines.append(
            f"Fastest: **{fastest.label}** with {fastest.workers} worker(s), {fastest.fps.median:,.0f} steps/s, "
            f"{speedup(fastest, base):.2f}x the baseline **{base.label}** ({base.fps.median:,.0f} steps/s)."
        )
        overlapping = [
            c.label
            for c in measured
            if c is not fastest and c.fps.n > 1 and fastest.fps.n > 1 and c.fps.ci_high >= fastest.fps.ci_low
        ]
        if overlapping:
            lines.append(f"Not distinguishable from the fastest at 95% confidence: {', '.join(overlapping)}.")
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True), lines


def phases_table(cases: list[CaseStats], h: dict[str, str]) -> tuple[str, list[str]]:
    rows = []
    for c in cases:
        iteration_ms = 1000 * c.total_seconds / c.measured_iterations if c.measured_iterations else None
        rows.append([
            _config(c), c.workers, c.schedule, _pct(c.share("sync")), _pct(c.share("collect")), _pct(c.share("transfer")),
            _pct(c.share("train")), _num(iteration_ms, 1), _num(c.worker_compute_ms, 1),
        ])  # fmt: skip
    headers = [
        h["config"],
        h["workers"],
        "Schedule",
        "Sync %",
        "Collect %",
        "…transfer %",
        "Train %",
        "Iteration (ms)",
        "Workers sampling (ms)",
    ]
    lines = []
    dominant = [
        (c.label, c.workers, max(("collect", "train", "sync"), key=lambda p: c.share(p) or 0)) for c in cases if c.total_seconds
    ]
    for phase in ("train", "collect", "sync"):
        names = [f"{label} ({w})" for label, w, p in dominant if p == phase]
        if names:
            lines.append(f"{phase.capitalize()} dominates the iteration for: {', '.join(names)}.")
    if any(c.schedule == "overlap" for c in cases):
        lines.append(
            "Shares are of the learner's timeline, which adds up to the wall time under both schedules. Under overlap, "
            "Collect is only the learner waiting for a batch (and asking for the next); the workers sample during Train, "
            "so their sampling time (last column) runs in parallel with it and is not part of the iteration's sum."
        )
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True), lines


def scaling_table(cases: list[CaseStats], baseline_label: str | None, h: dict[str, str]) -> tuple[str, list[str]]:
    base = baseline_case(cases, baseline_label)
    counts = sorted({c.parallelism for c in cases})
    groups: dict[str, dict[int, CaseStats]] = {}
    for c in cases:
        groups.setdefault(c.label, {})[c.parallelism] = c
    rows, lines = [], []
    for label, by_workers in groups.items():
        fps_row, speed_row, eff_row = [f"{label}: FPS"], [f"{label}: {h['speedup']}"], [f"{label}: efficiency"]
        for n in counts:
            c = by_workers.get(n)
            s = speedup(c, base) if c else None
            fps_row.append(_num(c.fps.median if c and c.fps else None) + (" ⚠" if c and c.oversubscribed else ""))
            speed_row.append(_num(s, 2))
            eff_row.append(_num(s / n if s else None, 2))
        rows += [fps_row, speed_row, eff_row]
        measured = sorted((c for c in by_workers.values() if c.fps), key=lambda c: c.parallelism)
        unit = "workers" if measured and measured[0].remote else "envs"
        if len(measured) > 1 and base:
            top = measured[-1]
            best = max(measured, key=lambda c: c.fps.median)
            lines.append(
                f"{label}: {top.parallelism} {unit} give {speedup(top, base):.2f}x the baseline ({base.label}); "
                f"the best is {best.parallelism} {unit} at {speedup(best, base):.2f}x."
            )
            low = [c.parallelism for c in measured if (speedup(c, base) or 0) / c.parallelism < EFFICIENCY_FLOOR]
            if low:
                lines.append(f"{label}: parallel efficiency is below {EFFICIENCY_FLOOR:.0%} from {min(low)} {unit} on.")
    headers = [f"{h['workers']} (vecenv: envs)", *[str(n) for n in counts]]
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True), lines


def communication_table(cases: list[CaseStats], h: dict[str, str]) -> tuple[str, list[str]]:
    rows, lines = [], []
    for c in cases:
        if not c.remote:
            continue
        for kind, summary, share_key, nbytes in (
            (h["weight_sync"], c.sync_ms, "sync", c.sync_bytes),
            (h["transfer"], c.transfer_ms, "transfer", c.transfer_bytes),
        ):
            share = c.share(share_key) if summary else None
            rows.append([kind, _num(summary.mean if summary else None, 2), _pct(share), _config(c), c.workers,
                         _num(summary.median if summary else None, 2), _num(nbytes)])  # fmt: skip
        if c.sync_ms and c.transfer_ms:
            together = (c.share("sync") or 0) + (c.share("transfer") or 0)
            lines.append(f"{c.label} at {c.workers} workers: communication is {100 * together:.1f}% of iteration time.")
    headers = [h["comm_type"], h["mean_ms"], h["share"], h["config"], h["workers"], "Median (ms)", "Bytes / iteration"]
    if not rows:
        return "No process backend in this part: weight sync and transfer do not apply in-process.", []
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True), lines


def convergence_table(cases: list[CaseStats], h: dict[str, str]) -> tuple[str, list[str]]:
    rows, lines = [], []
    threshold = next((c.convergence.threshold for c in cases if c.convergence), -200.0)
    for c in cases:
        conv = c.convergence
        if conv is None:
            continue
        reached, seeds = conv.reached, len(conv.steps_to_threshold)
        missed = seeds - len(reached)
        median = censored_median(conv.steps_to_threshold)
        if median is None:
            steps_cell = f"not reached: {missed} of {seeds} seeds not within {conv.budget:,} steps"
        else:
            steps_cell = f"{median:,.0f} (evaluated every {conv.eval_every:,})"
            if missed:
                steps_cell += f"; {missed} seed(s) > {conv.budget:,}"
        final = summarize(conv.final_returns)
        final_cell = (
            "n/a" if final is None else (f"{final.mean:.1f} ± {final.half_width:.1f}" if final.n > 1 else f"{final.mean:.1f}")
        )
        seconds = censored_median(conv.seconds_to_threshold)
        seconds_cell = f"{seconds:,.1f}" if seconds is not None else ("not reached" if seeds else "n/a")
        rows.append(
            [_config(c), c.workers, steps_cell, final_cell, f"{len(reached)}/{seeds}", c.schedule, seconds_cell, _notes(c)]
        )
        lines.append(
            f"{c.label}: {len(reached)} of {seeds} seeds reached {threshold:g} within {conv.budget:,} steps"
            + (f", median {median:,.0f} steps (over all seeds, the others counted as beyond the budget)." if median else ".")
        )
    shown = [c for c in cases if c.convergence]
    for key in dict.fromkeys(c.sampling_key for c in shown):
        same = [c.label for c in shown if c.sampling_key == key]
        if len(same) > 1:
            lines.append(f"{', '.join(same)} sample identical rollouts by construction (same envs, seeds and learner): "
                         "their rows are one experiment, and any difference between them is timing noise.")  # fmt: skip
    headers = [h["config"], h["workers"], h["steps_to"].format(threshold=threshold) + " (median of seeds)", h["final"],
               "Seeds reached", "Schedule", f"Seconds to {threshold:g} (median of seeds)", "Notes"]  # fmt: skip
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True), lines


def overlap_table(cases: list[CaseStats], h: dict[str, str]) -> tuple[str, list[str]]:
    """Each overlap case beside the sync case of the same configuration."""
    rows, lines = [], []
    for sync in (c for c in cases if c.schedule == "sync"):
        for over in (c for c in cases if c.schedule == "overlap" and c.pair_key == sync.pair_key):
            ratio = over.fps.median / sync.fps.median if over.fps and sync.fps else None
            steps, seconds = [], []
            for c in (sync, over):
                conv = c.convergence
                reached = conv.reached if conv else []
                n = len(conv.steps_to_threshold) if conv else 0
                median = censored_median(conv.steps_to_threshold) if conv else None
                steps.append(f"{median:,.0f} ({len(reached)}/{n})" if median is not None else ("not reached" if conv else "n/a"))
                secs = censored_median(conv.seconds_to_threshold) if conv else None
                seconds.append(f"{secs:,.1f}" if secs is not None else ("not reached" if conv else "n/a"))
            rows.append([
                _config(over), over.workers, _num(sync.fps.median if sync.fps else None), _num(over.fps.median if over.fps else None),
                _num(ratio, 2), _num(over.lag_mean, 2), _num(over.initial_kl, 4), *steps, *seconds,
            ])  # fmt: skip
            if ratio:
                lines.append(
                    f"{over.label} ({over.workers} workers): {ratio:.2f}x the FPS of {sync.label}, mean policy lag {over.lag_mean or 0:.2f}."
                )
    if not rows:
        return "No case here has both a sync and an overlap version of one configuration.", []
    threshold = next((c.convergence.threshold for c in cases if c.convergence), -200.0)
    headers = [h["config"], h["workers"], "Sync FPS", "Overlap FPS", "Overlap / sync", "Mean lag", "Initial KL",
               f"Steps to {threshold:g}, sync (median)", "…overlap", f"Seconds to {threshold:g}, sync (median)", "…overlap"]  # fmt: skip
    lines.append(
        "Initial KL: how far each batch already is from the policy that trains on it (0 when fresh), a mean over iterations."
    )
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True), lines


# --- the report's own claims, checked against our intervals ---------------------------------------

CLAIM_TABLE = {"fps": "speed", "speedup": "speed", "steps_to_threshold": "convergence", "final_return": "convergence",
               "communication_share": "communication"}  # fmt: skip


def _interval_verdict(claimed: float, summary: Summary | None, unit: str, digits: int = 0) -> str:
    if summary is None:
        return "we have no measurement"
    if summary.n < 2:
        return f"we measure {summary.mean:,.{digits}f}{unit} from one run (no interval: run more repeats or seeds)"
    where = "inside" if summary.contains(claimed) else "outside"
    return (f"we measure {summary.median:,.{digits}f}{unit} (95% CI {summary.ci_low:,.{digits}f}–{summary.ci_high:,.{digits}f}): "
            f"the claim is {where} our interval")  # fmt: skip


def claim_lines(cases: list[CaseStats], table: str, baseline_label: str | None) -> list[str]:
    """One line per claim that belongs under `table`, computed from our numbers."""
    base = baseline_case(cases, baseline_label)
    lines = []
    for c in cases:
        for key, claimed in c.claims.items():
            if CLAIM_TABLE[key] != table:
                continue
            head = f"The report claims {key.replace('_', ' ')} = {claimed:,g} for {c.label} ({c.workers} workers); "
            if key == "fps":
                lines.append(head + _interval_verdict(claimed, c.fps, " steps/s"))
            elif key == "speedup":
                if c.fps is None or base is None or base.fps is None:
                    lines.append(head + "we have no measurement")
                    continue
                scale = base.fps.median
                ratio = Summary(c.fps.n, c.fps.median / scale, c.fps.mean / scale, c.fps.ci_low / scale, c.fps.ci_high / scale)
                lines.append(head + _interval_verdict(claimed, ratio, "x", 2) + f" (vs {base.label})")
            elif key == "steps_to_threshold" and c.convergence:
                conv = c.convergence
                missed = len(conv.steps_to_threshold) - len(conv.reached)
                text = _interval_verdict(claimed, summarize(conv.reached), " steps")
                if missed:
                    text += f"; {missed} of {len(conv.steps_to_threshold)} seeds never reached it within {conv.budget:,} steps"
                lines.append(head + text)
            elif key == "final_return" and c.convergence:
                lines.append(head + _interval_verdict(claimed, summarize(c.convergence.final_returns), "", 1))
            elif key == "communication_share":
                if c.share("sync") is None:
                    lines.append(head + "we have no measurement")
                    continue
                ours = 100 * ((c.share("sync") or 0) + (c.share("transfer") or 0))
                lines.append(head + f"we measure {ours:.1f}% (weight sync + trajectory transfer), {claimed / ours:.1f}x less than claimed"
                             if ours < claimed else head + f"we measure {ours:.1f}%")  # fmt: skip
    return lines


# --- the document -------------------------------------------------------------------------------


def machine_header(run: dict[str, Any]) -> list[str]:
    m, commit, pk = run["machine"], run["commit"], run["packages"]
    gpus = ", ".join(g["name"] for g in m.get("gpus", [])) or "none"
    commit_text = commit.get("id") or f"unknown ({commit.get('error')})"
    if commit.get("dirty"):
        changed = commit.get("changed_files") or []
        commit_text += (
            f" (uncommitted changes to {', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})"
            if changed
            else " (uncommitted changes)"
        )
    # The 1-minute load sampled through every run: a noisy neighbour shows up next to the numbers it spoiled.
    loads = [
        value
        for case in run["cases"]
        for r in case["runs"]
        for key in ("mean", "max")
        if (value := ((r.get("resources") or {}).get("load_1min") or {}).get(key)) is not None
    ]
    load_text = f"load {', '.join(f'{x:.2f}' for x in m['load_average'])} at start"
    if loads:
        load_text += f", 1-minute load {min(loads):.2f}–{max(loads):.2f} during the runs"
    # Nodes of one run (each embedded Ray run is a fresh one-node instance).
    nodes = max((len((r.get("backend") or {}).get("nodes", [])) for case in run["cases"] for r in case["runs"]), default=0)
    threads = sorted({r["torch_threads"] for case in run["cases"] for r in case["runs"] if "torch_threads" in r})
    learners = sorted({
        f"{r['learner'].get('name', '?')} on {r['learner'].get('device', '?')}" + (" (compiled)" if r["learner"].get("compiled") else "")
        for case in run["cases"] for r in case["runs"] if "learner" in r
    })  # fmt: skip
    return [
        f"- Machine: {m['cpu_model']}, {m['physical_cores']} physical / {m['logical_cores']} logical cores"
        + (f" ({m['usable_cpus']:g} usable by this run)" if m.get("usable_cpus") not in (None, m["logical_cores"]) else "")
        + f", {m['memory_gib']} GiB, {load_text}; GPUs: {gpus}",
        f"- Versions: Python {m['python']}, torch {pk.get('torch')}, ray {pk.get('ray')}, gymnasium {pk.get('gymnasium')}, "
        f"numpy {pk.get('numpy')}; learner torch threads {', '.join(map(str, threads)) or 'n/a'}",
        f"- Learner: {', '.join(learners) or 'n/a'}",
        f"- Commit: {commit_text}; suite {run['suite']['path']} (sha256 {run['suite']['sha256'][:12]})"
        + (f"; Ray nodes: {nodes}" if nodes else ""),
        f"- Run: {run['created']} to {run.get('finished') or '(unfinished)'}, status {run['status']}"
        + (", **--quick** (budgets shrunk: a look, not a measurement)" if run.get("quick") else ""),
    ]


def render_markdown(run: dict[str, Any], lang: str = "en", plots: dict[str, list[str]] | None = None) -> str:
    """The whole report as markdown."""
    h = HEADERS[lang]
    stats = run_stats(run)
    cores = run["machine"].get("usable_cpus") or run["machine"].get("logical_cores")
    out = [f"# {run['suite']['name']}", "", run["suite"].get("description", ""), "", *machine_header(run), ""]
    if any(c.oversubscribed for cases in stats.values() for c in cases):
        out += [f"⚠ marks oversubscribed cells: more CPU-busy worker processes than the {cores:g} CPUs this run could use "
                "(workers of a sleeping env cost wait rather than compete, and are not counted).", ""]  # fmt: skip
    for part in run["parts"]:
        cases = stats[part["name"]]
        m = part["measure"]
        out += [f"## {part['name']}", ""]
        if part.get("description") and part["description"] != run["suite"].get("description"):
            out += [part["description"], ""]
        if m["mode"] == "throughput":
            out.append(
                f"Throughput: {m['warmup_iterations']} warm-up + {m['iterations']} measured iterations per repeat, "
                f"{m['repeats']} fresh-process repeat(s); FPS cells are the median over repeats of env steps/s end to end."
            )
        else:
            out.append(
                f"Convergence: a budget of {m['total_steps']:,} env steps per seed, rounded up to whole iterations, seeds {list(m['seeds'])}, deterministic evaluation of "
                f"{m['eval_episodes']} episodes every {m['eval_every']:,} steps and {m['final_eval_episodes']} at the end; ± is a 95% t-interval."
            )
        out.append("")
        for table in part["tables"]:
            if table == "speed":
                body, lines = speed_table(cases, part.get("baseline"), h)
            elif table == "phases":
                body, lines = phases_table(cases, h)
            elif table == "scaling":
                body, lines = scaling_table(cases, part.get("baseline"), h)
            elif table == "communication":
                body, lines = communication_table(cases, h)
            elif table == "overlap":
                body, lines = overlap_table(cases, h)
            else:
                body, lines = convergence_table(cases, h)
            lines = lines + claim_lines(cases, table, part.get("baseline"))
            out += [f"### {TITLES[table]}", "", body, ""]
            out += [f"- {line}" for line in lines]
            out += [""] if lines else []
        for image in (plots or {}).get(part["name"], []):
            out += [f"![{Path(image).stem}]({image})", ""]
    return "\n".join(out).rstrip() + "\n"


def write_report(run_dir: Path, lang: str = "en") -> Path:
    """Re-render `report.md` (and plots) from `run.json` alone."""
    from harness.plots import render_plots

    run = load_run(run_dir)
    plots = render_plots(run, run_dir)
    name = REPORT_FILE if lang == "en" else f"report.{lang}.md"
    path = Path(run_dir) / name
    path.write_text(render_markdown(run, lang, plots))
    return path
