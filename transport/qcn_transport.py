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
Draws are seeded by (seed, run, partition, round): reproducible and distinct per client.

Which path: the node config ``qcn-path`` if set, else entry ``partition-id mod n`` of the
run config's ``qcn-paths`` (";"-separated specs, as ``device-profiles``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from transport.base import Envelope, Transport
from transport.qcn import QCNPath, get_path, transmit

from transport.contract import FIDELITY, LATENCY_S, MASK, QCN_LOST_FRACTION, QCN_METRICS, QCN_PAIRS

PATHS_KEY = "qcn-paths"
COPIES_KEY = "qcn-copies"
CHANNELS_KEY = "qcn-channels"
NODE_PATH_KEY = "qcn-path"


def path_specs(paths: str) -> list[str]:
    """The entries of a ``qcn-paths`` value, in order."""
    return [s.strip() for s in paths.split(";") if s.strip()]


def path_for(run_config: Mapping[str, object], node_config: Mapping[str, object]) -> str:
    """The path spec of a node: its ``qcn-path``, else its partition's ``qcn-paths`` entry."""
    spec = node_config.get(NODE_PATH_KEY)  # optional per node, by design
    if spec is not None:
        return str(spec)
    specs = path_specs(str(run_config[PATHS_KEY]))
    if not specs:
        raise ValueError(f"run config '{PATHS_KEY}' names no path")
    return specs[int(node_config.get("partition-id", 0)) % len(specs)]  # type: ignore[call-overload]


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
        Seed the draws with the run and round.
    """

    name = "qcn"
    reply_metrics = QCN_METRICS
    reply_configs = {MASK: None}  # its keys are parameter names, checked against the model

    def __init__(self, path: QCNPath | None, copies: int = 100, channels: int = 16, seed: int = 0, partition: int = 0) -> None:
        if copies < 0 or channels < 1:
            raise ValueError(f"{COPIES_KEY} must be >= 0 and {CHANNELS_KEY} >= 1, got {copies}, {channels}")
        self.path, self.copies, self.channels, self.seed, self.partition = path, copies, channels, seed, partition

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, object], node_config: Mapping[str, object] | None = None
    ) -> QCNTransport:
        copies, channels, seed = (int(run_config[k]) for k in (COPIES_KEY, CHANNELS_KEY, "seed"))  # type: ignore[call-overload]
        if node_config is None:  # the server
            return cls(None, copies, channels, seed)
        spec = path_for(run_config, node_config)
        try:
            path = get_path(spec)
        except ValueError as err:
            raise ValueError(f"{NODE_PATH_KEY}: {err}") from err
        return cls(path, copies, channels, seed, int(node_config.get("partition-id", 0)))  # type: ignore[call-overload]

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if self.path is None or envelope.direction != "up" or request is None:
            return content
        rng = np.random.default_rng([self.seed, envelope.run_id % 2**32, self.partition, envelope.server_round])
        out = RecordDict(dict(content.items()))
        for key, record in content.array_records.items():
            if key not in request.array_records:
                continue
            names = list(record.keys())
            new = np.concatenate([record[n].numpy().ravel() for n in names]).astype(np.float64)
            old = np.concatenate([request.array_records[key][n].numpy().ravel() for n in names]).astype(np.float64)
            sent = transmit(new - old, self.path, self.copies, rng, self.channels)
            received = np.where(sent.delivered, old + np.nan_to_num(sent.estimates), old)
            arrays, mask, offset = {}, {}, 0
            for n in names:
                template = record[n].numpy()
                size = template.size
                arrays[n] = Array(received[offset : offset + size].astype(template.dtype).reshape(template.shape))
                mask[n] = np.packbits(sent.delivered[offset : offset + size]).tobytes()
                offset += size
            out[key] = ArrayRecord(arrays)
            out[MASK] = ConfigRecord(mask)
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
