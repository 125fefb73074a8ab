"""The Fleet gateway (qfl/launch/gateway.py) and the per-role secrets (qfl/pki.py).

The real part runs nginx in front of a real ``flower-superlink`` (TLS, SuperNode
authentication) on loopback and tries, as a stranger holding only ``ca.crt``, what anyone
who reaches Flower's one port could do without it: ``flwr supernode register`` a key of
their own and ``flwr run`` an app. Through the gateway both are refused; straight at the
SuperLink (where only the operator is) both work, so the refusal is the gateway's. A
registered SuperNode still joins through it. Skipped with the reason where nginx is not
installed (``apt-get install nginx-light``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qfl import pki
from qfl.launch.commands import flower_config, flwr_env, superlink_command, supernode_command
from qfl.launch.gateway import gateway_command, nginx_config
from qfl.launch.processes import ProcessGroup, free_port, wait_for_port
from qfl.launcher import PROJECT_DIR

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pki") / "ca"
    pki.generate(out, nodes=3, saes=["server", "node-0", "node-1"])
    return out


def test_each_role_holds_its_own_keys_and_nobody_the_ca_key(certs):
    roles = {role: pki.role_files(certs, role) for role in ("superlink", "gateway", "node-0", "node-1", "key-manager", "operator")}
    assert all("ca.key" not in files and files[0] == "ca.crt" for files in roles.values())
    assert set(roles["node-0"]) == {"ca.crt", "node-0", "sae/node-0.pem", "sae/node-0.key"}
    assert set(roles["superlink"]) == {"ca.crt", "server.pem", "server.key", "sae/server.pem", "sae/server.key"}
    assert set(roles["gateway"]) == {"ca.crt", "gateway.pem", "gateway.key"}
    # the key manager's registry is the SAE certificates; it never holds an SAE's key
    assert set(roles["key-manager"]) == {"ca.crt", "kme.pem", "kme.key", "sae/node-0.pem", "sae/node-1.pem", "sae/server.pem"}
    assert set(roles["operator"]) == {"ca.crt", "node-0.pub", "node-1.pub", "node-2.pub"}
    with pytest.raises(ValueError, match="unknown role 'ca'"):
        pki.role_files(certs, "ca")


def test_bundle_copies_only_a_roles_files_private_from_the_first_byte(certs, tmp_path):
    for role in ("node-1", "gateway"):
        (tmp_path / role).mkdir()
    (tmp_path / "node-1" / "node-0").write_text("a key this role must not keep")
    done = pki.bundle(certs, tmp_path)
    assert set(done) == {"node-1", "gateway"}
    held = sorted(str(p.relative_to(tmp_path / "node-1")) for p in (tmp_path / "node-1").rglob("*") if p.is_file())
    assert held == ["ca.crt", "node-1", "sae/node-1.key", "sae/node-1.pem"]  # the stale node-0 is gone
    assert stat.S_IMODE((tmp_path / "node-1" / "node-1").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "node-1" / "sae").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "node-1").stat().st_mode) == 0o700
    assert (tmp_path / "gateway" / "gateway.key").read_bytes() == (certs / "gateway.key").read_bytes()


def test_the_gateway_forwards_fleet_paths_only():
    conf = nginx_config("0.0.0.0:8000", "superlink:8000", "/certs", "/tmp/state")
    assert 'location ~ "^/v1/fleet/[a-z-]+$"' in conf and "location = /health" in conf
    assert "location / { return 404; }" in conf
    assert conf.count("proxy_pass https://qfl_superlink$uri;") == 2  # the normalised path, nothing else
    assert conf.count("proxy_ssl_verify on;") == 2 and "control" not in conf.replace("# ", "")


@needs_nginx
def test_nginx_accepts_the_configuration(certs, tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(f"127.0.0.1:{free_port()}", "127.0.0.1:9", certs, tmp_path))
    done = subprocess.run([NGINX, "-e", "stderr", "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


class Link:
    """A SuperLink on loopback (TLS, node auth) and the gateway in front of it."""

    def __init__(self, root: Path, certs: Path) -> None:
        self.root, self.certs = root, certs
        self.port, self.public = free_port(), free_port()
        (root / "logs").mkdir(parents=True)
        self.env = flwr_env(root / "flwr-home", root / ".cache")
        home = root / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            flower_config(f"127.0.0.1:{self.public}", root_cert=str(certs / "ca.crt"), name="stranger")
            + flower_config(f"127.0.0.1:{self.port}", root_cert=str(certs / "ca.crt"), name="operator")
            .split("\n", 3)[3]  # the second connection without a second [superlink] table
        )
        self.group = ProcessGroup(self.env, root / "logs")

    def start(self) -> None:
        link = self.group.start("superlink", superlink_command(self.port, tls_dir=str(self.certs), node_auth=True),
                                cwd=self.root)
        wait_for_port(self.port, link, 60, "flower-superlink", self.root / "logs" / "superlink.log")
        gate = self.group.start("gateway", gateway_command(f"127.0.0.1:{self.public}", f"127.0.0.1:{self.port}",
                                                           self.certs), cwd=PROJECT_DIR)
        wait_for_port(self.public, gate, 30, "gateway", self.root / "logs" / "gateway.log")

    def flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["flwr", *args], env=self.env, capture_output=True, text=True, timeout=120, cwd=self.root)

    def get(self, path: str, method: str = "GET") -> int:
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        request = urllib.request.Request(f"https://localhost:{self.public}{path}", method=method,
                                         data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as reply:
                return reply.status
        except urllib.error.HTTPError as error:
            return error.code


@pytest.fixture(scope="module")
def link(certs, tmp_path_factory):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    running = Link(tmp_path_factory.mktemp("gateway"), certs)
    try:
        running.start()
        yield running
    finally:
        running.group.stop()


@pytest.mark.integration
def test_a_stranger_at_the_public_port_can_neither_register_nor_run(link):
    words = lambda done: done.stdout + done.stderr  # noqa: E731
    register = link.flwr("supernode", "register", str(link.certs / "node-2.pub"), "stranger")
    # refused by the gateway itself (not a TLS failure): the Control API is not there
    assert register.returncode != 0 and "404 Not Found" in words(register), words(register)
    assert "/v1/control/register-node" in words(register)
    run = link.flwr("run", str(PROJECT_DIR), "stranger", "--run-config", "num-server-rounds=1")
    assert run.returncode != 0 and "404 Not Found" in words(run) and "/v1/control/start-run" in words(run), words(run)
    # the Control API answers the operator on the SuperLink's own port: the gateway refused
    listed = link.flwr("supernode", "list", "operator")
    assert listed.returncode == 0, words(listed)
    for path, method in [("/v1/control/list-runs", "POST"), ("/v1/runtime/get-nodes", "POST"),
                         ("/v1/fleet/../control/list-runs", "POST"), ("/v1/fleet/%2e%2e/control/list-runs", "POST"),
                         ("/v1/fleet/pull-messages", "GET"), ("/", "GET")]:
        assert link.get(path, method) in (403, 404), path
    assert link.get("/health") == 200


@pytest.mark.integration
def test_a_registered_supernode_joins_through_the_gateway(link):
    reg = link.flwr("supernode", "register", str(link.certs / "node-0.pub"), "operator")
    assert reg.returncode == 0 and "registered successfully" in reg.stdout, reg.stdout + reg.stderr
    node = link.group.start("supernode-0", supernode_command(f"127.0.0.1:{link.public}", free_port(), 0, 2,
                                                             root_cert=str(link.certs / "ca.crt"),
                                                             auth_key=str(link.certs / "node-0")), cwd=link.root)
    log = link.root / "logs" / "supernode-0.log"
    deadline = time.monotonic() + 90
    while "SuperNode ID" not in (log.read_text() if log.exists() else ""):
        assert node.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.5)
    assert "POST /v1/fleet/activate-node" in (link.root / "logs" / "gateway.log").read_text()
