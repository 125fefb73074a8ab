"""Fidelity-weighted averaging of sparse updates that travelled over a quantum network.

The paper (Chehimi et al., Table II) calls for "QFL aggregation algorithms incorporating
quantum state fidelity" and notes that lost qubits leave sparse updates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from qfl.common.contract import ARRAYS, NUM_EXAMPLES
from qfl.common.contract import FIDELITY as FIDELITY_KEY
from qfl.common.contract import MASK as MASK_KEY


def fidelity_weight(fidelity: float | np.ndarray) -> np.ndarray:
    r""":math:`g(F) = w(F)^2 = \left(\frac{4F - 1}{3}\right)^2` for :math:`F \in [1/4, 1]`,
    0 below, 1 above.

    Why: a parameter teleported through a Werner pair of parameter :math:`w` is read as
    :math:`\hat Z / w`, whose variance grows as :math:`1/w^2`; weighting by :math:`w^2` is
    inverse-variance weighting. :math:`g(1) = 1`, and a pair at :math:`F \le 1/4` (no
    entanglement) carries nothing. No pair is better than perfect: a claimed :math:`F > 1`
    weighs as 1 (the square would grow without bound and let one client be the aggregate),
    and a non-finite one as 0.
    """
    f = np.asarray(fidelity, dtype=float)
    w = (4.0 * np.minimum(f, 1.0) - 1.0) / 3.0
    return np.where(np.isfinite(f) & (w > 0), w * w, 0.0)


def unpack_mask(content: RecordDict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The 0/1 delivery mask of parameter ``name`` (all ones if the reply has none)."""
    masks = content.config_records.get(MASK_KEY)
    if masks is None or name not in masks:
        return np.ones(shape)
    bits = np.unpackbits(np.frombuffer(masks[name], dtype=np.uint8), count=int(np.prod(shape)))
    return bits.astype(np.float64).reshape(shape)


class FidelityWeightedFedAvg(FedAvg):
    r"""FedAvg weighted by example count and link fidelity, averaged per delivered coordinate.

    Client :math:`k` sends parameters :math:`x_k`, a 0/1 mask :math:`m_k` of the coordinates
    that arrived (ConfigRecord ``"mask"``: per parameter name, ``numpy.packbits`` of the
    flattened mask as bytes; absent = all arrived) and the fidelity :math:`F_k` of its
    link (metric ``"fidelity"``; absent = 1). With
    :math:`\alpha_k = n_k\, g(F_k)` (:func:`fidelity_weight`), each coordinate is

    .. math::

        x_j = \frac{\sum_k \alpha_k m_{kj} x_{kj}}{\sum_k \alpha_k m_{kj}},

    over the clients that delivered it; a coordinate nobody delivered keeps the previous
    global value. With every :math:`F_k = 1` and nothing lost it is exactly FedAvg.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        if not valid:
            return None, None
        names = list(valid[0].content[self.arrayrecord_key].keys())
        alphas = []
        for msg in valid:
            metrics = next(iter(msg.content.metric_records.values()))
            fidelity = float(metrics.get(FIDELITY_KEY, 1.0))
            alphas.append(float(metrics[self.weighted_by_key]) * float(fidelity_weight(fidelity)))
        out: dict[str, Array] = {}
        for name in names:
            num = den = 0.0
            for msg, alpha in zip(valid, alphas):
                x = msg.content[self.arrayrecord_key][name].numpy().astype(np.float64)
                m = unpack_mask(msg.content, name, x.shape)
                num = num + alpha * m * np.where(m > 0, x, 0.0)
                den = den + alpha * m
            with np.errstate(invalid="ignore", divide="ignore"):
                avg = num / den
            if self._global is not None:
                avg = np.where(den > 0, avg, self._global[name].numpy())
            template = valid[0].content[self.arrayrecord_key][name].numpy()
            out[name] = Array(np.asarray(avg, dtype=template.dtype).reshape(template.shape))
        kept = [m.content for m, a in zip(valid, alphas) if a > 0] or [valid[0].content]
        metrics = self.train_metrics_aggr_fn(kept, self.weighted_by_key)
        return ArrayRecord(out), metrics


def impute_lost(replies: list[Message], global_arrays: ArrayRecord, arrayrecord_key: str = ARRAYS,
                weighted_by_key: str = NUM_EXAMPLES) -> list[Message]:
    r"""Replies whose lost coordinates (``mask`` bit 0) hold what the others delivered.

    Coordinate :math:`j` of reply :math:`k`, if lost, becomes
    :math:`\sum_i n_i m_{ij} x_{ij} / \sum_i n_i m_{ij}` over the replies that delivered it
    (the global value if none did). Any strategy then aggregates as if the value had not
    been lost: FedAvg's result is exactly the per-coordinate average over the clients that
    delivered it, instead of counting a lost value as a zero update. Masks stay in the
    replies, so :class:`FidelityWeightedFedAvg`, which reads them, is unaffected. Replies
    without a mask are returned as they are.
    """
    if not any(MASK_KEY in m.content.config_records for m in replies if not m.has_error()):
        return replies
    sound = [m for m in replies if not m.has_error()]
    weights = np.array([float(next(r[weighted_by_key] for r in m.content.metric_records.values() if weighted_by_key in r))
                        for m in sound])
    imputed: dict[int, dict[str, Array]] = {i: {} for i in range(len(sound))}
    for name in global_arrays.keys():
        values = np.stack([m.content[arrayrecord_key][name].numpy().astype(np.float64) for m in sound])
        masks = np.stack([unpack_mask(m.content, name, values.shape[1:]) for m in sound])
        w = weights.reshape((-1,) + (1,) * (values.ndim - 1)) * masks
        den = w.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(den > 0, (w * values).sum(axis=0) / np.where(den > 0, den, 1.0), global_arrays[name].numpy())
        for i, m in enumerate(sound):
            template = m.content[arrayrecord_key][name].numpy()
            imputed[i][name] = Array(np.where(masks[i] > 0, values[i], mean).astype(template.dtype))
    out, it = [], iter(range(len(sound)))
    for m in replies:
        if m.has_error():
            out.append(m)
            continue
        i = next(it)
        content = RecordDict(dict(m.content.items()))
        content[arrayrecord_key] = ArrayRecord(imputed[i])
        copy_ = copy.copy(m)
        copy_.content = content
        out.append(copy_)
    return out
