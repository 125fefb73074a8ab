"""A wrapper that guards and records what any strategy's training round produced.

It delegates every hook to the inner strategy (the shape of Flower's DP wrappers), so
``Strategy.start`` runs the inner strategy's logic unchanged. Before the inner strategy
aggregates, whatever the strategy:

1. replies that are not exactly what a sound ClientApp sends are rejected
   (:func:`~strategies.guard.filter_replies` with a :class:`~strategies.guard.ReplySchema`):
   other records or keys, unreadable or non-float or non-finite data, a bad example count;
2. well-formed replies that would still dominate are bounded
   (:func:`~strategies.guard.robust_screen`): an update far outside the round's
   spread, (nearly) the global model itself, or pointing against the round's coordinate-wise
   median update, is rejected, the others' norms are bounded by twice their median and their
   weights by how far they go across that median update (:func:`~strategies.guard.sideways_screen`:
   at most as far as 1.5 times the round's median such part); an
   inflated example count is capped (to the round's smallest for a reply that names no
   partition), a fidelity outside [1/4, 1] clipped; a delta a strategy accumulates
   (SCAFFOLD's ``control-delta``) is bounded by its length
   (:func:`~strategies.guard.delta_screen`);
3. coordinates a quantum network lost are filled from the clients that delivered them
   (:func:`~strategies.fidelity_weighted.impute_lost`), so no strategy reads a loss as a
   zero update.

No reply can end the run: a failure while validating one drops it, and an aggregation
that still fails keeps the previous global model for that round, with the error logged.
Per round it keeps the aggregated train metrics, how many clients replied, failed, were
rejected or trimmed, and one row per client with its status.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from qfl.common.contract import (
    ARRAYS,
    DEVICE,
    DEVICE_KEYS,
    DEVICE_MITIGATION,
    DEVICE_NUM_PARTITIONS,
    DEVICE_PARTITION,
    DEVICE_PROFILE,
    DEVICE_ZNE,
    EVAL_ACCURACY,
    EVAL_LOSS,
    EVAL_METRICS,
    NESTED_HELD_ROWS,
    NOISE_CLAIM_METRICS,
    NUM_EXAMPLES,
    REPORT_COLUMNS,
    REPORT_LATE,
    REPORT_NAMED,
    REPORT_TRIMMED,
    ROUND_AGGREGATION_FAILED,
    ROUND_CLIENTS_CAPPED,
    ROUND_CLIENTS_FAILED,
    ROUND_CLIENTS_OK,
    ROUND_CLIENTS_REJECTED,
    ROUND_CLIENTS_TRIMMED,
    SECAGG_DROPPED,
    SECAGG_SUMMED,
    TRAIN_METRICS,
)
from server.recorder import CLIENT_METRICS, column
from strategies.delegating import DelegatingStrategy, RoundReport, round_report
from strategies.fidelity_weighted import impute_lost
from strategies.guard import (
    FIDELITY_RANGE,
    NOISE_CLAIM_RANGES,
    NORM_BOUND,
    SIDEWAYS_BOUND,
    TWIN_FRACTION,
    ReplySchema,
    ScreenResult,
    common_optional_metrics,
    delta_screen,
    filter_replies,
    is_finite_number,
    robust_screen,
    shapes_of,
)


class InstrumentedStrategy(DelegatingStrategy):
    """Delegate to ``strategy``; guard its training replies; remember each round.

    Parameters
    ----------
    strategy : Strategy
    schema : ReplySchema, optional
        What a sound training reply holds exactly; ``None`` checks parameters only.
    norm_factor, examples_factor : float
        :func:`~strategies.guard.robust_screen`'s :math:`\\rho` and :math:`\\nu` (0: off).
    examples_bounds : callable, optional
        The most examples each of a round's replies can hold (e.g. its partition's size).
    direction : bool
        :func:`~strategies.guard.robust_screen`'s direction rule (``robust-direction``).
    sideways : bool
        With ``direction``, also bound each update's part across the round's median update
        (:func:`~strategies.guard.sideways_screen`; on unless a study turns it off to measure it).
    fidelity_estimates : callable, optional
        The server's own estimate of each reply's link fidelity and its tolerance (``qcn``).
    """

    def __init__(self, strategy: Strategy, schema: ReplySchema | None = None, norm_factor: float = 0.0,
                 examples_factor: float = 0.0,
                 examples_bounds: Callable[[list[Message]], list[float | None]] | None = None,
                 direction: bool = False,
                 fidelity_estimates: Callable[[list[Message]], list[tuple[float, float] | None]] | None = None,
                 sideways: bool = True) -> None:
        super().__init__(strategy)
        self.fidelity_estimates = fidelity_estimates
        self.schema = schema
        self.norm_factor, self.examples_factor, self.examples_bounds = norm_factor, examples_factor, examples_bounds
        self.direction, self.sideways = direction, sideways
        self._round_stats: dict[str, float] = {}
        self._client_rows: list[dict[str, object]] = []
        self._evaluation: dict[str, float] = {}
        self._reference: dict[str, tuple[int, ...]] | None = None
        self._global: ArrayRecord | None = None
        self.current_round = 0  # the round being configured (transports bind it)

    def take_round_stats(self) -> dict[str, float]:
        """Return and clear the last training round's stats.

        Keys: the aggregated train metrics (e.g. ``train-loss``) and the guard's counts, the
        contract's ``ROUND_CLIENTS_*`` (ok, failed: error replies, rejected, trimmed, capped)
        and ``ROUND_AGGREGATION_FAILED``.
        """
        out, self._round_stats = self._round_stats, {}
        return out

    def take_evaluation(self) -> dict[str, float]:
        """Return and clear the last federated evaluation: ``fed_eval_loss`` and
        ``fed_eval_accuracy``, the sound replies' values weighted by their example counts, and
        ``fed_eval_examples``, the count (NaN, NaN and 0 where no node evaluated)."""
        out = self._evaluation or {"fed_eval_loss": float("nan"), "fed_eval_accuracy": float("nan"), "fed_eval_examples": 0}
        self._evaluation = {}
        return out

    def take_client_rows(self) -> list[dict[str, object]]:
        """Return and clear the last training round's per-client rows.

        One row per reply: its node, partition, device profile, train and noise metrics,
        its ``status`` (``ok``, ``late``, ``trimmed``, ``capped: <claim>``, ``clipped: <claim>``,
        ``rejected: <why>``, ``failed: <why>``) and what the strategies reported about it
        (:func:`~strategies.delegating.round_report`: e.g. noise-isolating's estimates).
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
        self._global = arrays
        self.current_round = server_round
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_partition_order(replies)
        rejected: list[tuple[Message, str]] = []
        claims: dict[int, str] = {}
        if self._reference is not None and self._global is not None:
            nested = _nested(self.strategy)
            if nested is None:
                replies, rejected = filter_replies(replies, self._reference, schema=self.schema)
            else:  # circuits of nested depths: each reply checked against its own layers, then padded for the screens
                replies, rejected = _padded_nested(replies, nested, self._global, self.schema)
            if self.schema is not None:
                replies = common_optional_metrics(replies, self.schema.optional_metrics)
            screen = robust_screen(replies, self._global, self.norm_factor, self.examples_factor,
                                   examples_bounds=self.examples_bounds, direction=self.direction,
                                   fidelity_estimates=self.fidelity_estimates, sideways=self.sideways)
            replies, claims = screen.kept, _bounded_claims(screen)
            rejected += screen.rejected
            for name in self.schema.extra_arrays if self.schema is not None else ():
                sound, against, _ = delta_screen([m for m in replies if not m.has_error()], name, self._global,
                                                 self.norm_factor)
                replies, rejected = sound + [m for m in replies if m.has_error()], rejected + against
            replies = impute_lost(replies, self._global)
        failed = [m for m in replies if m.has_error()]
        try:
            arrays, metrics = self.strategy.aggregate_train(server_round, replies)
            aggregation_failed = 0
        except Exception as err:  # noqa: BLE001 - a round may fail, the run does not
            log(ERROR, "Aggregation failed in round %d, the global model stays as it was: %s: %s\n%s",
                server_round, type(err).__name__, err, traceback.format_exc(limit=3))
            arrays, metrics, aggregation_failed = None, None, 1
        report = RoundReport() if aggregation_failed else round_report(self.strategy)
        for node, said in report.clients.items():  # what a strategy named (e.g. a noise claim its spread contradicts)
            if said.get(REPORT_NAMED):  # a claim the strategy found false comes first, then what the guard bounded
                claims[node] = f"{said[REPORT_NAMED]}; {claims[node]}" if node in claims else str(said[REPORT_NAMED])
        stats: dict[str, float] = dict(metrics) if metrics is not None else {}
        sound = [m for m in replies if not m.has_error()]
        trimmed = sum(1 for m in sound if report.clients.get(m.metadata.src_node_id, {}).get(REPORT_TRIMMED))
        stats[ROUND_CLIENTS_OK] = len(sound) - trimmed
        stats[ROUND_CLIENTS_FAILED] = len(failed)
        stats[ROUND_CLIENTS_REJECTED] = len(rejected)
        stats[ROUND_CLIENTS_TRIMMED] = trimmed
        stats[ROUND_CLIENTS_CAPPED] = len(claims)  # a claim (examples, fidelity, noise) bounded
        stats[ROUND_AGGREGATION_FAILED] = aggregation_failed
        if SECAGG_SUMMED in stats:  # secure aggregation: one reply that sums this many clients
            stats[ROUND_CLIENTS_OK] = stats[SECAGG_SUMMED]
            stats[ROUND_CLIENTS_FAILED] += stats.get(SECAGG_DROPPED, 0)
        stats.update(report.stats)  # e.g. a round deadline's straggler counts
        self._client_rows = _client_rows(sound, report, claims)
        self._client_rows += [{**_identity(m), "status": f"rejected: {why}"} for m, why in rejected]
        self._client_rows += [{"node_id": m.metadata.src_node_id, "status": f"failed: {_short(m.error.reason)}"} for m in failed]
        self._round_stats = stats
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_round = server_round
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        schema = ReplySchema(metrics=frozenset(EVAL_METRICS))
        sound = []
        for msg in in_partition_order(replies):
            try:
                problem = None if msg.has_error() else _evaluate_problem(msg, schema)
            except Exception as err:  # noqa: BLE001
                problem = f"{type(err).__name__} while validating"
            if problem is None:
                sound.append(msg)
            else:
                log(ERROR, "Rejected the evaluation reply of node %d: %s", msg.metadata.src_node_id, problem)
        # an error reply (a node whose evaluation failed) carries no metrics: left out of the weighted figures
        self._evaluation = weighted_evaluation([m for m in sound if not m.has_error()], self.examples_factor)
        try:
            return self.strategy.aggregate_evaluate(server_round, sound)
        except Exception as err:  # noqa: BLE001
            log(ERROR, "Aggregating evaluation replies failed in round %d: %s: %s", server_round, type(err).__name__, err)
            return None


def _nested(strategy: Strategy):  # noqa: ANN202 (a strategy with reply_shapes, or None)
    """The strategy of the chain that aggregates circuits of nested depths (``reply_shapes``), if any."""
    while strategy is not None:
        if hasattr(strategy, "reply_shapes"):
            return strategy
        strategy = getattr(strategy, "strategy", None)  # not a contract name: the wrapped strategy
    return None


def _padded_nested(replies: list[Message], nested, global_arrays: ArrayRecord,  # noqa: ANN001
                   schema: ReplySchema | None) -> tuple[list[Message], list[tuple[Message, str]]]:
    """Replies of nested circuit depths, each checked against the layers it holds (at most those it
    was sent: ``nested.reply_shapes``), then padded with the global model's rows for the layers it
    does not hold, so that the guard's screens see a zero update there (as for a coordinate the
    channel lost); :data:`NESTED_HELD_ROWS` tells the strategy what the client really sent."""
    kept: list[Message] = []
    rejected: list[tuple[Message, str]] = []
    full = {n: a.numpy() for n, a in global_arrays.items()}
    for msg in replies:
        if msg.has_error():
            kept.append(msg)
            continue
        shapes = nested.reply_shapes(msg)
        if isinstance(shapes, str):
            log(WARNING, "Rejected the update of node %d before aggregation: %s", msg.metadata.src_node_id, shapes)
            rejected.append((msg, shapes))
            continue
        sound, bad = filter_replies([msg], shapes, schema=schema)
        rejected += bad
        for m in sound:
            arrays = m.content[ARRAYS]
            held = {n: int(arrays[n].numpy().shape[0]) for n in full if full[n].ndim >= 2}
            content = RecordDict(dict(m.content.items()))
            content[ARRAYS] = ArrayRecord({n: Array(np.concatenate([arrays[n].numpy(), full[n][held[n]:]])
                                                    if n in held else arrays[n].numpy()) for n in full})
            content[NESTED_HELD_ROWS] = ConfigRecord(held)
            padded = copy.copy(m)
            padded.content = content
            kept.append(padded)
    return kept, rejected


def weighted_evaluation(replies: list[Message], examples_factor: float = 0.0) -> dict[str, float]:
    """The nodes' held-out loss and accuracy, each reply weighted by its example count, capped
    (``examples_factor`` > 0) at that many times the replies' median count, as the guard caps
    training claims, so that no node's claim outweighs the others' figures."""
    import numpy as np

    metrics = [next(iter(m.content.metric_records.values())) for m in replies]
    counts = np.array([float(m[NUM_EXAMPLES]) for m in metrics])
    if examples_factor > 0 and len(counts):
        counts = np.minimum(counts, examples_factor * np.median(counts))
    total = float(counts.sum())
    if total <= 0:
        return {}
    return {"fed_eval_loss": float(sum(float(m[EVAL_LOSS]) * n for m, n in zip(metrics, counts)) / total),
            "fed_eval_accuracy": float(sum(float(m[EVAL_ACCURACY]) * n for m, n in zip(metrics, counts)) / total),
            "fed_eval_examples": int(round(total))}


def _evaluate_problem(msg: Message, schema: ReplySchema) -> str | None:
    """Why an evaluation reply is not exactly one MetricRecord with the schema's finite keys."""
    content = msg.content
    if content.array_records or content.config_records:
        return "an evaluation reply carries only metrics"
    records = content.metric_records
    if set(records) != {schema.metricrecord_key}:
        return f"MetricRecords {sorted(records)}, expected exactly ['{schema.metricrecord_key}']"
    metrics = records[schema.metricrecord_key]
    if set(metrics.keys()) != schema.metrics:
        return f"metric keys {sorted(metrics.keys())}, expected {sorted(schema.metrics)}"
    if not all(is_finite_number(v) for v in metrics.values()):
        return "metrics must be finite numbers"
    return None


def device_claim(msg: Message) -> tuple[int | None, int | None]:
    """``(partition-id, num-partitions)`` a reply claims, ``None`` where not a plausible integer."""
    device = msg.content.config_records.get(DEVICE, {}) if not msg.has_error() else {}

    def integer(key: str) -> int | None:
        value = device.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1_000_000 else None

    pid, num = integer(DEVICE_PARTITION), integer(DEVICE_NUM_PARTITIONS)
    return pid, (num if num is not None and num >= 1 else None)


def in_partition_order(replies: Iterable[Message]) -> list[Message]:
    """The replies by the partition they name, then by node ID (errors and the unnamed last).

    Replies arrive in the order the nodes finished; floating-point sums depend on the order
    of their terms, so an aggregate taken in arrival order differs in its last bits from
    run to run. In this order the same config gives the same model, bit for bit.
    """
    def key(msg: Message) -> tuple[float, int]:
        pid = device_claim(msg)[0]
        return (float("inf") if pid is None else pid, msg.metadata.src_node_id)

    return sorted(replies, key=key)


def train_reply_schema(extra_metrics: Iterable[str] = (), extra_configs: dict[str, frozenset[str]] | None = None,
                       extra_arrays: Iterable[str] = (), withheld_metrics: Iterable[str] = ()) -> ReplySchema:
    """What our ClientApp's training reply holds, plus what the transports add (metrics,
    records) and what the strategy asks for (ArrayRecords, e.g. SCAFFOLD's ``control-delta``),
    less the metrics a transport does not send (local DP's data-dependent ones)."""
    configs = {DEVICE: frozenset(DEVICE_KEYS), **(extra_configs or {})}
    optional = frozenset(NOISE_CLAIM_METRICS) - frozenset(withheld_metrics)  # a client's own noise: sent or not
    metrics = frozenset((*TRAIN_METRICS, *extra_metrics)) - frozenset(withheld_metrics) - optional
    return ReplySchema(metrics=metrics, configs=configs, extra_arrays=frozenset(extra_arrays), optional_metrics=optional)


def _bounded_claims(screen: ScreenResult) -> dict[int, str]:
    """What the guard did to each node's claims, in words (nodes whose claims stood left out)."""
    said: dict[int, list[str]] = {}
    for node, (claimed, counted) in screen.capped.items():
        said.setdefault(node, []).append(
            f"capped: claimed {claimed:g} examples" if node not in screen.unbound
            else f"capped: claimed {claimed:g} examples with no partition bound to it to check them against,"
                 f" counted {counted:g} (the round's smallest)")
    for node, scale in screen.scaled.items():
        said.setdefault(node, []).append(
            f"scaled: update norm {NORM_BOUND / scale:.2g} x the round's median, cut to {NORM_BOUND:g} x")
    for node, (ratio, factor) in screen.sideways.items():
        said.setdefault(node, []).append(
            f"sideways: part across the round's median update {ratio:.3g} x the round's median such part, weighed as "
            f"if cut to {SIDEWAYS_BOUND:g} x (weight x {factor:.2f})")
    for node, others in screen.twins.items():
        said.setdefault(node, []).append(
            f"twinned: update all but identical to node(s) {', '.join(map(str, others))}'s (within "
            f"{TWIN_FRACTION:g} x the round's median pairwise distance): the group counts as this one reply")
    for node, (claimed, used) in screen.overclaimed.items():
        said.setdefault(node, []).append(
            f"clipped: claimed fidelity {claimed:g}, above the server's estimate for its path, used {used:.4g}")
    for node, (claimed, used) in screen.clipped.items():
        low, high = FIDELITY_RANGE
        said.setdefault(node, []).append(
            f"clipped: claimed fidelity {claimed:g}, outside [{low:g}, {high:g}], used {used:g}")
    for node, bounded in screen.noise_clipped.items():
        said.setdefault(node, []).extend(
            f"clipped: claimed {key} {claimed:g}, outside {NOISE_CLAIM_RANGES[key]}, used {used:g}"
            for key, claimed, used in bounded)
    return {node: "; ".join(words) for node, words in said.items()}


def _client_rows(replies: list[Message], report: RoundReport, claims: dict[int, str]) -> list[dict[str, object]]:
    rows = []
    for msg in replies:
        node = msg.metadata.src_node_id
        metrics = next(iter(msg.content.metric_records.values()), {})
        row = _identity(msg)
        for key in CLIENT_METRICS:
            row[column(key)] = metrics.get(key, "")
        said = report.clients.get(node, {})
        row.update({column: said.get(column, "") for column in REPORT_COLUMNS})
        row[REPORT_LATE] = int(bool(said.get(REPORT_LATE)))
        row["status"] = (REPORT_LATE if row[REPORT_LATE] else REPORT_TRIMMED if said.get(REPORT_TRIMMED)
                         else claims.get(node, "ok"))
        rows.append(row)
    return rows


def _short(text: str, limit: int = 300) -> str:
    """A node's own words, on one line and bounded (they go to the console and clients.csv)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _identity(msg: Message) -> dict[str, object]:
    """Node, partition and device a reply says it comes from (claims, for the record)."""
    device = msg.content.config_records.get(DEVICE, {})

    def claim(key: str) -> str:
        value = device.get(key, "")
        return value if isinstance(value, (str, int, bool)) and len(str(value)) <= 200 else "?"

    return {
        "node_id": msg.metadata.src_node_id,
        column(DEVICE_PARTITION): claim(DEVICE_PARTITION),
        DEVICE_PROFILE: claim(DEVICE_PROFILE),
        DEVICE_ZNE: claim(DEVICE_ZNE),
        DEVICE_MITIGATION: claim(DEVICE_MITIGATION),
    }
