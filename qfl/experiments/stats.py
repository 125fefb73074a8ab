"""The statistics of an experiment: pure functions on accuracy curves, one per seed.

An arm's seeds give ``n`` values of a quantity. Seed *s* gives every arm the same split,
partitions and initial model, so an arm is compared with another *paired*, on the
differences :math:`d_s = x_s^{arm} - x_s^{other}`:

- **the test**: an exact permutation (sign-flip) test of :math:`\\bar d`. Under the null
  hypothesis that the two arms are exchangeable within a seed, each :math:`d_s` is as likely
  to be :math:`-d_s`; the p-value counts the sign assignments whose mean is at least as far
  from 0 as the observed one. All :math:`2^n` assignments for :math:`n \\le` :data:`EXACT_MAX_N`,
  otherwise :data:`MC_RESAMPLES` random ones (seeded, ``(k + 1) / (B + 1)``):
  :func:`sign_flip_test`, on :func:`scipy.stats.permutation_test`. Nothing is assumed of the
  differences' distribution, and the smallest two-sided p is :math:`2 / 2^n` (0.00195 at 10
  seeds), which a t-test on 10 values does not respect;
- **Holm**: a verdict that reads several tests reads them Holm-adjusted (:func:`holm`) over
  *every* test it reads, one family per table;
- **equivalence**: "no loss" or "as well as" is a claim of its own, tested with two one-sided
  sign-flip tests against a stated margin (TOST, :func:`tost`), never read off a
  non-significant difference;
- **time to the target**: a run that never reaches the target is *censored* at the last round
  (we know only that it needs more). Per arm the Kaplan-Meier estimate of the rounds to the
  target and its median (:func:`kaplan_meier`), with how many runs got there; never a t
  interval on a mean that counts a censored run as ``rounds + 1``. Every run of an
  experiment has the same horizon, so the paired test of ``min(T, rounds + 1)`` is still an
  exact test of the null that the arms are exchangeable (it compares the restricted times);
  its mean difference is then labelled as restricted, not as a difference in rounds;
- beside the *first* round at the target, the round from which accuracy *stays* at or above
  it to the end of the run (:func:`rounds_to_stay`) and the area under the accuracy curve
  (:func:`accuracy_auc`).

Student-t intervals (:func:`mean_ci`) remain for uncensored quantities (final accuracy, the
area under the curve); :func:`paired_test` (t and Wilcoxon) is kept for callers that ask for
it, but no summary's verdict reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
EXACT_MAX_N = 20  # sign-flip tests enumerate all 2^n assignments up to this many pairs (1,048,576) ...
MC_RESAMPLES = 100_000  # ... and draw this many above it (a seeded Monte Carlo)
MC_SEED = 20240  # not a run seed: the Monte Carlo's own generator, so a summary is a function of its runs
EQUIVALENCE_MARGIN = 0.02  # "no loss" of final accuracy: within 2 points (0.02), tested by TOST


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


def rounds_to_stay(accuracy: list[float] | np.ndarray, target: float) -> int | None:
    """First round after round 0 from which accuracy stays at or above ``target`` to the end of
    the run; ``None`` if the last round is below it (the run is censored: it may get there later).

    Examples
    --------
    >>> rounds_to_stay([0.5, 0.92, 0.85, 0.91, 0.95], 0.9)
    3
    >>> rounds_to_stay([0.5, 0.95, 0.8], 0.9) is None
    True
    """
    acc = np.asarray(accuracy, dtype=float)
    stay = None
    for rnd in range(len(acc) - 1, 0, -1):
        if acc[rnd] < target - 1e-12:
            break
        stay = rnd
    return stay


def accuracy_auc(accuracy: list[float] | np.ndarray) -> float:
    """Area under the accuracy curve over rounds 0..R (trapezoids), divided by R: the mean
    accuracy over the run, in [0, 1]; a run that learns sooner has the larger area.

    Examples
    --------
    >>> accuracy_auc([0.5, 0.7, 0.9])
    0.7
    """
    acc = np.asarray(accuracy, dtype=float)
    if len(acc) < 2:
        return float(acc[0]) if len(acc) else math.nan
    return float(np.sum((acc[1:] + acc[:-1]) / 2) / (len(acc) - 1))


@dataclass(frozen=True)
class SignFlip:
    """A paired sign-flip (permutation) test of the mean of ``n`` differences."""

    mean_difference: float  # the observed mean of the differences (before any shift)
    p: float
    n: int
    resamples: int  # how many sign assignments the null distribution holds: 2^n when exact
    exact: bool  # every assignment enumerated (n <= EXACT_MAX_N), else Monte Carlo
    alternative: str = "two-sided"

    @property
    def method(self) -> str:
        """How the p-value was had, in words for a summary."""
        return sign_flip_method(self.n)


def sign_flip_method(n: int) -> str:
    """How a sign-flip test of ``n`` differences gets its p, and the smallest two-sided p it can give.

    Examples
    --------
    >>> sign_flip_method(10)
    'exact: all 1,024 sign assignments; the smallest two-sided p is 2/1,024 = 0.002'
    """
    if n <= EXACT_MAX_N:
        return (f"exact: all {2**n:,} sign assignments; the smallest two-sided p is 2/{2**n:,} = "
                f"{format_p(2 / 2**n)}")
    return (f"Monte Carlo: {MC_RESAMPLES:,} random sign assignments (seeded), p = (k + 1) / ({MC_RESAMPLES:,} + 1), "
            f"so none below {format_p(1 / (MC_RESAMPLES + 1))}")


def sign_flip_test(differences: list[float] | np.ndarray, alternative: str = "two-sided",
                   null: float = 0.0) -> SignFlip:
    """Permutation test of the mean of paired differences against ``null``, by flipping the
    signs of :math:`d_s - \\text{null}` (exact for ``n <= EXACT_MAX_N``, seeded Monte Carlo above).

    ``alternative``: ``"greater"`` (the mean exceeds ``null``), ``"less"`` or ``"two-sided"``
    (twice the smaller one-sided p, at most 1). Every difference equal to ``null`` gives p = 1.

    Examples
    --------
    A constant difference over 10 seeds: only all signs + and all signs - are as extreme.

    >>> sign_flip_test([0.03] * 10).p == 2 / 1024
    True
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return SignFlip(math.nan, math.nan, 0, 0, True, alternative)
    shifted = d - null
    if np.all(np.abs(shifted) < 1e-12):
        return SignFlip(float(d.mean()), 1.0, n, 2**n if n <= EXACT_MAX_N else MC_RESAMPLES, n <= EXACT_MAX_N,
                        alternative)
    exact = n <= EXACT_MAX_N
    if n == 1:  # two sign assignments, counted by hand (scipy's test needs two observations)
        greater, less = (0.5 if shifted[0] > 0 else 1.0), (0.5 if shifted[0] < 0 else 1.0)
        p = {"greater": greater, "less": less}.get(alternative, min(1.0, 2 * min(greater, less)))
        return SignFlip(float(d.mean()), p, 1, 2, True, alternative)
    res = stats.permutation_test((shifted,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                 vectorized=True, alternative=alternative,
                                 n_resamples=np.inf if exact else MC_RESAMPLES, batch=2**15,
                                 rng=np.random.default_rng(MC_SEED))
    return SignFlip(float(d.mean()), float(res.pvalue), n, 2**n if exact else MC_RESAMPLES, exact, alternative)


def paired_sign_flip(arm: list[float] | np.ndarray, other: list[float] | np.ndarray,
                     alternative: str = "two-sided") -> SignFlip:
    """:func:`sign_flip_test` of ``arm - other``, seed by seed."""
    a, b = np.asarray(arm, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same seeds: {a.shape} vs {b.shape}")
    return sign_flip_test(a - b, alternative)


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (TOST) that the mean difference lies within ``(-margin, +margin)``."""

    mean_difference: float
    margin: float
    p_lower: float  # H0: mean <= -margin (rejecting it: no loss larger than the margin, non-inferiority)
    p_upper: float  # H0: mean >= +margin

    @property
    def p(self) -> float:
        """TOST's p: equivalence is shown at level alpha when both one-sided tests reject."""
        return max(self.p_lower, self.p_upper)


def tost(differences: list[float] | np.ndarray, margin: float = EQUIVALENCE_MARGIN) -> Equivalence:
    """Equivalence within ``margin`` of paired differences: Schuirmann's two one-sided tests,
    each a sign-flip test (:func:`sign_flip_test`) of the differences shifted by the margin.

    Examples
    --------
    Ten seeds, each 0.01 better, margin 0.02: every shifted difference has one sign.

    >>> t = tost([0.01] * 10, 0.02)
    >>> t.p_lower == t.p_upper == 1 / 1024
    True
    """
    if not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and math.isfinite(margin)
            and margin > 0):
        raise ValueError(f"margin must be a finite positive number, got {margin!r}")
    d = np.asarray(differences, dtype=float)
    lower = sign_flip_test(d, "greater", null=-margin)
    upper = sign_flip_test(d, "less", null=margin)
    return Equivalence(float(d.mean()) if len(d) else math.nan, float(margin), lower.p, upper.p)


@dataclass(frozen=True)
class KaplanMeier:
    """The Kaplan-Meier estimate of the rounds to an event (reaching the target), runs that
    never got there censored at the last round."""

    times: tuple[float, ...]  # the rounds at which the estimate steps
    survival: tuple[float, ...]  # S(t): the share of runs not yet there after round t
    reached: int
    n: int
    horizon: int

    @property
    def median(self) -> float | None:
        """The smallest round t with S(t) <= 1/2; ``None`` when fewer than half got there."""
        return next((t for t, s in zip(self.times, self.survival) if s <= 0.5 + 1e-12), None)

    def format(self) -> str:
        """``"4"`` or ``"> 12"`` (fewer than half reached the target by the last round)."""
        m = self.median
        return f"> {self.horizon}" if m is None else f"{m:g}"


def kaplan_meier(rounds: list[int | None], horizon: int) -> KaplanMeier:
    """Kaplan-Meier estimate of rounds to target (:func:`scipy.stats.ecdf` on censored data);
    ``None`` in ``rounds`` is a run that had not got there by round ``horizon``.

    Examples
    --------
    Five runs: there at rounds 2, 3, 5; two never by round 6. S = 4/5, 3/5, 2/5: median 5.

    >>> kaplan_meier([2, 3, 5, None, None], 6).median
    5.0
    """
    from scipy import stats

    events = [float(r) for r in rounds if r is not None]
    censored = [float(horizon)] * sum(r is None for r in rounds)
    if not events:
        return KaplanMeier((), (), 0, len(rounds), horizon)
    sf = stats.ecdf(stats.CensoredData(uncensored=events, right=censored)).sf
    steps = [(float(t), float(s)) for t, s in zip(sf.quantiles, sf.probabilities) if t in events]  # not the censorings
    return KaplanMeier(tuple(t for t, _ in steps), tuple(s for _, s in steps), len(events), len(rounds), horizon)


def mcnemar_exact(arm: list[bool] | np.ndarray, other: list[bool] | np.ndarray) -> float:
    """Exact McNemar test (two-sided) of paired yes/no outcomes, such as reaching the target:
    a binomial test of the discordant seeds, half each way under the null; 1 when none is.

    Examples
    --------
    >>> mcnemar_exact([True] * 6 + [False] * 4, [False] * 6 + [False] * 4) == 2 / 64
    True
    """
    from scipy import stats

    a, b = np.asarray(arm, dtype=bool), np.asarray(other, dtype=bool)
    only_arm, only_other = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_arm + only_other == 0:
        return 1.0
    return float(stats.binomtest(only_arm, only_arm + only_other, 0.5).pvalue)


def format_p(p: float) -> str:
    """A p-value for a table: two significant digits; ``-`` for none."""
    return "-" if math.isnan(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"
