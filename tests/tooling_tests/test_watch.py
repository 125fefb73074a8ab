"""Runs a person can watch: progress events, the live display, clean logs, metric sinks."""

from __future__ import annotations

import sys

import pytest

from qfl.launch.console import LiveDisplay
from server.progress import ProgressLog

ROW = {"round": 1, "train_loss": 0.9, "train_accuracy": 0.5, "test_loss": 0.8, "test_accuracy": 0.6, "round_time_s": 4.2,
       "bytes_down": 10, "bytes_up": 12, "clients_ok": 2, "clients_failed": 1, "clients_rejected": 0,
       "clients_trimmed": 0, "clients_capped": 0, "dp_epsilon": float("nan"), "stragglers": 0, "stale_folded": 0}


def _events(run_dir, pause=0.0):
    import time

    log = ProgressLog(run_dir)
    log.emit("start", rounds=3, first=0, stack="qkd")
    log.emit("replies", round=1, phase="train", received=0, expected=3)
    log.emit("replies", round=1, phase="train", received=2, expected=3)
    time.sleep(pause)  # long enough for a terminal to show it
    log.emit("round", **ROW)
    log.emit("issue", round=1, node=42, why="no reply within the round timeout")
    log.emit("end", status="failed", why="RunFailed: round 2 got no valid update")


def test_progress_events_reach_the_console_as_lines(tmp_path, capsys):
    with LiveDisplay(tmp_path, total_rounds=3, live=False):
        _events(tmp_path)
    assert capsys.readouterr().out.splitlines() == [
        "[qfl] transport: qkd",
        "[qfl] round 1/3  test-acc 0.600  test-loss 0.8000  train-loss 0.9000  clients 2 ok / 1 failed  4.2 s",
        "[qfl]   round 1, node 42: no reply within the round timeout",
        "[qfl] the run failed: RunFailed: round 2 got no valid update",
    ]


def test_a_resumed_run_shows_only_its_own_events(tmp_path, capsys):
    ProgressLog(tmp_path).emit("round", **ROW)  # the earlier launch's
    with LiveDisplay(tmp_path, total_rounds=3, live=False):
        ProgressLog(tmp_path).emit("round", **{**ROW, "round": 2})
    out = capsys.readouterr().out
    assert "round 2/3" in out and "round 1/3" not in out


def test_the_live_display_draws_a_bar_in_a_terminal(tmp_path, monkeypatch):
    import io

    from rich import console as rich_console

    screen = io.StringIO()
    real = rich_console.Console
    monkeypatch.setattr(rich_console, "Console", lambda **kw: real(file=screen, force_terminal=True, width=120, **kw))
    with LiveDisplay(tmp_path, total_rounds=3, live=True):
        _events(tmp_path, pause=1.0)
    from qfl.launch.processes import strip_ansi

    text = strip_ansi(screen.getvalue())
    assert "round 1/3" in text and "replies 2/3" in text and "ETA" in text  # the bar
    assert "[qfl] round 1/3  test-acc 0.600" in text and "node 42: no reply" in text  # the lines above it


def test_logs_of_flower_processes_carry_no_escape_codes_and_a_time_stamp(tmp_path):
    import re

    from qfl.launch.processes import ProcessGroup

    group = ProcessGroup({}, tmp_path)
    group.start("colours", [sys.executable, "-c", "print('\\x1b[92mINFO \\x1b[0m:      hello')"]).wait()
    group.stop()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO :      hello\n", (tmp_path / "colours.log").read_text())


# --- TensorBoard and MLflow ------------------------------------------------------------------


def _cfg(defaults, log_to):
    from qfl.common.config import RunConfig

    return RunConfig.from_run_config({**defaults, "log-to": log_to})


def test_tensorboard_and_mlflow_get_every_round(defaults, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from server.sinks import open_sinks

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sinks = open_sinks(_cfg(defaults, "tensorboard,mlflow"), tmp_path / "run")
    for r, acc in ((1, 0.5), (2, 0.75)):
        for sink in sinks:
            sink.log_round(r, {**ROW, "round": r, "test_accuracy": acc})
    for sink in sinks:
        sink.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("test_accuracy")] == [(1, 0.5), (2, 0.75)]
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs(client.get_experiment_by_name("qfl").experiment_id)
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    assert run.data.params["dataset"] == defaults["dataset"]


def test_a_sink_whose_package_is_missing_is_a_clear_error(defaults, monkeypatch):
    import importlib.util

    from qfl.common.config import ConfigError
    from server.sinks import check_sinks

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match="'log-to': mlflow is not installed: pip install mlflow-skinny sqlalchemy alembic"):
        check_sinks(_cfg(defaults, "mlflow"))
