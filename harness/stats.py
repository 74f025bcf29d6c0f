"""The statistics behind every figure in `report.md` and `harness compare`, in one place.

Each estimate names its estimator, so a table header can say what a cell shows:

- **Speeds** (FPS, milliseconds, speedups) are positive and their noise is multiplicative, so they are
  summarised on the log scale: the *geometric mean* over repeats, with a 95% Student-t interval of the
  mean log (it can never go below zero). A speedup is a ratio of two geometric means; its interval is
  Welch's on the difference of mean logs, so the baseline's own spread counts.
- **Is one case faster than another?** Welch's t-test on log FPS at 5%, and (as asv does) a change counts
  only if it is also at least `EFFECT_THRESHOLD` in size. The test and the speedup interval agree: the
  difference is significant exactly when the ratio's 95% interval excludes 1.
- **Returns and shares** (which can be negative or zero) use the arithmetic mean with a t-interval; a
  share's interval is clipped to [0, 1].
- **Steps to a threshold** use the median over seeds with censored seeds counted (`censored_median`).
- **Pooled figures** (bytes, lag, KL, the phase shares of "where the time goes") pool every measured
  iteration of every run into one point figure without an interval, since iterations of one run are not
  independent: `pooled_mean`, `pooled_share` (a ratio of sums), `total`.

An interval needs `MIN_SAMPLES_FOR_INTERVAL` samples: with two, the t-quantile is 12.7 and the interval
spans an order of magnitude, which says nothing; the report then says n is too small instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_SAMPLES_FOR_INTERVAL = 3
EFFECT_THRESHOLD = 0.05
"""A speed change smaller than this (5%) is not reported as a change, however significant."""
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Estimate:
    """A point estimate over independent samples (repeats or seeds), with its interval when n allows one."""

    n: int
    value: float
    low: float | None
    """None when n is too small for an interval (see `MIN_SAMPLES_FOR_INTERVAL`)."""
    high: float | None
    estimator: str
    """What `value` is, e.g. "geometric mean"; the interval is always a 95% one."""

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def contains(self, x: float) -> bool | None:
        """None when there is no interval to judge by."""
        return self.low <= x <= self.high if self.has_interval else None  # type: ignore[operator]


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _t_half_width(sd: float, n: int) -> float:
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n))


def geometric_mean(values: Sequence[float | None]) -> Estimate | None:
    """Geometric mean of positive samples with a 95% t-interval of the mean log; None without samples."""
    data = _clean(values)
    data = data[data > 0]
    if data.size == 0:
        return None
    logs = np.log(data)
    center = float(logs.mean())
    if data.size < MIN_SAMPLES_FOR_INTERVAL:
        return Estimate(int(data.size), math.exp(center), None, None, "geometric mean")
    half = _t_half_width(float(logs.std(ddof=1)), data.size)
    return Estimate(int(data.size), math.exp(center), math.exp(center - half), math.exp(center + half), "geometric mean")


def mean(values: Sequence[float | None], bounds: tuple[float, float] | None = None) -> Estimate | None:
    """Arithmetic mean with a 95% t-interval, clipped to `bounds` (e.g. (0, 1) for a share)."""
    data = _clean(values)
    if data.size == 0:
        return None
    center = float(data.mean())
    if data.size < MIN_SAMPLES_FOR_INTERVAL:
        return Estimate(int(data.size), center, None, None, "mean")
    half = _t_half_width(float(data.std(ddof=1)), data.size)
    low, high = center - half, center + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(int(data.size), center, low, high, "mean")


@dataclass(frozen=True)
class Comparison:
    """B against A: the ratio of geometric means, its interval, and whether the change counts."""

    ratio: Estimate
    p_value: float | None
    """Welch's t-test on log values; None when either side has fewer than two samples."""

    @property
    def significant(self) -> bool | None:
        """Significant at 5% and at least `EFFECT_THRESHOLD` in size; None when it cannot be tested."""
        if self.p_value is None:
            return None
        return self.p_value < SIGNIFICANCE and abs(self.ratio.value - 1) >= EFFECT_THRESHOLD

    def verdict(self) -> str:
        """One phrase for a table cell."""
        if self.p_value is None:
            return f"too few repeats to test (n={self.ratio.n})"
        if self.significant:
            return f"{'faster' if self.ratio.value > 1 else 'slower'} (p={self.p_value:.3f})"
        if self.p_value < SIGNIFICANCE:
            return f"no change: significant (p={self.p_value:.3f}) but under {EFFECT_THRESHOLD:.0%}"
        return f"no significant change (p={self.p_value:.2f})"


def compare(a: Sequence[float | None], b: Sequence[float | None]) -> Comparison | None:
    """How B's positive samples (e.g. FPS per repeat) compare with A's; None when either is empty."""
    la, lb = np.log(_clean(a)), np.log(_clean(b))
    if la.size == 0 or lb.size == 0:
        return None
    diff = float(lb.mean() - la.mean())
    n = int(min(la.size, lb.size))
    low = high = p_value = None
    if la.size >= 2 and lb.size >= 2:
        va, vb = float(la.var(ddof=1)) / la.size, float(lb.var(ddof=1)) / lb.size
        if va + vb == 0:  # no spread on either side: any difference is exact
            p_value = 0.0 if diff else 1.0
        else:
            # Welch's test, with the Welch–Satterthwaite degrees of freedom its interval uses too.
            dof = (va + vb) ** 2 / (va**2 / (la.size - 1) + vb**2 / (lb.size - 1))
            p_value = float(2 * stats.t.sf(abs(diff) / math.sqrt(va + vb), dof))
            if n >= MIN_SAMPLES_FOR_INTERVAL:
                half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * math.sqrt(va + vb))
                low, high = math.exp(diff - half), math.exp(diff + half)
    ratio = Estimate(n, math.exp(diff), low, high, "ratio of geometric means")
    return Comparison(ratio, p_value)


def pooled_mean(values: Sequence[float | None]) -> float | None:
    """The plain mean of the present values, no interval (pooled samples are not independent); None if none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def pooled_share(parts: Sequence[tuple[float, float]]) -> float | None:
    """Sum of the parts over sum of the wholes, from (part, whole) pairs; None when the wholes sum to 0."""
    whole = sum(w for _, w in parts)
    return sum(p for p, _ in parts) / whole if whole else None


def total(values: Sequence[float | None]) -> float:
    """The sum of the present values (a count: 0 when there are none)."""
    return sum(v for v in values if v is not None)


def censored_median(values: Sequence[float | None]) -> float | None:
    """The median over every seed, a seed that never reached the threshold counting as beyond the budget.

    None when the median itself is censored (half or more of the seeds did not get there). The one
    definition of a median here: numpy's (the mean of the two middle values for an even count).
    """
    if not values:
        return None
    median = float(np.median([math.inf if v is None else v for v in values]))
    return None if math.isinf(median) else median
