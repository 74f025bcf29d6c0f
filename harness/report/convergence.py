"""Convergence (report 4.3.2): steps and wall-clock seconds to the threshold, final return, over seeds."""

from __future__ import annotations

from harness.analysis import Convergence
from harness.report.cells import TableContext, claimed, config, notes, table
from harness.stats import censored_median, mean


def steps_cell(conv: Convergence | None, short: bool = False) -> str:
    """The censored median over seeds with its granularity; censored seeds named, never dropped."""
    if conv is None:
        return "n/a"
    seeds, missed = len(conv.steps_to_threshold), len(conv.steps_to_threshold) - len(conv.reached)
    median = censored_median(conv.steps_to_threshold)
    if median is None:
        return "not reached" if short else f"not reached: {missed} of {seeds} seeds not within {conv.budget:,} steps"
    if short:
        return f"{median:,.0f} ({len(conv.reached)}/{seeds})"
    text = f"{median:,.0f} (evaluated every {conv.eval_every:,})"
    return text + (f"; {missed} seed(s) > {conv.budget:,}" if missed else "")


def seconds_cell(conv: Convergence | None) -> str:
    if conv is None:
        return "n/a"
    seconds = censored_median(conv.seconds_to_threshold)
    return f"{seconds:,.1f}" if seconds is not None else "not reached"


def final_cell(conv: Convergence) -> str:
    final = mean(conv.final_returns)
    if final is None:
        return "n/a"
    # A diverged seed's NaN is no return to average: then the cell says how many seeds the mean is of.
    short = final.n < len(conv.final_returns)
    count = f"n={final.n} of {len(conv.final_returns)}" if short else f"n={final.n}"
    if not final.has_interval:
        return f"{final.value:.1f} ({count})"
    return f"{final.value:.1f} ({final.low:.1f} – {final.high:.1f}" + (f", {count})" if short else ")")


def seeds_text(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def convergence_table(ctx: TableContext) -> tuple[str, list[str]]:
    h, rows, lines = ctx.h, [], []
    shown = [c for c in ctx.cases if c.convergence]
    threshold = next((c.convergence.threshold for c in shown), -200.0)
    for c in shown:
        conv = c.convergence
        rows.append([
            config(c), c.workers, steps_cell(conv), final_cell(conv), f"{len(conv.reached)}/{len(conv.steps_to_threshold)}",
            seeds_text(conv.seeds), c.schedule, seconds_cell(conv),
            claimed(c, "steps_to_threshold") + (" / " + claimed(c, "final_return", digits=1) if "final_return" in c.claims else ""),
            notes(c),
        ])  # fmt: skip
        median = censored_median(conv.steps_to_threshold)
        lines.append(
            f"{c.name}: {len(conv.reached)} of {len(conv.steps_to_threshold)} seeds reached {threshold:g} within {conv.budget:,} steps"
            + (f", median {median:,.0f} steps (over all seeds, the others counted as beyond the budget)." if median else ".")
        )
        if conv.diverged:
            lines.append(
                f"{c.name}: **diverged** on seed(s) {', '.join(map(str, conv.diverged))}: an evaluation's mean return was "
                "not a number (the policy's weights became NaN or infinite): it reached the threshold only if it did before, "
                "and its final return is left out of the mean."
            )
    for key in dict.fromkeys(c.sampling_key for c in shown):
        same = [c.name for c in shown if c.sampling_key == key]
        if len(same) > 1:
            lines.append(f"{', '.join(same)} sample identical rollouts by construction (same envs, seeds, learner and policy-call batch): "
                         "their rows are one experiment, and any difference between them is timing noise.")  # fmt: skip
    deviating = {}
    for c in shown:
        if c.deviations:
            text = ", ".join(f"{k} {new!r} (report {old!r})" for k, (old, new) in c.deviations.items())
            deviating.setdefault(text, []).append(c.name)
    for text, names in deviating.items():
        lines.append(f"{', '.join(names)} deviate from the report's hyperparameters: {text}.")
    lines.append(
        "Steps: the median over seeds, a seed that never got there counting as beyond the budget; a crossing between "
        "two evaluations shows at the next one, so each figure is exact only to the evaluation interval. Final return: "
        "mean over seeds with a 95% t-interval. Seconds: wall time of the training iterations up to that evaluation."
    )
    headers = [h["config"], h["workers"], h["steps_to"].format(threshold=threshold) + " (median of seeds)",
               f"{h['final']} (mean of seeds, 95% CI)", "Seeds reached", "Seeds", "Schedule",
               f"Seconds to {threshold:g} (median of seeds)", f"{h['report']} (steps / final)", "Notes"]  # fmt: skip
    return table(rows, headers), lines
