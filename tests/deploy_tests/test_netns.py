"""Clients on separate machines, for real: network namespaces joined by veth pairs.

One namespace is the server machine, set up as docs/deploy.md tells an operator: the
SuperLink (TLS, SuperNode authentication) on its loopback only, and the Fleet gateway
(nginx, qfl/launch/gateway.py) as the one port the network reaches. Two more are
client machines (one SuperNode each), each on its own point-to-point link with private
test addresses (10.203.x.0/30). Two rounds must complete over TLS through the gateway; a
SuperNode whose key is not registered must be refused; a SuperNode that trusts the wrong
CA must fail with a clear error; from a client machine, ``flwr run`` and ``flwr supernode
register`` at the server's address are refused and the SuperLink's own port is out of
reach; teardown must leave no namespace, interface or process behind. Needs root,
iproute2's ``ip netns`` and nginx; skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import processes

from qfl.common.config import RunConfig
from qfl.launch.commands import flower_config, flwr_env, superlink_command, supernode_command
from qfl.launch.config import app_defaults
from qfl.launch.console import stream_run
from qfl.launch.gateway import gateway_command
from qfl.launch.processes import ProcessGroup
from qfl.launcher import PROJECT_DIR

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slow]

PORT = 8000  # the gateway: the server machine's one reachable port
LINK_PORT = 9091  # the SuperLink, on the server machine's loopback: the operator's
CONNECTION = "qfl-netns"
STRANGER = "stranger"  # a flwr connection from a client machine to the public port
SUFFIX = f"{os.getpid() % 100000}"
SERVER_NS = f"qfl-srv-{SUFFIX}"
CLIENT_NS = [f"qfl-c0-{SUFFIX}", f"qfl-c1-{SUFFIX}"]
# client i reaches the server at 10.203.(i+1).1 over its own veth pair
SERVER_IP = ["10.203.1.1", "10.203.2.1"]
CLIENT_IP = ["10.203.1.2", "10.203.2.2"]
VETH = [(f"qs{i}-{SUFFIX}", f"qc{i}-{SUFFIX}") for i in range(2)]


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK):
        return "needs nginx for the Fleet gateway (apt-get install nginx-light)"
    probe = f"qfl-probe-{SUFFIX}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


_REASON = _netns_unavailable()
if _REASON:
    pytest.skip(f"network-namespace deployment test skipped: {_REASON}", allow_module_level=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _in(ns: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", ns)


def _our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].endswith(f"-{SUFFIX}")]


def _our_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [name for pair in VETH for name in pair if f" {name}@" in out or f" {name}:" in out]


def _wait_tcp(ns: str, host: str, port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), 1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with code {proc.returncode}")
        if subprocess.run([*_in(ns), sys.executable, "-c", probe], capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} did not accept connections on {host}:{port} in {timeout:.0f} s")


def _gen_certs():
    spec = importlib.util.spec_from_file_location("gen_certs", PROJECT_DIR / "scripts" / "gen_certs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Federation:
    """Namespaces, links, certificates and processes of one test deployment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs, self.wrong = root / "certs", root / "wrong-ca"
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True)
        self.env = flwr_env(root / "flwr-home", root / ".cache")
        self.group = ProcessGroup(self.env, self.log_dir)
        self.torn_down = False

    def build_network(self) -> None:
        for ns in (SERVER_NS, *CLIENT_NS):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")  # each SuperNode's runtime API is on its loopback
        for i, (srv_end, cli_end) in enumerate(VETH):
            _ip("link", "add", srv_end, "type", "veth", "peer", "name", cli_end)
            _ip("link", "set", srv_end, "netns", SERVER_NS)
            _ip("link", "set", cli_end, "netns", CLIENT_NS[i])
            _ip("-n", SERVER_NS, "addr", "add", f"{SERVER_IP[i]}/30", "dev", srv_end)
            _ip("-n", CLIENT_NS[i], "addr", "add", f"{CLIENT_IP[i]}/30", "dev", cli_end)
            _ip("-n", SERVER_NS, "link", "set", srv_end, "up")
            _ip("-n", CLIENT_NS[i], "link", "set", cli_end, "up")

    def make_certs(self) -> None:
        gen = _gen_certs()
        gen.generate(self.certs, sans=SERVER_IP, nodes=3)  # node-2 is never registered
        gen.generate(self.wrong, nodes=0)  # a CA that did not sign the SuperLink's certificate
        home = self.root / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        stranger = flower_config(f"{SERVER_IP[0]}:{PORT}", root_cert=str(self.certs / "ca.crt"), name=STRANGER)
        (home / "config.toml").write_text(
            flower_config(f"127.0.0.1:{LINK_PORT}", root_cert=str(self.certs / "ca.crt"), name=CONNECTION)
            + stranger.split("\n", 3)[3]  # a second connection, under the same [superlink] table
        )

    def start_server(self) -> None:
        cmd = superlink_command(LINK_PORT, host="127.0.0.1", tls_dir=str(self.certs), node_auth=True)
        link = self.group.start("superlink", [*_in(SERVER_NS), *cmd], cwd=self.root)
        _wait_tcp(SERVER_NS, "127.0.0.1", LINK_PORT, link, "flower-superlink")
        gate = self.group.start("gateway", [*_in(SERVER_NS), *gateway_command(f"0.0.0.0:{PORT}",
                                                                             f"127.0.0.1:{LINK_PORT}", self.certs)],
                                cwd=PROJECT_DIR)
        # reachable from a client machine, across its link
        _wait_tcp(CLIENT_NS[0], SERVER_IP[0], PORT, gate, "the Fleet gateway")
        for i in range(2):
            reg = subprocess.run(
                [*_in(SERVER_NS), "flwr", "supernode", "register", str(self.certs / f"node-{i}.pub"), CONNECTION],
                env=self.env, capture_output=True, text=True, timeout=60,
            )
            assert reg.returncode == 0 and "registered successfully" in reg.stdout, reg.stdout + reg.stderr

    def supernode(self, i: int, key: str, ca: Path, port: int = 9094) -> list[str]:
        cmd = supernode_command(
            f"{SERVER_IP[i]}:{PORT}", port, i, 2, root_cert=str(ca / "ca.crt"), auth_key=str(self.certs / key)
        )
        return [*_in(CLIENT_NS[i]), *cmd]

    def start_clients(self) -> None:
        for i in range(2):
            node = self.group.start(f"supernode-{i}", self.supernode(i, f"node-{i}", self.certs), cwd=self.root)
            _wait_tcp(CLIENT_NS[i], "127.0.0.1", 9094, node, f"flower-supernode {i}")

    def teardown(self) -> None:
        if self.torn_down:
            return
        self.torn_down = True
        self.group.stop()
        for ns in (SERVER_NS, *CLIENT_NS):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("netns"))
    try:
        fed.build_network()
        fed.make_certs()
        fed.start_server()
        fed.start_clients()
        yield fed
    finally:
        fed.teardown()


def _processes_under(root: Path) -> list[str]:
    """Processes started for this deployment: run in ``root``, or in our namespaces."""

    def ours(cwd: str, cmd: str) -> bool:
        in_our_ns = cmd.startswith("ip netns exec qfl-") and cmd.split()[3].endswith(f"-{SUFFIX}")
        return cwd.startswith(str(root)) or str(root) in cmd or in_our_ns

    return processes(ours)


def test_two_rounds_over_tls_between_namespaces(federation):
    cfg = RunConfig.from_run_config(
        {**app_defaults(PROJECT_DIR), "dataset": "iris", "num-server-rounds": 2, "local-epochs": 3,
         "learning-rate": 0.1, "output-dir": str(federation.root / "runs"), "run-name": "netns"}
    )
    code = stream_run(PROJECT_DIR, cfg, federation.env, federation.log_dir / "flwr-run.log", False, 300,
                      prefix=_in(SERVER_NS), connection=CONNECTION)
    assert code == 0, (federation.log_dir / "flwr-run.log").read_text()[-3000:]
    rows = json.loads((federation.root / "runs" / "netns" / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients_ok"] == 2 and r["clients_failed"] == 0 for r in rows[1:])
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    # the nodes dialled the server's addresses on their own links, over TLS, through the gateway
    gateway_log = (federation.log_dir / "gateway.log").read_text()
    assert "--insecure" not in json.dumps(federation.group.procs and [p.args for _, p in federation.group.procs])
    for ip in CLIENT_IP:
        assert f'{ip} - - ' in gateway_log and "POST /v1/fleet/pull-messages" in gateway_log


def test_a_client_machine_can_neither_run_an_app_nor_register_a_key(federation):
    """What a compromised client machine (or anyone on its network) could try: the Control
    API through the public port, and the SuperLink's own port."""
    for args, route in [(("supernode", "register", str(federation.certs / "node-2.pub"), STRANGER), "register-node"),
                        (("run", str(PROJECT_DIR), STRANGER, "--run-config", 'transport="plain"'), "start-run")]:
        done = subprocess.run([*_in(CLIENT_NS[0]), "flwr", *args], env=federation.env, capture_output=True, text=True,
                              timeout=120, cwd=federation.root)
        words = done.stdout + done.stderr
        assert done.returncode != 0 and "404 Not Found" in words and f"/v1/control/{route}" in words, words
    reach = subprocess.run([*_in(CLIENT_NS[0]), sys.executable, "-c",
                            f"import socket; socket.create_connection(('{SERVER_IP[0]}', {LINK_PORT}), 5)"],
                           capture_output=True, text=True, timeout=60)
    assert reach.returncode != 0 and "refused" in reach.stderr, reach.stderr


def _run_to_exit(federation: Federation, name: str, cmd: list[str]) -> tuple[int, str]:
    """Run a process that should give up; its log is a file, since the SuperExec it
    spawns may outlive it and would hold a pipe open (teardown ends it)."""
    proc = federation.group.start(name, [*cmd, "--max-retries", "1", "--max-wait-time", "10"], cwd=federation.root)
    code = proc.wait(timeout=120)
    return code, (federation.log_dir / f"{name}.log").read_text()


def test_a_node_without_a_registered_key_is_refused(federation):
    code, out = _run_to_exit(federation, "unregistered", federation.supernode(1, "node-2", federation.certs, port=9095))
    assert code != 0, out[-2000:]
    assert "Failed to activate SuperNode" in out
    assert "No SuperNode found with the given public key" in (federation.log_dir / "superlink.log").read_text()


def test_a_node_trusting_the_wrong_ca_fails_clearly(federation):
    code, out = _run_to_exit(federation, "wrong-ca", federation.supernode(0, "node-0", federation.wrong, port=9096))
    assert code != 0, out[-2000:]
    assert "SSL/TLS handshake error" in out and "CERTIFICATE_VERIFY_FAILED" in out


def test_teardown_leaves_no_namespace_link_or_process(federation):
    federation.teardown()
    assert _our_namespaces() == []
    assert _our_links() == []
    deadline = time.monotonic() + 10
    while _processes_under(federation.root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_under(federation.root) == []
