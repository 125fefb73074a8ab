"""Run outputs: metrics rows, plot and per-round checkpoints that resume exactly."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from flwr.app import ArrayRecord

from server.recorder import COLUMNS, RunRecorder


def _row(r, acc):
    return {
        "round": r, "train_loss": float("nan") if r == 0 else 1.0 / r, "train_accuracy": float("nan"),
        "test_loss": 1.0, "test_accuracy": acc, "round_time_s": 0.5 * r, "bytes_down": 10 * r,
        "bytes_up": 12 * r, "clients_ok": 2, "clients_failed": 0, "dp_epsilon": float("nan"), "stragglers": 0, "stale_folded": 0,
    }


def test_metrics_files_and_plot(tmp_path):
    rec = RunRecorder(tmp_path / "run")
    for r, acc in enumerate([0.3, 0.5, 0.7]):
        rec.add_row(_row(r, acc))
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["test_accuracy"]) for r in rows] == [0.3, 0.5, 0.7]
    assert list(rows[0]) == list(COLUMNS)
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert data["rounds"][0]["train_loss"] is None  # NaN is not JSON
    assert (tmp_path / "run" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="lacks"):
        rec.add_row({"round": 4})


def test_checkpoint_round_trip_and_resume(tmp_path):
    rec = RunRecorder(tmp_path / "run")
    assert rec.load_latest() is None
    rng = np.random.default_rng(0)
    for r in range(3):
        arrays = ArrayRecord({"w": __import__("flwr.app", fromlist=["Array"]).Array(rng.normal(size=(2, 3)))})
        rec.add_row(_row(r, 0.1 * r))
        rec.save_checkpoint(r, arrays)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "latest.npz", "round-0000.npz", "round-0001.npz", "round-0002.npz",
    ]
    again = RunRecorder(tmp_path / "run")
    server_round, loaded = again.load_latest()
    assert server_round == 2
    np.testing.assert_array_equal(loaded["w"].numpy(), arrays["w"].numpy())
    assert [r["round"] for r in again.rows] == [0, 1, 2]
    assert math.isclose(again.rows[-1]["test_accuracy"], 0.2)
