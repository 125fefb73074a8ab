r"""Membership inference: LiRA, the loss-threshold baseline, and what their ROC says.

Pure functions of arrays (numpy and scipy): the scores of ``M`` models on ``N`` examples and
whether each example trained each model. Who trains the models is
:mod:`qfl.audit.federation`; the bench is ``bench/privacy_audit.py``; ``docs/privacy.md``
states the threat models and the figures.

The signal (Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P
2022, section IV-B) is the logit-scaled confidence of the true label,

.. math:: \phi(x, y) = \log\frac{p_y}{1 - p_y} = z_y - \log\sum_{c \ne y} e^{z_c},

computed from the logits :math:`z` without forming :math:`p_y` (stable at :math:`p_y \to 1`).
Its distribution over models that did (IN) or did not (OUT) train on :math:`(x, y)` is close
to Gaussian, so LiRA fits one Gaussian per example to each side from shadow models:

- *online*: :math:`\Lambda = \log \mathcal N(\phi; \mu_{in}, \sigma_{in}^2) - \log \mathcal N(\phi; \mu_{out}, \sigma_{out}^2)`;
- *offline* (OUT shadows only): the one-sided test :math:`\Lambda = \Phi((\phi - \mu_{out}) / \sigma_{out})`.

With fewer than 64 shadow models the paper fits one variance for all examples ("fixed
variance"), which :func:`lira_scores` does by default. Several observations of one target
(the rounds a server sees) are taken as independent given membership, as the paper does for
augmentations: the online statistic sums their log-likelihood ratios, the offline one averages
their standardised distances.

Evaluation is the paper's leave-one-out: each model in turn is the target, every other model a
shadow, so ``M`` models give ``M x N`` guesses. Membership is an independent fair coin per
(model, example), not the paper's balanced design: with exactly ``M/2`` IN models per example,
the shadows' IN count would itself reveal the target's membership.

The baseline (Yeom et al., "Privacy Risk in Machine Learning", CSF 2018) guesses "member" when
the loss is below a threshold: its score is :math:`-\ell = \log p_y`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import logsumexp

MIN_STD = 1e-6  # floor of a fitted standard deviation (a constant signal, e.g. a saturated model)
FIXED_VARIANCE_BELOW = 64  # shadows per side under which one variance is fitted for all examples (the paper)


def _label_index(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``labels`` ``(N,)`` as an index into the last axis of ``logits`` ``(..., N, C)``."""
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim < 2 or logits.shape[-2] != len(labels):
        raise ValueError(f"logits must be (..., N, C) for N = {len(labels)} labels, got {logits.shape}")
    return np.broadcast_to(labels[:, None], logits.shape[:-1] + (1,))


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    r""":math:`\phi = z_y - \log\sum_{c \ne y} e^{z_c}` of each row of ``logits`` ``(..., N, C)``
    for ``labels`` ``(N,)``; shape ``(..., N)``.

    Examples
    --------
    >>> float(logit_confidence(np.array([[2.0, 0.0]]), np.array([0]))[0])  # p = e^2 / (e^2 + 1)
    2.0
    """
    logits = np.asarray(logits, dtype=np.float64)
    idx = _label_index(logits, labels)
    picked = np.take_along_axis(logits, idx, axis=-1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, idx, -np.inf, axis=-1)
    return picked - logsumexp(others, axis=-1)


def log_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    r""":math:`\log p_y = -\ell`, the negative cross-entropy of each row (the loss attack's score)."""
    logits = np.asarray(logits, dtype=np.float64)
    picked = np.take_along_axis(logits, _label_index(logits, labels), axis=-1)[..., 0]
    return picked - logsumexp(logits, axis=-1)


def _check(signal: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``signal`` as ``(M, N, K)`` (K observations of each target) and ``keep`` as ``(M, N)`` bool."""
    signal = np.asarray(signal, dtype=np.float64)
    keep = np.asarray(keep)
    if signal.ndim == 2:
        signal = signal[..., None]
    if signal.ndim != 3 or keep.shape != signal.shape[:2]:
        raise ValueError(f"signal must be (M, N) or (M, N, K) and keep (M, N); got {signal.shape} and {keep.shape}")
    if keep.dtype != bool:
        raise ValueError(f"keep must be boolean, got {keep.dtype}")
    if not np.isfinite(signal).all():
        raise ValueError("signal has non-finite values")
    if signal.shape[0] < 3:
        raise ValueError(f"LiRA needs at least 3 models (a target and shadows on both sides), got {signal.shape[0]}")
    return signal, keep


def _side_stats(values: np.ndarray, mask: np.ndarray, fixed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example mean and std of ``values`` ``(S, N, K)`` over the shadows where ``mask``
    ``(S, N)`` holds; ``fixed``: one std per observation for all examples. Also the count."""
    w = mask[..., None].astype(np.float64)
    count = w.sum(axis=0)  # (N, 1)
    mean = (values * w).sum(axis=0) / np.maximum(count, 1)
    sq = ((values - mean) ** 2 * w).sum(axis=0)
    if fixed:
        std = np.sqrt(sq.sum(axis=0) / np.maximum(count.sum(axis=0) - 1, 1))[None, :] * np.ones_like(mean)
    else:
        std = np.sqrt(sq / np.maximum(count - 1, 1))
    return mean, np.maximum(std, MIN_STD), count[:, 0]


def lira_scores(signal: np.ndarray, keep: np.ndarray, online: bool = True, fixed_variance: bool | None = None) -> np.ndarray:
    """LiRA's membership score of every (target model, example), leave-one-out.

    Parameters
    ----------
    signal : np.ndarray
        ``(M, N)`` or ``(M, N, K)``: :func:`logit_confidence` of each model on each example
        (``K`` observations of one target, e.g. one per round).
    keep : np.ndarray
        ``(M, N)`` bool: whether example ``n`` trained model ``m``.
    online : bool
        Fit IN and OUT Gaussians (online) or the OUT one only (offline).
    fixed_variance : bool, optional
        One variance for all examples; default: when a side has fewer than 64 shadows.

    Returns
    -------
    np.ndarray
        ``(M, N)``: larger means "member". An example with no shadow on a side it needs
        scores 0 (online) or 0.5 (offline): no evidence.
    """
    signal, keep = _check(signal, keep)
    models = signal.shape[0]
    out = np.empty(keep.shape)
    for m in range(models):
        others = np.arange(models) != m
        shadows, shadow_keep = signal[others], keep[others]
        fixed = (fixed_variance if fixed_variance is not None
                 else min(shadow_keep.sum(axis=0).min(), (~shadow_keep).sum(axis=0).min()) < FIXED_VARIANCE_BELOW)
        mu_out, sd_out, n_out = _side_stats(shadows, ~shadow_keep, fixed)
        x = signal[m]
        if online:
            mu_in, sd_in, n_in = _side_stats(shadows, shadow_keep, fixed)
            llr = (stats.norm.logpdf(x, mu_in, sd_in) - stats.norm.logpdf(x, mu_out, sd_out)).sum(axis=-1)
            out[m] = np.where((n_in > 0) & (n_out > 0), llr, 0.0)
        else:
            z = ((x - mu_out) / sd_out).mean(axis=-1)
            out[m] = np.where(n_out > 0, stats.norm.cdf(z * math.sqrt(x.shape[-1])), 0.5)
    return out


# --- the ROC and its confidence ---------------------------------------------------------


def roc_auc(scores: np.ndarray, members: np.ndarray) -> float:
    """Area under the ROC: the probability that a member outscores a non-member, ties half
    (Mann-Whitney U over the pooled guesses)."""
    s, y = np.ravel(scores), np.ravel(members).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("the AUC needs members and non-members")
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def tpr_at_fpr(scores: np.ndarray, members: np.ndarray, fpr: float) -> tuple[float, float]:
    """``(TPR, threshold)`` of the rule "member when score > threshold" with the largest TPR
    whose false-positive rate is at most ``fpr`` (the threshold is a non-member's score; at
    ``fpr`` below one non-member in all, no positive guess is allowed: TPR 0)."""
    s, y = np.ravel(scores), np.ravel(members).astype(bool)
    neg = np.sort(s[~y])[::-1]  # descending
    allowed = int(math.floor(fpr * len(neg) + 1e-9))  # false positives permitted
    threshold = neg[allowed] if allowed < len(neg) else -np.inf
    return float((s[y] > threshold).mean()), float(threshold)


@dataclass(frozen=True)
class AttackSummary:
    """AUC and TPR at 0.1 % and 1 % FPR, each with a 95 % bootstrap interval over target models."""

    auc: float
    auc_ci: tuple[float, float]
    tpr_001: float  # at FPR 0.1 %
    tpr_001_ci: tuple[float, float]
    tpr_01: float  # at FPR 1 %
    tpr_01_ci: tuple[float, float]
    guesses: int
    members: int


def _metrics(scores: np.ndarray, members: np.ndarray) -> tuple[float, float, float]:
    return roc_auc(scores, members), tpr_at_fpr(scores, members, 1e-3)[0], tpr_at_fpr(scores, members, 1e-2)[0]


def summarise(scores: np.ndarray, members: np.ndarray, rng: np.random.Generator, resamples: int = 200,
              level: float = 0.95) -> AttackSummary:
    """:class:`AttackSummary` of ``scores`` ``(M, N)``; the intervals are percentile bootstrap
    intervals that resample the ``M`` target models (the guesses on one model are not
    independent, the models are)."""
    scores, members = np.asarray(scores), np.asarray(members, dtype=bool)
    point = _metrics(scores, members)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, scores.shape[0], scores.shape[0])
        if members[idx].all() or not members[idx].any():
            continue
        draws.append(_metrics(scores[idx], members[idx]))
    lo, hi = np.quantile(np.array(draws), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return AttackSummary(point[0], (float(lo[0]), float(hi[0])), point[1], (float(lo[1]), float(hi[1])),
                         point[2], (float(lo[2]), float(hi[2])), int(members.size), int(members.sum()))


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` interval of a binomial proportion (Clopper & Pearson, 1934)."""
    if trials <= 0:
        return 0.0, 1.0
    lo = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes > 0 else 0.0
    hi = stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes) if successes < trials else 1.0
    return float(lo), float(hi)


# --- auditing a DP claim --------------------------------------------------------------


@dataclass(frozen=True)
class BoundCheck:
    """What the guesses say about an (epsilon, delta)-DP claim.

    ``epsilon_lower`` is the largest epsilon the counts prove at confidence ``1 - alpha``
    (Clopper-Pearson, Bonferroni over the thresholds tried); ``violated`` says whether it
    exceeds the claim, i.e. whether some threshold has a lower TPR bound above
    :math:`e^\\varepsilon` times the upper FPR bound plus :math:`\\delta` (or the same for
    TNR against FNR).
    """

    epsilon: float
    delta: float
    epsilon_lower: float
    violated: bool
    worst: dict


def _epsilon_from(hit_lo: float, miss_hi: float, delta: float) -> float:
    """The epsilon that ``P[S | in] >= hit_lo`` and ``P[S | out] <= miss_hi`` prove."""
    if hit_lo - delta <= 0:
        return 0.0
    if miss_hi <= 0:
        return math.inf
    return max(0.0, math.log((hit_lo - delta) / miss_hi))


def check_dp_bound(scores: np.ndarray, members: np.ndarray, epsilon: float, delta: float, alpha: float = 0.05,
                   thresholds: int = 20) -> BoundCheck:
    r"""Check the guesses against :math:`\mathrm{TPR} \le e^\varepsilon \mathrm{FPR} + \delta`
    (and :math:`\mathrm{TNR} \le e^\varepsilon \mathrm{FNR} + \delta`), which every attack on
    an :math:`(\varepsilon, \delta)`-DP mechanism obeys for neighbours that add or remove one
    example (Kairouz, Oh & Viswanath, ICML 2015; used to audit DP by Jagielski, Ullman & Oprea,
    NeurIPS 2020).

    The target models are split: thresholds are chosen on the even-indexed ones (quantiles of
    their scores), counted on the odd-indexed ones, so that the threshold does not fit the
    noise it is judged on. The intervals treat the guesses on one model as independent trials,
    which they are not (they share the model): the intervals are narrower than the truth, so a
    violation is flagged more readily, never less.

    Parameters
    ----------
    scores, members : np.ndarray
        ``(M, N)`` scores (larger: member) and membership.
    epsilon, delta : float
        The claim (``inf`` for no DP: never violated).
    alpha : float
        One minus the confidence of the whole check.
    thresholds : int
        Quantiles tried.
    """
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(members, dtype=bool)
    if scores.shape != members.shape or scores.ndim != 2 or scores.shape[0] < 2:
        raise ValueError(f"scores and members must be (M, N) with M >= 2; got {scores.shape} and {members.shape}")
    pick, judge = scores[0::2], scores[1::2]
    judged = members[1::2]
    cuts = np.unique(np.quantile(pick, np.linspace(0.0, 1.0, thresholds + 2)[1:-1]))
    tests = 2 * len(cuts)  # each threshold, both sides
    a = alpha / tests
    pos, neg = judge[judged], judge[~judged]
    best, worst = 0.0, {}
    for t in cuts:
        tp, fp = int((pos > t).sum()), int((neg > t).sum())
        tpr_lo, _ = clopper_pearson(tp, len(pos), 2 * a)  # one-sided at level a
        _, fpr_hi = clopper_pearson(fp, len(neg), 2 * a)
        tnr_lo, _ = clopper_pearson(len(neg) - fp, len(neg), 2 * a)
        _, fnr_hi = clopper_pearson(len(pos) - tp, len(pos), 2 * a)
        for side, eps in (("tpr/fpr", _epsilon_from(tpr_lo, fpr_hi, delta)), ("tnr/fnr", _epsilon_from(tnr_lo, fnr_hi, delta))):
            if eps > best or not worst:
                best = eps
                worst = {"threshold": float(t), "side": side, "tpr": tp / max(len(pos), 1), "fpr": fp / max(len(neg), 1),
                         "tpr_lower": tpr_lo, "fpr_upper": fpr_hi, "tnr_lower": tnr_lo, "fnr_upper": fnr_hi}
    return BoundCheck(float(epsilon), float(delta), best, bool(best > epsilon), worst)
