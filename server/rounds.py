"""What the ServerApp does after every round: :class:`RoundRecorder`.

Flower's ``Strategy.start`` calls it with the new global model after each round (its
``evaluate_fn``). In order: evaluate centrally on the held-out split; gather what the round
did (the guard's counts and per-client rows, bytes, nodes that did not answer, messages a
transport refused); account privacy; write the row, the client rows, the privacy ledger
and a checkpoint; then tell the log, the progress file and any metric sinks. A round in
which no client sent a valid update ends the run (:class:`RunFailed`), after it is recorded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from logging import INFO, WARNING

from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from qfl.common.config import REGRESSION, RunConfig
from qfl.common.contract import (
    DEVICE_PARTITION,
    LATENCY_S,
    QCN_METRICS,
    QCN_ROUND_METRICS,
    ROUND_CLIENTS_CAPPED,
    ROUND_CLIENTS_FAILED,
    ROUND_CLIENTS_OK,
    ROUND_CLIENTS_REJECTED,
    ROUND_CLIENTS_TRIMMED,
    ROUND_STALE_FOLDED,
    ROUND_STRAGGLERS,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
)
from server.grid import MeteredGrid
from server.instrumented import InstrumentedStrategy
from server.progress import ProgressLog
from server.recorder import RunRecorder, column
from server.sinks import MetricSink
from strategies.central_dp import CentralDPFixedClipping
from transport.dp import CentralDPLedger, LocalDPLedger
from transport.flower import TransportGrid

if TYPE_CHECKING:
    from transport.qcn_schedule import ScheduleGrid
    from transport.secagg_flower import SecAggGrid

PROGRESS_TAG = "[qfl]"  # the ServerApp's own lines in Flower's log
TEST_LOSS, TEST_ACCURACY = "test-loss", "test-accuracy"  # the MetricRecord Flower gets back


class RunFailed(RuntimeError):
    """The run cannot go on (e.g. a round without a single valid update); the message says why."""


@dataclass
class RoundRecorder:
    """The ServerApp's per-round bookkeeping; call it as Flower's ``evaluate_fn``.

    Attributes
    ----------
    cfg : RunConfig
    start_round : int
        Rounds done before this ServerApp started (a resume): Flower counts from 0 again.
    model, data
        The model to evaluate the global parameters with, and the data set.
    files : RunRecorder
    guard : InstrumentedStrategy
        The strategy Flower runs; it knows the round's replies.
    metered : MeteredGrid
    wire : TransportGrid or None
    ledger : LocalDPLedger, CentralDPLedger or None
    central_dp : CentralDPFixedClipping, SecAggGrid or None
        Under central DP, what sampled the round (its ``last_sample``: nodes available and
        sampled): the DP strategy wrapper, or secure aggregation under distributed DP.
    progress : ProgressLog
    sinks : list[MetricSink]
    """

    cfg: RunConfig
    start_round: int
    model: object
    data: object
    files: RunRecorder
    guard: InstrumentedStrategy
    metered: MeteredGrid
    wire: TransportGrid | None
    ledger: LocalDPLedger | CentralDPLedger | None
    central_dp: CentralDPFixedClipping | None
    progress: ProgressLog
    sinks: list[MetricSink]
    schedule: ScheduleGrid | None = None  # the shared quantum network's plans (qcn-topology)
    secagg: SecAggGrid | None = None  # secure aggregation: a round it could not unmask is named, and the run goes on

    def __post_init__(self) -> None:
        self._clock = time.monotonic()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        test = self.evaluate(arrays)
        result = MetricRecord({TEST_LOSS: test["loss"], TEST_ACCURACY: test["accuracy"]})
        if server_round == 0 and self.start_round > 0:
            return result  # resumed: this round is recorded already
        absolute = self.start_round + server_round
        row, clients, causes = self.gather(server_round, absolute, test)
        unmasked = self.secagg.take_failures() if self.secagg is not None else []
        causes += [(0, f"secure aggregation could not unmask the round: {why}") for why in unmasked]
        self.account_privacy(server_round, row, clients)
        self.record(absolute, row, clients, arrays)
        self.report(absolute, row, causes)
        if server_round > 0 and row[column(ROUND_CLIENTS_OK)] == 0 and not unmasked:
            raise RunFailed(f"round {absolute} got no valid update: "
                            + ("; ".join(f"node {n}: {why}" for n, why in causes) or "no client was sampled"))
        return result

    def evaluate(self, arrays: ArrayRecord) -> dict[str, float]:
        """Loss and accuracy of the global model on the held-out split (NaN where the server holds
        no test set: ``dataset = "file"``, whose nodes evaluate on their own held-out rows)."""
        from qfl.task.train import evaluate  # torch

        if len(self.data.y_test) == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(self.model, self.data.x_test, self.data.y_test)

    def gather(self, server_round: int, absolute: int, test: dict[str, float]) -> tuple[dict, list[dict], list[tuple[int, str]]]:
        """The round's row of ``metrics.csv``, its client rows, and every client it went without, with why."""
        now = time.monotonic()
        train = self.guard.take_round_stats()
        bytes_down, bytes_up, missing = self.metered.take_counters()
        unsent = self.wire.take_unsent() if self.wire is not None else []
        row = {
            "round": absolute,
            "train_loss": train.get(TRAIN_LOSS, float("nan")),
            "train_accuracy": train.get(TRAIN_ACCURACY, float("nan")),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            **self.guard.take_evaluation(),
            "round_time_s": 0.0 if server_round == 0 else now - self._clock,
            "bytes_down": bytes_down,
            "bytes_up": bytes_up,
            column(ROUND_CLIENTS_OK): int(train.get(ROUND_CLIENTS_OK, 0)),
            column(ROUND_CLIENTS_FAILED): int(train.get(ROUND_CLIENTS_FAILED, 0)) + len(missing) + len(unsent),
            column(ROUND_CLIENTS_REJECTED): int(train.get(ROUND_CLIENTS_REJECTED, 0)),
            column(ROUND_CLIENTS_TRIMMED): int(train.get(ROUND_CLIENTS_TRIMMED, 0)),
            column(ROUND_CLIENTS_CAPPED): int(train.get(ROUND_CLIENTS_CAPPED, 0)),
            column(ROUND_STRAGGLERS): int(train.get(ROUND_STRAGGLERS, 0)),
            column(ROUND_STALE_FOLDED): int(train.get(ROUND_STALE_FOLDED, 0)),
            "dp_epsilon": float("nan"),
        }
        if self.cfg.task_kind == REGRESSION:
            row.update(regression_columns(row))
        self._clock = now
        clients = self.guard.take_client_rows() if server_round > 0 else []
        causes = [(r["node_id"], str(r["status"])) for r in clients if r["status"] != "ok"]
        row.update(self.qcn_round(clients))
        if server_round > 0 and row[column(ROUND_CLIENTS_OK)] == 0:  # then why the network's plan served nobody
            causes += [(r["node_id"], str(r["status"])) for r in clients if str(r["status"]).startswith(SKIPPED)]
        causes += [(node, f"nothing sent: {why}") for node, why in unsent]
        causes += [(node, "no reply within the round timeout") for node in missing]
        return row, clients, causes

    def qcn_round(self, clients: list[dict]) -> dict[str, float]:
        """The qcn transport's round columns (NaN without it); over a shared network, each
        client row gets the server's decision and prediction, and a client the plan did not
        serve a row of its own (``skipped: <why>``)."""
        if not self.cfg.uses_transport("qcn"):
            return {column(k): float("nan") for k in QCN_ROUND_METRICS}
        from transport.qcn_schedule import RoundTotals

        plan, decisions = self.schedule.take_round() if self.schedule is not None else (None, {})
        for r in clients:
            if r["node_id"] in decisions:
                r.update(decisions[r["node_id"]][1].columns())
        answered = {r["node_id"] for r in clients}
        for node, (partition, decision) in sorted(decisions.items()):
            if decision.skip and node not in answered:
                clients.append({"node_id": node, column(DEVICE_PARTITION): "" if partition is None else partition,
                                **decision.columns(), "status": f"{SKIPPED}: {decision.reason}"})
        spent = [{k: _number(r.get(column(k))) for k in (*QCN_METRICS, LATENCY_S)} for r in clients
                 if not str(r["status"]).startswith(("failed", "rejected", SKIPPED))]  # not a contract name: statuses
        totals = RoundTotals.of(spent, plan, self.cfg.round_deadline)
        return {column(k): v for k, v in totals.values.items()}

    def account_privacy(self, server_round: int, row: dict, clients: list[dict]) -> None:
        """Epsilon so far: each client's own (local DP), or the released models' (central DP)."""
        if isinstance(self.ledger, LocalDPLedger):
            # an error reply releases nothing, nor does a client the network's plan did not serve
            senders = [r for r in clients if not str(r["status"]).startswith(("failed", SKIPPED))]
            self.ledger.record([privacy_unit(r) for r in senders])
            for r in senders:
                r["dp_epsilon"] = self.ledger.epsilon(privacy_unit(r))
            row["dp_epsilon"] = self.ledger.worst()
        elif isinstance(self.ledger, CentralDPLedger):
            if server_round > 0 and self.central_dp is not None and self.central_dp.last_sample is not None:
                self.ledger.record(*self.central_dp.last_sample)
                self.central_dp.last_sample = None
            row["dp_epsilon"] = self.ledger.epsilon
            for r in clients:
                r["dp_epsilon"] = row["dp_epsilon"]

    def record(self, absolute: int, row: dict, clients: list[dict], arrays: ArrayRecord) -> None:
        """Write the row, the client rows, the privacy ledger, then the checkpoint."""
        self.files.add_row(row)
        if clients:
            self.files.add_client_rows(absolute, clients)
        if self.ledger is not None:
            self.files.save_privacy(self.ledger.state())  # before the checkpoint: never under-counted
        self.files.save_checkpoint(absolute, arrays)
        for sink in self.sinks:
            sink.log_round(absolute, row)

    def report(self, absolute: int, row: dict, causes: list[tuple[int, str]]) -> None:
        self.progress.emit("round", **row)
        if self.cfg.task_kind == REGRESSION:
            log(INFO, "%s round %d/%d  held-out-rmse %.4f  held-out-r2 %.3f  train-rmse %.4f  clients %d ok / %d failed  "
                "%.1f s  %d B down / %d B up", PROGRESS_TAG, absolute, self.cfg.num_server_rounds, row["fed_eval_rmse"],
                row["fed_eval_r2"], row["train_rmse"], row[column(ROUND_CLIENTS_OK)], row[column(ROUND_CLIENTS_FAILED)],
                row["round_time_s"], row["bytes_down"], row["bytes_up"])
        else:
            log(INFO, "%s round %d/%d  test-acc %.3f  test-loss %.4f  held-out-acc %.3f  train-loss %.4f  clients %d ok / "
                "%d failed  %.1f s  %d B down / %d B up", PROGRESS_TAG, absolute, self.cfg.num_server_rounds, row["test_accuracy"],
                row["test_loss"], row["fed_eval_accuracy"], row["train_loss"], row[column(ROUND_CLIENTS_OK)], row[column(ROUND_CLIENTS_FAILED)], row["round_time_s"],
                row["bytes_down"], row["bytes_up"])
        late, folded = row[column(ROUND_STRAGGLERS)], row[column(ROUND_STALE_FOLDED)]
        if late or folded:
            log(INFO, "%s round %d: %d straggler(s) past the %.3g s deadline (%s), %d late update(s) folded in",
                PROGRESS_TAG, absolute, late, self.cfg.round_deadline, self.cfg.straggler_policy, folded)
        if causes:
            log(WARNING, "%s round %d: %d ok, %d failed, %d rejected, %d trimmed, %d capped", PROGRESS_TAG, absolute,
                row[column(ROUND_CLIENTS_OK)], row[column(ROUND_CLIENTS_FAILED)], row[column(ROUND_CLIENTS_REJECTED)], row[column(ROUND_CLIENTS_TRIMMED)], row[column(ROUND_CLIENTS_CAPPED)])
            for node, why in causes:  # node 0: the round's own (no node has ID 0)
                log(WARNING, "%s   %s: %s", PROGRESS_TAG, f"node {node}" if node else "the round", why)
                self.progress.emit("issue", round=absolute, node=node, why=why)


def regression_columns(row: dict) -> dict[str, float]:
    """A regression run's columns of its ``metrics.csv`` row (task-kind regression): the replies carry
    the mean squared error as their loss and :math:`R^2` in the accuracy's place (:mod:`qfl.task.train`),
    so the RMSEs are the roots of the example-weighted mean squared errors (the pooled RMSE), the
    :math:`R^2` the example-weighted mean of the clients' (each on its own rows), and the accuracy
    columns are NaN."""
    nan = float("nan")

    def root(value: object) -> float:
        return math.sqrt(value) if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else nan

    out = {"train_rmse": root(row.get("train_loss")), "train_r2": row.get("train_accuracy", nan),
           "fed_eval_rmse": root(row.get("fed_eval_loss")), "fed_eval_r2": row.get("fed_eval_accuracy", nan)}
    return {**out, "train_accuracy": nan, "fed_eval_accuracy": nan}


SKIPPED = "skipped"  # a clients.csv status: the network's plan did not serve the client  # not a contract name


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def privacy_unit(client_row: dict[str, object]) -> str:
    """Whose privacy a reply spends: its data partition (the data owner), else its node."""
    pid = client_row.get("partition_id", "")
    return f"partition-{pid}" if pid != "" else f"node-{client_row['node_id']}"
