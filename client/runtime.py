"""Where a ClientApp's work runs: in a warm per-node worker, or in this process.

Flower starts a fresh ClientApp process for every message; importing torch and PennyLane
and building the data partition and the model costs seconds each time. With
``warm-runtime = true`` (the default) the ClientApp stays thin (flwr, numpy, the
transports) and hands each message to a long-lived worker process (:mod:`client.worker`)
that the node's first message starts and later messages reuse:

- **one worker per node and model-defining configuration** (:func:`client.job.model_key`)
  and code version: a run with other settings gets its own;
- **bounded lifetime**: the worker exits when its SuperNode exits (it watches the SuperNode's
  executor, which Flower ties to the SuperNode's life; :func:`watched_pid`),
  after ``worker-idle-timeout`` seconds without work, and on SIGTERM;
- **private IPC**: a Unix-domain socket in a directory only this user can open
  (``$QFL_RUNTIME_DIR``, ``$XDG_RUNTIME_DIR/qfl`` or ``/tmp/qfl-<uid>``, mode 0700, this
  user's and not a link, else refused with a message naming it), with a random
  authentication key (HMAC challenge of ``multiprocessing.connection``); only bytes cross
  it: Flower ``RecordDict`` protobufs, arrays and plain values, never pickles;
- **failure**: a worker that dies or does not answer within ``round-timeout`` is killed and
  started again once; if that fails too, the ClientApp replies an error naming the cause;
- **start**: forked by the launch's zygote where ``$QFL_WORKER_ZYGOTE`` names one
  (:mod:`client.zygote`: on one machine the nodes share one import of torch and PennyLane),
  else started as ``python -m client.worker``.

The in-process path computes the same numbers (:mod:`client.local`): it is the reference
(``warm-runtime = false``: a fresh task every message) and the path taken where the node
does not say ``warm-worker = true`` (:func:`watched_pid`), e.g. on Flower's simulation
engine, whose Ray workers stay alive anyway (a small per-process cache of tasks keeps them warm).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from pathlib import Path

from flwr.app import RecordDict

from client.job import decode, encode, model_key
from qfl.common.config import MODELS, NodeConfig, RunConfig
from qfl.common.private import PrivateDirError
from qfl.common.private import private_dir as common_private_dir

CONNECT_TIMEOUT_S = 30.0
RUNTIME_DIR_ENV = "QFL_RUNTIME_DIR"  # where worker sockets and keys go (see private_dir)
ZYGOTE_ENV = "QFL_WORKER_ZYGOTE"  # BASE of a zygote's socket and key (client.zygote), set by the launcher
SHARED_TMP = Path("/tmp")  # the fallback's parent, shared by every user of the machine


class WorkerError(RuntimeError):
    """The warm worker failed twice on one message; the message says why."""


def watched_pid(cfg: RunConfig, node: NodeConfig) -> int | None:
    """The process a warm worker lives as long as, or ``None`` for the in-process path.

    A node says it can host a worker with ``warm-worker = true`` in its node config (the
    launcher and ``docker-compose.yml`` set it): it is a SuperNode in Flower's ``subprocess``
    isolation, whose executor (``flower-superexec``, started with the SuperNode's
    ``--parent-pid`` so that it exits with it) starts each ClientApp as its child. On the
    simulation engine no node says so: its Ray workers stay alive anyway. A model of the user's own
    (``model = "package.module:factory"``) is built in the ClientApp's process, where Flower put the
    app's directory on the import path; the worker's path need not hold it."""
    own_model = cfg.model not in MODELS
    return os.getppid() if cfg.warm_runtime and node.warm_worker and not own_model else None


def private_dir() -> Path:
    """This user's directory for worker sockets and keys: ``$QFL_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/qfl``, else ``/tmp/qfl-<uid>`` (made if missing, mode 0700;
    :func:`qfl.common.private.private_dir`, which a node's secure-aggregation store shares).

    A directory that is a link, not this user's, or open to others is refused with a
    :class:`WorkerError` that names it and says what to set: nothing is ever written into it.
    """
    try:
        return common_private_dir(SHARED_TMP)
    except PrivateDirError as err:
        raise WorkerError(str(err)) from err


@dataclass(frozen=True)
class WorkerFiles:
    """The files of one worker: its socket, key, PID and the lock around starting it."""

    base: Path

    @property
    def socket(self) -> Path:
        return self.base.with_suffix(".sock")

    @property
    def key(self) -> Path:
        return self.base.with_suffix(".key")

    @property
    def pid(self) -> Path:
        return self.base.with_suffix(".pid")

    @property
    def lock(self) -> Path:
        return self.base.with_suffix(".lock")


def worker_files(node_id: int, cfg: RunConfig, node: NodeConfig) -> WorkerFiles:
    code = str(Path(__file__).resolve().parents[1])  # the FAB's code: a new version gets a new worker
    digest = hashlib.sha256("\0".join((model_key(cfg, node), code, sys.executable)).encode()).hexdigest()[:16]
    return WorkerFiles(private_dir() / f"node-{node_id}-{digest}")


@contextmanager
def _locked(path: Path):  # noqa: ANN202
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class WarmWorker:
    """The ClientApp's side of one worker: connect (starting it if needed), ask, restart once."""

    def __init__(self, files: WorkerFiles, watch_pid: int, idle_timeout: float, timeout: float) -> None:
        self.files, self.watch_pid, self.idle_timeout, self.timeout = files, watch_pid, idle_timeout, timeout

    def call(self, request: bytes) -> bytes:
        with _locked(self.files.lock):
            try:
                return self._ask(request)
            except (OSError, EOFError, TimeoutError) as first:
                self.stop()  # dead, hung or half-started: a fresh one gets the message once more
                try:
                    return self._ask(request)
                except (OSError, EOFError, TimeoutError) as second:
                    self.stop()
                    raise WorkerError(f"the warm worker failed twice: {_why(first)}; then {_why(second)}") from second

    def _ask(self, request: bytes) -> bytes:
        conn = self._connect()
        try:
            conn.send_bytes(request)
            if not conn.poll(self.timeout):
                raise TimeoutError(f"no answer within {self.timeout:.0f} s")
            return conn.recv_bytes()
        finally:
            conn.close()

    def _connect(self) -> Connection:
        if self.files.socket.exists() and self.files.key.exists():
            try:
                return Client(str(self.files.socket), family="AF_UNIX", authkey=self.files.key.read_bytes())
            except (OSError, EOFError):
                self.stop()  # a stale socket (its worker is gone)
        proc = self._start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                return Client(str(self.files.socket), family="AF_UNIX", authkey=self.files.key.read_bytes())
            except (FileNotFoundError, ConnectionRefusedError):
                if proc.poll() is not None:
                    raise EOFError(f"the worker exited (code {proc.returncode}) before opening its socket") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the worker did not open its socket within {CONNECT_TIMEOUT_S:.0f} s") from None
                time.sleep(0.02)

    def _start(self) -> subprocess.Popen | Forked:
        self.files.key.unlink(missing_ok=True)
        fd = os.open(self.files.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        code = str(Path(__file__).resolve().parents[1])
        forked = self._fork_from_zygote(code)
        if forked is not None:
            self.files.pid.write_text(str(forked.pid))
            return forked
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "client.worker", "--files", str(self.files.base), "--watch-pid", str(self.watch_pid),
             "--idle-timeout", str(self.idle_timeout)],
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,  # it outlives this ClientApp by design
        )
        self.files.pid.write_text(str(proc.pid))
        return proc

    def _fork_from_zygote(self, code: str) -> Forked | None:
        """The worker forked by the launch's zygote (:mod:`client.zygote`), which has torch and
        PennyLane imported already; ``None`` where there is none, or it does not answer."""
        base = os.environ.get(ZYGOTE_ENV)
        if not base:
            return None
        zygote = WorkerFiles(Path(base))
        try:
            with Client(str(zygote.socket), family="AF_UNIX", authkey=zygote.key.read_bytes()) as conn:
                conn.send_bytes(json.dumps({"files": str(self.files.base), "code": code, "watch_pid": self.watch_pid,
                                            "idle_timeout": self.idle_timeout}).encode())
                if not conn.poll(CONNECT_TIMEOUT_S):
                    return None
                answer = json.loads(conn.recv_bytes())
        except (OSError, EOFError, ValueError):
            return None
        return Forked(int(answer["pid"])) if "pid" in answer else None

    def stop(self) -> None:
        """End this worker, if one runs, and remove its files."""
        try:
            pid = int(self.files.pid.read_text())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        for path in (self.files.socket, self.files.pid):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Forked:
    """A worker the zygote forked: not this process's child, so alive while its PID is."""

    pid: int

    @property
    def returncode(self) -> int | None:
        return None if self.poll() is None else -1

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            pass
        return None


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


_IN_PROCESS = None  # the task cache of the in-process path (made on first use)


def run(req: RecordDict, cfg: RunConfig, node: NodeConfig, node_id: int) -> RecordDict:
    """The reply content for ``req``: in this node's warm worker if it has one, else here."""
    watch = watched_pid(cfg, node)
    if watch is None:
        global _IN_PROCESS
        from client.local import TaskCache, answer

        if not cfg.warm_runtime:
            return answer(req)  # the reference path: a fresh task, as a cold process would
        _IN_PROCESS = _IN_PROCESS or TaskCache()
        return answer(req, _IN_PROCESS)
    worker = WarmWorker(worker_files(node_id, cfg, node), watch, cfg.worker_idle_timeout, cfg.round_timeout)
    reply = decode(worker.call(encode(req)))
    error = reply.config_records.get("error")
    if error is not None:
        raise WorkerError(str(error["why"]))
    return reply
