"""Which tool should I use (issue 21): the best configuration of each sampler, the crossover map of step cost
against tool, and the layout of a fixed number of envs over workers. Tables naming metrics
(harness/metrics.py); every figure from the cases' raw samples."""

from __future__ import annotations

from collections.abc import Iterable

from harness.analysis import CaseStats
from harness.report.cells import TableContext, config, interval, num, recorded, table, value, with_interval
from harness.stats import compare

SERIAL = "serial"
"""The tool every speedup here is against: one process, one policy call per env step, at the same env cost."""


def cost_key(case: CaseStats) -> tuple[float, str]:
    """The env cost a case ran at: (ms per step, kind); every cost-free case shares (0, "")."""
    return (case.env_cost_set, case.env_cost_kind) if case.env_cost_set else (0.0, "")


def cost_label(key: tuple[float, str]) -> str:
    ms, kind = key
    return f"{ms:g} ms {kind}" if ms else "0 (the env alone)"


def speedup_over(base: CaseStats | None, case: CaseStats) -> float | None:
    """The case's FPS over `base`'s: the ratio of geometric means of their repeats."""
    if base is None or not base.samples("fps") or not case.samples("fps"):
        return None
    comparison = compare(base.samples("fps"), case.samples("fps"))
    return comparison.ratio.value if comparison else None


def fastest(cases: Iterable[CaseStats]) -> CaseStats | None:
    """The case of highest FPS (geometric mean of repeats); None if none measured."""
    return max((c for c in cases if c["fps"]), key=lambda c: c["fps"].value, default=None)


def _serial_at(cases: list[CaseStats], key: tuple[float, str]) -> CaseStats | None:
    return fastest(c for c in cases if c.backend == SERIAL and cost_key(c) == key)


def which_tool_table(ctx: TableContext) -> tuple[str, list[str]]:
    """Per cost, each tool's fastest configuration beside the others."""
    h, rows = ctx.h, []
    keys = sorted({cost_key(c) for c in ctx.cases})
    for key in keys:
        at_cost = [c for c in ctx.cases if cost_key(c) == key]
        serial = _serial_at(ctx.cases, key)
        bests = [b for tool in {c.backend for c in at_cost} if (b := fastest(c for c in at_cost if c.backend == tool))]
        for best in sorted(bests, key=lambda b: -b["fps"].value):
            tool = best.backend
            ratio = compare(serial.samples("fps"), best.samples("fps")) if serial and serial.samples("fps") else None
            rows.append([
                cost_label(key), tool, config(best), value(best["fps"]), interval(best["fps"]),
                with_interval(ratio.ratio if ratio else None, 2) if best is not serial else "baseline",
                recorded(ctx, best, "worker_pss_mib", num(best["worker_pss_mib"], 0)),
                recorded(ctx, best, "total_pss_mib", num(best["total_pss_mib"], 0)),
                recorded(ctx, best, "startup_s", value(best["startup_s"], 1)),
            ])  # fmt: skip
    headers = [h["env_cost"], h["tool"], h["best_config"], ctx.header("fps"), h["fps_ci"], h["speedup_vs_serial"],
               ctx.header("worker_pss_mib"), ctx.header("total_pss_mib"), ctx.header("startup_s")]  # fmt: skip
    lines = [
        "Each tool's fastest configuration at each env cost (highest geometric-mean FPS over its repeats), ranked; the "
        "speedup is over `serial` at the same cost, the ratio of geometric means with its 95% interval (Welch, on logs).",
        "Memory per worker: each worker or env process's peak PSS, mean over them (n/a for a tool whose envs live in "
        "the learner's process); the total is the whole process tree's peak.",
    ]
    return table(rows, headers), lines


def crossover_table(ctx: TableContext) -> tuple[str, list[str]]:
    """For each step cost, the best tool and its speedup over serial, and every tool's best speedup beside it."""
    h = ctx.h
    keys = sorted({cost_key(c) for c in ctx.cases}, key=lambda k: (k[1], k[0]))
    tools = sorted({c.backend for c in ctx.cases if c.backend != SERIAL})
    rows = []
    for key in keys:
        at_cost = [c for c in ctx.cases if cost_key(c) == key]
        serial = _serial_at(ctx.cases, key)
        best = fastest(c for c in at_cost if c.backend != SERIAL)
        per_tool = [
            num(speedup_over(serial, b), 2) if (b := fastest(c for c in at_cost if c.backend == t)) else "–" for t in tools
        ]
        rows.append([cost_label(key), value(serial["fps"]) if serial else "n/a", config(best) if best else "n/a",
                     num(speedup_over(serial, best), 2) if best else "n/a", *per_tool])  # fmt: skip
    headers = [h["env_cost"], f"serial {ctx.header('fps')}", h["best_tool"], h["speedup_vs_serial"], *tools]
    lines = [
        "Per step cost (and kind: `busy` holds a core, `sleep` waits like I/O), the fastest configuration of any tool, "
        "and each tool's best speedup over `serial` at that cost (ratio of geometric-mean FPS)."
    ]
    lines.append(
        "Crossover: the lowest cost from which a tool is measurably faster than vecenv at every larger cost "
        "measured (Welch's test on log FPS at 5% and at least a 5% difference)."
    )
    lines += crossover_lines(ctx.cases)
    return table(rows, headers), lines


def beats(case: CaseStats, other: CaseStats) -> bool:
    """Whether `case` is measurably faster than `other`: Welch's test on log FPS at 5% and a difference of at least
    the harness's effect threshold (harness.stats.compare), not a point estimate that noise could flip."""
    comparison = compare(other.samples("fps"), case.samples("fps"))
    return bool(comparison and comparison.significant and comparison.ratio.value > 1)


def crossover_lines(cases: list[CaseStats]) -> list[str]:
    """For each tool and cost kind, the lowest measured cost from which it measurably beats vecenv's best at every
    larger cost measured (the crossover)."""
    lines = []
    for kind in sorted({cost_key(c)[1] for c in cases if cost_key(c)[1]}):
        keys = sorted({cost_key(c) for c in cases if cost_key(c)[1] in (kind, "")})
        for tool in sorted({c.backend for c in cases} - {SERIAL, "vecenv"}):
            wins = []
            for key in keys:
                at_cost = [c for c in cases if cost_key(c) == key]
                mine, vec = fastest(c for c in at_cost if c.backend == tool), fastest(c for c in at_cost if c.backend == "vecenv")
                if mine and vec:
                    wins.append((key[0], beats(mine, vec)))
            if not wins:
                continue
            # The crossover: the smallest cost from which it wins at every larger cost measured.
            crossing = next((ms for i, (ms, _) in enumerate(wins) if all(w for _, w in wins[i:])), None)
            if crossing is None:
                lines.append(f"{tool} ({kind}): never measurably faster than vecenv at the costs measured.")
            elif crossing == wins[0][0]:
                lines.append(f"{tool} ({kind}): measurably faster than vecenv at every cost measured, from {crossing:g} ms.")
            else:
                lines.append(f"{tool} ({kind}): measurably faster than vecenv from {crossing:g} ms per step on (the crossover).")
    return lines


def layout_table(ctx: TableContext) -> tuple[str, list[str]]:
    """The same number of envs laid out as workers x envs per worker, per tool (and torch threads, where swept)."""
    h = ctx.h
    layouts = sorted({c.layout for c in ctx.cases})
    groups: dict[tuple[str, int | None], list[CaseStats]] = {}
    for case in ctx.cases:
        groups.setdefault((case.backend, case.torch_threads), []).append(case)
    rows = []
    for (tool, threads), members in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        by_layout = {c.layout: c for c in members}
        best = fastest(members)
        rows.append([tool, "part's" if threads is None else (threads or "cores"),
                     *(value(by_layout[lay]["fps"]) if lay in by_layout else "–" for lay in layouts),
                     "{}×{}".format(*best.layout) if best else "n/a"])  # fmt: skip
    headers = [h["tool"], h["torch_threads"], *(f"{w}×{e}" for w, e in layouts), h["best_layout"]]
    lines = [
        f"{ctx.header('fps')} of each layout: workers × envs per worker (EnvPool: its C++ threads × envs per thread, "
        "from `options.num_threads`; the envs live in the learner's process). A dash: the tool was not run in that layout."
    ]
    costs = {
        tool: sorted({cost_label(cost_key(c)) for c in ctx.cases if c.backend == tool}) for tool in {c.backend for c in ctx.cases}
    }
    if len({tuple(labels) for labels in costs.values()}) > 1:  # not every tool ran at the same env cost: say which
        lines.append(
            "Env cost per step: " + "; ".join(f"{tool} {', '.join(labels)}" for tool, labels in sorted(costs.items())) + "."
        )
    oversubscribed = sorted({c.name for c in ctx.cases if c.oversubscribed})
    if oversubscribed:
        lines.append(f"Oversubscribed (more busy processes than usable CPUs): {', '.join(oversubscribed)}.")
    return table(rows, headers), lines
