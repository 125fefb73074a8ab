"""A zygote for warm workers: one process that imports torch and PennyLane once and forks
each node's warm worker from itself.

On one machine, N SuperNodes start N warm workers at the same moment (the warm-up), and each
would import torch and PennyLane, some 3.5 s of CPU apiece: on two cores that alone is most of
the wait before round 1. ``qfl launch`` starts one zygote per launch instead
(``python -m client.zygote --files BASE``); it imports the heavy third-party packages
(:data:`PRELOAD`) and listens on ``BASE.sock`` (a Unix-domain socket in the same 0700
directory as the workers' sockets, connections proving the key in ``BASE.key``). A
ClientApp that finds ``$QFL_WORKER_ZYGOTE`` (the launcher sets it for its SuperNodes) asks it
for its worker (:class:`client.runtime.WarmWorker`); the zygote forks, and the child becomes
exactly the worker ``python -m client.worker`` would have been: a session of its own, the
project's code imported afresh from the FAB the ClientApp runs (nothing of the project is
imported before the fork), the same files, the same watched process and idle timeout. Where
no zygote answers, the ClientApp starts the worker as a subprocess, as before.

Only third-party modules are imported before the fork, with one thread each for OpenBLAS
and OpenMP (a pool of threads does not survive a fork), and ``gc.freeze`` keeps the shared
pages shared. What crosses the socket is one JSON request and one JSON answer (the child's PID).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import signal
import socket
import sys
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from pathlib import Path

# torch._dynamo: torch.optim imports it when the first optimizer is made (a second of CPU in each worker's first round)
PRELOAD = ("numpy", "scipy.sparse", "scipy.sparse.linalg", "torch", "torch._dynamo", "qfl.task.qml",
           "pennylane_lightning.lightning_qubit", "sklearn.datasets", "sklearn.model_selection")
PROJECT = ("client", "qfl", "server", "strategies", "transport")  # not a contract name: the packages, imported afresh in each worker
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def serve(base: Path) -> None:
    """Import :data:`PRELOAD`, then fork a worker for each authenticated request, until SIGTERM."""
    from client.runtime import private_dir  # stdlib only beyond this module's package

    home = private_dir()
    if base.parent.resolve() != home.resolve():
        raise SystemExit(f"the zygote's files must be in {home}, not {base.parent}")
    key = secrets.token_bytes(32)
    key_path, sock_path = base.with_suffix(".key"), base.with_suffix(".sock")
    sock_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    for name in PRELOAD:
        __import__(name)
    for name in [m for m in sys.modules if m.split(".")[0] in PROJECT and m != __name__]:
        del sys.modules[name]  # the workers import the project from their own FAB
    gc.collect()
    gc.freeze()  # what is imported now stays shared with every child (no copy on refcount writes)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children reap themselves
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    listener.listen()
    try:
        while True:
            peer, _ = listener.accept()
            with Connection(peer.detach()) as conn:
                try:
                    deliver_challenge(conn, key)
                    answer_challenge(conn, key)
                    request = json.loads(conn.recv_bytes())
                    conn.send_bytes(json.dumps({"pid": _fork(listener, conn, request, home)}).encode())
                except Exception as err:  # noqa: BLE001 - one bad caller is answered, never fatal
                    try:
                        conn.send_bytes(json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
                    except OSError:
                        pass
    finally:
        listener.close()
        sock_path.unlink(missing_ok=True)
        key_path.unlink(missing_ok=True)


def _fork(listener: socket.socket, conn: Connection, request: dict, home: Path) -> int:
    files, code = Path(request["files"]), Path(request["code"])
    watch_pid, idle_timeout = int(request["watch_pid"]), float(request["idle_timeout"])
    if files.parent.resolve() != home.resolve():
        raise ValueError(f"a worker's files belong in {home}")
    if not (code / "client" / "worker.py").is_file():
        raise ValueError(f"{code} holds no ClientApp code")
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: the worker, for good
        listener.close()
        conn.close()
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        gc.unfreeze()
        sys.path.insert(0, str(code))
        from client.worker import serve as serve_worker  # the FAB's code, imported now

        serve_worker(_worker_files(files), watch_pid, idle_timeout)
        code_ = 0
    except SystemExit as done:
        code_ = done.code if isinstance(done.code, int) else 0
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code_ = 1
    os._exit(code_)


def _worker_files(base: Path):  # noqa: ANN202 (client.runtime.WorkerFiles, of the FAB's code)
    from client.runtime import WorkerFiles

    return WorkerFiles(base)


def main(argv: list[str] | None = None) -> None:
    for name, value in SINGLE_THREADED.items():  # before numpy and torch load their thread pools
        os.environ.setdefault(name, value)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", required=True, type=Path, help="BASE of BASE.sock and BASE.key, in the workers' directory")
    args = parser.parse_args(argv)

    def leave(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    serve(args.files)


if __name__ == "__main__":
    main()
