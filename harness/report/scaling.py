"""Scaling (report 4.3.3): FPS, speedup and efficiency per worker count."""

from __future__ import annotations

from harness.analysis import CaseStats
from harness.report.cells import TableContext, num, table, value, with_interval

EFFICIENCY_FLOOR = 0.5


def scaling_table(ctx: TableContext) -> tuple[str, list[str]]:
    h, base = ctx.h, ctx.baseline
    counts = sorted({c.parallelism for c in ctx.cases})
    groups: dict[str, dict[int, CaseStats]] = {}
    for c in ctx.cases:
        groups.setdefault(c.label, {})[c.parallelism] = c
    rows, lines = [], []
    for label, by_count in groups.items():
        fps_row, speed_row, eff_row = [f"{label}: FPS"], [f"{label}: {h['speedup']} (95% CI)"], [f"{label}: efficiency"]
        report_fps, report_speedup = [f"{label}: {h['report']} FPS"], [f"{label}: {h['report']} {h['speedup']}"]
        for n in counts:
            c = by_count.get(n)
            s = ctx.speedup(c) if c else None
            fps_row.append(value(c["fps"] if c else None) + (" ⚠" if c and c.oversubscribed else ""))
            speed_row.append("baseline" if c is base and c is not None else with_interval(s.ratio if s else None, 2))
            eff_row.append(num(s.ratio.value / n if s else None, 2))
            report_fps.append(num(c.claims.get("fps")) if c and "fps" in c.claims else "")
            report_speedup.append(num(c.claims.get("speedup"), 1) if c and "speedup" in c.claims else "")
        rows += [fps_row, speed_row, eff_row]
        if any(cell for cell in report_fps[1:]):
            rows.append(report_fps)
        if any(cell for cell in report_speedup[1:]):
            rows.append(report_speedup)
        measured = sorted((c for c in by_count.values() if c["fps"]), key=lambda c: c.parallelism)
        unit = "workers" if measured and measured[0].remote else "envs"
        if len(measured) > 1 and base:
            top, best = measured[-1], max(measured, key=lambda c: c["fps"].value)
            lines.append(
                f"{label}: {top.parallelism} {unit} give {ctx.speedup(top).ratio.value:.2f}x the baseline ({base.name}); "
                f"the best is {best.parallelism} {unit} at {ctx.speedup(best).ratio.value:.2f}x."
            )
            low = [c.parallelism for c in measured if ctx.speedup(c).ratio.value / c.parallelism < EFFICIENCY_FLOOR]
            if low:
                lines.append(f"{label}: parallel efficiency is below {EFFICIENCY_FLOOR:.0%} from {min(low)} {unit} on.")
    headers = [f"{h['workers']} (vecenv: envs)", *[str(n) for n in counts]]
    lines.append(f"FPS: geometric mean of repeats; speedup: {h['ratio']} against {base.name if base else 'the baseline'}, "
                 "with the 95% interval of the ratio (Welch on log FPS; both cases' repeats count).")  # fmt: skip
    return table(rows, headers), lines
