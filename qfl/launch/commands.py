"""The commands of a federation: SuperLink, SuperNodes, key manager, ``flwr``'s connection
and the registration of each SuperNode's key.

One builder per command, used by the launcher, checked against docker-compose.yml by
``tests/deploy_tests/test_deploy.py`` and run across network namespaces by ``tests/deploy_tests/test_netns.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from qfl.common.contract import CACHE_DIR_ENV, NODE_NUM_PARTITIONS, NODE_PARTITION_ID, NODE_WARM_WORKER
from qfl.launch.supernode import POLL_FLAG, POLL_INTERVAL_S

CONNECTION = "qfl-local"
# How often the SuperExec checks for a ClientApp/ServerApp to start (Flower: 1.0 s).
SUPEREXEC_POLL_S = "0.05"


def superlink_command(
    port: int,
    *,
    host: str = "127.0.0.1",
    tls_dir: str | None = None,
    node_auth: bool = False,
    simulation: bool = False,
) -> list[str]:
    """``flower-superlink`` serving Fleet, Control and Runtime APIs on ``host:port``.

    With ``tls_dir``, TLS with ``ca.crt``, ``server.pem`` and ``server.key`` from it
    (``scripts/gen_certs.py``); ``node_auth`` admits registered SuperNodes only.
    """
    cmd = ["flower-superlink"]
    if tls_dir is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", f"{tls_dir}/ca.crt", "--ssl-certfile", f"{tls_dir}/server.pem",
                "--ssl-keyfile", f"{tls_dir}/server.key"]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    # never `uv sync` the app's dependencies at run time (they are installed)
    cmd += ["--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if simulation:
        cmd.append("--simulation")
    return cmd


def supernode_command(
    superlink: str,
    port: int,
    partition_id: int,
    num_partitions: int,
    *,
    root_cert: str | None = None,
    auth_key: str | None = None,
    node_config: dict[str, object] | None = None,
    poll_interval: float | None = POLL_INTERVAL_S,
) -> list[str]:
    """Flower's SuperNode for one partition, dialling ``superlink`` (host:port).

    ``root_cert`` (the CA) turns TLS on; ``auth_key`` is the node's private key;
    ``node_config`` adds keys such as ``device-profile`` or ``qcn-path``; ``warm-worker`` is always
    on: the node runs its ClientApps as subprocesses, which may share a warm worker.
    ``poll_interval`` (s) runs it as ``qfl-supernode``, which polls an idle link that often
    instead of Flower's 3 s (:mod:`qfl.launch.supernode`); ``None``: ``flower-supernode`` as shipped.
    """
    cmd = ["flower-supernode"] if poll_interval is None else ["qfl-supernode", POLL_FLAG, str(poll_interval)]
    cmd += ["--insecure"] if root_cert is None else ["--root-certificates", root_cert]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", auth_key]
    config = f"{NODE_PARTITION_ID}={partition_id} {NODE_NUM_PARTITIONS}={num_partitions} {NODE_WARM_WORKER}=true"
    for key, value in (node_config or {}).items():
        config += f" {key}={json.dumps(value) if isinstance(value, str) else value}"
    return cmd + ["--superlink", superlink, "--port", str(port), "--node-config", config]


def key_manager_command(certs: Path | str, port: int, length_km: float = 10.0, eve_fraction: float = 0.0,
                        host: str = "127.0.0.1", python: str = sys.executable) -> list[str]:
    """The QKD key manager (HTTPS, client certificates from ``certs``), as compose runs it too."""
    return [python, "-m", "transport.qkd.key_manager", "--certs", str(certs), "--host", host, "--port", str(port),
            "--length-km", str(length_km), "--eve-fraction", str(eve_fraction)]


def flower_config(address: str, *, root_cert: str | None = None, num_supernodes: int | None = None,
                  name: str = CONNECTION) -> str:
    """Text of a ``$FLWR_HOME/config.toml`` with one (default) connection ``name``."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append("insecure = true" if root_cert is None else f'root-certificates = "{root_cert}"')
    if num_supernodes is not None:
        lines.append(f"options.num-supernodes = {num_supernodes}")
    return "\n".join(lines) + "\n"


def write_flower_config(flwr_home: Path, port: int, num_supernodes: int | None, root_cert: str | None = None) -> None:
    """``$FLWR_HOME/config.toml`` with one connection, :data:`CONNECTION`, on loopback
    (TLS verified against ``root_cert`` when given)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    text = flower_config(f"127.0.0.1:{port}", root_cert=root_cert, num_supernodes=num_supernodes)
    (flwr_home / "config.toml").write_text(text)


def register_command(public_key: Path | str, connection: str = CONNECTION) -> list[str]:
    """``flwr supernode register``: the SuperLink admits the node holding this key's private half
    (``--enable-supernode-auth``); the Control API of ``connection`` takes it."""
    return ["flwr", "supernode", "register", str(public_key), connection]


def flwr_env(flwr_home: Path, cache_dir: Path) -> dict[str, str]:
    """Environment for Flower's processes: project-local FLWR_HOME, the venv's bin first."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = SUPEREXEC_POLL_S
    env[CACHE_DIR_ENV] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env
