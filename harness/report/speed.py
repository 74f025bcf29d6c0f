"""Training speed (report 4.3.1), where each iteration's time goes, and what overlap buys: tables naming
metrics (harness/metrics.py), with every header in the report's language."""

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
            config(c), c.workers, value(c["fps"]), interval(c["fps"]), num(s.ratio.value if s else None, 2),
            "baseline" if c is base else interval(s.ratio if s else None, 2), c.envs, c.schedule, value(c["sampling_fps"]),
            num(efficiency, 2), recorded(ctx, c, "startup_s", value(c["startup_s"], 1)), memory_cell(ctx, c),
            recorded(ctx, c, "total_pss_mib", num(c["total_pss_mib"], 0)),
            claimed(c, "fps") + (" / " + claimed(c, "speedup", digits=1, suffix="x") if "speedup" in c.claims else ""),
            notes(c),
        ])  # fmt: skip
    headers = [
        h["config"], h["workers"], ctx.header("fps"), h["fps_ci"], f"{h['speedup']} ({h['ratio']})", h["speedup_ci"],
        h["envs"], h["schedule"], ctx.header("sampling_fps"), h["efficiency"], ctx.header("startup_s"),
        ctx.header("worker_pss_mib"), ctx.header("total_pss_mib"), h["report_fps_speedup"], h["notes"],
    ]  # fmt: skip
    lines = []
    measured = [c for c in ctx.cases if c["fps"]]
    if measured and base:
        fastest = max(measured, key=lambda c: c["fps"].value)
        s = ctx.speedup(fastest)
        lines.append(
            f"Fastest: **{fastest.name}**, {fastest['fps'].value:,.0f} steps/s, {s.ratio.value:.2f}x the baseline "
            f"**{base.name}** ({base['fps'].value:,.0f} steps/s)."
        )
        ties, untested = [], []
        for c in measured:
            if c is fastest:
                continue
            versus = compare(c.samples("fps"), fastest.samples("fps"))
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
    if any(c["total_pss_mib"] is not None for c in ctx.cases):
        lines.append(
            "Memory: PSS, which charges each process its share of pages it shares with others (libraries, Ray's object "
            "store), so the total is what the processes hold together; each process's peak over the run, the mean over "
            "workers, then over runs. The total is the whole tree's peak (learner, workers, Ray's daemons), mean over runs."
        )
    lines += restart_lines(ctx)
    return table(rows, headers), lines


def memory_cell(ctx: TableContext, case: CaseStats) -> str:
    """A worker's memory, or why there is none: in-process backends have no worker process (but a tool whose envs
    each live in a process of their own, gymnasium's AsyncVectorEnv or SB3's SubprocVecEnv, shows those)."""
    if not case.remote and case["worker_pss_mib"] is None:
        return "n/a: in-process"
    return recorded(ctx, case, "worker_pss_mib", num(case["worker_pss_mib"], 0))


def phases_table(ctx: TableContext) -> tuple[str, list[str]]:
    h = ctx.h
    shares = [f"{phase}_time_share" for phase in ("between", "sync", "collect", "transfer", "train")]
    split = [f"sampling_{part}_share" for part in ("env", "inference", "other")]
    rows = []
    for c in ctx.cases:
        measured = recorded(ctx, c, "env_cost_ms", num(c["env_cost_ms"], 3))
        cost = f"{c.env_cost_set:g} → {measured}" if c.env_cost_set else ""
        rows.append([config(c), c.workers, c.schedule, *(recorded(ctx, c, share, pct(c[share])) for share in shares),
                     *(recorded(ctx, c, part, pct(c[part])) for part in split), num(c["iteration_ms"], 1),
                     num(c["worker_compute_ms"], 1), recorded(ctx, c, "straggler_ms", num(c["straggler_ms"], 1)), cost])  # fmt: skip
    headers = [h["config"], h["workers"], h["schedule"], *map(ctx.header, shares), *map(ctx.header, split),
               ctx.header("iteration_ms"), ctx.header("worker_compute_ms"), ctx.header("straggler_ms"),
               ctx.header("env_cost_ms")]  # fmt: skip
    lines = []
    for phase in ("train", "collect", "sync"):
        names = [
            c.name
            for c in ctx.cases
            if c["iteration_ms"] and max(("collect", "train", "sync"), key=lambda p: c[f"{p}_time_share"] or 0) == phase
        ]
        if names:
            lines.append(f"{phase.capitalize()} dominates the iteration for: {', '.join(names)}.")
    lines.append(
        "Shares are of the summed phase time of all measured iterations of all runs (pooled). Between: the learner's "
        "own time between iterations (writing the record, progress), on the clock because under overlap the workers "
        "sample during it; evaluations are on no clock, and run with no batch in flight."
    )
    lines.append(
        "Sampling: of the sampler's own time on the critical path (the learner's for in-process backends and central "
        "inference; the slowest worker's with worker inference), the share spent waiting on env steps (for envs in other "
        "processes or EnvPool's threads that wait includes moving actions and results), in policy calls, and the rest "
        "(the loop's Python, buffers, the framework); pooled over measured iterations."
    )
    if any(c.schedule == "overlap" for c in ctx.cases):
        lines.append(
            "Shares are of the learner's timeline, which adds up to the wall time under both schedules. Under overlap, "
            "Collect is only the learner waiting for a batch (and asking for the next); the workers sample during Train, "
            "so their sampling time runs in parallel with it and is not part of the iteration's sum."
        )
    if any(c.env_cost_set for c in ctx.cases):
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
            ratio = compare(sync.samples("fps"), over.samples("fps"))
            rows.append([
                config(over), over.workers, value(sync["fps"]), value(over["fps"]), with_interval(ratio.ratio if ratio else None, 2),
                ratio.verdict() if ratio else "n/a", num(over["lag_mean"], 2),
                recorded(ctx, over, "lag_sgd_steps_mean", num(over["lag_sgd_steps_mean"], 1)), num(over["initial_kl"], 4),
                steps_cell(sync.convergence, short=True), steps_cell(over.convergence, short=True),
                seconds_cell(sync.convergence), seconds_cell(over.convergence),
            ])  # fmt: skip
            if ratio:
                lines.append(
                    f"{over.name}: {ratio.ratio.value:.2f}x the FPS of {sync.name}, mean policy lag {over['lag_mean'] or 0:.2f}."
                )
    if not rows:
        return "No case here has both a sync and an overlap version of one configuration.", []
    threshold = next((c.convergence.threshold for c in ctx.cases if c.convergence), -200.0)
    headers = [h["config"], h["workers"], h["sync_fps"], h["overlap_fps"], h["overlap_ratio"], h["change"],
               ctx.header("lag_mean"), ctx.header("lag_sgd_steps_mean"), ctx.header("initial_kl"),
               h["steps_sync"].format(threshold=threshold),
               h["then_overlap"], h["seconds_sync"].format(threshold=threshold), h["then_overlap"]]  # fmt: skip
    lines.append(
        "Lag: the learner's version when it trained on a fragment minus the one that sampled it, and the same in the "
        "learner's optimiser steps (Sample Factory's measure: under 20-30 is usually fine); means over fragments and "
        "iterations. Initial KL: how far each batch already is from the policy that trains on it (0 when fresh), a mean "
        "over iterations. Seconds to the threshold: the wall time of the iterations, evaluations excluded (each runs with "
        "no batch in flight, so overlap samples nothing off the clock), nothing else."
    )
    return table(rows, headers), lines
