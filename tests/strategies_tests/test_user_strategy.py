"""The worked example of docs/strategies.md: a user's strategy, loaded by dotted path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from helpers import make_reply

from qfl.launcher import PROJECT_DIR
from strategies import load_strategy, parse_strategy_options

EXAMPLES = PROJECT_DIR / "docs" / "examples"


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def test_example_strategy_steps_part_of_the_way(on_path, task_identity):
    strategy = load_strategy("server_step:ServerStepFedAvg", **parse_strategy_options("{ server-lr = 0.5 }"))
    old = ArrayRecord({"w": Array(np.zeros(3))})
    strategy._global = old
    replies = [make_reply({"w": np.full(3, v)}, 1, i) for i, v in enumerate((2.0, 4.0))]
    new, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(new["w"].numpy(), np.full(3, 1.5))  # halfway to the mean 3.0
    with pytest.raises(ValueError, match="server_lr"):
        load_strategy("server_step:ServerStepFedAvg", server_lr=2.0)


@pytest.mark.slow
@pytest.mark.integration
def test_user_strategy_runs_a_real_two_round_federation(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable, "-m", "qfl.launcher", "launch", "--clients", "2", "--rounds", "2",
            "--dataset", "iris", "--run-name", "user", "--set", f'output-dir="{tmp_path}"',
            "--strategy", "server_step:ServerStepFedAvg", "--set", 'strategy-options="{ server-lr = 0.8 }"',
            "--set", "local-epochs=3", "--set", "learning-rate=0.1",
        ],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "user" / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    log = (tmp_path / "user" / "logs" / "flwr-run.log").read_text()
    assert "Strategy: ServerStepFedAvg" in log
