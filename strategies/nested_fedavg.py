r"""Federated averaging across clients whose circuits are nested depths of one global circuit.

HeteroFL (Diao, Ding, Tarokh, ICLR 2021) trains sub-models of one global model, each client
the width its hardware affords, and averages every parameter over the clients that hold it;
Quorus (ICLR 2026) does the same for quantum circuits of different depths. Here the global
model is the deepest member of a nested family: client :math:`k` runs the first :math:`L_k`
layers (the read-out after them), receives only those layers, and returns only those.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from qfl.common.contract import DEVICE, DEVICE_CIRCUIT, NESTED_HELD_ROWS, REPORT_CIRCUIT, REPORT_LAYERS
from strategies.delegating import RoundReport


def held_rows(shapes: Mapping[str, tuple[int, ...]], reference: Mapping[str, tuple[int, ...]]) -> dict[str, int] | str:
    """The leading rows (layers) of each array a reply holds, or why its shapes are no member of
    the family: the global model's names exactly; an array of two or more axes may hold the first
    ``1..L`` of the global's ``L`` rows (its leading axis is the layer axis), any other is whole."""
    if set(shapes) != set(reference):
        return f"parameter names {sorted(shapes)} differ from the model's {sorted(reference)}"
    rows = {}
    for name, full in reference.items():
        shape = tuple(shapes[name])
        nested = len(full) >= 2 and len(shape) == len(full) and shape[1:] == tuple(full[1:]) and 1 <= shape[0] <= full[0]
        if shape != tuple(full) and not nested:
            return f"'{name}' has shape {shape}: neither the global {tuple(full)} nor its first layers"
        rows[name] = shape[0] if len(full) >= 2 else 0
    return rows


def nested_average(global_arrays: Mapping[str, np.ndarray], replies: list[Mapping[str, np.ndarray]],
                   examples: list[float]) -> dict[str, np.ndarray]:
    r"""Each row (layer) of each array averaged over the replies that hold it, weighted by examples:

    .. math::

        \theta_\ell = \frac{\sum_{k:\, L_k > \ell} n_k\, \theta_{k,\ell}}{\sum_{k:\, L_k > \ell} n_k},

    and a row nobody holds keeps the global value. When every reply holds every row it is
    FedAvg, computed as Flower's ``aggregate_arrayrecords`` computes it (same factors, same order).

    Parameters
    ----------
    global_arrays : mapping of str to ndarray
        The global model (the deepest member).
    replies : list of mappings of str to ndarray
        Each client's arrays: the global's names, an array of two or more axes possibly only
        its first rows.
    examples : list of float
        Each reply's example count :math:`n_k`.
    """
    out: dict[str, np.ndarray] = {}
    for name, glob in global_arrays.items():
        glob = np.asarray(glob)
        if glob.ndim < 2:
            total = sum(examples)
            acc = None
            for arrays, n in zip(replies, examples):
                term = np.asarray(arrays[name]) * (n / total)
                acc = term if acc is None else acc + term
            out[name] = np.asarray(acc)
            continue
        held = np.array([np.asarray(a[name]).shape[0] for a in replies])
        # per row: the examples of the replies that hold it
        totals = np.array([sum(n for n, h in zip(examples, held) if h > row) for row in range(glob.shape[0])])
        acc = np.zeros_like(glob, dtype=np.result_type(glob, np.float64))
        covered = totals > 0
        for arrays, n, h in zip(replies, examples, held):
            factors = np.array([n / totals[row] for row in range(h)]).reshape((h,) + (1,) * (glob.ndim - 1))
            acc[:h] += np.asarray(arrays[name]) * factors
        acc[~covered] = glob[~covered]
        out[name] = acc.astype(glob.dtype, copy=False)
    return out


def first_rows(arrays: ArrayRecord, rows: Mapping[str, int]) -> ArrayRecord:
    """The sub-model holding ``rows[name]`` leading rows of each array with a layer axis."""
    return ArrayRecord({name: Array(np.ascontiguousarray(arr.numpy()[: rows[name]]) if rows.get(name) else arr.numpy())
                        for name, arr in arrays.items()})


class NestedFedAvg(FedAvg):
    r"""FedAvg across nested circuit depths (HeteroFL / Quorus style).

    The global model is the deepest circuit; an array with a leading layer axis (the rotation
    angles ``(L, n, 3)``, a re-uploaded embedding ``(L, n, 2)``) is nested, the others (read-out
    scale and bias) are shared whole. A node's first reply shows which layers its circuit holds;
    from then on it receives only those (a node not heard from yet receives the whole model once,
    and returns its own layers). Each layer :math:`\ell` is averaged over the replies that hold
    it, weighted by their example counts (:func:`nested_average`); a layer nobody held this round
    keeps its value. With every circuit the same it is FedAvg.

    Replies are checked here (names, a family member's shapes, no more layers than the node was
    sent, finite values, one positive example count); a bad one is logged and left out.
    Secure aggregation cannot compose with it (a masked sum needs every input of one shape) and
    is refused before launch (``qfl.common.config.SECAGG_STRATEGIES`` does not list it).

    Parameters
    ----------
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 (FedAvg's)
        super().__init__(**kwargs)
        self._global: ArrayRecord | None = None
        self._reference: dict[str, tuple[int, ...]] = {}
        self.held: dict[int, dict[str, int]] = {}  # node -> rows of each array it holds (learned from its replies)
        self._sent: dict[int, dict[str, int]] = {}  # node -> rows it was sent this round
        self._report = RoundReport()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._global = arrays
        self._reference = {name: tuple(arr.numpy().shape) for name, arr in arrays.items()}
        whole = {name: shape[0] if len(shape) >= 2 else 0 for name, shape in self._reference.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent = {}
        for msg in messages:
            node = msg.metadata.dst_node_id
            rows = self.held.get(node, whole)
            self._sent[node] = rows
            content = RecordDict(dict(msg.content.items()))  # FedAvg shares one RecordDict among its messages
            content[self.arrayrecord_key] = arrays if rows == whole else first_rows(arrays, rows)
            msg.content = content
        return messages

    def reply_shapes(self, msg: Message) -> dict[str, tuple[int, ...]] | str:
        """The shapes a reply may have, from the layers it holds (at most those it was sent), or
        why it cannot: what a guard that checks replies against the model checks it against."""
        try:
            shapes = {n: tuple(a.shape) for n, a in msg.content[self.arrayrecord_key].items()}
        except Exception as err:  # noqa: BLE001 - whatever it holds, it is not a family member's arrays
            return f"unreadable arrays ({type(err).__name__})"
        rows = held_rows(shapes, self._reference)
        if isinstance(rows, str):
            return rows
        sent = self._sent.get(msg.metadata.src_node_id)
        if sent is not None and any(rows[n] > sent[n] for n in rows):
            return f"returns layers it was not sent: {rows} of {sent}"
        return {n: ((rows[n], *full[1:]) if rows[n] else full) for n, full in self._reference.items()}

    def _unpadded(self, msg: Message) -> Message:
        """A reply the guard padded to the global shapes (:data:`NESTED_HELD_ROWS`), cut back to
        the rows its client sent."""
        if msg.has_error() or NESTED_HELD_ROWS not in msg.content.config_records:
            return msg
        held = msg.content.config_records[NESTED_HELD_ROWS]
        content = RecordDict({k: v for k, v in msg.content.items() if k != NESTED_HELD_ROWS})
        content[self.arrayrecord_key] = first_rows(msg.content[self.arrayrecord_key],
                                                   {n: int(held.get(n, 0)) for n in self._reference})
        out = copy.copy(msg)  # the reply's metadata, its own content
        out.content = content
        return out

    def _problem(self, msg: Message) -> str | None:
        content = msg.content
        if self.arrayrecord_key not in content.array_records:
            return f"no ArrayRecord under '{self.arrayrecord_key}'"
        try:
            values = {n: np.asarray(a.numpy()) for n, a in content[self.arrayrecord_key].items()}
        except Exception as err:  # noqa: BLE001 - whatever the bytes are, they are not arrays
            return f"unreadable arrays ({type(err).__name__})"
        rows = held_rows({n: v.shape for n, v in values.items()}, self._reference)
        if isinstance(rows, str):
            return rows
        sent = self._sent.get(msg.metadata.src_node_id)
        if sent is not None and any(rows[n] > sent[n] for n in rows):
            return f"returns layers it was not sent: {rows} of {sent}"
        if any(v.dtype.kind != "f" or not np.all(np.isfinite(v)) for v in values.values()):
            return "arrays must hold finite real floating-point values"
        counts = [mr[self.weighted_by_key] for mr in content.metric_records.values() if self.weighted_by_key in mr]
        if len(counts) != 1 or isinstance(counts[0], bool) or not isinstance(counts[0], (int, float)) \
                or not np.isfinite(counts[0]) or not counts[0] > 0:
            return f"expected one positive finite '{self.weighted_by_key}' metric"
        return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies([self._unpadded(m) for m in replies], is_train=True, validate=False)
        sound = []
        for msg in valid:
            problem = self._problem(msg)
            if problem is None:
                sound.append(msg)
            else:
                log(WARNING, "nested-fedavg: left out the reply of node %d: %s", msg.metadata.src_node_id, problem)
        self._report = RoundReport()
        if not sound or self._global is None:
            return None, None
        contents = [m.content for m in sound]
        trees = [{n: a.numpy() for n, a in c[self.arrayrecord_key].items()} for c in contents]
        examples = [float(next(mr[self.weighted_by_key] for mr in c.metric_records.values())) for c in contents]
        merged = nested_average({n: a.numpy() for n, a in self._global.items()}, trees, examples)
        for msg, tree in zip(sound, trees):
            rows = held_rows({n: v.shape for n, v in tree.items()}, self._reference)
            self.held[msg.metadata.src_node_id] = rows
            self._report.clients[msg.metadata.src_node_id] = {REPORT_LAYERS: max(rows.values(), default=0),
                                                              REPORT_CIRCUIT: _circuit_claim(msg)}
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return ArrayRecord({n: Array(v) for n, v in merged.items()}), metrics

    def round_report(self) -> RoundReport:
        """Per client: the layers its reply held, and the circuit it says it ran (clients.csv)."""
        return self._report


def _circuit_claim(msg: Message) -> str:
    """The circuit a reply says it ran (a claim, bounded, for the record)."""
    device = msg.content.config_records.get(DEVICE, {})
    value = device.get(DEVICE_CIRCUIT, "")
    return value if isinstance(value, str) and len(value) <= 64 else "?"
