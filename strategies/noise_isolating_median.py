"""Median-distance noise isolation: the first noise-isolating FedAvg, kept for comparison.

The paper (Chehimi et al., Sec. II-B1 and Table I) notes that NISQ gate noise is baked into
the parameters a client sends, differs from device to device, and is mixed into the global
model by plain averaging; it calls for "new averaging algorithms with noise isolation at
the server". This strategy estimates each client's noise from its deviation to a robust
consensus and removes its excess before a weighted average. It cannot tell noise from
heterogeneity: a client with unusual but clean data deviates as much as a noisy one and is
punished alike. :class:`strategies.noise_isolating.NoiseIsolatingFedAvg` (``noise-isolating``)
separates the two with the noise each client measures itself; this one stays selectable as
``noise-isolating-median`` so that an experiment can compare them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from qfl.common.contract import REPORT_NOISE_VAR, REPORT_SNR, REPORT_TRIMMED, REPORT_WEIGHT
from qfl.common.records import flatten, unflatten
from strategies.delegating import RoundReport
from strategies.global_model import GlobalModelFedAvg
from strategies.guard import filter_replies


@dataclass(frozen=True)
class ClientNoiseEstimate:
    """What the strategy concluded about one client in one round."""

    node_id: int
    num_examples: float
    noise_var: float  # sigma_k^2, mean squared deviation from the consensus
    snr: float  # consensus update power per coordinate / sigma_k^2 (inf if sigma_k = 0)
    shrinkage: float  # lambda_k
    weight: float  # alpha_k (0 if trimmed)
    trimmed: bool


class MedianNoiseIsolatingFedAvg(GlobalModelFedAvg):
    r"""FedAvg with per-client noise estimated from the distance to the median, shrinkage and trimming.

    For the :math:`K` valid replies with flattened parameters :math:`w_k \in \mathbb{R}^d`
    and example counts :math:`n_k`:

    .. math::

        m &= \operatorname{median}_k\, w_k \quad\text{(coordinate-wise: robust consensus)}\\
        \sigma_k^2 &= \tfrac{1}{d}\,\lVert w_k - m \rVert^2
            \quad\text{(deviation: data heterogeneity + device noise)}\\
        \tau^2 &= \operatorname{median}_k\, \sigma_k^2
            \quad\text{(the typical deviation, taken as heterogeneity)}\\
        \text{trim } k &\iff \sigma_k^2 > \kappa\, \tau^2\\
        \lambda_k &= \min\!\left(1, \tau^2 / \sigma_k^2\right),\qquad
            \tilde w_k = m + \lambda_k\, (w_k - m)\\
        \alpha_k &\propto \frac{n_k}{\max(\sigma_k^2, \tau^2)},\qquad
            w^{t+1} = \sum_k \alpha_k\, \tilde w_k .

    A client as clean as the typical one keeps its update (:math:`\lambda_k = 1`) and its
    FedAvg weight; a noisier one is shrunk toward the consensus, so that its deviation
    has the typical size, and down-weighted by inverse variance; one beyond
    :math:`\kappa` times the typical variance is left out. The variance floor
    :math:`\tau^2` keeps a suspiciously clean client from dominating. When every client
    deviates equally (in particular, identical clients) all
    :math:`\lambda_k = 1` and :math:`\alpha_k \propto n_k`: exactly FedAvg. With two
    clients the median is their mean, both deviations are equal, and it is FedAvg too.

    Replies with other parameter names or shapes than the global model, or with NaN/Inf
    values, are rejected and logged before any of this (:mod:`strategies.guard`).

    Parameters
    ----------
    trim_threshold : float (default: 9.0)
        :math:`\kappa`: a client whose deviation variance exceeds ``kappa`` times the
        median is excluded (9 means three times the typical deviation).
    shrink : bool (default: True)
        Shrink noisy updates toward the consensus (``lambda_k``); if False only the
        weights and trimming apply.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (sampling, record keys).

    Notes
    -----
    The aggregated train MetricRecord adds ``ni-noise-var-median`` (:math:`\tau^2`),
    ``ni-noise-var-max`` and ``ni-trimmed`` (clients excluded this round);
    :attr:`last_estimates` keeps the per-client :class:`ClientNoiseEstimate`, including
    the update's signal-to-noise ratio against the consensus,
    :math:`\mathrm{SNR}_k = \lVert m - w^t \rVert^2 / (d\, \sigma_k^2)`.
    """

    def __init__(self, *, trim_threshold: float = 9.0, shrink: bool = True, **kwargs) -> None:
        if isinstance(trim_threshold, bool) or not np.isfinite(trim_threshold) or trim_threshold <= 1.0:
            raise ValueError(f"trim_threshold must be a finite number > 1, got {trim_threshold!r}")
        super().__init__(**kwargs)
        self.trim_threshold = float(trim_threshold)
        self.shrink = bool(shrink)
        self.last_estimates: list[ClientNoiseEstimate] = []

    def round_report(self) -> RoundReport:
        """Each client's noise estimate, signal-to-noise ratio, weight and trimming, last round."""
        return RoundReport({
            e.node_id: {REPORT_NOISE_VAR: e.noise_var, REPORT_SNR: e.snr, REPORT_WEIGHT: e.weight, REPORT_TRIMMED: e.trimmed}
            for e in self.last_estimates
        })

    def summary(self) -> None:
        log(INFO, "\t├──> Noise isolation: trim above %.1f x median variance, shrink=%s", self.trim_threshold, self.shrink)
        super().summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.last_estimates = []
        self._reference = self.reference_for(replies)  # kept: a later round without configure_train checks against it
        if self._reference is None:  # nothing sound to take shapes from: FedAvg counts the failures
            return super().aggregate_train(server_round, replies)
        replies, _ = filter_replies(replies, self._reference, self.arrayrecord_key, self.weighted_by_key)
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None

        names = list(self._reference)
        stacked = np.stack([flatten(m.content[self.arrayrecord_key], names) for m in valid])  # (K, d)
        counts = np.array([_num_examples(m, self.weighted_by_key) for m in valid])
        consensus, weights, shrinkage, noise_var, trimmed = isolate_noise(
            stacked, counts, self.trim_threshold, self.shrink
        )
        merged = consensus + (weights * shrinkage) @ (stacked - consensus)
        arrays = unflatten(merged, valid[0].content[self.arrayrecord_key], names)

        # signal: how far the consensus moved from the global model, per coordinate
        signal = float(np.mean((consensus - self._global) ** 2)) if self._global is not None else float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(noise_var > 0, signal / np.where(noise_var > 0, noise_var, 1.0), np.inf)
        self.last_estimates = [
            ClientNoiseEstimate(m.metadata.src_node_id, float(n), float(v), float(r), float(s), float(w), bool(t))
            for m, n, v, r, s, w, t in zip(valid, counts, noise_var, snr, shrinkage, weights, trimmed)
        ]
        for est in self.last_estimates:
            log(
                INFO,
                "\t> node %d: noise var %.3e, shrink %.2f, weight %.3f%s",
                est.node_id, est.noise_var, est.shrinkage, est.weight, " (trimmed)" if est.trimmed else "",
            )
        kept = [m.content for m, t in zip(valid, trimmed) if not t]
        metrics = self.train_metrics_aggr_fn(kept, self.weighted_by_key)
        metrics["ni-noise-var-median"] = float(np.median(noise_var))
        metrics["ni-noise-var-max"] = float(noise_var.max())
        metrics["ni-trimmed"] = int(trimmed.sum())
        return arrays, metrics


def isolate_noise(
    stacked: np.ndarray, counts: np.ndarray, trim_threshold: float, shrink: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The math of :class:`MedianNoiseIsolatingFedAvg` on a ``(K, d)`` stack of parameters.

    Returns
    -------
    consensus : (d,) coordinate-wise median
    weights : (K,) alpha_k, summing to 1, zero for trimmed clients
    shrinkage : (K,) lambda_k in (0, 1]
    noise_var : (K,) sigma_k^2
    trimmed : (K,) bool
    """
    consensus = np.median(stacked, axis=0)
    noise_var = np.mean((stacked - consensus) ** 2, axis=1)
    tau2 = float(np.median(noise_var))
    if tau2 > 0:
        trimmed = noise_var > trim_threshold * tau2
        shrinkage = np.minimum(1.0, tau2 / np.maximum(noise_var, tau2)) if shrink else np.ones_like(noise_var)
        raw = counts / np.maximum(noise_var, tau2)
    else:
        # At least half the clients sit exactly on the consensus: any client that
        # deviates at all is an outlier; the rest are plain FedAvg.
        trimmed = noise_var > 0
        shrinkage = np.ones_like(noise_var)
        raw = counts.astype(float)
    raw = np.where(trimmed, 0.0, raw)
    weights = raw / raw.sum()
    return consensus, weights, shrinkage, noise_var, trimmed


def _num_examples(message: Message, key: str) -> float:
    for record in message.content.metric_records.values():
        if key in record:
            return float(record[key])
    raise KeyError(key)
