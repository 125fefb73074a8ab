"""What a person sees while a run goes: a live display, the causes of trouble, a final table.

The display follows the ServerApp's ``progress.jsonl`` (:mod:`server.progress`), not its log
lines: on a terminal, a live bar (round k of N, replies this round, elapsed time and ETA,
with rich) under one line per finished round and one per client a round went without; in
a pipe or a file, the same lines without the bar. ``flwr run``'s own output goes to
``logs/flwr-run.log`` without colour codes; its errors, and the last line of a traceback,
reach the console too.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from qfl.common.config import RunConfig
from qfl.launch.commands import CONNECTION
from qfl.launch.config import run_config_arg
from qfl.launch.processes import ProcessGroup, strip_ansi
from server.progress import FILE as PROGRESS_FILE
from server.progress import follow

TAG = "[qfl]"


def _num(value: float | None, spec: str) -> str:
    """A figure as ``spec`` formats it; ``-`` for one the round does not have (NaN, stored as null)."""
    return "-" if value is None else format(value, spec)


def _is_regression(event: dict) -> bool:
    """A row of a regression run (task-kind regression): its R^2 and RMSE columns are filled."""
    return any(event.get(k) is not None and event.get(k) == event.get(k) for k in ("train_r2", "fed_eval_r2"))


def round_line(event: dict, total: int) -> str:
    if _is_regression(event):
        rmse, r2 = event.get("fed_eval_rmse"), event.get("fed_eval_r2")
        figures = (f"held-out-rmse {_num(rmse, '.4f')}  held-out-r2 {_num(r2, '.3f')}  "
                   f"train-rmse {_num(event.get('train_rmse'), '.4f')}  ")
    else:
        held_out = event.get("fed_eval_accuracy")
        figures = (f"test-acc {_num(event['test_accuracy'], '.3f')}  test-loss {_num(event['test_loss'], '.4f')}  "
                   + (f"held-out-acc {held_out:.3f}  " if held_out is not None else "")
                   + f"train-loss {_num(event.get('train_loss'), '.4f')}  ")
    return (f"{TAG} round {event['round']}/{total}  " + figures
            + f"clients {event['clients_ok']} ok / {event['clients_failed']} failed"
            + (f" / {event['clients_rejected']} rejected" if event.get("clients_rejected") else "")
            + f"  {event['round_time_s']:.1f} s")


class LiveDisplay:
    """Follows a run's progress file in a thread and shows it (see the module doc)."""

    def __init__(self, run_dir: Path, total_rounds: int, live: bool | None = None) -> None:
        self.path = run_dir / PROGRESS_FILE
        self.total = total_rounds
        self.live = sys.stdout.isatty() if live is None else live
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._offset = self.path.stat().st_size if self.path.exists() else 0  # an earlier part of a resumed run

    def __enter__(self) -> LiveDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _events(self):  # noqa: ANN202
        yield from follow(self.path, self._stop, self._offset)

    def _run(self) -> None:
        if self.live:
            self._run_live()
        else:
            for event in self._events():
                for line in self._lines(event):
                    print(line, flush=True)

    def _lines(self, event: dict) -> list[str]:
        kind = event.get("event")
        if kind == "start":
            out = [f"{TAG} transport: {event.get('stack', 'plain')}"]
            if event.get("first"):
                out.append(f"{TAG} resuming from round {event['first']}")
            return out
        if kind == "round":
            return [round_line(event, self.total)]
        if kind == "issue":
            who = f"node {event['node']}" if event["node"] else "the round"  # node 0: the round's own cause
            return [f"{TAG}   round {event['round']}, {who}: {event['why']}"]
        if kind == "end" and event.get("status") == "failed":
            return [f"{TAG} the run failed: {event.get('why', '')}"]
        return []

    def _run_live(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[replies]}"),
                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"round 1/{self.total}", total=self.total, replies="")
            for event in self._events():
                for line in self._lines(event):
                    bar.console.print(line, markup=False, highlight=False)
                kind = event.get("event")
                if kind == "start":
                    bar.update(task, completed=event.get("first", 0), description=f"round {event.get('first', 0) + 1}/{self.total}")
                elif kind == "replies" and event.get("phase") == "train":
                    bar.update(task, replies=f"replies {event['received']}/{event['expected']}")
                elif kind == "round":
                    done = int(event["round"])
                    bar.update(task, completed=done, description=f"round {min(done + 1, self.total)}/{self.total}", replies="")


def stream_run(
    app_dir: Path,
    cfg: RunConfig,
    env: dict[str, str],
    log_path: Path,
    verbose: bool,
    timeout: float,
    prefix: tuple[str, ...] = (),
    connection: str = CONNECTION,
    group: ProcessGroup | None = None,
) -> int:
    """``flwr run --stream``, its output to ``log_path``; echo errors (everything with ``verbose``).

    ``prefix`` runs it through another command (e.g. ``ip netns exec NS``); ``group`` is
    told it waits for this child itself.
    """
    cmd = [*prefix, "flwr", "run", str(app_dir), connection, "--stream", "--run-config", run_config_arg(cfg)]
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=app_dir, text=True, errors="replace", bufsize=1, start_new_session=True)
        if group is not None:
            group.own(proc.pid)
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            _kill_group(proc)

        watchdog = threading.Timer(timeout, on_timeout)
        watchdog.start()
        try:
            assert proc.stdout is not None
            in_traceback = False
            for raw in proc.stdout:
                line = strip_ansi(raw)
                log.write(line)
                log.flush()
                # a traceback's last line (not indented) says what went wrong: show it
                cause = in_traceback and line[:1] not in (" ", "\t", "\n")
                in_traceback = (in_traceback and not cause) or "Traceback (most recent call last)" in line
                if verbose or cause or "ERROR" in line:
                    print(line.rstrip(), flush=True)
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
    if timed_out.is_set():
        print(f"{TAG} timed out after {timeout:.0f} s", file=sys.stderr)
        return 124
    return proc.returncode


def _kill_group(proc: subprocess.Popen) -> None:
    import os

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["rounds"]


# the final table's figure columns per task kind: (title, width, row key, format)
CLASSIFICATION_COLUMNS = (("test_acc", 8, "test_accuracy", ">8.3f"), ("test_loss", 9, "test_loss", ">9.4f"))
HELD_OUT_COLUMNS = (("held_acc", 8, "fed_eval_accuracy", ">8.3f"), ("held_loss", 9, "fed_eval_loss", ">9.4f"))
REGRESSION_COLUMNS = (("held_rmse", 9, "fed_eval_rmse", ">9.4f"), ("held_r2", 8, "fed_eval_r2", ">8.3f"),
                      ("train_rmse", 10, "train_rmse", ".4f"))


def format_table(rows: list[dict]) -> str:
    """The final per-round table: a classifier's test and held-out accuracy and loss, or a
    regression's held-out RMSE and R^2 and train RMSE; then clients, time, bytes (and epsilon)."""
    if any(_is_regression(r) for r in rows):
        columns = REGRESSION_COLUMNS
    else:
        held = any(r.get("fed_eval_accuracy") is not None for r in rows)  # federated evaluation: the nodes' held-out rows
        columns = CLASSIFICATION_COLUMNS + (HELD_OUT_COLUMNS if held else ()) + (("train_loss", 10, "train_loss", ".4f"),)
    dp = any(r.get("dp_epsilon") is not None for r in rows)
    head = " ".join([f"{'round':>5}", *(f"{title:>{width}}" for title, width, _, _ in columns),
                     f"{'clients':>7}", f"{'time_s':>7}", f"{'bytes':>9}", *([f"{'epsilon':>8}"] if dp else [])])
    lines = [head, "-" * len(head)]
    for r in rows:
        clients = f"{r['clients_ok']}/{r['clients_ok'] + r['clients_failed'] + r.get('clients_rejected', 0)}"
        lines.append(" ".join([f"{r['round']:>5}", *(f"{_num(r.get(key), spec):>{width}}" for _, width, key, spec in columns),
                               f"{clients:>7}", f"{r['round_time_s']:>7.1f}", f"{r['bytes_down'] + r['bytes_up']:>9}",
                               *([f"{r['dp_epsilon']:>8.3f}"] if dp else [])]))
    return "\n".join(lines)


def elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60} min {seconds % 60:02d} s"
