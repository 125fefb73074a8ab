"""The warm worker: one long-lived process per node and model-defining configuration.

Started by a ClientApp (:class:`client.runtime.WarmWorker`) with
``python -m client.worker --files BASE --watch-pid PID --idle-timeout S``. It listens on
``BASE.sock`` (a Unix-domain socket in a 0700 directory; connections must prove the key in
``BASE.key``), answers one request at a time with :func:`client.local.answer`, keeping its
tasks (data partition, model) between messages, and exits, removing its files:

- when the process ``PID`` (its SuperNode) is gone,
- after ``S`` seconds without a request,
- on SIGTERM or SIGINT.

What crosses the socket is bytes: Flower ``RecordDict`` protobufs both ways.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from client.job import decode, encode
from client.runtime import WorkerFiles

WATCH_INTERVAL_S = 0.2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(files: WorkerFiles, watch_pid: int, idle_timeout: float) -> None:
    key = files.key.read_bytes()
    listener = Listener(str(files.socket), family="AF_UNIX", authkey=key)
    os.chmod(files.socket, 0o600)
    mine = files.socket.stat().st_ino
    last = [float("inf")]  # when the worker last finished something; idle only counts while it waits

    def leave(*_: object) -> None:
        raise SystemExit(0)  # in the main thread: interrupts accept() or the message at hand

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if not _alive(watch_pid) or time.monotonic() - last[0] > idle_timeout:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, daemon=True).start()
    from client.local import TaskCache, answer  # torch and PennyLane, once for the worker's life
    import torch._dynamo  # noqa: F401 (torch.optim imports it with the first optimizer: a second of CPU, now, not in round 1)

    tasks = TaskCache()
    try:
        while True:
            last[0] = time.monotonic()
            try:
                conn = listener.accept()
            except AuthenticationError:
                continue  # a caller without the key: nothing for it
            last[0] = float("inf")  # busy
            with conn:
                try:
                    request = decode(conn.recv_bytes())
                    try:
                        reply = answer(request, tasks)
                    except Exception as err:  # noqa: BLE001 - the ClientApp reports it as this node's error
                        reply = RecordDict({"error": ConfigRecord({"why": f"{type(err).__name__}: {err}"})})
                    conn.send_bytes(encode(reply))
                except (EOFError, OSError):
                    pass  # the ClientApp went away mid-message
    finally:
        listener.close()
        _remove_own(files, mine, key)


def _remove_own(files: WorkerFiles, socket_inode: int, key: bytes) -> None:
    """Remove this worker's files, unless a successor already replaced them (the listener
    may have removed its socket already)."""
    try:
        if files.socket.stat().st_ino == socket_inode:
            files.socket.unlink()
    except OSError:
        pass
    try:
        if files.key.read_bytes() == key:
            files.key.unlink()
            files.pid.unlink(missing_ok=True)
            files.lock.unlink(missing_ok=True)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", required=True, type=Path, help="BASE of BASE.sock, BASE.key, BASE.pid")
    parser.add_argument("--watch-pid", required=True, type=int, help="exit when this process (the SuperNode's executor) is gone")
    parser.add_argument("--idle-timeout", required=True, type=float, help="exit after this many seconds without work")
    args = parser.parse_args(argv)
    serve(WorkerFiles(args.files), args.watch_pid, args.idle_timeout)


if __name__ == "__main__":
    main()
