"""Small statistics for results: medians with a t-based 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """Median, mean and a 95% t-interval of the mean of independent samples (repeats or seeds)."""

    n: int
    median: float
    mean: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def contains(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high


def summarize(values: Sequence[float]) -> Summary | None:
    """None for no values; a zero-width interval for one value (no spread is known)."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size == 0:
        return None
    mean = float(data.mean())
    if data.size == 1:
        return Summary(1, mean, mean, mean, mean)
    half = float(stats.t.ppf(0.975, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size))
    return Summary(int(data.size), float(np.median(data)), mean, mean - half, mean + half)


def significant_change(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> bool | None:
    """Welch's t-test between two sets of repeats; None when either has fewer than two."""
    if len(a) < 2 or len(b) < 2:
        return None
    return bool(stats.ttest_ind(a, b, equal_var=False).pvalue < alpha)


def censored_median(values: Sequence[float | None]) -> float | None:
    """The median over every seed, a seed that never reached the threshold counting as beyond the budget.

    None when the median itself is censored (half or more of the seeds did not get there). The one
    definition of a median here: numpy's (the mean of the two middle values for an even count).
    """
    if not values:
        return None
    median = float(np.median([math.inf if v is None else v for v in values]))
    return None if math.isinf(median) else median
