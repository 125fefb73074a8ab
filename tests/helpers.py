"""Builders shared by the tests."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from qfl.common.flower_internals import stamp
from qfl.inprocess import InProcessFederation  # noqa: F401 (the tests build theirs from here)


def make_reply(params: dict[str, np.ndarray], num_examples: float, node_id: int) -> Message:
    """A training reply as a ClientApp sends it (needs the ``task_identity`` fixture)."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in params.items()}),
            "metrics": MetricRecord({"train-loss": 0.5 + node_id, "num-examples": num_examples}),
        }
    )
    return from_node(Message(content=content, dst_node_id=0, message_type="train"), node_id)


def from_node(msg: Message, node_id: int) -> Message:
    """``msg`` as a reply the server received from ``node_id`` (what Flower's runtime stamps)."""
    return stamp(msg, src_node_id=node_id)


LAUNCH_TIMEOUT_S = 420  # one real launch, its cold start on a loaded 2-core machine included


def launch_cmd(out, run_name: str, *extra: str) -> list[str]:  # noqa: ANN001 (a Path)
    """``qfl launch`` as a user runs it, in a subprocess: a small iris run under ``out/run_name``
    (``extra`` comes last, so it overrides any of these)."""
    import sys

    return [
        sys.executable, "-m", "qfl.launcher", "launch",
        "--dataset", "iris", "--run-name", run_name, "--timeout", str(LAUNCH_TIMEOUT_S - 20),
        "--set", f'output-dir="{out}"', "--set", "local-epochs=3", "--set", "learning-rate=0.1",
        *extra,
    ]


def run_rows(run_dir) -> list[dict]:  # noqa: ANN001 (a Path)
    """The rounds a run recorded in ``metrics.json`` (none yet: ``[]``)."""
    import json

    path = run_dir / "metrics.json"
    return json.loads(path.read_text())["rounds"] if path.exists() else []


def processes_in(run_dir) -> list[str]:  # noqa: ANN001 (a Path)
    """Processes whose working directory is inside ``run_dir`` (all a launch starts)."""
    import os

    return processes(lambda cwd, cmd: cwd == str(run_dir) or cwd.startswith(str(run_dir) + os.sep))


def processes(match) -> list[str]:  # noqa: ANN001 (a predicate on (cwd, cmdline))
    """``"pid: cmdline"`` of every live process for which ``match(cwd, cmdline)`` holds."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE or info["cwd"] is None:
            continue  # gone, a zombie, or not ours to read
        cmd = " ".join(info["cmdline"] or [])
        if match(info["cwd"], cmd):
            found.append(f"{info['pid']}: {cmd}")
    return found


class RunningKeyManager:
    """A key manager serving HTTPS on loopback in this process, with its certificates."""

    def __init__(self, store, certs, url: str) -> None:  # noqa: ANN001
        self.store, self.certs, self.url = store, certs, url
        self.clients: list = []

    def client(self, sae_id: str, certs=None, timeout: float = 30.0):  # noqa: ANN001
        """A client holding ``sae_id``'s certificate (from ``certs``, default this CA's)."""
        from transport.qkd.client import KeyManagerClient
        from transport.qkd.identity import SaeCredentials

        creds = SaeCredentials.in_dir(certs or self.certs, sae_id)
        # a certificate from another CA still has to trust this key manager's CA
        creds = SaeCredentials(creds.cert, creds.key, self.certs / "ca.crt")
        self.clients.append(KeyManagerClient(self.url, creds, timeout=timeout))
        return self.clients[-1]


def key_manager(tmp_path, saes, link_config=None, registered=None, **store_options):  # noqa: ANN001
    """Context manager: certificates for ``saes`` under ``tmp_path/certs`` and a real key
    manager over HTTPS with client certificates (``registered`` SAEs only; default all)."""
    import contextlib
    import socket
    import threading
    import time

    import uvicorn

    from qfl.pki import generate
    from transport.qkd.bb84 import BB84Config
    from transport.qkd.key_manager import KeyStore, SaeRegistry, server_config

    @contextlib.contextmanager
    def running():
        certs = tmp_path / "certs"
        generate(certs, nodes=0, saes=list(saes))
        registry = SaeRegistry(set(saes if registered is None else registered))
        store = KeyStore(link_config or BB84Config(length_km=5, source="single-photon"), registry, **store_options)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(server_config(store, certs, "127.0.0.1", port))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "key manager did not start"
            time.sleep(0.05)
        km = RunningKeyManager(store, certs, f"https://127.0.0.1:{port}")
        try:
            yield km
        finally:
            for client in km.clients:
                client.close()
            server.should_exit = True
            thread.join(timeout=5)

    return running()


