"""Plain inverse-variance weighting by the clients' own noise claims: the textbook rule, for comparison.

The fixed-effect meta-analysis weight (each study by the inverse of its variance), with the
variance each client claims for its update (``update-noise-var``, the same claim
:mod:`strategies.noise_isolating` reads). Nothing else: no heterogeneity term, no test of the
claims against the updates' spread, no cap, no contraction corrected. It is the baseline that
shows what those parts of :class:`strategies.noise_isolating.NoiseIsolatingFedAvg` add
(``qfl experiment noise-dose``, docs/experiments.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from qfl.common.contract import REPORT_NOISE_SOURCE, REPORT_NOISE_VAR, REPORT_TRIMMED, REPORT_WEIGHT, UPDATE_NOISE_VAR
from strategies.delegating import RoundReport
from strategies.global_model import GlobalModelFedAvg
from strategies.guard import bound_noise_claim
from strategies.noise_isolating import (
    CLAIMED,
    UNSEPARATED,
    _common_metric_keys,
    _metric,
    precision_weights,
    weighted_average,
)

LARGEST_CLAIM = "largest-claim"  # a reply without a claim among claimants: weighed as the noisiest claimant


class InverseVarianceFedAvg(GlobalModelFedAvg):
    r"""FedAvg weighted by each client's example count over its claimed update variance.

    Client :math:`k` sends parameters :math:`w_k`, its example count :math:`n_k` and, as a
    metric, :math:`v_k` (``update-noise-var``): its own estimate of its update's per-coordinate
    variance due to its device this round, :math:`\tfrac1d\,\mathbb{E}\lVert\Delta_k -
    \mathbb{E}_\mathrm{dev}\Delta_k\rVert^2` (shots and gate noise), bounded to
    :math:`[0, \infty)` by the guard's rule (:func:`strategies.guard.bound_noise_claim`). Then

    .. math::

        \alpha_k = \frac{n_k / v_k}{\sum_j n_j / v_j}, \qquad w^{t+1} = \sum_k \alpha_k\, w_k ,

    computed as :math:`n_k\, v_\min / v_k` (exactly :math:`n_k` for the clients at
    :math:`v_\min`) and averaged in Flower's FedAvg arithmetic
    (:func:`strategies.noise_isolating.weighted_average`): when every client claims the same
    variance this is FedAvg, bit for bit. Why: FedAvg's weights times each client's precision
    relative to the most precise one; the minimum-variance combination of unbiased estimates of
    one common step that differ only by independent device noise of variance :math:`v_k` weighs
    them by :math:`1/v_k` (fixed-effect meta-analysis), and :math:`n_k` keeps FedAvg's count of
    examples. It is :class:`~strategies.noise_isolating.NoiseIsolatingFedAvg`'s weight
    :math:`n_k (\tau^2 + v_\min)/(\tau^2 + v_k)` at :math:`\tau^2 = 0`, uncapped, and ignores what
    that strategy adds: heterogeneity between clients (:math:`\tau^2`, which makes a noiseless
    client with unusual data no more precise than its heterogeneity), a test of each claim
    against the update's spread, a cap on what a claim buys, and the contraction of a noisy
    device's update.

    Edge cases, all plain limits of the formula:

    - claims of exactly 0: those clients share the whole weight by :math:`n_k`, the others get
      none (the limit :math:`v_k \to 0`); a false zero claim buys everything (no cap);
    - a reply without a claim, beside others that claim: weighed as the round's noisiest
      claimant (:math:`v_k = \max_j v_j`; ``noise_source`` ``largest-claim``, logged);
    - no reply claims: FedAvg's weights (``unseparated``, logged).

    Parameters
    ----------
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (sampling, record keys).

    Notes
    -----
    :meth:`round_report` gives each client's :math:`v_k` used, its source (``claimed``,
    ``largest-claim``, ``unseparated``) and its weight :math:`\alpha_k` (``clients.csv``).
    """

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 (FedAvg's)
        super().__init__(**kwargs)
        self.last_report: dict[int, dict[str, object]] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> Inverse-variance weighting: n_k / %s, as claimed (no heterogeneity, test or cap)",
            UPDATE_NOISE_VAR)
        super().summary()

    def round_report(self) -> RoundReport:
        """Each client's claimed variance as used, its source and its weight, last round."""
        return RoundReport({node: dict(columns) for node, columns in self.last_report.items()})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.last_report = {}
        reference, valid = self.sound_replies(replies)
        if reference is None:  # nothing sound to take shapes from: FedAvg counts the failures
            return super().aggregate_train(server_round, replies)
        if not valid:
            return None, None
        counts = np.array([float(_metric(m, self.weighted_by_key)) for m in valid])
        weights, used, source = inverse_variance_weights(
            counts, [bound_noise_claim(UPDATE_NOISE_VAR, _metric(m, UPDATE_NOISE_VAR)) for m in valid])
        if source[0] == UNSEPARATED:
            log(INFO, "Inverse-variance weighting, round %d: no reply claims '%s': FedAvg's weights", server_round,
                UPDATE_NOISE_VAR)
        for m, src, v in zip(valid, source, used):
            if src == LARGEST_CLAIM:
                log(WARNING, "Inverse-variance weighting: node %d claims no '%s': weighed as the noisiest claimant "
                    "(%.3e)", m.metadata.src_node_id, UPDATE_NOISE_VAR, v)
        arrays = weighted_average([m.content[self.arrayrecord_key] for m in valid], [float(w) for w in weights])
        share = weights / weights.sum()
        self.last_report = {m.metadata.src_node_id: {REPORT_NOISE_VAR: float(v), REPORT_NOISE_SOURCE: src,
                                                     REPORT_WEIGHT: float(a), REPORT_TRIMMED: False}
                            for m, v, src, a in zip(valid, used, source, share)}
        metrics = self.train_metrics_aggr_fn(_common_metric_keys([m.content for m in valid]), self.weighted_by_key)
        return arrays, metrics


def inverse_variance_weights(counts: np.ndarray, claims: list[float | None]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(weights, v used, source)`` of :class:`InverseVarianceFedAvg`: weights proportional to
    ``counts / v`` (not normalised: ``counts`` themselves where every ``v`` is equal, so that
    FedAvg's arithmetic follows), ``claims`` ``None`` where a reply claimed nothing."""
    told = np.array([c is not None for c in claims])
    if not told.any():
        return counts.astype(float), np.full(len(counts), math.nan), (UNSEPARATED,) * len(counts)
    claimed = np.array([c if c is not None else math.nan for c in claims], dtype=float)
    v = np.where(told, claimed, np.nanmax(claimed))
    # tau^2 = 0 and no cap: n_k v_min / v_k, exactly n_k at v_min (0 claims share the weight by n_k)
    weights = precision_weights(counts, 0.0, v, math.inf)
    return weights, v, tuple(CLAIMED if t else LARGEST_CLAIM for t in told)
