"""Per-round metrics, plots and checkpoints of one run, under ``<output-dir>/<run-name>/``.

Files (all rewritten atomically after every round, so a crash loses nothing):

- ``metrics.csv`` / ``metrics.json``: one row per round (round 0 = the initial model),
  columns :data:`COLUMNS`;
- ``metrics.png``: test accuracy and losses per round;
- ``clients.csv``: one row per client and round: device profile, hardware metrics of the
  routed circuit, noise-capturing metrics, (noise-isolating strategy) weight and the
  client's DP epsilon;
- ``privacy.json``: the DP ledger (each client's releases, or each round's sample);
- ``checkpoints/round-NNNN.npz``: the global parameters after round ``NNNN``;
  ``checkpoints/latest.npz`` the newest, with its round number under ``__round__``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

COLUMNS = (
    "round",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "round_time_s",
    "bytes_down",
    "bytes_up",
    "clients_ok",
    "clients_failed",
    "dp_epsilon",
    "stragglers",
    "stale_folded",
)
ROUND_KEY = "__round__"
CLIENT_COLUMNS = (
    "round", "node_id", "partition_id", "profile", "zne", "num_examples", "train_loss",
    "noise_gap", "circuit_depth", "two_qubit_gates", "swaps", "train_time_s",
    "noise_var", "snr", "weight", "trimmed", "fidelity", "latency_s", "qcn_lost_fraction", "late",
    "dp_epsilon", "status",
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
        self.rows: list[dict[str, float]] = []
        self.client_rows: list[dict[str, object]] = []

    # --- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, server_round: int, arrays: ArrayRecord) -> Path:
        """Save the global parameters after ``server_round``; return the file."""
        payload = {k: v.numpy() for k, v in arrays.items()}
        payload[ROUND_KEY] = np.asarray(server_round)
        path = self.ckpt_dir / f"round-{server_round:04d}.npz"
        buf = io.BytesIO()
        np.savez(buf, **payload)
        _atomic_write(path, buf.getvalue())
        _atomic_write(self.ckpt_dir / "latest.npz", buf.getvalue())
        return path

    def load_latest(self) -> tuple[int, ArrayRecord] | None:
        """``(round, arrays)`` of the newest checkpoint, or ``None`` if there is none."""
        path = self.ckpt_dir / "latest.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            server_round = int(f[ROUND_KEY])
            arrays = ArrayRecord({k: Array(f[k]) for k in f.files if k != ROUND_KEY})
        metrics = self.run_dir / "metrics.json"
        if metrics.exists():
            rows = json.loads(metrics.read_text())["rounds"]
            self.rows = [r for r in rows if r["round"] <= server_round]
        clients = self.run_dir / "clients.csv"
        if clients.exists():
            with open(clients) as f:
                self.client_rows = [r for r in csv.DictReader(f) if int(r["round"]) <= server_round]
        return server_round, arrays

    # --- privacy ledger ------------------------------------------------------------------
    def save_privacy(self, state: dict) -> None:
        """The DP ledger's state (releases so far), for a resumed run to continue from."""
        _atomic_write(self.privacy_path, json.dumps(state, indent=1).encode())

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
        _atomic_write(self.run_dir / "clients.csv", out.getvalue().encode())

    def add_row(self, row: dict[str, float]) -> None:
        """Append one round's metrics and rewrite the CSV, JSON and plot."""
        missing = set(COLUMNS) - set(row)
        if missing:
            raise ValueError(f"metrics row lacks {sorted(missing)}")
        self.rows.append({k: row[k] for k in COLUMNS})
        self._write()

    def _write(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        _atomic_write(self.run_dir / "metrics.csv", out.getvalue().encode())
        # JSON has no NaN: missing values (round 0 has no training) become null.
        clean = [{k: (None if _is_nan(v) else v) for k, v in r.items()} for r in self.rows]
        _atomic_write(
            self.run_dir / "metrics.json",
            json.dumps({"columns": list(COLUMNS), "rounds": clean}, indent=1).encode(),
        )
        plot_metrics(self.rows, self.run_dir / "metrics.png")


def plot_metrics(rows: list[dict[str, float]], path: Path) -> None:
    """Test accuracy (left) and train/test loss (right) per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_acc.plot(rounds, [r["test_accuracy"] for r in rows], "o-", label="test (central)")
    ax_acc.plot(rounds, [r["train_accuracy"] for r in rows], "s--", label="train (clients)")
    ax_acc.set(xlabel="round", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
    ax_loss.plot(rounds, [r["test_loss"] for r in rows], "o-", label="test (central)")
    ax_loss.plot(rounds, [r["train_loss"] for r in rows], "s--", label="train (clients)")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())


def _is_nan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
