"""``transport = "qcn"``: a node's update crosses a simulated quantum network to the server.

On the node, before the reply leaves, the update :math:`\\Delta = w_k - w^t` (all
parameters, flattened) is sent over the node's :class:`~transport.qcn.QCNPath` with
:func:`~transport.qcn.transmit`: every value as ``qcn-copies`` teleported carrier qubits.
What goes on the wire is what the server would recover:

- ``arrays``: :math:`w^t + \\hat\\Delta` where a value arrived, :math:`w^t` where it was lost
  (what a server that ignores the mask would impute: no update);
- ``mask`` (ConfigRecord): per parameter, the delivered coordinates as packed bits
  (``numpy.packbits`` of the flattened 0/1 mask), read by
  :class:`~strategies.FidelityWeightedFedAvg`;
- metrics ``fidelity`` (mean fidelity of the pairs that carried it), ``latency-s``
  (arrival time on the simulated network clock, which a round deadline compares),
  ``qcn-lost-fraction`` (values lost) and ``qcn-pairs`` (pairs consumed).

The channel is simulated where the update is made (the node knows its path; the wire
then carries the server's measurement results). The global model goes down classically.
Draws are seeded by (seed, partition, round): reproducible and distinct per client, the
same in every run of the same config (Flower's run ID is random and takes no part), so two
runs that differ only in their strategy see the same channel (common random numbers).

Which path: the node config ``qcn-path`` if set, else entry ``partition-id mod n`` of the
run config's ``qcn-paths`` (";"-separated specs, as ``device-profiles``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.contract import FIDELITY, LATENCY_S, MASK, NODE_QCN_PATH, QCN_LOST_FRACTION, QCN_METRICS, QCN_PAIRS
from qfl.common.records import flatten, unflatten
from transport.base import Envelope, Transport
from transport.qcn import QCNPath, get_path, transmit


class QCNTransport(Transport):
    """Send a node's update over its simulated QCN path (see the module doc).

    Parameters
    ----------
    path : QCNPath or None
        ``None`` on the server, which has nothing to simulate.
    copies : int
        Copies of each value (0: exact expectations, one pair per value).
    channels : int
        Parallel channels of the path.
    seed, partition : int
        Seed the draws with the round (:meth:`channel_rng`).
    """

    name = "qcn"
    reply_metrics = QCN_METRICS
    reply_configs = {MASK: None}  # its keys are parameter names, checked against the model

    def __init__(self, path: QCNPath | None, copies: int = 100, channels: int = 16, seed: int = 0, partition: int = 0) -> None:
        if copies < 0 or channels < 1:
            raise ValueError(f"{KEY.qcn_copies} must be >= 0 and {KEY.qcn_channels} >= 1, got {copies}, {channels}")
        self.path, self.copies, self.channels, self.seed, self.partition = path, copies, channels, seed, partition

    @classmethod
    def from_run_config(cls, cfg: RunConfig, node: NodeConfig | None = None) -> QCNTransport:
        if node is None:  # the server
            return cls(None, cfg.qcn_copies, cfg.qcn_channels, cfg.seed)
        try:
            path = get_path(node.path_for(cfg))
        except ValueError as err:
            raise ValueError(f"{NODE_QCN_PATH}: {err}") from err
        return cls(path, cfg.qcn_copies, cfg.qcn_channels, cfg.seed, node.partition_id)

    def channel_rng(self, server_round: int) -> np.random.Generator:
        """The channel's draws in ``server_round``: a function of (seed, partition, round) only."""
        return np.random.default_rng([self.seed, self.partition, server_round])

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if self.path is None or envelope.direction != "up" or request is None:
            return content
        rng = self.channel_rng(envelope.server_round)
        out = RecordDict(dict(content.items()))
        for key, record in content.array_records.items():
            if key not in request.array_records:
                continue
            names = list(record.keys())
            new, old = flatten(record, names), flatten(request.array_records[key], names)
            sent = transmit(new - old, self.path, self.copies, rng, self.channels)
            received = np.where(sent.delivered, old + np.nan_to_num(sent.estimates), old)
            out[key] = unflatten(received, record, names)
            bounds = np.cumsum([0, *(record[n].numpy().size for n in names)])
            out[MASK] = ConfigRecord({n: np.packbits(sent.delivered[a:b]).tobytes() for n, a, b in zip(names, bounds, bounds[1:])})
            for mkey, metrics in content.metric_records.items():
                out[mkey] = MetricRecord(
                    {
                        **dict(metrics),
                        FIDELITY: sent.fidelity,
                        LATENCY_S: sent.latency_s,
                        QCN_LOST_FRACTION: float(1.0 - sent.delivered.mean()),
                        QCN_PAIRS: sent.pairs,
                    }
                )
        return out

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        return content
