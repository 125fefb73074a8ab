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
        "bytes_up": 12 * r, "clients_ok": 2, "clients_failed": 0, "clients_rejected": 0, "clients_trimmed": 0, "clients_capped": 0, "dp_epsilon": float("nan"), "stragglers": 0, "stale_folded": 0,
    }


def test_metrics_files_and_plot(tmp_path):
    rec = RunRecorder(tmp_path / "run")
    for r, acc in enumerate([0.3, 0.5, 0.7]):
        rec.add_row(_row(r, acc))
    rec.close()  # the plot is drawn in the background
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
    latest = again.load_latest()
    server_round, loaded = latest.server_round, latest.arrays
    assert server_round == 2 and latest.skipped == []
    np.testing.assert_array_equal(loaded["w"].numpy(), arrays["w"].numpy())
    assert [r["round"] for r in again.rows] == [0, 1, 2]
    assert math.isclose(again.rows[-1]["test_accuracy"], 0.2)


def _three_checkpoints(tmp_path):
    from flwr.app import Array

    rec = RunRecorder(tmp_path / "run")
    for r in range(3):
        rec.add_row(_row(r, 0.1 * r))
        rec.save_checkpoint(r, ArrayRecord({"w": Array(np.full((2, 3), float(r)))}))
    return tmp_path / "run" / "checkpoints"


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte", "nan", "negative-round", "wrong-round"])
def test_resume_skips_a_damaged_checkpoint_for_the_newest_intact_one(tmp_path, damage):
    ckpt = _three_checkpoints(tmp_path)
    newest = ckpt / "round-0002.npz"
    data = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flipped-byte":
        with np.load(newest) as f:
            payload = {k: f[k] for k in f.files}
        payload["w"] = payload["w"].copy()
        payload["w"][0, 0] += 1.0  # a bit flip in the data, the checksum unchanged
        np.savez(newest, **payload)
    else:
        # a file that would pass the checksum, written by someone who recomputed it
        from server.recorder import CHECKSUM_KEY, ROUND_KEY, _checksum

        with np.load(newest) as f:
            payload = {k: f[k] for k in f.files}
        if damage == "nan":
            payload["w"] = np.full((2, 3), np.nan)
        else:
            payload[ROUND_KEY] = np.asarray(-1 if damage == "negative-round" else 7)
        payload[CHECKSUM_KEY] = np.frombuffer(_checksum(payload), dtype=np.uint8)
        np.savez(newest, **payload)
    latest = RunRecorder(tmp_path / "run").load_latest(max_round=10)
    assert latest.server_round == 1 and latest.path.name == "round-0001.npz"
    assert [name for name, _ in latest.skipped] == ["round-0002.npz"]
    np.testing.assert_array_equal(latest.arrays["w"].numpy(), np.full((2, 3), 1.0))


def test_resume_refuses_when_no_checkpoint_is_intact(tmp_path):
    from server.recorder import CheckpointError

    ckpt = _three_checkpoints(tmp_path)
    for path in ckpt.glob("round-*.npz"):
        path.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="no intact checkpoint.*round-0002.npz: unreadable"):
        RunRecorder(tmp_path / "run").load_latest()


def test_a_round_past_the_run_length_is_impossible(tmp_path):
    _three_checkpoints(tmp_path)
    latest = RunRecorder(tmp_path / "run").load_latest(max_round=1)
    assert latest.server_round == 1 and latest.skipped[0][1] == "impossible round 2"
