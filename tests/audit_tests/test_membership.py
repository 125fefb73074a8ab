"""LiRA and the DP bound check on a classical toy whose leakage is known: a logistic regression
that memorises random labels leaks; the same released through a strongly private Gaussian
mechanism does not, and never beats the bound its epsilon allows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qfl.audit import (
    check_dp_bound,
    clopper_pearson,
    lira_scores,
    log_probability,
    logit_confidence,
    roc_auc,
    summarise,
    tpr_at_fpr,
)
from qfl.common.records import clip_update
from transport.dp import epsilon_of, gaussian_event

MODELS, EXAMPLES, FEATURES = 16, 120, 60


def _toy(noise_multiplier: float | None, clip: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logits (M, N, 2), labels, keep)``: a logistic regression per model on its random half of
    random data with random labels (it can only memorise), its weights released as trained or,
    with ``noise_multiplier``, clipped to ``clip`` and noised (the Gaussian mechanism)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    x = rng.normal(size=(EXAMPLES, FEATURES))
    y = rng.integers(0, 2, EXAMPLES)
    keep = rng.random((MODELS, EXAMPLES)) < 0.5
    logits = []
    for m in range(MODELS):
        fit = LogisticRegression(C=1.0, max_iter=5000).fit(x[keep[m]], y[keep[m]])
        w = np.concatenate([fit.coef_[0], fit.intercept_])
        if noise_multiplier is not None:
            w = clip_update(w, clip) + rng.normal(0.0, noise_multiplier * clip, w.shape)
        f = x @ w[:-1] + w[-1]
        logits.append(np.stack([np.zeros_like(f), f], axis=1))
    return np.array(logits), y, keep


def test_the_logit_confidence_is_the_log_odds_of_the_true_label():
    # Arrange
    logits = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    labels = np.array([1, 2])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # Act
    phi = logit_confidence(logits, labels)
    # Assert
    expected = np.log(p[[0, 1], labels] / (1 - p[[0, 1], labels]))
    np.testing.assert_allclose(phi, expected)
    np.testing.assert_allclose(log_probability(logits, labels), np.log(p[[0, 1], labels]))
    assert np.isfinite(logit_confidence(np.array([[800.0, 0.0]]), np.array([0]))).all()  # saturated, still finite


def test_roc_helpers_on_a_known_ranking():
    members = np.array([True, True, False, False])
    assert roc_auc(np.array([4.0, 3.0, 2.0, 1.0]), members) == 1.0
    assert roc_auc(np.array([1.0, 1.0, 1.0, 1.0]), members) == 0.5
    assert tpr_at_fpr(np.array([4.0, 1.0, 2.0, 0.0]), members, 0.0)[0] == 0.5  # above every non-member: one of two
    lo, hi = clopper_pearson(0, 10, 0.05)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1)  # the exact bound at zero successes


def test_lira_finds_the_members_of_a_model_that_memorises():
    # Arrange
    logits, labels, keep = _toy(noise_multiplier=None)
    phi = logit_confidence(logits, labels)
    # Act
    online = summarise(lira_scores(phi, keep, online=True), keep, np.random.default_rng(0))
    offline = summarise(lira_scores(phi, keep, online=False), keep, np.random.default_rng(0))
    loss = summarise(log_probability(logits, labels), keep, np.random.default_rng(0))
    # Assert
    assert online.auc_ci[0] > 0.8 and offline.auc_ci[0] > 0.7, (online, offline)
    assert online.tpr_01_ci[0] > 0.01  # at 1 % FPR too, not only on average
    assert online.auc > loss.auc > 0.7  # the per-example calibration beats one global threshold


def test_lira_against_a_strongly_private_release_stays_at_chance_and_within_the_bound():
    # Arrange: replace-one neighbours move the clipped weights by 2C; the ledger's own event
    sigma, delta = 40.0, 1e-5
    epsilon = epsilon_of([(gaussian_event(sigma), 1)], delta)
    logits, labels, keep = _toy(noise_multiplier=sigma)
    scores = lira_scores(logit_confidence(logits, labels), keep, online=True)
    # Act
    summary = summarise(scores, keep, np.random.default_rng(0))
    check = check_dp_bound(scores, keep, epsilon, delta)
    # Assert
    assert epsilon < 0.5
    assert summary.auc_ci[0] <= 0.5 <= summary.auc_ci[1], summary
    assert not check.violated and check.epsilon_lower <= epsilon


def test_the_bound_check_flags_a_synthetic_violation():
    # Arrange: an attack that is right every time, against a claim of epsilon = 1
    rng = np.random.default_rng(1)
    keep = rng.random((20, 100)) < 0.5
    scores = keep + 0.01 * rng.normal(size=keep.shape)
    # Act
    check = check_dp_bound(scores, keep, epsilon=1.0, delta=1e-5)
    honest = check_dp_bound(rng.normal(size=keep.shape), keep, epsilon=1.0, delta=1e-5)
    # Assert
    assert check.violated and check.epsilon_lower > 3.0
    assert check.worst["tpr_lower"] > math.e * check.worst["fpr_upper"] + 1e-5
    assert not honest.violated
    assert not check_dp_bound(scores, keep, epsilon=math.inf, delta=1e-5).violated  # no claim, no violation


def test_lira_refuses_inputs_it_cannot_use():
    with pytest.raises(ValueError, match="at least 3 models"):
        lira_scores(np.zeros((2, 5)), np.zeros((2, 5), dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        lira_scores(np.zeros((4, 5)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        lira_scores(np.full((4, 5), np.nan), np.zeros((4, 5), dtype=bool))
