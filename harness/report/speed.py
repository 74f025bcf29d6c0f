"""Training speed (report 4.3.1) and where each iteration's time goes."""

from __future__ import annotations

from harness.analysis import CaseStats
from harness.report.cells import (
    TableContext,
    claimed,
    config,
    interval,
    notes,
    num,
    pct,
    recorded,
    restart_lines,
    table,
    value,
    with_interval,
)
from harness.stats import EFFECT_THRESHOLD, compare


def speed_table(ctx: TableContext) -> tuple[str, list[str]]:
    h, base = ctx.h, ctx.baseline
    rows = []
    for c in ctx.cases:
        s = ctx.speedup(c)
        efficiency = s.ratio.value / c.parallelism if s else None
        rows.append([
            config(c), c.workers, value(c.fps), interval(c.fps), num(s.ratio.value if s else None, 2),
            "baseline" if c is base else interval(s.ratio if s else None, 2), c.envs, c.schedule, value(c.sampling_fps),
            num(efficiency, 2), recorded(ctx, c, "startup_s", value(c.startup_s, 1)), memory_cell(ctx, c),
            recorded(ctx, c, "total_pss_mib", num(c.total_pss_mib, 0)),
            claimed(c, "fps") + (" / " + claimed(c, "speedup", digits=1, suffix="x") if "speedup" in c.claims else ""),
            notes(c),
        ])  # fmt: skip
    headers = [
        h["config"], h["workers"], f"{h['fps']}, {h['geomean']}", "FPS 95% CI", f"{h['speedup']} ({h['ratio']})",
        "Speedup 95% CI", "Envs", "Schedule", "Sampling FPS (geometric mean)", "Efficiency (speedup / parallelism)",
        "Start-up (s, geometric mean)", "Memory per worker (MiB PSS, peak; mean)", "Memory in total (MiB PSS, peak; mean)",
        f"{h['report']} (FPS / speedup)", "Notes",
    ]  # fmt: skip
    lines = []
    measured = [c for c in ctx.cases if c.fps]
    if measured and base:
        fastest = max(measured, key=lambda c: c.fps.value)
        s = ctx.speedup(fastest)
        lines.append(
            f"Fastest: **{fastest.name}**, {fastest.fps.value:,.0f} steps/s, {s.ratio.value:.2f}x the baseline "
            f"**{base.name}** ({base.fps.value:,.0f} steps/s)."
        )
        ties, untested = [], []
        for c in measured:
            if c is fastest:
                continue
            versus = compare(c.fps_samples, fastest.fps_samples)
            if versus is None or versus.significant is None:
                untested.append(c.name)
            elif not versus.significant:
                ties.append(c.name)
        if ties:
            lines.append(
                f"Not measurably slower than the fastest (Welch's t-test on log FPS at 5%, and a difference of at least "
                f"{EFFECT_THRESHOLD:.0%}): {', '.join(ties)}."
            )
        if untested:
            lines.append(f"Too few repeats to test against the fastest: {', '.join(untested)}.")
    if any(c.total_pss_mib is not None for c in ctx.cases):
        lines.append(
            "Memory: PSS, which charges each process its share of pages it shares with others (libraries, Ray's object "
            "store), so the total is what the processes hold together; each process's peak over the run, the mean over "
            "workers, then over runs. The total is the whole tree's peak (learner, workers, Ray's daemons), mean over runs."
        )
    lines += restart_lines(ctx)
    return table(rows, headers), lines


def memory_cell(ctx: TableContext, case: CaseStats) -> str:
    """A worker's memory, or why there is none: in-process backends have no worker process."""
    if not case.remote:
        return "n/a: in-process"
    return recorded(ctx, case, "worker_pss_mib", num(case.worker_pss_mib, 0))


def phases_table(ctx: TableContext) -> tuple[str, list[str]]:
    h = ctx.h
    rows = []
    for c in ctx.cases:
        iteration_ms = 1000 * c.total_seconds / c.measured_iterations if c.measured_iterations else None
        measured = "" if c.env_cost_ms is None else recorded(ctx, c, "env_cost_ms", num(c.env_cost_ms[1], 3))
        cost = "" if c.env_cost_ms is None else f"{c.env_cost_ms[0]:g} → {measured}"
        rows.append([
            config(c), c.workers, c.schedule, pct(c.share("sync")), pct(c.share("collect")), pct(c.share("transfer")),
            pct(c.share("train")), num(iteration_ms, 1), num(c.worker_compute_ms, 1), cost,
        ])  # fmt: skip
    headers = [h["config"], h["workers"], "Schedule", "Sync %", "Collect %", "…transfer %", "Train %",
               "Iteration (ms, mean)", "Workers sampling (ms, mean)", "Env cost per step (ms, set → measured mean)"]  # fmt: skip
    lines = []
    for phase in ("train", "collect", "sync"):
        names = [
            c.name
            for c in ctx.cases
            if c.total_seconds and max(("collect", "train", "sync"), key=lambda p: c.share(p) or 0) == phase
        ]
        if names:
            lines.append(f"{phase.capitalize()} dominates the iteration for: {', '.join(names)}.")
    lines.append("Shares are of the summed phase time of all measured iterations of all runs (pooled).")
    if any(c.schedule == "overlap" for c in ctx.cases):
        lines.append(
            "Shares are of the learner's timeline, which adds up to the wall time under both schedules. Under overlap, "
            "Collect is only the learner waiting for a batch (and asking for the next); the workers sample during Train, "
            "so their sampling time runs in parallel with it and is not part of the iteration's sum."
        )
    if any(c.env_cost_ms for c in ctx.cases):
        lines.append("Env cost: the synthetic per-step cost the suite sets, and the mean actually spent per step "
                     "(a sleep overshoots; a busy wait spins on the thread's CPU time).")  # fmt: skip
    lines += restart_lines(ctx)
    return table(rows, headers), lines


def overlap_table(ctx: TableContext) -> tuple[str, list[str]]:
    """Each overlap case beside the sync case of the same configuration."""
    from harness.report.convergence import seconds_cell, steps_cell

    h, rows, lines = ctx.h, [], []
    for sync in (c for c in ctx.cases if c.schedule == "sync"):
        for over in (c for c in ctx.cases if c.schedule == "overlap" and c.pair_key == sync.pair_key):
            ratio = compare(sync.fps_samples, over.fps_samples)
            rows.append([
                config(over), over.workers, value(sync.fps), value(over.fps), with_interval(ratio.ratio if ratio else None, 2),
                ratio.verdict() if ratio else "n/a", num(over.lag_mean, 2), num(over.initial_kl, 4),
                steps_cell(sync.convergence, short=True), steps_cell(over.convergence, short=True),
                seconds_cell(sync.convergence), seconds_cell(over.convergence),
            ])  # fmt: skip
            if ratio:
                lines.append(
                    f"{over.name}: {ratio.ratio.value:.2f}x the FPS of {sync.name}, mean policy lag {over.lag_mean or 0:.2f}."
                )
    if not rows:
        return "No case here has both a sync and an overlap version of one configuration.", []
    threshold = next((c.convergence.threshold for c in ctx.cases if c.convergence), -200.0)
    headers = [h["config"], h["workers"], "Sync FPS (geometric mean)", "Overlap FPS (geometric mean)",
               "Overlap / sync (95% CI)", "Change (Welch on log FPS)", "Mean lag", "Initial KL",
               f"Steps to {threshold:g}, sync (median of seeds)", "…overlap", f"Seconds to {threshold:g}, sync (median)", "…overlap"]  # fmt: skip
    lines.append(
        "Initial KL: how far each batch already is from the policy that trains on it (0 when fresh), a mean over iterations."
    )
    return table(rows, headers), lines
