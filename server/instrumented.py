"""A wrapper that guards and records what any strategy's training round produced.

It delegates every hook to the inner strategy (the shape of Flower's DP wrappers),
so ``Strategy.start`` runs the inner strategy's logic unchanged. Before the inner
strategy aggregates, replies whose parameters have the wrong names or shapes or hold
NaN/Inf are rejected and logged (:mod:`strategies.validation`), whatever the strategy;
per round it keeps the aggregated train metrics and how many clients replied, failed
or were rejected.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from strategies.validation import filter_replies, shapes_of


class InstrumentedStrategy(Strategy):
    """Delegate to ``strategy``; remember each round's train metrics and reply counts."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._round_stats: dict[str, float] = {}
        self._client_rows: list[dict[str, object]] = []
        self._reference: dict[str, tuple[int, ...]] | None = None
        self.current_round = 0  # the round being configured (transports bind it)

    def take_round_stats(self) -> dict[str, float]:
        """Return and clear the last training round's stats.

        Keys: the aggregated train metrics (e.g. ``train-loss``), ``clients-ok``,
        ``clients-failed`` (error replies and rejected updates) and ``clients-rejected``.
        """
        out, self._round_stats = self._round_stats, {}
        return out

    def take_client_rows(self) -> list[dict[str, object]]:
        """Return and clear the last training round's per-client rows.

        One row per sound reply: its node, partition, device profile, train and noise
        metrics, and, if the strategy exposes ``last_estimates`` (as
        :class:`~strategies.NoiseIsolatingFedAvg` does), its noise estimate and weight.
        """
        out, self._client_rows = self._client_rows, []
        return out

    def summary(self) -> None:
        log(INFO, "\t├──> Strategy: %s", type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = shapes_of(arrays)
        self.current_round = server_round
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        rejected: list = []
        if self._reference is not None:
            replies, rejected = filter_replies(replies, self._reference)
        failed = sum(1 for m in replies if m.has_error())
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        stats: dict[str, float] = dict(metrics) if metrics is not None else {}
        stats["clients-ok"] = len(replies) - failed
        stats["clients-failed"] = failed + len(rejected)
        stats["clients-rejected"] = len(rejected)
        stats.update(getattr(self.strategy, "last_stats", {}))  # a RoundDeadline's straggler counts
        late = getattr(self.strategy, "last_late_nodes", set())
        self._client_rows = _client_rows(replies, getattr(self.strategy, "last_estimates", None), late)
        self._client_rows += [{**_identity(m), "status": f"rejected: {why}"} for m, why in rejected]
        self._round_stats = stats
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_round = server_round
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def _client_rows(replies: list[Message], estimates, late: set[int]) -> list[dict[str, object]]:  # noqa: ANN001
    by_node = {e.node_id: e for e in estimates or []}
    rows = []
    for msg in replies:
        if msg.has_error():
            continue
        metrics = next(iter(msg.content.metric_records.values()), {})
        row = _identity(msg)
        for key in ("num-examples", "train-loss", "noise-gap", "circuit-depth", "two-qubit-gates", "swaps", "train-time-s",
                    "fidelity", "latency-s", "qcn-lost-fraction"):
            row[key.replace("-", "_")] = metrics.get(key, "")
        row["late"] = int(msg.metadata.src_node_id in late)
        est = by_node.get(msg.metadata.src_node_id)
        row["noise_var"] = "" if est is None else est.noise_var
        row["snr"] = "" if est is None else est.snr
        row["weight"] = "" if est is None else est.weight
        row["trimmed"] = "" if est is None else est.trimmed
        row["status"] = "late" if row["late"] else "trimmed" if est is not None and est.trimmed else "ok"
        rows.append(row)
    return rows


def _identity(msg: Message) -> dict[str, object]:
    """Node, partition and device a reply says it comes from (claims, for the record)."""
    device = msg.content.config_records.get("device", {})
    return {
        "node_id": msg.metadata.src_node_id,
        "partition_id": device.get("partition-id", ""),
        "profile": device.get("profile", ""),
        "zne": device.get("zne", ""),
    }
