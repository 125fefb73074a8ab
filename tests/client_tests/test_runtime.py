"""The warm runtime: real worker processes, their lifetime, their privacy, their failures.

A federation with the warm runtime against the cold reference is in test_integration.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Client

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.job import request
from client.local import answer
from client.runtime import WarmWorker, WorkerError, private_dir, worker_files
from qfl.common.config import NodeConfig, RunConfig

NODE = {"partition-id": 0, "num-partitions": 2}


@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


@pytest.fixture
def setup(defaults):
    from qfl.task.build import build_dataset, build_model

    run_config = {**defaults, "dataset": "iris", "local-epochs": 2}
    cfg = RunConfig.from_run_config(run_config)
    arrays = ArrayRecord(build_model(cfg, build_dataset(cfg)).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "round-offset": 0})})
    req = request("train", content, run_config, NODE)
    return cfg, NodeConfig.from_node_config(NODE), req, run_config


def _worker(cfg, node, watch=None, idle=60.0, timeout=60.0):
    return WarmWorker(worker_files(7, cfg, node), watch or os.getpid(), idle, timeout)


def _pid(worker):
    return int(worker.files.pid.read_text())


def _gone(pid, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it was ours
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_thin_clientapp_imports_neither_torch_nor_pennylane():
    code = "import sys, client.app; print(sorted(m for m in ('torch', 'pennylane', 'sklearn') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_worker_answers_as_the_in_process_path_and_is_reused(setup, task_identity):
    from client.job import decode, encode

    cfg, node, req, _ = setup
    worker = _worker(cfg, node)
    try:
        first = decode(worker.call(encode(req)))
        pid = _pid(worker)
        second = decode(worker.call(encode(req)))
        assert _pid(worker) == pid  # the same warm process served both
        reference = answer(req)  # a fresh task in this process: the cold path
        for got in (first, second):
            for name, value in reference["arrays"].items():
                np.testing.assert_array_equal(got["arrays"][name].numpy(), value.numpy())  # bit-identical
            assert got["metrics"]["num-examples"] == reference["metrics"]["num-examples"]
    finally:
        worker.stop()


def test_a_worker_killed_mid_message_is_restarted_once(setup, monkeypatch):
    from multiprocessing.connection import Connection

    from client.job import decode, encode

    cfg, node, req, run_config = setup
    slow = request("train", RecordDict({"arrays": req["arrays"], "config": req["config"]}),
                   {**run_config, "local-epochs": 40}, NODE)
    payload = encode(slow)
    worker = _worker(cfg, node)
    send_bytes = Connection.send_bytes
    killed = []

    def send_then_kill_once(conn, data, *args):  # noqa: ANN001, ANN002
        """The worker dies once it holds the message (an event, not a guess at a delay)."""
        send_bytes(conn, data, *args)
        if data == payload and not killed:
            killed.append(_pid(worker))
            os.kill(killed[-1], signal.SIGKILL)

    try:
        worker.call(encode(req))  # warm: the next message is all training
        victim = _pid(worker)
        monkeypatch.setattr(Connection, "send_bytes", send_then_kill_once)
        reply = decode(worker.call(payload))  # noticed, restarted, answered
        assert killed == [victim]
        assert "arrays" in reply and _pid(worker) != victim
        assert _gone(victim)
    finally:
        worker.stop()


def test_a_worker_that_keeps_dying_is_reported_with_its_cause(setup, monkeypatch):
    from multiprocessing.connection import Connection

    from client.job import encode

    cfg, node, req, run_config = setup
    slow = request("train", RecordDict({"arrays": req["arrays"], "config": req["config"]}),
                   {**run_config, "local-epochs": 40}, NODE)
    payload = encode(slow)
    worker = _worker(cfg, node)
    killed = []
    send_bytes = Connection.send_bytes

    def send_then_kill(conn, data, *args):  # noqa: ANN001, ANN002
        """Each worker dies once it holds the message: the event, not a guess at how long that takes."""
        send_bytes(conn, data, *args)
        if data == payload:  # the request, not the key handshake on the same connection
            killed.append(_pid(worker))
            os.kill(killed[-1], signal.SIGKILL)

    monkeypatch.setattr(Connection, "send_bytes", send_then_kill)
    try:
        with pytest.raises(WorkerError, match=r"the warm worker failed twice: \w+Error.*; then \w+Error"):
            worker.call(payload)
    finally:
        worker.stop()
    assert len(set(killed)) == 2  # the first worker and the one started in its place
    assert all(_gone(pid) for pid in killed)


def test_a_hung_worker_is_noticed_by_the_timeout(setup):
    from client.job import encode

    cfg, node, req, run_config = setup
    slow = request("train", RecordDict({"arrays": req["arrays"], "config": req["config"]}),
                   {**run_config, "local-epochs": 400}, NODE)
    worker = _worker(cfg, node, timeout=3.0)
    try:
        start = time.monotonic()
        with pytest.raises(WorkerError, match="no answer within 3 s"):
            worker.call(encode(slow))
        assert time.monotonic() - start < 60
    finally:
        worker.stop()


def test_the_worker_leaves_with_its_supernode(setup):
    from client.job import encode

    cfg, node, req, _ = setup
    supernode = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    worker = _worker(cfg, node, watch=supernode.pid)
    try:
        worker.call(encode(req))
        pid = _pid(worker)
        supernode.kill()
        supernode.wait()
        assert _gone(pid, within=5.0)
        assert not worker.files.socket.exists() and not worker.files.key.exists()
    finally:
        worker.stop()


def test_the_worker_leaves_when_idle_and_on_sigterm(setup):
    from client.job import encode

    cfg, node, req, _ = setup
    idle = _worker(cfg, node, idle=1.0)
    idle.call(encode(req))
    assert _gone(_pid(idle), within=10.0) and not idle.files.socket.exists()
    term = _worker(cfg, node)
    term.call(encode(req))
    pid = _pid(term)
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid, within=5.0) and not term.files.socket.exists()


def test_the_ipc_is_private(setup):
    from client.job import encode

    cfg, node, req, _ = setup
    worker = _worker(cfg, node)
    try:
        worker.call(encode(req))
        assert oct(private_dir().stat().st_mode & 0o777) == "0o700"
        assert oct(worker.files.socket.stat().st_mode & 0o777) == "0o600"
        assert oct(worker.files.key.stat().st_mode & 0o777) == "0o600"
        from multiprocessing import AuthenticationError

        with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
            Client(str(worker.files.socket), family="AF_UNIX", authkey=b"not the key").send_bytes(b"x")
        worker.call(encode(req))  # and it still serves the holder of the key
    finally:
        worker.stop()


def test_a_runtime_dir_others_can_open_is_refused(tmp_path, monkeypatch):
    loose = tmp_path / "loose"
    (loose / "qfl").mkdir(parents=True)
    os.chmod(loose / "qfl", 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(loose))
    with pytest.raises(WorkerError, match="mode 0700"):
        private_dir()


# --- the zygote: one import of torch and PennyLane for every node's worker -------------------


@pytest.fixture
def zygote(monkeypatch):
    from client.runtime import ZYGOTE_ENV

    base = private_dir() / "zygote-test"
    proc = subprocess.Popen([sys.executable, "-m", "client.zygote", "--files", str(base)])
    deadline = time.monotonic() + 120
    while not base.with_suffix(".sock").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the zygote did not open its socket"
        time.sleep(0.05)
    monkeypatch.setenv(ZYGOTE_ENV, str(base))
    yield proc
    proc.terminate()
    proc.wait(timeout=30)
    assert not base.with_suffix(".sock").exists() and not base.with_suffix(".key").exists()


def test_the_zygote_forks_a_worker_that_answers_as_the_in_process_path(setup, zygote, task_identity):
    import psutil

    from client.job import decode, encode

    cfg, node, req, _ = setup
    worker = _worker(cfg, node)
    try:
        got = decode(worker.call(encode(req)))
        pid = _pid(worker)
        child = psutil.Process(pid)
        assert child.ppid() == zygote.pid and child.pid != zygote.pid  # forked, not started
        assert os.getsid(pid) == pid  # a session of its own, as a started worker has
        reference = answer(req)
        for name, value in reference["arrays"].items():
            np.testing.assert_array_equal(got["arrays"][name].numpy(), value.numpy())  # bit-identical
        assert decode(worker.call(encode(req)))["metrics"]["num-examples"] == reference["metrics"]["num-examples"]
        assert _pid(worker) == pid  # and reused
    finally:
        worker.stop()
    assert _gone(pid)


def test_the_zygote_forks_only_for_the_holder_of_its_key_and_into_the_workers_directory(setup, zygote):
    import json
    from multiprocessing import AuthenticationError

    from client.runtime import WorkerFiles

    base = WorkerFiles(private_dir() / "zygote-test")
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(str(base.socket), family="AF_UNIX", authkey=b"not the key").send_bytes(b"{}")
    with Client(str(base.socket), family="AF_UNIX", authkey=base.key.read_bytes()) as conn:
        conn.send_bytes(json.dumps({"files": "/tmp/elsewhere/w", "code": str(os.getcwd()), "watch_pid": os.getpid(),
                                    "idle_timeout": 5}).encode())
        assert "belong in" in json.loads(conn.recv_bytes())["error"]
    assert zygote.poll() is None  # a bad caller is answered, never fatal


def test_without_a_zygote_answering_the_worker_is_started_as_before(setup, monkeypatch):
    import psutil

    from client.job import encode
    from client.runtime import ZYGOTE_ENV

    monkeypatch.setenv(ZYGOTE_ENV, str(private_dir() / "zygote-gone"))
    cfg, node, req, _ = setup
    worker = _worker(cfg, node)
    try:
        worker.call(encode(req))
        assert psutil.Process(_pid(worker)).ppid() == os.getpid()
    finally:
        worker.stop()
