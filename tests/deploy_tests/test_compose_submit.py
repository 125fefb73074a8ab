"""scripts/compose/submit.py: the operator's `submit` exits with how the run ended.

A stand-in `flwr` on PATH plays the SuperLink's answers (the real path runs in
test_compose.py on a real engine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
SUBMIT = PROJECT_DIR / "scripts" / "compose" / "submit.py"

FAKE_FLWR = """#!/bin/sh
if [ "$1" = run ]; then
    echo "$@" > "$FAKE_DIR/run-args"
    [ -n "$FAKE_RUN_ID" ] && echo "Successfully started run $FAKE_RUN_ID"
    echo "a log line"
    exit 0
fi
if [ "$1" = ls ]; then
    echo '{"success": true, "runs": [{"run-id": "'"$FAKE_RUN_ID"'", "status": "'"$FAKE_STATUS"'", "status-details": "'"$FAKE_DETAILS"'"}]}'
fi
"""


def _submit(tmp_path: Path, run_id: str, status: str, details: str = "") -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "flwr").write_text(FAKE_FLWR)
    (bin_dir / "flwr").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FLWR_HOME": str(tmp_path / "home"),
           "FAKE_DIR": str(tmp_path), "FAKE_RUN_ID": run_id, "FAKE_STATUS": status, "FAKE_DETAILS": details,
           "QFL_RUN_CONFIG": "num-server-rounds=1"}
    return subprocess.run([sys.executable, str(SUBMIT)], capture_output=True, text=True, env=env, timeout=60)


def test_a_completed_run_exits_zero_and_its_log_is_passed_through(tmp_path):
    done = _submit(tmp_path, "42", "finished:completed")
    assert done.returncode == 0, done.stderr
    assert "a log line" in done.stdout and "run 42 finished:completed" in done.stdout
    assert (tmp_path / "run-args").read_text().split() == ["run", ".", "compose", "--stream", "--run-config",
                                                          "num-server-rounds=1"]
    assert (tmp_path / "home" / "config.toml").is_file()  # the compose connection


@pytest.mark.parametrize("status", ["finished:failed", "finished:stopped"])
def test_a_run_that_did_not_complete_exits_one_naming_its_status_and_cause(tmp_path, status):
    done = _submit(tmp_path, "7", status, "round 2 got no valid update")
    assert done.returncode == 1
    assert f"run 7 ended {status}: round 2 got no valid update" in done.stderr


def test_a_run_that_never_started_exits_two(tmp_path):
    done = _submit(tmp_path, "", "")
    assert done.returncode == 2 and "did not start" in done.stderr
