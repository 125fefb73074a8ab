"""Noise-isolating FedAvg: tell each client's device noise from the heterogeneity of its data.

The paper (Chehimi et al., Sec. II-C1 and Table I) calls for "new averaging algorithms with
noise isolation at the server": gate noise and finite shots are baked into the update a
client sends, and differ from device to device. From the updates alone a server cannot tell
a client whose update deviates because its device is noisy from one whose data are unusual
(:mod:`strategies.noise_isolating_median` punishes both alike); the client can, since it
measures its own device. Here each reply carries the client's estimate of its update's
device variance and of the contraction of its expectation values, the server's guard bounds
them (:func:`strategies.guard.clip_noise_claims`), and the server combines the updates
as a random-effects meta-analysis combines studies of unequal precision (DerSimonian & Laird
1986).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from qfl.common.contract import (
    METRICS,
    NOISE_CLAIM_METRICS,
    NOISE_CONTRACTION,
    PEC_GAMMA2,
    REPORT_CONTRACTION,
    REPORT_NAMED,
    REPORT_NOISE_SOURCE,
    REPORT_NOISE_VAR,
    REPORT_SNR,
    REPORT_TRIMMED,
    REPORT_WEIGHT,
    UPDATE_NOISE_VAR,
)
from qfl.common.records import flatten, unflatten
from strategies.delegating import RoundReport
from strategies.global_model import GlobalModelFedAvg
from strategies.guard import bound_noise_claim

# where a client's noise variance came from (the ``noise_source`` column of clients.csv)
CLAIMED = "claimed"  # its own claim, consistent with its update's spread (or untested)
CONTRADICTED = "contradicted"  # its claim was far below its update's spread: the observed estimate
SERVER_ESTIMATE = "server-estimate"  # it claimed nothing: its deviation beyond the claimants' heterogeneity
UNSEPARATED = "unseparated"  # fewer than two clients claimed: noise not told from heterogeneity, FedAvg weights

MIN_TESTED = 3  # a claim is tested against the heterogeneity of two other claimants at least
SIGNIFICANCE = 1e-3  # level of the chi-square bar a spread must pass before its claim is doubted
Z_UPPER = 3.090232306167813  # the standard normal's 1 - SIGNIFICANCE quantile
VAR_FLOOR = 1e-12  # relative: a variance of exactly 0 enters 1/v as this fraction of the spread
ADDITIVE_READOUT = ("bias",)  # the PQC's logit offset b_c (qfl.task.model): outside the circuit, not contracted


@dataclass(frozen=True)
class ClientNoise:
    """What the strategy concluded about one client in one round."""

    node_id: int
    num_examples: float
    claimed_var: float  # s_k^2 as claimed (after the guard's bounds); NaN if none
    contraction: float  # c_k the update was divided by (1: no correction)
    gamma2: float  # PEC overhead as claimed (NaN if none): reported, not weighed
    noise_var: float  # v_k used, on the corrected scale; NaN when unseparated
    source: str  # CLAIMED, CONTRADICTED, SERVER_ESTIMATE or UNSEPARATED
    snr: float  # the round's aggregate update power per coordinate / v_k
    weight: float  # alpha_k, the weights summing to 1
    named: str  # why the claim was replaced ("" if it was not)


@dataclass(frozen=True)
class NoiseSeparation:
    """The math's result on one round (:func:`separate_noise`)."""

    tau2: float  # heterogeneity per coordinate (DerSimonian-Laird, pooled over coordinates)
    noise_var: np.ndarray  # (K,) v_k used; NaN when unseparated
    source: tuple[str, ...]
    observed: np.ndarray  # (K,) what the update's spread says of v_k where the claim was contradicted, else NaN
    weights: np.ndarray  # (K,) to aggregate by: n_k themselves when nothing but n_k tells the clients apart
    kept: float = 0.0  # the share left with the global model (a zero update) where a cap binds; weights then sum to 1 - kept


class NoiseIsolatingFedAvg(GlobalModelFedAvg):
    r"""FedAvg that weighs each update by the inverse of its heterogeneity plus its device noise.

    Client :math:`k` sends parameters :math:`w_k` (update :math:`\Delta_k = w_k - w^t` in
    :math:`\mathbb{R}^d`), its example count :math:`n_k` and, as metrics, its own estimate
    :math:`s_k^2` of its update's per-coordinate variance due to its device
    (``update-noise-var``: :math:`\tfrac1d\,\mathbb{E}\lVert\Delta_k - \mathbb{E}_\mathrm{dev}
    \Delta_k\rVert^2`, shots and gate noise) and the contraction :math:`c_k \in (0, 1]` of its
    expectation values after its own mitigation (``noise-contraction``). The model:

    .. math::

        \Delta_k = c_k\,(\mu + h_k) + e_k, \qquad
        h_k \sim (0, \tau^2 I) \;\text{(heterogeneity: between clients)}, \qquad
        e_k \sim (0, s_k^2 I) \;\text{(device noise: within a client)}.

    **Bias.** The update is divided by the contraction it was told, bounded below by
    :math:`c_\min` (``min_contraction``); an untold one is 1:

    .. math::

        y_k = \Delta_k / \hat c_k, \quad \hat c_k = \max(c_k, c_\min), \qquad
        y_k = \mu + h_k + e_k / \hat c_k, \quad v_k = s_k^2 / \hat c_k^2

    (for the few coordinates not divided, :math:`v_k` is an upper bound).

    Why: a channel that contracts every expectation value by :math:`c` scales the
    gradient of every parameter that acts through them (the circuit's angles, the read-out
    scale) by :math:`c` to first order, so the client's steps, and its update, shrink by
    :math:`c`; a classical parameter outside the circuit (``uncorrected_parameters``,
    default the logit offset ``bias``) is not divided. It is the generalised least-squares
    estimate of :math:`\mu` under the model: minimising :math:`\sum_k \lVert \Delta_k -
    c_k\mu\rVert^2 / (c_k^2\tau^2 + s_k^2)` weighs :math:`\Delta_k/c_k` by
    :math:`1/(\tau^2 + s_k^2/c_k^2)`. Division amplifies noise and any error in
    :math:`c_k`, hence the bound (at most :math:`1/c_\min` times).

    **Heterogeneity** (DerSimonian & Laird 1986), the method of moments on Cochran's
    :math:`Q` summed over the :math:`d` coordinates, with one :math:`\tau^2` for all of them:

    .. math::

        a_k = 1/v_k, \quad \bar y_j = \frac{\sum_k a_k y_{kj}}{\sum_k a_k}, \quad
        Q = \sum_{j=1}^d \sum_k a_k (y_{kj} - \bar y_j)^2, \qquad
        \hat\tau^2 = \max\!\left(0,\; \frac{Q - d(K-1)}{d\left(\sum_k a_k - \sum_k a_k^2 /
        \sum_k a_k\right)}\right),

    since :math:`\mathbb{E}\,Q = d(K-1) + d\,\tau^2 (\sum a_k - \sum a_k^2/\sum a_k)`.

    **Weights**: FedAvg's, times each client's precision relative to the most precise one,
    then capped at :math:`\kappa` (``weight_cap``) times the client's FedAvg share; the
    excess goes to the others only as far as it lowers the aggregate's mean squared error
    given the update's estimated signal power, the rest stays with the global model
    (:func:`capped_weights`, :func:`signal_power`; so :math:`\sum_k \alpha_k \le 1`):

    .. math::

        \alpha_k \propto n_k\, \frac{\hat\tau^2 + v_\min}{\hat\tau^2 + v_k}, \qquad
        \alpha_k \le \kappa\, \frac{n_k}{\sum_j n_j}, \qquad
        w^{t+1} = w^t + \sum_k \alpha_k\, y_k .

    Each example counts as in FedAvg's objective, and each client's examples count by the
    precision of the update that carries them: a client whose deviation is heterogeneity
    (part of :math:`\hat\tau^2`, common to all) keeps its FedAvg weight; one whose deviation
    is its device noise loses weight as :math:`1/(\hat\tau^2 + v_k)`. When every client
    reports the same noise (and is corrected alike), every ratio is exactly 1 and this is
    FedAvg, bit for bit, whatever :math:`\hat\tau^2`. Claiming no noise buys at most
    :math:`\kappa` times the FedAvg weight.

    **Claims tested** against the update's spread, with the deleted residual of meta-analysis
    (Viechtbauer & Cheung 2010): with :math:`K_c \ge 3` claimants, for each claimant
    :math:`k` the others give :math:`\hat\tau^2_{(-k)}`, their weights :math:`\alpha^{(-k)}`
    and consensus :math:`\hat\mu_{(-k)} = \sum_{j\ne k}\alpha^{(-k)}_j y_j` of variance
    :math:`V_{(-k)} = \sum_{j \ne k} (\alpha^{(-k)}_j)^2 (\hat\tau^2_{(-k)} + v_j)`, and

    .. math::

        r_k = \tfrac1d \lVert y_k - \hat\mu_{(-k)} \rVert^2, \qquad
        \text{named} \iff d\, r_k > \chi^2_{d,\,1-\alpha}\,
        \big(\lambda\,\hat\tau^2_{(-k)} + v_k + V_{(-k)}\big),
        \qquad v_k \leftarrow r_k - \hat\tau^2_{(-k)} - V_{(-k)} ,

    :math:`\alpha = 10^{-3}`. Under the model :math:`d\,r_k / (\tau^2 + v_k + V)` is about
    :math:`\chi^2_d`; :math:`\lambda` (``heterogeneity_factor``) lets one client's own
    heterogeneity be up to :math:`\lambda` times the typical one (the model gives all one
    :math:`\tau^2`; real clients differ) before its small noise claim is doubted. A claim
    the spread contradicts is named and replaced by what the spread says, all of its excess
    over the typical heterogeneity taken as noise, and the test is repeated until no further
    claim falls. Left out of its own test, a client cannot hide by pulling the consensus or
    inflating :math:`\hat\tau^2`.

    **Missing claims.** A reply without ``update-noise-var`` (an older client, a classical
    model) gets the server's estimate: its deviation from the claimants' consensus beyond
    their heterogeneity, :math:`v_k = \max(0, \lVert y_k - \hat\mu_C \rVert^2/d -
    \hat\tau^2_C - \operatorname{Var}\hat\mu_C)`, named in the log. With fewer than two
    claimants noise cannot be told from heterogeneity: the weights are FedAvg's, and the
    log says so (``noise-isolating-median`` estimates noise from the server's side alone).

    ``pec-gamma2`` (PEC's sampling overhead) is reported, not weighed: the variance a
    client claims already includes it.

    **Ablations** (``qfl experiment noise-dose``): each option's extreme turns one part off and
    leaves the rest as it is, the defaults unchanged:

    - *no contraction division*: ``min_contraction = 1``. Then :math:`\hat c_k = \max(c_k, 1) = 1`
      for every told :math:`c_k \in (0, 1]`: :math:`y_k = \Delta_k` and :math:`v_k = s_k^2`, the
      same aggregate, bit for bit, as the same replies with no contraction told;
    - *no cap*: ``weight_cap = inf`` (TOML ``{ weight-cap = inf }``): :math:`\alpha_k \propto n_k
      (\hat\tau^2 + v_\min)/(\hat\tau^2 + v_k)` uncapped, everywhere the cap enters (the weights,
      the consensus of the claims' test, nothing left with the global model).

    Parameters
    ----------
    weight_cap : float (default: 2.0)
        :math:`\kappa \ge 1`: no client weighs more than this many times its FedAvg share;
        ``inf``: no cap (the ablation).
    heterogeneity_factor : float (default: 9.0)
        :math:`\lambda \ge 1`: how many times the typical heterogeneity one client's may be
        (9: three times as far from the others) before its noise claim is doubted; 0 turns
        the test off (the cap alone then bounds a false claim).
    min_contraction : float (default: 0.25)
        :math:`c_\min \in (0, 1]`: the smallest contraction an update is divided by; 1: no
        update is divided (the ablation).
    uncorrected_parameters : list[str] (default: ``["bias"]``)
        Parameters outside the circuit, which no contraction scales.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (sampling, record keys).

    Notes
    -----
    The aggregated train MetricRecord adds ``ni-tau2`` (:math:`\hat\tau^2`), ``ni-claims``
    (clients that claimed a variance) and ``ni-contradicted``; :meth:`round_report` gives
    each client's :math:`v_k`, its source, :math:`\hat c_k`, :math:`\alpha_k`,
    :math:`\mathrm{SNR}_k = \lVert\sum_j \alpha_j y_j\rVert^2 / (d\, v_k)`, and names every
    contradicted claim (``clients.csv``).

    References
    ----------
    DerSimonian, R., Laird, N. (1986). Meta-analysis in clinical trials. *Controlled Clinical
    Trials* 7(3), 177-188. Viechtbauer, W., Cheung, M. W.-L. (2010). Outlier and influence
    diagnostics for meta-analysis. *Research Synthesis Methods* 1(2), 112-125. Chehimi, M.,
    Chen, S. Y.-C., Saad, W., Towsley, D., Debbah, M. *Foundations of Quantum Federated
    Learning Over Classical and Quantum Networks*, Sec. II-C1, Table I.
    """

    def __init__(self, *, weight_cap: float = 2.0, heterogeneity_factor: float = 9.0, min_contraction: float = 0.25,
                 uncorrected_parameters: Iterable[str] = ADDITIVE_READOUT, **kwargs) -> None:
        if not (isinstance(weight_cap, float) and weight_cap == math.inf):  # inf: no cap, the ablation
            _check_number("weight_cap", weight_cap, lambda x: x >= 1.0, ">= 1 (or inf: no cap)")
        _check_number("heterogeneity_factor", heterogeneity_factor, lambda x: x == 0.0 or x >= 1.0, "0 (off) or >= 1")
        _check_number("min_contraction", min_contraction, lambda x: 0.0 < x <= 1.0, "in (0, 1]")
        if isinstance(uncorrected_parameters, str) or not all(isinstance(n, str) for n in uncorrected_parameters):
            raise ValueError(f"uncorrected_parameters must be a list of parameter names, "
                             f"got {uncorrected_parameters!r}")
        super().__init__(**kwargs)
        self.weight_cap = float(weight_cap)
        self.heterogeneity_factor = float(heterogeneity_factor)
        self.min_contraction = float(min_contraction)
        self.uncorrected_parameters = tuple(uncorrected_parameters)
        self.last_clients: list[ClientNoise] = []
        self.last_kept = 0.0  # the share of the last round left with the global model (a cap bound)

    def round_report(self) -> RoundReport:
        """Each client's noise variance, its source, contraction, weight and SNR, last round;
        a contradicted claim named."""
        return RoundReport({
            c.node_id: {REPORT_NOISE_VAR: c.noise_var, REPORT_SNR: c.snr, REPORT_WEIGHT: c.weight,
                        REPORT_TRIMMED: False, REPORT_NOISE_SOURCE: c.source, REPORT_CONTRACTION: c.contraction,
                        **({REPORT_NAMED: c.named} if c.named else {})}
            for c in self.last_clients
        })

    def summary(self) -> None:
        log(INFO, "\t├──> Noise isolation: weight cap %g x FedAvg share, noise claims tested allowing %g x the "
            "typical heterogeneity, contraction >= %g%s",
            self.weight_cap, self.heterogeneity_factor, self.min_contraction,
            " (no update divided)" if self.min_contraction == 1.0 else "")
        super().summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.last_clients = []
        reference, valid = self.sound_replies(replies)
        if reference is None:  # nothing sound to take shapes from: FedAvg counts the failures
            return super().aggregate_train(server_round, replies)
        if not valid:
            return None, None

        names = list(reference)
        params = np.stack([flatten(m.content[self.arrayrecord_key], names) for m in valid])  # (K, d)
        counts = np.array([float(_metric(m, self.weighted_by_key)) for m in valid])
        claims = [{key: bound_noise_claim(key, _metric(m, key)) for key in NOISE_CLAIM_METRICS} for m in valid]
        contraction = self._contractions(valid, claims)
        contracted = self._contracted_mask(valid[0].content[self.arrayrecord_key], names)
        origin = self._global if self._global is not None else np.zeros(params.shape[1])
        updates = (params - origin) / (1.0 + contracted * (contraction[:, None] - 1.0))  # y_k
        claimed = np.array([np.nan if c[UPDATE_NOISE_VAR] is None else c[UPDATE_NOISE_VAR] for c in claims])
        found = separate_noise(updates, counts, claimed / contraction**2, self.weight_cap, self.heterogeneity_factor,
                               from_global=self._global is not None)

        arrays = self._average(valid, found.weights, contraction, updates, names, found.kept)
        share = found.weights / (found.weights.sum() + found.kept)
        signal = float(np.mean((share @ updates) ** 2)) if self._global is not None else math.nan
        self.last_clients = [
            ClientNoise(m.metadata.src_node_id, float(n), float(s), float(c), _or_nan(claim[PEC_GAMMA2]), float(v), src,
                        _snr(signal, float(v)), float(a), _named(float(s), float(c), float(o)))
            for m, n, s, c, claim, v, src, a, o in zip(valid, counts, claimed, contraction, claims, found.noise_var,
                                                         found.source, share, found.observed)
        ]
        self.last_kept = found.kept
        self._log(server_round, found)
        metrics = self.train_metrics_aggr_fn(_common_metric_keys([m.content for m in valid]), self.weighted_by_key)
        metrics["ni-tau2"] = found.tau2
        metrics["ni-claims"] = int(np.isfinite(claimed).sum())
        metrics["ni-contradicted"] = sum(src == CONTRADICTED for src in found.source)
        metrics["ni-kept"] = found.kept
        return arrays, metrics

    def _contractions(self, valid: list[Message], claims: list[dict[str, float | None]]) -> np.ndarray:
        """:math:`\\hat c_k`: the told contraction bounded below by ``min_contraction``; 1 if untold,
        or if there is no global model to take the update from."""
        told = np.array([1.0 if c[NOISE_CONTRACTION] is None else c[NOISE_CONTRACTION] for c in claims])
        if self._global is None:
            if np.any(told < 1.0):
                log(WARNING, "Noise isolation: no global model recorded (configure_train not called), "
                    "so the told contractions are not corrected")
            return np.ones(len(valid))
        for msg, c in zip(valid, told):
            if c < self.min_contraction < 1.0:  # (1: nothing is divided, the ablation; said once, in summary)
                log(INFO, "\t> node %d: contraction %.3g, divided by min_contraction %g instead",
                    msg.metadata.src_node_id, c, self.min_contraction)
        return np.maximum(told, self.min_contraction)

    def _contracted_mask(self, like: ArrayRecord, names: list[str]) -> np.ndarray:
        """1 on the coordinates a contraction scales, 0 on ``uncorrected_parameters``'."""
        return np.concatenate([np.full(like[n].numpy().size, 0.0 if n in self.uncorrected_parameters else 1.0)
                               for n in names])

    def _average(self, valid: list[Message], weights: np.ndarray, contraction: np.ndarray, updates: np.ndarray,
                 names: list[str], kept: float = 0.0) -> ArrayRecord:
        """:math:`\\sum_k \\alpha_k w_k` (:func:`weighted_average`), each corrected update's
        parameters :math:`w^t + y_k` in place of its :math:`w_k`, and the global model :math:`w^t`
        with the share ``kept`` (no step) where a cap left it there."""
        records = []
        for msg, c, update in zip(valid, contraction, updates):
            arrays = msg.content[self.arrayrecord_key]
            records.append(unflatten(self._global + update, arrays, names) if c != 1.0 else arrays)
        weights = [float(w) for w in weights]
        if kept > 0.0 and self._global is not None:
            records.append(unflatten(self._global, valid[0].content[self.arrayrecord_key], names))
            weights.append(kept)
        return weighted_average(records, weights)

    def _log(self, server_round: int, found: NoiseSeparation) -> None:
        if UNSEPARATED in found.source:
            log(INFO, "Noise isolation, round %d: fewer than two clients reported '%s': noise cannot be told from "
                "heterogeneity, the weights are FedAvg's", server_round, UPDATE_NOISE_VAR)
        for c in self.last_clients:
            if c.named:
                log(WARNING, "Noise isolation: node %d %s", c.node_id, c.named)
            elif c.source == SERVER_ESTIMATE:
                log(INFO, "\t> node %d reported no '%s': its noise is the server's estimate %.3e (its deviation "
                    "beyond the claimants' heterogeneity)", c.node_id, UPDATE_NOISE_VAR, c.noise_var)
            log(INFO, "\t> node %d: noise var %.3e (%s), contraction %.3g, weight %.3f", c.node_id, c.noise_var,
                c.source, c.contraction, c.weight)
        log(INFO, "\t> heterogeneity tau^2 %.3e per coordinate", found.tau2)


def separate_noise(updates: np.ndarray, counts: np.ndarray, claimed: np.ndarray, weight_cap: float,
                   heterogeneity_factor: float, from_global: bool = False) -> NoiseSeparation:
    """The math of :class:`NoiseIsolatingFedAvg` on a ``(K, d)`` stack of (corrected) updates.

    Parameters
    ----------
    updates : (K, d) :math:`y_k`; any common offset cancels unless ``from_global``.
    counts : (K,) :math:`n_k > 0`.
    claimed : (K,) :math:`v_k` the clients told (on the corrected scale), NaN where none.
    weight_cap, heterogeneity_factor : :math:`\\kappa` and :math:`\\lambda` (0: no test).
    from_global : the updates are taken from the global model, so their mean's power is the
        signal's (:func:`signal_power`): where a cap binds, the excess goes to the others only as
        far as it lowers the aggregate's mean squared error, the rest stays with the global
        model (:func:`capped_weights`; :attr:`NoiseSeparation.kept`). Otherwise water-filling.
    """
    K = len(updates)
    told = np.isfinite(claimed)
    nothing = np.full(K, np.nan)
    if told.sum() < 2:
        tau2 = dersimonian_laird(updates, np.zeros(K))  # heterogeneity and noise together
        return NoiseSeparation(tau2, nothing, (UNSEPARATED,) * K, nothing, counts.astype(float))
    v = np.where(told, claimed, 0.0)
    claimants = np.flatnonzero(told)
    observed = nothing.copy()
    if heterogeneity_factor > 0 and len(claimants) >= MIN_TESTED:
        v, observed = check_claims(updates, counts, v, claimants, weight_cap, heterogeneity_factor)
    for k in np.flatnonzero(~told):
        residual, tau2, consensus_var = deleted_residual(updates, counts, v, claimants, k, weight_cap)
        v[k] = max(0.0, residual - tau2 - consensus_var)
    source = tuple(CONTRADICTED if np.isfinite(o) else CLAIMED if t else SERVER_ESTIMATE
                   for t, o in zip(told, observed))
    tau2 = dersimonian_laird(updates, v)
    signal = signal_power(updates, counts, tau2, v) if from_global else math.inf
    weights = precision_weights(counts, tau2, v, weight_cap, signal)
    raw = precision_weights(counts, tau2, v, math.inf)
    binds = np.any(raw / raw.sum() > weight_cap * counts / counts.sum() * (1.0 + 1e-12))
    kept = max(0.0, 1.0 - float(weights.sum())) if binds else 0.0
    return NoiseSeparation(tau2, v, source, observed, weights, kept)


def check_claims(updates: np.ndarray, counts: np.ndarray, v: np.ndarray, claimants: np.ndarray, weight_cap: float,
                heterogeneity_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``(v, observed)``: the claimants' variances with those the spread contradicts replaced,
    and the replacements (NaN for the others). Each pass tests every claim still standing
    against the others as the previous pass left them, until none falls."""
    v, observed = v.copy(), np.full(len(v), np.nan)
    bar = chi2_upper(updates.shape[1]) / updates.shape[1]
    while True:
        fallen = {}
        for k in claimants[~np.isfinite(observed[claimants])]:
            others = claimants[claimants != k]
            residual, tau2, consensus_var = deleted_residual(updates, counts, v, others, k, weight_cap)
            if residual > bar * (heterogeneity_factor * tau2 + v[k] + consensus_var):
                fallen[k] = residual - tau2 - consensus_var
        if not fallen:
            return v, observed
        for k, value in fallen.items():
            v[k] = observed[k] = value


def deleted_residual(updates: np.ndarray, counts: np.ndarray, v: np.ndarray, others: np.ndarray, k: int,
                     weight_cap: float) -> tuple[float, float, float]:
    r"""``(r_k, tau2, V)``: client ``k``'s mean squared residual per coordinate from the
    consensus of ``others``, their heterogeneity :math:`\hat\tau^2_{(-k)}`, and the variance
    of that consensus, :math:`\sum_j (\alpha_j^{(-k)})^2 (\hat\tau^2_{(-k)} + v_j)`."""
    y = updates[others]
    tau2 = dersimonian_laird(y, v[others])
    alpha = precision_weights(counts[others], tau2, v[others], weight_cap)
    alpha = alpha / alpha.sum()
    residual = float(np.mean((updates[k] - alpha @ y) ** 2))
    return residual, tau2, float(np.sum(alpha**2 * (tau2 + v[others])))


def dersimonian_laird(y: np.ndarray, v: np.ndarray) -> float:
    r"""The between-client variance :math:`\hat\tau^2` per coordinate of the ``(K, d)`` estimates
    ``y`` with within variances ``v`` (K,): DerSimonian & Laird's method of moments on
    Cochran's :math:`Q`, summed over the coordinates (one :math:`\tau^2` for all), truncated at 0.

    With every :math:`v_k` equal it is, exactly, the pooled sample variance less :math:`v`
    (so a common :math:`v = 0` is allowed); a single 0 among others weighs as
    :data:`VAR_FLOOR` times the spread.

    >>> round(dersimonian_laird(np.array([[-0.33], [0.32], [0.39], [0.31], [0.17], [0.64], [-0.33],
    ...     [0.15], [-0.02], [0.00]]), np.array([0.084, 0.035, 0.017, 0.034, 0.072, 0.117, 0.102, 0.093,
    ...     0.012, 0.067])), 6)  # Lipsey & Wilson (2001), Practical Meta-Analysis, Exhibit 7.3
    0.025955
    """
    K, d = y.shape
    if K < 2 or d == 0:
        return 0.0
    spread = float(np.sum((y - y.mean(axis=0)) ** 2)) / (d * (K - 1))
    if np.all(v == v[0]):
        return max(0.0, spread - float(v[0]))
    a = 1.0 / np.maximum(v, VAR_FLOOR * max(spread, float(v.max())))
    mean = a @ y / a.sum()
    q = float(a @ np.sum((y - mean) ** 2, axis=1))
    return max(0.0, float((q - d * (K - 1)) / (d * (a.sum() - np.sum(a**2) / a.sum()))))


def precision_weights(counts: np.ndarray, tau2: float, v: np.ndarray, weight_cap: float,
                      signal: float = math.inf) -> np.ndarray:
    r""":math:`n_k (\tau^2 + v_\min)/(\tau^2 + v_k)`, capped (:func:`capped_weights`, with the
    signal power ``signal`` where a cap binds). The clients at :math:`v_\min` weigh exactly
    :math:`n_k`, so equal variances give the counts."""
    total = tau2 + v
    least = float(total.min())
    ratio = np.where(total == least, 1.0, least / np.where(total > 0, total, 1.0))
    if math.isinf(weight_cap):
        return counts * ratio
    return capped_weights(counts * ratio, counts, weight_cap, total, signal)


def capped_weights(raw: np.ndarray, counts: np.ndarray, weight_cap: float, noise: np.ndarray | None = None,
                   signal: float = math.inf) -> np.ndarray:
    r"""``raw`` as it is if no share :math:`s_k = \text{raw}_k / \sum \text{raw}` exceeds
    :math:`b_k = \kappa\, n_k / \sum n`; otherwise shares with every excess cut to its bound.

    Water-filling (``signal`` infinite, the default): the excess is handed to the others in
    proportion to ``raw`` (to ``counts`` where they all have none), until none exceeds its
    bound; the shares sum to 1 (:math:`\kappa \ge 1` makes it feasible).

    With the clients' variances ``noise`` :math:`w_k = \tau^2 + v_k` and the update's signal
    power :math:`P` per coordinate (``signal``), the uncapped clients :math:`U` get only as much
    of the excess as lowers the aggregate's mean squared error: their shares :math:`f\, s_j`,

    .. math::

        f = \min\!\Big(f_\mathrm{wf},\ \max\!\big(1,\ f_\mathrm{wf}\,
        \tfrac{\mathrm{SNR}_U}{1 + \mathrm{SNR}_U}\big)\Big), \qquad
        \mathrm{SNR}_U = \frac{(\sum_U s_j)^2\, P}{\sum_U s_j^2\, w_j},

        \qquad f_\mathrm{wf} = \frac{1 - \sum_C b_k}{\sum_U s_j},

    the minimiser over :math:`f` of :math:`(1 - \sum_C b_k - f \sum_U s_j)^2 P + f^2 \sum_U
    s_j^2 w_j` (bias toward no step, and variance) between their own shares and water-filling;
    the shares then sum to less than 1 and the rest stays with the global model (no step).
    Water-filling is the limit :math:`P \to \infty`, updates that carry signal however noisy:
    when the capped clients are the precise ones and the others' noise swamps the signal, it
    hands their weight to noise."""
    bound = weight_cap * counts / counts.sum()
    share = raw / raw.sum()
    slack = 1.0 + 1e-12
    if np.all(share <= bound * slack):
        return raw.astype(float)
    own = share.copy()
    capped = np.zeros(len(raw), dtype=bool)
    while True:
        over = ~capped & (share > bound * slack)
        if not over.any():
            break
        capped |= over
        rest = ~capped
        if not rest.any():
            return bound / bound.sum()
        base = raw[rest] if raw[rest].sum() > 0 else counts[rest]
        share = np.where(capped, bound, 0.0)
        share[rest] = (1.0 - bound[capped].sum()) * base / base.sum()
    rest = ~capped
    if noise is None or not math.isfinite(signal) or own[rest].sum() <= 0:
        return share
    mass = float(own[rest].sum())
    f_wf = (1.0 - float(bound[capped].sum())) / mass
    spread = float(np.sum(own[rest] ** 2 * noise[rest]))
    snr = math.inf if spread <= 0 else mass**2 * max(signal, 0.0) / spread
    f = f_wf if math.isinf(snr) else min(f_wf, max(1.0, f_wf * snr / (1.0 + snr)))
    return np.where(capped, bound, f * own)


def signal_power(updates: np.ndarray, counts: np.ndarray, tau2: float, v: np.ndarray) -> float:
    r""":math:`\hat P`, the power per coordinate of the mean update :math:`\mu`: the uncapped
    precision-weighted mean's, less its variance,
    :math:`\max(0,\ \lVert \sum_k s_k y_k \rVert^2 / d - \sum_k s_k^2 (\tau^2 + v_k))`,
    :math:`s_k` the shares of :func:`precision_weights` before any cap. The updates must be
    taken from the global model."""
    raw = precision_weights(counts, tau2, v, math.inf)
    s = raw / raw.sum()
    return max(0.0, float(np.mean((s @ updates) ** 2)) - float(np.sum(s**2 * (tau2 + v))))


def weighted_average(records: list[ArrayRecord], weights: list[float]) -> ArrayRecord:
    """:math:`\\sum_k (w_k / \\sum_j w_j)\\, x_k` array by array, in the arithmetic of Flower's
    ``aggregate_arrayrecords`` (the same factors, summed in the same order), so that with the
    example counts as weights it is FedAvg's average bit for bit."""
    total = sum(weights)
    out: dict[str, np.ndarray] = {}
    for record, weight in zip(records, weights):
        factor = weight / total
        for key, value in record.items():
            if key in out:
                out[key] += value.numpy() * factor
            else:
                out[key] = value.numpy() * factor
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in out.items()})


def chi2_upper(d: int) -> float:
    r""":math:`\chi^2_{d,\,1-\alpha}` at :data:`SIGNIFICANCE` by Wilson & Hilferty (1931):
    :math:`d\,(1 - h + z\sqrt h)^3`, :math:`h = 2/(9d)`; at this level it lies above the exact
    quantile (a slightly higher bar), by at most 3.1 % (:math:`d = 1`) and under 1 % from :math:`d = 8` on."""
    h = 2.0 / (9.0 * d)
    return d * (1.0 - h + Z_UPPER * math.sqrt(h)) ** 3


def _named(claimed_var: float, contraction: float, observed: float) -> str:
    if not np.isfinite(observed):
        return ""
    told = claimed_var / contraction**2
    return (f"contradicted: claimed {UPDATE_NOISE_VAR} {claimed_var:.3g}"
            + (f" ({told:.3g} after its contraction {contraction:.3g})" if contraction != 1.0 else "")
            + f", far below its update's spread, which says {observed:.3g}: used that")


def _snr(signal: float, noise_var: float) -> float:
    if not np.isfinite(noise_var) or not np.isfinite(signal):
        return math.nan
    return signal / noise_var if noise_var > 0 else math.inf


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _metric(message: Message, key: str) -> object:
    """The reply's metric ``key`` (``None`` if it has none)."""
    for record in message.content.metric_records.values():
        if key in record:
            return record[key]
    return None


def _common_metric_keys(contents: list[RecordDict]) -> list[RecordDict]:
    """The replies' metrics cut to the keys every one of them carries (the noise claims may be
    missing from some), so that Flower's weighted average sees one set of keys."""
    records = [next(iter(c.metric_records.values())) for c in contents]
    common = set.intersection(*(set(r.keys()) for r in records))
    if all(set(r.keys()) == common for r in records):
        return contents
    return [RecordDict({METRICS: MetricRecord({k: v for k, v in r.items() if k in common})}) for r in records]


def _check_number(name: str, value: object, ok, wanted: str) -> None:  # noqa: ANN001 (a predicate)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be a finite number {wanted}, got {value!r}")
