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

On a shared network (``qcn-topology``) the route is not the node's to choose: the server's
plan for the round (:mod:`transport.qcn_schedule`) arrives in the training message as a
``qcn-plan`` ConfigRecord naming the node's client, the repeater whose memory it holds, the
cutoff and the distillation rounds, and the update goes over exactly that
(:meth:`~transport.qcn_network.QCNNetwork.path`); a training message without a plan is
refused. With compression (``qcn-topk`` < 1 or ``qcn-bits`` > 0,
:mod:`transport.qcn_compress`) the node's error-feedback memory lives in its Flower state
(``context.state``, ArrayRecord ``qcn-residual``). Further metrics: ``qcn-bell-pairs``
(elementary pairs the update cost), ``qcn-bytes`` (classical bytes), and what compression
saved of both (``qcn-pairs-saved``, ``qcn-bytes-saved``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.contract import (
    FIDELITY,
    LATENCY_S,
    MASK,
    NODE_QCN_PATH,
    QCN_BELL_PAIRS,
    QCN_BYTES,
    QCN_BYTES_SAVED,
    QCN_LOST_FRACTION,
    QCN_METRICS,
    QCN_PAIRS,
    QCN_PAIRS_SAVED,
    QCN_PLAN,
    QCN_RESIDUAL,
)
from qfl.common.records import flatten, unflatten
from transport.base import Envelope, Transport, TransportError
from transport.qcn import QCNPath, get_path
from transport.qcn_compress import Encoding, send_update
from transport.qcn_network import QCNNetwork, load_topology

RESIDUAL_KEY = "flat"  # the one array of the node's error-feedback record


class QCNTransport(Transport):
    """Send a node's update over its simulated QCN path (see the module doc).

    Parameters
    ----------
    path : QCNPath or None
        ``None`` on the server, which has nothing to simulate, and on a shared network,
        where the server's plan names the route each round.
    copies : int
        Copies of each value (0: exact expectations, one pair per value).
    channels : int
        Parallel channels of the path.
    seed, partition : int
        Seed the draws with the round (:meth:`channel_rng`).
    network : QCNNetwork, optional
        The shared network (``qcn-topology``).
    encoding : Encoding, optional
        Compression (default: none, ``copies`` analog copies a value).
    state : RecordDict, optional
        The node's Flower state, for the error-feedback memory.
    """

    name = "qcn"
    reply_metrics = QCN_METRICS
    reply_configs = {MASK: None}  # its keys are parameter names, checked against the model

    def __init__(self, path: QCNPath | None, copies: int = 100, channels: int = 16, seed: int = 0, partition: int = 0,
                 network: QCNNetwork | None = None, encoding: Encoding | None = None,
                 state: RecordDict | None = None) -> None:
        if copies < 0 or channels < 1:
            raise ValueError(f"{KEY.qcn_copies} must be >= 0 and {KEY.qcn_channels} >= 1, got {copies}, {channels}")
        self.path, self.copies, self.channels, self.seed, self.partition = path, copies, channels, seed, partition
        self.network, self.state = network, state
        self.encoding = encoding if encoding is not None else Encoding(copies)

    @classmethod
    def from_run_config(cls, cfg: RunConfig, node: NodeConfig | None = None, state: RecordDict | None = None) -> QCNTransport:
        encoding = Encoding(cfg.qcn_copies, cfg.qcn_topk, cfg.qcn_bits, cfg.qcn_bit_copies)
        network = load_topology(cfg.qcn_topology) if cfg.qcn_topology else None
        if node is None:  # the server
            return cls(None, cfg.qcn_copies, cfg.qcn_channels, cfg.seed, network=network, encoding=encoding)
        path = None
        if network is None:
            try:
                path = get_path(node.path_for(cfg))
            except ValueError as err:
                raise ValueError(f"{NODE_QCN_PATH}: {err}") from err
        return cls(path, cfg.qcn_copies, cfg.qcn_channels, cfg.seed, node.partition_id, network, encoding, state)

    def channel_rng(self, server_round: int) -> np.random.Generator:
        """The channel's draws in ``server_round``: a function of (seed, partition, round) only."""
        return np.random.default_rng([self.seed, self.partition, server_round])

    def route(self, request: RecordDict) -> QCNPath | None:
        """The path this reply goes over: the node's own, or the one the server's plan names
        (``None``: the plan skips this node)."""
        if self.network is None:
            return self.path
        from transport.qcn_schedule import PROTOCOL, Decision

        record = request.config_records.get(QCN_PLAN)
        if record is None:
            raise TransportError("on a shared quantum network the server's plan names the route; this message has none")
        try:
            decision = Decision.from_record(record)
            mine = self.network.client_of(self.partition)
            if decision.client != mine:
                raise ValueError(f"the plan is for client {decision.client!r}, this node is {mine!r}")
            if decision.skip:
                return None
            return self.network.path(mine, decision.repeater, decision.cutoff_s, decision.distillation, PROTOCOL)
        except (ValueError, KeyError) as err:
            raise TransportError(f"bad qcn plan: {err}") from err

    def _residual(self, size: int) -> np.ndarray | None:
        if self.state is None or not self.encoding.compressed or QCN_RESIDUAL not in self.state.array_records:
            return None
        residual = self.state.array_records[QCN_RESIDUAL][RESIDUAL_KEY].numpy()
        return residual if residual.shape == (size,) else None

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if envelope.direction != "up" or request is None or (self.path is None and self.network is None):
            return content
        out = RecordDict(dict(content.items()))
        for key, record in content.array_records.items():
            if key not in request.array_records:
                continue
            path = self.route(request)
            if path is None:  # the plan does not serve this node: it was sent no training message
                raise TransportError("the server's plan skips this node this round: nothing to send")
            names = list(record.keys())
            new, old = flatten(record, names), flatten(request.array_records[key], names)
            sent = send_update(new - old, path, self.encoding, self.channel_rng(envelope.server_round), self.channels,
                               self._residual(new.size))
            if sent.residual is not None and self.state is not None:
                self.state[QCN_RESIDUAL] = ArrayRecord({RESIDUAL_KEY: Array(sent.residual)})
            received = np.where(sent.delivered, old + np.nan_to_num(sent.estimate), old)
            out[key] = unflatten(received, record, names)
            bounds = np.cumsum([0, *(record[n].numpy().size for n in names)])
            out[MASK] = ConfigRecord({n: np.packbits(sent.delivered[a:b]).tobytes() for n, a, b in zip(names, bounds, bounds[1:])})
            for mkey, metrics in content.metric_records.items():
                out[mkey] = MetricRecord(
                    {
                        **dict(metrics),
                        FIDELITY: sent.fidelity,
                        LATENCY_S: sent.latency_s,
                        QCN_LOST_FRACTION: sent.lost_fraction,
                        QCN_PAIRS: sent.pairs,
                        QCN_BELL_PAIRS: sent.bell_pairs,
                        QCN_PAIRS_SAVED: sent.pairs_saved,
                        QCN_BYTES: sent.classical_bytes,
                        QCN_BYTES_SAVED: sent.bytes_saved,
                    }
                )
        return out

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        return content
