"""Every process a launch starts, watched and stopped with psutil.

The launcher makes itself a child subreaper (Linux): a process whose parent exits (a
ClientApp's warm worker, a ClientApp that outlives its SuperExec) is handed to the launcher
instead of to init, so teardown finds it among the launcher's descendants. A reaper thread
collects such adopted processes as soon as they exit (no zombies), leaving alone the
children the launcher waits for itself.
Each process's output goes through the launcher into ``logs/<name>.log``, with terminal
colour codes removed and each line stamped with the time it came. Should the launcher die without stopping them (SIGKILL), its
:mod:`~qfl.launch.watchdog` does: every process started through the group carries the
launch's token in its environment.
"""

from __future__ import annotations

import ctypes
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from qfl.launch.watchdog import MARKER, terminate

PR_SET_CHILD_SUBREAPER = 36
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LaunchError(RuntimeError):
    """The federation could not be launched or did not finish."""


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux ``prctl``); ``False`` where it is not available."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_HANDED_OUT: set[int] = set()  # ports this launcher gave a process, bound or not yet


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and was not handed out before.

    The OS may return a port it just returned again while the first process has not yet
    bound it: SuperNodes started at once once got the same port, and one died.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _listener_pids(port: int) -> set[int | None]:
    """Processes listening on ``port`` (``None`` where the OS does not say)."""
    try:
        return {c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    except psutil.Error:
        return {None}


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    """Wait until ``port`` accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"{what} exited with code {proc.returncode}; see {log}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                owners = _listener_pids(port)
                family = {proc.pid} | {c.pid for c in _children(proc.pid)}
                if None in owners or owners & family:
                    return
                raise LaunchError(f"{what}: port {port} is held by another process {sorted(owners)}; see {log}")
        time.sleep(0.05)
    raise LaunchError(f"{what} did not open port {port} within {timeout:.0f} s; see {log}")


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def log_stamp(at: float) -> str:
    """The time a log line was read, as each ``<name>.log`` line starts: ``HH:MM:SS.mmm``
    (local time; the logs of one launch are read by one clock, so they line up)."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def _pump(stream, path: Path) -> None:  # noqa: ANN001
    """Copy a process's output to ``path``, line by line, without colour codes, each line
    stamped with the time it came (:func:`log_stamp`): a timeline of the launch."""
    with open(path, "w") as log:
        for line in stream:
            log.write(f"{log_stamp(time.time())} {strip_ansi(line)}")
            log.flush()


class ProcessGroup:
    """Every process the launcher starts; :meth:`stop` ends them and all their descendants."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        token = secrets.token_hex(16)
        self.env = {**env, MARKER: token}  # every process started here, and theirs, inherit it
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.commands: dict[str, list[str]] = {}  # every command started, by name (logs/commands.json)
        self._pumps: list[threading.Thread] = []
        self._own: set[int] = set()  # children someone here waits for: never reaped behind their back
        self._stopped = threading.Event()
        if become_subreaper():
            threading.Thread(target=self._reap_adopted, daemon=True).start()
        self._watchdog = self._start_watchdog(token)

    def _start_watchdog(self, token: str) -> subprocess.Popen:
        """The process that ends the launch's processes if this one dies first (its stdin: our pipe)."""
        env = {k: v for k, v in self.env.items() if k != MARKER}
        with open(self.log_dir / "watchdog.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "qfl.launch.watchdog", token], stdin=subprocess.PIPE,
                                    stdout=log, stderr=log, env=env, cwd=Path(__file__).resolve().parents[2],
                                    start_new_session=True)  # the terminal's hang-up must not reach it
        self.own(proc.pid)
        return proc

    def own(self, pid: int) -> None:
        """A child this process waits for itself (e.g. ``flwr run``)."""
        self._own.add(pid)

    def _reap_adopted(self) -> None:
        import os

        while not self._stopped.wait(0.5):
            while True:
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    break
                if info is None or info.si_pid in self._own:
                    break
                try:
                    os.waitpid(info.si_pid, os.WNOHANG)  # an adopted orphan: nobody else will
                except ChildProcessError:
                    break

    def start(self, name: str, cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``cmd`` with the group's environment plus ``env``; its output to ``<name>.log``."""
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
            cwd=cwd,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: a Ctrl-C at the terminal is ours to handle
        )
        self.own(proc.pid)
        pump = threading.Thread(target=_pump, args=(proc.stdout, self.log_dir / f"{name}.log"), daemon=True)
        pump.start()
        self._pumps.append(pump)
        self._record(name, cmd, proc)
        return proc

    def _record(self, name: str, cmd: list[str], proc: subprocess.Popen) -> None:
        """Which process is which (``pids.json``) and how each was started (``commands.json``),
        for users (and tests) who want to inspect or kill one, or see that none runs ``--insecure``."""
        self.procs.append((name, proc))
        self.commands[name] = cmd
        (self.log_dir / "pids.json").write_text(json.dumps({n: p.pid for n, p in self.procs}, indent=1))
        (self.log_dir / "commands.json").write_text(json.dumps(self.commands, indent=1))

    def run_all(self, cmds: dict[str, list[str]], timeout: float) -> dict[str, tuple[int, str]]:
        """Run one-shot commands (``flwr supernode register``) at once and wait for them all:
        each one's exit code and output (also in ``<name>.log``, colour codes removed).

        They start together because each ``flwr`` spends seconds importing; one still running
        after ``timeout`` is killed (exit code ``-9``). The group owns them: the reaper thread
        never takes the exit code we wait for, and :meth:`stop` ends them on Ctrl-C.
        """
        started = []
        for name, cmd in cmds.items():
            with open(self.log_dir / f"{name}.log", "w") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=self.env, start_new_session=True)
            self.own(proc.pid)
            self._record(name, cmd, proc)
            started.append((name, proc))
        deadline = time.monotonic() + timeout
        done = {}
        for name, proc in started:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            done[name] = (proc.returncode, strip_ansi((self.log_dir / f"{name}.log").read_text(errors="replace")))
        return done

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every process we started and every descendant (ServerApp, ClientApps,
        warm workers), SIGKILL what is left after ``grace_s``, and reap them all."""
        self._stopped.set()
        terminate([p for p in descendants() if p.pid != self._watchdog.pid], grace_s)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for pump in self._pumps:
            pump.join(timeout=5)
        self.procs.clear()
        self._pumps.clear()
        self._watchdog.stdin.close()  # its last sweep: anything of the launch that escaped the tree
        try:
            self._watchdog.wait(timeout=2 * grace_s + 5)
        except subprocess.TimeoutExpired:
            self._watchdog.kill()


def descendants() -> list[psutil.Process]:
    """Every live descendant of this process (orphans it adopted as a subreaper included)."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
