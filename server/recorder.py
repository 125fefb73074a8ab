"""Per-round metrics, plots and checkpoints of one run, under ``<output-dir>/<run-name>/``.

Files (all rewritten atomically after every round, so a crash loses nothing):

- ``metrics.csv`` / ``metrics.json``: one row per round (round 0 = the initial model),
  columns :data:`COLUMNS`;
- ``metrics.png``: test accuracy and losses per round;
- ``clients.csv``: one row per client and round: device profile, hardware metrics of the
  routed circuit, noise-capturing metrics, (noise-isolating strategy) weight and the
  client's DP epsilon; over a shared quantum network also the server's decision for it and
  what that predicted (fidelity, lost share, latency, Bell pairs) beside what it realised,
  and a ``skipped: <why>`` row for a client the plan did not serve;
- ``privacy.json``: the DP ledger (each client's releases, or each round's sample);
- ``checkpoints/round-NNNN.npz``: the global parameters after round ``NNNN``, with the
  round under ``__round__`` and a SHA-256 of everything under ``__sha256__``;
  ``checkpoints/latest.npz`` a copy of the newest. A resume takes the newest intact one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

from qfl.common.contract import (
    CIRCUIT_DEPTH,
    CIRCUIT_METRICS,
    DEVICE_MITIGATION,
    DEVICE_PARTITION,
    DEVICE_PROFILE,
    DEVICE_ZNE,
    FIDELITY,
    LATENCY_S,
    NOISE_CONTRACTION,
    NOISE_GAP,
    NUM_EXAMPLES,
    PEC_GAMMA2,
    QCN_BELL_PAIRS,
    QCN_BYTES,
    QCN_BYTES_SAVED,
    QCN_LOST_FRACTION,
    QCN_PAIRS_SAVED,
    QCN_ROUND_METRICS,
    REPORT_COLUMNS,
    ROUND_CLIENTS_CAPPED,
    ROUND_CLIENTS_FAILED,
    ROUND_CLIENTS_OK,
    ROUND_CLIENTS_REJECTED,
    ROUND_CLIENTS_TRIMMED,
    ROUND_STALE_FOLDED,
    ROUND_STRAGGLERS,
    SCHEDULE_COLUMNS,
    SWAPS,
    TRAIN_LOSS,
    TRAIN_TIME_S,
    TWO_QUBIT_GATES,
    UPDATE_NOISE_VAR,
)
from qfl.common.files import atomic_write


def column(name: str) -> str:
    """A contract name as a CSV column: dashes become underscores."""
    return name.replace("-", "_")


COLUMNS = (
    "round",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "fed_eval_loss",  # federated evaluation: the sampled nodes' held-out rows, weighted by their example counts
    "fed_eval_accuracy",
    "fed_eval_examples",
    "train_rmse",  # task-kind regression: the root of train_loss, the clients' mean squared error
    "train_r2",  # regression: the clients' R^2 (each on its last epoch), weighted by examples
    "fed_eval_rmse",  # regression: the root of fed_eval_loss, the nodes' pooled held-out mean squared error
    "fed_eval_r2",  # regression: the nodes' held-out R^2, weighted by their example counts
    "round_time_s",
    "bytes_down",
    "bytes_up",
    column(ROUND_CLIENTS_OK),
    column(ROUND_CLIENTS_FAILED),
    column(ROUND_CLIENTS_REJECTED),
    column(ROUND_CLIENTS_TRIMMED),
    column(ROUND_CLIENTS_CAPPED),
    "dp_epsilon",
    column(ROUND_STRAGGLERS),
    column(ROUND_STALE_FOLDED),
    *map(column, QCN_ROUND_METRICS),  # the qcn transport's round (NaN without it)
)
QCN_COLUMNS = frozenset(map(column, QCN_ROUND_METRICS))
FED_EVAL_COLUMNS = frozenset(("fed_eval_loss", "fed_eval_accuracy", "fed_eval_examples"))  # NaN without federated evaluation
REGRESSION_COLUMNS = frozenset(("train_rmse", "train_r2", "fed_eval_rmse", "fed_eval_r2"))  # NaN in classification
RESULTS = ("metrics.json", "checkpoints")  # what makes a folder a run's
ROUND_KEY = "__round__"
CHECKSUM_KEY = "__sha256__"


def holds_run(run_dir: Path) -> bool:
    """Whether a folder holds a run's results (metrics or checkpoints): never reuse it for a new run."""
    return any((Path(run_dir) / name).exists() for name in RESULTS)


class CheckpointError(RuntimeError):
    """No checkpoint of the run can be trusted."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that passed every check, and the newer ones that did not."""

    server_round: int
    arrays: ArrayRecord
    path: Path
    skipped: list[tuple[str, str]]  # (file, why) of newer checkpoints passed over


def _checksum(payload: dict[str, np.ndarray]) -> bytes:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(k for k in payload if k != CHECKSUM_KEY):
        value = np.ascontiguousarray(payload[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.digest()


def _read_checkpoint(path: Path, max_round: int | None) -> tuple[str | None, tuple[int, ArrayRecord] | None]:
    """``(problem, None)`` or ``(None, (round, arrays))``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            payload = {k: f[k] for k in f.files}
    except Exception as err:  # noqa: BLE001 - a damaged file is a reason, not a crash
        return f"unreadable ({type(err).__name__}: {err})", None
    if CHECKSUM_KEY not in payload or ROUND_KEY not in payload:
        return "no checksum or round", None
    if payload[CHECKSUM_KEY].tobytes() != _checksum(payload):
        return "checksum mismatch", None
    server_round = int(payload[ROUND_KEY])
    if path.name != f"round-{server_round:04d}.npz" or server_round < 0 or (max_round is not None and server_round > max_round):
        return f"impossible round {server_round}", None
    arrays = {k: v for k, v in payload.items() if k not in (ROUND_KEY, CHECKSUM_KEY)}
    for name, value in arrays.items():
        if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            return f"'{name}' is not finite floating point", None
    return None, (server_round, ArrayRecord({k: Array(v) for k, v in arrays.items()}))
# clients.csv: who (claims), what it reported, what the strategies made of it, its epsilon, its fate
CLIENT_METRICS = (NUM_EXAMPLES, TRAIN_LOSS, NOISE_GAP, UPDATE_NOISE_VAR, NOISE_CONTRACTION, PEC_GAMMA2, CIRCUIT_DEPTH,
                  TWO_QUBIT_GATES, SWAPS, TRAIN_TIME_S, FIDELITY, LATENCY_S, QCN_LOST_FRACTION, QCN_BELL_PAIRS,
                  QCN_PAIRS_SAVED, QCN_BYTES, QCN_BYTES_SAVED, *CIRCUIT_METRICS)
CLIENT_COLUMNS = (
    "round", "node_id", column(DEVICE_PARTITION), DEVICE_PROFILE, DEVICE_ZNE, DEVICE_MITIGATION,
    *map(column, CLIENT_METRICS),
    *REPORT_COLUMNS, *SCHEDULE_COLUMNS, "dp_epsilon", "status",
)


class RunRecorder:
    """Writes a run's metrics, plot and checkpoints; reloads them to resume.

    Parameters
    ----------
    run_dir : Path
        Directory of this run; created if missing.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.privacy_path = self.run_dir / "privacy.json"
        # the plot is redrawn off the round's critical path, one at a time
        self._plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-plot")
        self._plot: Future | None = None
        self.rows: list[dict[str, float]] = []
        self.client_rows: list[dict[str, object]] = []

    # --- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, server_round: int, arrays: ArrayRecord) -> Path:
        """Save the global parameters after ``server_round`` with their checksum; return the file.

        Written to a temporary file, flushed to disk and renamed: a crash leaves the old
        file or the new one, never half of one.
        """
        payload = {k: v.numpy() for k, v in arrays.items()}
        payload[ROUND_KEY] = np.asarray(server_round)
        payload[CHECKSUM_KEY] = np.frombuffer(_checksum(payload), dtype=np.uint8)
        path = self.ckpt_dir / f"round-{server_round:04d}.npz"
        buf = io.BytesIO()
        np.savez(buf, **payload)
        atomic_write(path, buf.getvalue())
        atomic_write(self.ckpt_dir / "latest.npz", buf.getvalue())
        return path

    def load_latest(self, max_round: int | None = None) -> Checkpoint | None:
        """The newest intact checkpoint (``None`` if there is no checkpoint at all).

        Checkpoints are tried newest first; one that cannot be read, fails its checksum,
        holds a non-finite value or an impossible round (negative, above ``max_round``, or
        not the round its name says) is skipped, and the reason is kept in
        :attr:`Checkpoint.skipped`. Metrics rows after the chosen round are dropped.

        Raises
        ------
        CheckpointError
            Checkpoints exist but none is intact.
        """
        files = sorted(self.ckpt_dir.glob("round-*.npz"), reverse=True)
        if not files:
            return None
        skipped: list[tuple[str, str]] = []
        for path in files:
            problem, loaded = _read_checkpoint(path, max_round)
            if problem is not None:
                skipped.append((path.name, problem))
                continue
            server_round, arrays = loaded
            self._keep_history(server_round)
            return Checkpoint(server_round, arrays, path, skipped)
        raise CheckpointError("no intact checkpoint in " + str(self.ckpt_dir) + ": "
                              + "; ".join(f"{name}: {why}" for name, why in skipped))

    def _keep_history(self, server_round: int) -> None:
        metrics = self.run_dir / "metrics.json"
        if metrics.exists():
            rows = json.loads(metrics.read_text())["rounds"]
            self.rows = [r for r in rows if r["round"] <= server_round]
        clients = self.run_dir / "clients.csv"
        if clients.exists():
            with open(clients) as f:
                self.client_rows = [r for r in csv.DictReader(f) if int(r["round"]) <= server_round]

    # --- privacy ledger ------------------------------------------------------------------
    def save_privacy(self, state: dict) -> None:
        """The DP ledger's state (releases so far), for a resumed run to continue from."""
        atomic_write(self.privacy_path, json.dumps(state, indent=1).encode())

    def load_privacy(self) -> dict | None:
        if not self.privacy_path.exists():
            return None
        return json.loads(self.privacy_path.read_text())

    # --- metrics ---------------------------------------------------------------------
    def add_client_rows(self, server_round: int, rows: list[dict[str, object]]) -> None:
        """Append one round's per-client rows and rewrite ``clients.csv``."""
        self.client_rows.extend({**{k: r.get(k, "") for k in CLIENT_COLUMNS}, "round": server_round} for r in rows)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CLIENT_COLUMNS)
        writer.writeheader()
        writer.writerows(self.client_rows)
        atomic_write(self.run_dir / "clients.csv", out.getvalue().encode())

    def add_row(self, row: dict[str, float]) -> None:
        """Append one round's metrics and rewrite the CSV, JSON and plot (the qcn transport's
        columns may be left out: NaN)."""
        missing = set(COLUMNS) - set(row) - QCN_COLUMNS - FED_EVAL_COLUMNS - REGRESSION_COLUMNS
        if missing:
            raise ValueError(f"metrics row lacks {sorted(missing)}")
        self.rows.append({k: row.get(k, float("nan")) for k in COLUMNS})
        self._write()

    def _write(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.run_dir / "metrics.csv", out.getvalue().encode())
        # JSON has no NaN: missing values (round 0 has no training) become null.
        clean = [{k: (None if _is_nan(v) else v) for k, v in r.items()} for r in self.rows]
        atomic_write(
            self.run_dir / "metrics.json",
            json.dumps({"columns": list(COLUMNS), "rounds": clean}, indent=1).encode(),
        )
        self._plot = self._plotter.submit(plot_metrics, [dict(r) for r in self.rows], self.run_dir / "metrics.png")

    def close(self) -> None:
        """Wait for the last plot (files are complete after this)."""
        self._plotter.shutdown(wait=True)
        if self._plot is not None:
            self._plot.result()  # a plotting error surfaces here


def plot_metrics(rows: list[dict[str, float]], path: Path) -> None:
    """Test accuracy (left) and train/test loss (right) per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.5))
    regression = any(not _is_nan(r.get("train_r2", float("nan"))) or not _is_nan(r.get("fed_eval_r2", float("nan")))
                     for r in rows)
    if regression:  # task-kind regression: R^2 where a classifier has accuracy, mean squared error as the loss
        if any(not _is_nan(r.get("fed_eval_r2", float("nan"))) for r in rows):
            ax_acc.plot(rounds, [r["fed_eval_r2"] for r in rows], "^-", label="held-out (nodes)")
        ax_acc.plot(rounds, [r["train_r2"] for r in rows], "s--", label="train (clients)")
        ax_acc.set(xlabel="round", ylabel="R^2", title="Coefficient of determination")
    else:
        if any(not _is_nan(r["test_accuracy"]) for r in rows):
            ax_acc.plot(rounds, [r["test_accuracy"] for r in rows], "o-", label="test (central)")
        if any(not _is_nan(r.get("fed_eval_accuracy", float("nan"))) for r in rows):
            ax_acc.plot(rounds, [r["fed_eval_accuracy"] for r in rows], "^-", label="held-out (nodes)")
        ax_acc.plot(rounds, [r["train_accuracy"] for r in rows], "s--", label="train (clients)")
        ax_acc.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
    if any(not _is_nan(r["test_loss"]) for r in rows):
        ax_loss.plot(rounds, [r["test_loss"] for r in rows], "o-", label="test (central)")
    if any(not _is_nan(r.get("fed_eval_loss", float("nan"))) for r in rows):
        ax_loss.plot(rounds, [r["fed_eval_loss"] for r in rows], "^-", label="held-out (nodes)")
    ax_loss.plot(rounds, [r["train_loss"] for r in rows], "s--", label="train (clients)")
    ax_loss.set(xlabel="round", ylabel="mean squared error" if regression else "cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _is_nan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)
