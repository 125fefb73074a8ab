"""Start a run on the compose federation, stream its log, and exit with how it ended.

``python scripts/compose/submit.py`` runs ``flwr run . compose --stream --run-config
"$QFL_RUN_CONFIG"`` (the ``compose`` connection: ``$FLWR_HOME/config.toml``, copied from
``scripts/compose/config.toml``). ``flwr run --stream`` exits 0 however the run ended, so
an operator's ``docker compose run --rm submit`` (and a script around it) could not tell a
failed run from a finished one: this asks the SuperLink (``flwr ls --run-id``) and exits 0
only for ``finished:completed``; otherwise it prints the status and its details and exits 1
(2 when the run did not start at all).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

STARTED = re.compile(r"Successfully started run (\d+)")
COMPLETED = "finished:completed"
STATUS_TRIES = 30


def main() -> int:
    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("config.toml"), home / "config.toml")
    cmd = ["flwr", "run", ".", "compose", "--stream", "--run-config", os.environ.get("QFL_RUN_CONFIG", "")]
    run_id = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # passed through as it comes: the operator watches the run
            sys.stdout.write(line)
            sys.stdout.flush()
            if run_id is None and (found := STARTED.search(line)):
                run_id = found.group(1)
    if run_id is None:
        print(f"submit: the run did not start (flwr run exited {proc.returncode})", file=sys.stderr)
        return 2
    for _ in range(STATUS_TRIES):  # the stream ends with the run; its status may lag a moment
        done = subprocess.run(["flwr", "ls", "compose", "--run-id", run_id, "--format", "json"],
                              capture_output=True, text=True)
        try:
            runs = json.loads(done.stdout).get("runs", [])
            status, details = runs[0]["status"], runs[0].get("status-details", "")
        except (ValueError, LookupError, AttributeError):
            print(f"submit: run {run_id}: its status could not be read: {done.stdout}{done.stderr}", file=sys.stderr)
            return 1
        if status.startswith("finished"):
            break
        time.sleep(1.0)
    if status != COMPLETED:
        print(f"submit: run {run_id} ended {status}" + (f": {details}" if details else ""), file=sys.stderr)
        return 1
    print(f"submit: run {run_id} {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
