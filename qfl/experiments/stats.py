"""The statistics of an experiment: pure functions on accuracy curves, one per seed.

An arm's seeds give ``n`` values of a quantity (final accuracy, rounds to a target). We
report the mean with its two-sided 95 % confidence interval from Student's t,

.. math:: \\bar x \\pm t_{0.975,\\,n-1}\\, s / \\sqrt n ,

and compare an arm with the experiment's baseline on the *same seeds* (the same split,
partitions and initial model), so the test is paired: Student's paired t-test on the
differences and, as a check that does not assume normality, the Wilcoxon signed-rank test.
An experiment compares several arms with one baseline, so the p-values are adjusted with
Holm's step-down method (family-wise error 5 %) before a difference is called significant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05


def rounds_to_target(accuracy: list[float] | np.ndarray, target: float) -> int | None:
    """First round after round 0 whose accuracy reaches ``target``; ``None`` if none does.

    Examples
    --------
    >>> rounds_to_target([0.5, 0.7, 0.9, 0.95], 0.9)
    2
    >>> rounds_to_target([0.5, 0.7], 0.9) is None
    True
    """
    for rnd, acc in enumerate(accuracy):
        if rnd > 0 and acc >= target - 1e-12:
            return rnd
    return None


def censored_rounds(rounds: list[int | None], num_rounds: int) -> np.ndarray:
    """Rounds to target with a run that never got there counted as ``num_rounds + 1``
    (a lower bound: such means are marked as censored in the summary)."""
    return np.array([num_rounds + 1 if r is None else r for r in rounds], dtype=float)


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided 95 % t confidence interval of ``n`` values."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return self.format(3)

    def format(self, digits: int) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Mean and t confidence interval; a single value has an infinite interval, equal values a point.

    Examples
    --------
    >>> str(mean_ci([1.0, 2.0, 3.0]))
    '2.000 [-0.484, 4.484]'
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of an arm with the baseline on the same seeds."""

    mean_difference: float  # arm minus baseline
    t_p: float  # paired t-test, two-sided
    wilcoxon_p: float  # Wilcoxon signed-rank, two-sided
    n: int


def paired_test(arm: list[float] | np.ndarray, baseline: list[float] | np.ndarray) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``arm - baseline``.

    Equal samples (every difference zero) give p = 1: no evidence of a difference.
    """
    from scipy import stats

    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same seeds: {a.shape} vs {b.shape}")
    d = a - b
    n = len(d)
    if n < 2 or np.allclose(d, d[0]) and abs(d[0]) < 1e-12:
        return PairedTest(float(d.mean()) if n else math.nan, 1.0, 1.0, n)
    if np.allclose(d, d[0]):  # a constant non-zero shift: t is infinite
        t_p = 0.0
    else:
        t_p = float(stats.ttest_rel(a, b).pvalue)
    nonzero = d[np.abs(d) > 1e-12]
    wilcoxon_p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    return PairedTest(float(d.mean()), t_p, wilcoxon_p, n)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (same order back).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = round(running, 12)
    return adjusted


def curve_band(curves: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-round mean and t confidence band of ``curves`` (``(seeds, rounds + 1)``)."""
    from scipy import stats

    n = curves.shape[0]
    mean = curves.mean(axis=0)
    if n < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + level / 2, n - 1) * curves.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half
