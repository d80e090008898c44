"""The statistics behind a verdict: one-sided Welch t-tests of a difference of seed means against a
bound, its 90% confidence interval, and the seeds per arm a test would need at a given power.

scipy computes the tests and intervals, statsmodels the power; nothing here writes a t quantile.
A side with one run (the pre-trained LM is one run) is a fixed value: the other side's runs are
tested against it with a one-sample t-test.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower

LESS, GREATER = "less", "greater"
MAX_SEEDS = 100_000  # beyond this a seed count is no advice


def p_value(a: Sequence[float], b: Sequence[float], bound: float, alternative: str) -> float:
    """p of H1: mean(a) - mean(b) < bound (LESS) or > bound (GREATER); nan where no test exists
    (one value on each side). Both sides without spread: the difference is exact, p is 0 or 1."""
    x, y = np.asarray(a, float) - bound, np.asarray(b, float)
    if len(x) < 2 and len(y) < 2:
        return math.nan
    if _spread(x, y) == 0:
        difference = x.mean() - y.mean()
        return 0.0 if (difference < 0 if alternative == LESS else difference > 0) else 1.0
    if len(x) >= 2 and len(y) >= 2:
        return float(stats.ttest_ind(x, y, equal_var=False, alternative=alternative).pvalue)
    if len(x) >= 2:
        return float(stats.ttest_1samp(x, y[0], alternative=alternative).pvalue)
    flipped = GREATER if alternative == LESS else LESS
    return float(stats.ttest_1samp(y, x[0], alternative=flipped).pvalue)


def interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.90) -> tuple[float, float]:
    """The two-sided `confidence` interval of mean(a) - mean(b) (Welch); 90% pairs with one-sided
    tests at alpha 0.05, as TOST does."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    difference = float(x.mean() - y.mean())
    if len(x) < 2 and len(y) < 2:
        return -math.inf, math.inf
    if _spread(x, y) == 0:
        return difference, difference
    if len(x) >= 2 and len(y) >= 2:
        low, high = stats.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
        return float(low), float(high)
    if len(x) >= 2:  # the interval of mean(x), less the fixed value
        low, high = stats.ttest_1samp(x, y[0]).confidence_interval(confidence)
        return float(low - y[0]), float(high - y[0])
    low, high = stats.ttest_1samp(y, x[0]).confidence_interval(confidence)
    return float(x[0] - high), float(x[0] - low)


def seeds_needed(a: Sequence[float], b: Sequence[float], bounds: Sequence[float], alpha: float,
                 power: float) -> int | None:
    """Runs per arm for the one-sided tests of Δ against each of `bounds` to pass together with
    `power` (one bound: a one-sided test; two: TOST, whose power is at least the sum of the two
    tests' powers less one), if the difference and the seed spread stay as observed. None where
    no number would do (Δ on a bound, or no spread to extrapolate from)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    difference = float(x.mean() - y.mean())
    if len(x) >= 2 and len(y) >= 2:
        sd, solver = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2), TTestIndPower()
    else:
        many = x if len(x) >= 2 else y
        sd, solver = (float(many.std(ddof=1)) if len(many) >= 2 else 0.0), TTestPower()
    effects = [abs(difference - bound) / sd for bound in bounds] if sd else []
    if not effects or min(effects) == 0 or not _powered(solver, effects, MAX_SEEDS, alpha, power):
        return None
    low, high = 2, MAX_SEEDS  # the smallest n with enough power (power grows with n)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if _powered(solver, effects, middle, alpha, power) else (middle + 1, high)
    return low


def _powered(solver, effects: list[float], n: int, alpha: float, power: float) -> bool:
    each = [float(solver.power(effect, n, alpha, alternative="larger")) for effect in effects]
    return sum(each) - (len(each) - 1) >= power


def one_sample_p(values: Sequence[float], bound: float, alternative: str) -> float:
    """p of H1: mean(values) < bound (LESS) or > bound (GREATER); nan for a single value."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return math.nan
    if x.std() == 0:
        return 0.0 if (x.mean() < bound if alternative == LESS else x.mean() > bound) else 1.0
    return float(stats.ttest_1samp(x, bound, alternative=alternative).pvalue)


def paired(differences: Sequence[float], confidence: float = 0.90) -> tuple[float, float, float]:
    """Mean of per-sample differences and its `confidence` interval (one-sample t over samples)."""
    d = np.asarray(differences, float)
    if len(d) < 2 or d.std() == 0:
        return float(d.mean()), float(d.mean()), float(d.mean())
    low, high = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
    return float(d.mean()), float(low), float(high)


def _spread(x: np.ndarray, y: np.ndarray) -> float:
    return float((x.var(ddof=1) if len(x) > 1 else 0.0) + (y.var(ddof=1) if len(y) > 1 else 0.0))
