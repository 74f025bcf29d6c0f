"""Render `report.md` from `run.json` alone: the header, each part's tables, and how to read them.

Every sentence under a table is computed from the numbers above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.analysis import run_stats
from harness.records import SCHEMA_VERSION
from harness.report.cells import HEADERS, INTERVAL_RULE, TableContext
from harness.report.claims import claim_lines
from harness.report.tables import TABLES
from harness.results import load_run
from harness.stats import EFFECT_THRESHOLD

REPORT_FILE = "report.md"


def reading_notes() -> list[str]:
    """The estimators behind every column, said once at the end of the report."""
    return [
        "## How to read the numbers",
        "",
        "- The unit of every interval is an independent run: a fresh-process repeat (throughput) or a seed (convergence).",
        "- FPS, sampling FPS and start-up: the **geometric mean** over repeats, with a 95% Student-t interval of the mean "
        "log (so it stays positive). Speedups: the ratio of two geometric means, with Welch's 95% interval of the "
        "difference of mean logs, so the baseline's own spread counts.",
        f"- \"Measurably slower\" and `harness compare`'s verdicts: Welch's t-test on log FPS at 5%, and (as asv) a "
        f"difference of at least {EFFECT_THRESHOLD:.0%}; the test rejects exactly when the ratio's interval excludes 1.",
        "- Communication times and shares: each run's mean per iteration, then the mean over runs with a 95% t-interval "
        "(shares clipped to 0–100%).",
        "- Steps to the threshold: the median over all seeds, a seed that never got there counting as beyond the budget "
        '("not reached" when half or more did not); exact only to the evaluation interval. Final return: mean of seeds, '
        "95% t-interval.",
        f"- No interval is shown when {INTERVAL_RULE}; the cell says n instead.",
        "- The report's figures (its section 4) sit beside ours; each note under a table says whether one falls inside "
        "our interval. The report gives no repeats, seeds or intervals of its own.",
        "",
    ]


def machine_header(run: dict[str, Any]) -> list[str]:
    m, commit, pk = run["machine"], run["commit"], run["packages"]
    resumed = sum(1 for case in run["cases"] for r in case["runs"] if r.get("resumed"))
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
        *migration_lines(run),
        f"- Machine: {m['cpu_model']}, {m['physical_cores']} physical / {m['logical_cores']} logical cores"
        + (f" ({m['usable_cpus']:g} usable by this run)" if m.get("usable_cpus") not in (None, m["logical_cores"]) else "")
        + f", {m['memory_gib']} GiB, {load_text}; GPUs: {gpus}",
        f"- Versions: Python {m['python']}, torch {pk.get('torch')}, ray {pk.get('ray')}, gymnasium {pk.get('gymnasium')}, "
        f"numpy {pk.get('numpy')}; learner torch threads {', '.join(map(str, threads)) or 'n/a'}",
        f"- Learner: {', '.join(learners) or 'n/a'}",
        f"- Commit: {commit_text}; suite {run['suite']['path']} (sha256 {run['suite']['sha256'][:12]})"
        + (f"; Ray nodes: {nodes}" if nodes else ""),
        f"- Run: {run['created']} to {run.get('finished') or '(unfinished)'}, status {run['status']}"
        + (f" (stopped by {run['stopped_by']})" if run.get("stopped_by") and run["status"] == "interrupted" else "")
        + (f"; resumed {len(run['resumed'])} time(s), {resumed} run(s) by --resume" if run.get("resumed") else "")
        + (", **--quick** (budgets shrunk: a look, not a measurement)" if run.get("quick") else ""),
        *(f"- Quick look, {line}" for line in run.get("quick_cuts", [])),
    ]


def migration_lines(run: dict[str, Any]) -> list[str]:
    """Where the record came from, when an older harness wrote it, and what it says differently; none otherwise."""
    if "migrated_from" not in run:
        return []
    return [
        f"- Record: results schema version {run['migrated_from']}, read as version {SCHEMA_VERSION} (harness/migrations.py; "
        'the file is unchanged). What that version did not measure says "not recorded".',
        *(f"- Not comparable with version {SCHEMA_VERSION} runs: {caveat}" for caveat in run.get("caveats", [])),
    ]


def render_markdown(run: dict[str, Any], lang: str = "en", plots: dict[str, list[str]] | None = None) -> str:
    """The whole report as markdown."""
    h = HEADERS[lang]
    stats = run_stats(run)
    cores = run["machine"].get("usable_cpus") or run["machine"].get("logical_cores")
    out = [f"# {run['suite']['name']}", "", run["suite"].get("description", ""), "", *machine_header(run), ""]
    if any(c.oversubscribed for cases in stats.values() for c in cases):
        out += [f"⚠ marks oversubscribed cells: more CPU-busy processes on a host than the CPUs usable there ({cores:g} on "
                "the learner's host). Workers of a sleeping env cost wait rather than compete, and are not counted; the "
                "learner counts when it samples itself.", ""]  # fmt: skip
    for part in run["parts"]:
        ctx = TableContext(stats[part["name"]], part.get("baseline"), h, lang)
        m = part["measure"]
        out += [f"## {part['name']}", ""]
        if part.get("description") and part["description"] != run["suite"].get("description"):
            out += [part["description"], ""]
        if m["mode"] == "throughput":
            out.append(
                f"Throughput: {m['warmup_iterations']} warm-up + {m['iterations']} measured iterations per repeat, "
                f"{m['repeats']} fresh-process repeat(s); FPS is env steps/s end to end, the geometric mean over repeats."
            )
        else:
            out.append(
                f"Convergence: a budget of {m['total_steps']:,} env steps per seed, rounded up to whole iterations, seeds "
                f"{list(m['seeds'])}, deterministic evaluation of {m['eval_episodes']} episodes every {m['eval_every']:,} "
                f"steps and {m['final_eval_episodes']} at the end."
            )
        out.append("")
        for name in part["tables"]:
            body, lines = TABLES[name].render(ctx)
            lines = lines + claim_lines(ctx, name, part["tables"])
            out += [f"### {TABLES[name].title}", "", body, ""]
            out += [f"- {line}" for line in lines]
            out += [""] if lines else []
        for image in (plots or {}).get(part["name"], []):
            out += [f"![{Path(image).stem}]({image})", ""]
    out += reading_notes()
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
