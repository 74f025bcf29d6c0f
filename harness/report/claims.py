"""The research report's own figures (`claims` on a case), each checked against our measurement.

One entry per claim a suite may make (its name also in harness/names.py): the table it is shown under and how our figure is judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.analysis import CaseStats
from harness.names import CLAIM_NAMES, check_registry
from harness.report.cells import TableContext
from harness.stats import Estimate, censored_median, mean


@dataclass(frozen=True)
class Claim:
    table: str
    """The table whose notes show the check."""
    what: str
    check: Callable[[CaseStats, float, TableContext], str]
    """Our side of the sentence, given the case, the claimed figure and the part."""


def _against(claimed: float, ours: Estimate | None, unit: str = "", digits: int = 0, scale: float = 1.0) -> str:
    """Our estimate, its interval, and whether the claim falls inside it; never a division."""
    if ours is None:
        return "we have no measurement"
    text = f"we measure {scale * ours.value:,.{digits}f}{unit} ({ours.estimator} of {ours.n})"
    if not ours.has_interval:
        return text + " with no interval (too few runs); run more repeats or seeds to judge the claim"
    low, high = scale * ours.low, scale * ours.high  # type: ignore[operator]
    where = "inside" if low <= claimed <= high else "outside"
    return text + f", 95% CI {low:,.{digits}f}–{high:,.{digits}f}{unit}: the claim is {where} it"


def _fps(case: CaseStats, claimed: float, ctx: TableContext) -> str:
    return _against(claimed, case["fps"], " steps/s")


def _speedup(case: CaseStats, claimed: float, ctx: TableContext) -> str:
    if case is ctx.baseline:
        return "it is this part's baseline: 1x by definition, not a measurement"
    s = ctx.speedup(case)
    return _against(claimed, s.ratio if s else None, "x", 2) + (f" (against {ctx.baseline.name})" if s else "")


def _steps(case: CaseStats, claimed: float, ctx: TableContext) -> str:
    """Judged against the range of our seeds, widened by one evaluation interval below: a crossing between two
    evaluations is only seen at the next one, so each seed's figure means "somewhere in the interval before"."""
    conv = case.convergence
    if conv is None or not conv.steps_to_threshold:
        return "we have no measurement"
    median = censored_median(conv.steps_to_threshold)
    seeds, missed = len(conv.steps_to_threshold), len(conv.steps_to_threshold) - len(conv.reached)
    if median is None:
        return f"{missed} of our {seeds} seeds did not reach it within {conv.budget:,} steps (median not reached)"
    low = max(min(conv.reached) - conv.eval_every, 0)
    high = f"{max(conv.reached):,}" if not missed else f"> {conv.budget:,}"
    inside = low <= claimed and (missed > 0 or claimed <= max(conv.reached))
    return (f"we measure a median of {median:,.0f} steps over {seeds} seeds (evaluated every {conv.eval_every:,}); the seeds "
            f"span {low:,}–{high} allowing for the evaluation interval: the claim is {'inside' if inside else 'outside'} it")  # fmt: skip


def _final(case: CaseStats, claimed: float, ctx: TableContext) -> str:
    return _against(claimed, mean(case.convergence.final_returns) if case.convergence else None, "", 1)


def _share(metric: str) -> Callable[[CaseStats, float, TableContext], str]:
    def check(case: CaseStats, claimed: float, ctx: TableContext) -> str:
        return _against(claimed, case[metric], "%", 1, 100)

    return check


def _ms(metric: str) -> Callable[[CaseStats, float, TableContext], str]:
    def check(case: CaseStats, claimed: float, ctx: TableContext) -> str:
        if metric == "sync_ms" and case.inference == "central":
            return "no weight sync crosses a process boundary with central inference"
        return _against(claimed, case[metric], " ms", 2)

    return check


CLAIMS: dict[str, Claim] = {
    "fps": Claim("speed", "mean FPS", _fps),
    "speedup": Claim("speed", "speedup", _speedup),
    "steps_to_threshold": Claim("convergence", "steps to the threshold", _steps),
    "final_return": Claim("convergence", "final mean return", _final),
    "sync_ms": Claim("communication", "weight sync time per iteration (ms)", _ms("sync_ms")),
    "transfer_ms": Claim("communication", "trajectory transfer time per iteration (ms)", _ms("transfer_ms")),
    "sync_share": Claim("communication", "weight sync share of total time (%)", _share("sync_share")),
    "transfer_share": Claim("communication", "trajectory transfer share of total time (%)", _share("transfer_share")),
    "communication_share": Claim("communication", "communication share of total time (%)", _share("communication_share")),
}
check_registry("claims", CLAIMS, CLAIM_NAMES)


def claim_lines(ctx: TableContext, table: str, part_tables: tuple[str, ...] | list[str]) -> list[str]:
    """One line per claim that belongs under `table`; a part without a speed table shows the speed claims
    under its scaling table."""
    lines = []
    for case in ctx.cases:
        for key, claimed in case.claims.items():
            claim = CLAIMS[key]
            home = "scaling" if claim.table == "speed" and "speed" not in part_tables else claim.table
            if home == table:
                lines.append(f"The report claims {claim.what} = {claimed:,g} for {case.name}; {claim.check(case, claimed, ctx)}.")
    return lines
