"""docker compose up, for real: the deployment on a real Docker engine.

Marker ``docker``. Where no engine runs and none can be started (no ``dockerd``, not root),
every test here is skipped, and the reason says what to install. Otherwise:

1. an engine: the running one, or ``dockerd`` started here (and stopped after);
2. images: a Debian bookworm base with Python 3.11 made by ``debootstrap`` and
   ``docker import`` (kept between runs), then the project's image from the Dockerfile
   with ``BASE_IMAGE`` set to it, this machine's extra CA certificates as the test-only
   ``PIP_EXTRA_CA_B64`` and the local CPU torch wheel in ``.docker-wheels/``;
3. ``docker compose`` (Compose v2, or v1.29 behind a CLI-plugin shim) brings up the
   federation of docker-compose.yml with the key manager: TLS, SuperNode authentication,
   ``qkd``; one run; metrics read from the ``runs`` volume;
4. a SuperNode container killed mid-run: the run finishes without it;
4. the perimeter, attacked from outside the containers and from a compromised SuperNode:
   (a) ``flwr run`` of another app and (b) ``flwr supernode register`` of a new key at the
   published port, as a stranger holding the public CA certificate: refused by the gateway;
   the SuperLink's own port is not reachable from a SuperNode; (c) a SuperNode container
   holds only its own key and SAE key, no running container holds ``ca.key``, and every
   process in every service runs as uid 10001 (one that does not is named: pid, uids,
   command line); (d) SuperNode 0 floods the key manager with hundreds of
   concurrent requests on its own pair during a run: refused (429/503, or its connections
   closed or held before their TLS handshake), and SuperNode 1 answers
   every round; the next test's run then has every client again;
5. a SuperNode container killed mid-run: the run finishes without it;
6. a third client added while the SuperLink runs, as docs/deploy.md says: its key and SAE
   certificate, its registration, its container; it joins the next run;
7. ``down`` keeps the results; ``down -v`` leaves no container, network or volume.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qfl.launcher import PROJECT_DIR

pytestmark = [pytest.mark.docker, pytest.mark.integration]

BASE_IMAGE = "qfl-test-base:bookworm-nginx"
IMAGE = "qfl-test:latest"
PROJECT = f"qfltest{os.getpid()}"
MIRROR = "http://deb.debian.org/debian"
WITH_THIRD_CLIENT = ("-f", "docker-compose.yml", "-f", "docs/examples/third-client.yml")
TIMINGS = {}  # what docs/deploy.md reports: build time, image size, run time


def _run(cmd, timeout=600, check=True, env=None, **kw):  # noqa: ANN001, ANN202
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _engine_up() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if _engine_up():
        yield None
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("no Docker engine can run here: needs root and `apt-get install docker.io docker-compose "
                    "debootstrap` (.ci/run installs them)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    daemon = subprocess.Popen(["dockerd"], stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    deadline = time.monotonic() + 60
    while not _engine_up():
        if daemon.poll() is not None or time.monotonic() > deadline:
            pytest.skip(f"dockerd did not start here: {log.read_text()[-1500:]}")
        time.sleep(0.5)
    yield daemon
    daemon.terminate()
    daemon.wait(timeout=60)


@pytest.fixture(scope="module")
def compose(engine, tmp_path_factory):
    """``docker compose`` as users type it; on a machine with Compose v1.29 only, behind the
    CLI-plugin shim docs/deploy.md describes."""
    env = {**os.environ, "QFL_IMAGE": IMAGE}
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        v1 = shutil.which("docker-compose")
        if v1 is None:
            pytest.skip("neither Compose v2 nor docker-compose (v1.29) is installed")
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        shim = config / "cli-plugins" / "docker-compose"
        shim.write_text(
            "#!/bin/sh\n"
            'if [ "$1" = docker-cli-plugin-metadata ]; then\n'
            '  echo \'{"SchemaVersion": "0.1.0", "Vendor": "qfl tests", "Version": "1.29", "ShortDescription": "Compose v1"}\'\n'
            "  exit 0\nfi\n"
            f'shift; exec {v1} "$@"\n'
        )
        shim.chmod(0o755)
        env["DOCKER_CONFIG"] = str(config)
    return lambda *args, **kw: _run(["docker", "compose", "-p", PROJECT, *args], env={**os.environ, **env},
                                    cwd=PROJECT_DIR, **kw)


def _base_image() -> None:
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode == 0:
        return  # made by an earlier run: reused
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    root = Path(f"/tmp/qfl-bootstrap-{os.getpid()}")
    try:
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates,nginx-light,passwd", "bookworm",
              str(root), MIRROR], timeout=900)
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
            _run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, timeout=600)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _local_wheels() -> Path:
    """The build context's ``.docker-wheels/``: this machine's CPU torch wheel, if pip knows one."""
    folder = PROJECT_DIR / ".docker-wheels"
    folder.mkdir(exist_ok=True)
    links = os.environ.get("PIP_FIND_LINKS") or _run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                                                     check=False).stdout.strip()
    for link in links.split():
        for wheel in Path(link).glob("torch-2.13.0*cp311*.whl"):
            if not (folder / wheel.name).exists():
                shutil.copy(wheel, folder / wheel.name)
    return folder


def _extra_ca() -> str:
    """This machine's extra CA certificates (a TLS-intercepting network), base64, or ''."""
    pems = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    return base64.b64encode(b"".join(p.read_bytes() for p in pems)).decode() if pems else ""


@pytest.fixture(scope="module")
def image(engine):
    start = time.monotonic()
    _base_image()
    TIMINGS["base_s"] = time.monotonic() - start
    _local_wheels()
    start = time.monotonic()
    _run(["docker", "build", "-t", IMAGE, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
          "--build-arg", f"PIP_EXTRA_CA_B64={_extra_ca()}", "."], cwd=PROJECT_DIR, timeout=1800)
    TIMINGS["build_s"] = time.monotonic() - start
    TIMINGS["size_mb"] = int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout) / 1e6
    return IMAGE


def _volume_file(volume: str, path: str) -> str:
    return _run(["docker", "run", "--rm", "-v", f"{PROJECT}_{volume}:/v:ro", "--entrypoint", "cat", IMAGE, f"/v/{path}"],
                check=False).stdout


def _rows(run_name: str) -> list[dict]:
    text = _volume_file("runs", f"{run_name}/metrics.csv")
    return list(csv.DictReader(io.StringIO(text))) if text else []


def _wait_for_exit(compose, service: str, timeout: float) -> int:
    container = compose("ps", "-a", "-q", service).stdout.split()[0]
    deadline = time.monotonic() + timeout
    while True:
        state = _run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container]).stdout.split()
        if state[0] == "exited":
            return int(state[1])
        assert time.monotonic() < deadline, f"{service} did not finish within {timeout:.0f} s:\n{compose('logs', '--tail', '60').stdout}"
        time.sleep(2)


def _start_again(compose, service: str, timeout: float = 240) -> None:
    """Start a killed SuperNode's container again and wait until it holds a node ID.

    A SuperNode killed without deactivating stays online at the SuperLink until it misses
    two heartbeats (up to 60 s), and until then the SuperLink refuses to activate its key:
    a container started sooner exits ("Failed to initialize the connection"). It is
    started again until the SuperLink takes it back."""
    container = compose("ps", "-a", "-q", service).stdout.split()[0]

    def joined() -> int:  # how often this container has been given a node ID
        logs = _run(["docker", "logs", container], check=False)
        return (logs.stdout + logs.stderr).count("SuperNode ID:")

    before = joined()
    deadline = time.monotonic() + timeout
    compose("--profile", "qkd", "start", service)
    while joined() == before:
        assert time.monotonic() < deadline, f"{service} did not rejoin:\n{compose('logs', '--tail', '40', service).stdout}"
        state = _run(["docker", "inspect", "-f", "{{.State.Status}}", container]).stdout.strip()
        if state == "exited":  # refused while its old instance still counts as online
            time.sleep(5)
            compose("--profile", "qkd", "start", service)
        time.sleep(2)


def _config(run_name: str, rounds: int, nodes: int = 2, **extra: str) -> str:
    items = {"num-server-rounds": str(rounds), "min-nodes": str(nodes), "output-dir": '"/app/runs"',
             "run-name": f'"{run_name}"', "transport": '"qkd"', "kms-url": '"https://key-manager:8470"', **extra}
    return " ".join(f"{k}={v}" for k, v in items.items())


@pytest.fixture(scope="module")
def federation(compose, image):
    """The compose federation up with the key manager; one qkd run done. Torn down after."""
    start = time.monotonic()
    os.environ["QFL_RUN_CONFIG"] = _config("compose-qkd", 2)  # the compose file reads it
    try:
        compose("--profile", "qkd", "up", "-d", timeout=900)
        code = _wait_for_exit(compose, "submit", 900)
        TIMINGS["run_s"] = time.monotonic() - start
        yield compose, code
    finally:
        compose(*WITH_THIRD_CLIENT, "--profile", "qkd", "down", "-v", "--remove-orphans", check=False, timeout=300)
        print("\ncompose timings:", json.dumps(TIMINGS))


def test_compose_up_runs_a_qkd_federation_over_tls_with_node_auth(federation):
    compose, code = federation
    assert code == 0
    rows = _rows("compose-qkd")
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["test_accuracy"]) > float(rows[0]["test_accuracy"])
    assert all(int(r["clients_ok"]) == 2 for r in rows[1:])
    progress = [json.loads(line) for line in _volume_file("runs", "compose-qkd/progress.jsonl").splitlines()]
    start = next(event for event in progress if event["event"] == "start")
    assert start["stack"] == "qkd"  # encrypted under QKD keys
    logs = compose("logs", "superlink").stdout
    assert "--insecure" not in logs and "authentication is disabled" not in logs  # TLS and node auth on


def _exec(compose, service: str, *cmd: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    container = compose("ps", "-q", service).stdout.split()[0]
    return _run(["docker", "exec", container, *cmd], check=check, timeout=timeout)


def test_a_stranger_at_the_published_port_can_neither_run_an_app_nor_register_a_key(federation, tmp_path):
    from qfl import pki
    from qfl.launch.commands import flower_config, flwr_env

    compose, _ = federation
    (tmp_path / "ca.crt").write_text(_volume_file("operator-secrets", "ca.crt"))  # public: all a stranger has
    pki.make_node_key(tmp_path, "intruder")
    env = flwr_env(tmp_path / "home", tmp_path / ".cache")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text(flower_config("127.0.0.1:8000", root_cert=str(tmp_path / "ca.crt"),
                                                                 name="stranger"))

    def flwr(*args: str) -> str:
        done = _run(["flwr", *args], check=False, env=env, cwd=tmp_path, timeout=180)
        assert done.returncode != 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    words = flwr("supernode", "register", str(tmp_path / "intruder.pub"), "stranger")
    assert "404 Not Found" in words and "/v1/control/register-node" in words, words  # the gateway's answer
    words = flwr("run", str(PROJECT_DIR), "stranger", "--run-config", 'transport="plain"')
    assert "404 Not Found" in words and "/v1/control/start-run" in words, words
    # a compromised SuperNode cannot reach the SuperLink itself: it is not on the control network
    reach = _exec(compose, "supernode-0", "python", "-c",
                  "import socket; socket.create_connection(('superlink', 8000), 5)")
    assert reach.returncode != 0 and ("gaierror" in reach.stderr or "refused" in reach.stderr), reach.stderr
    gateway_log = compose("logs", "gateway").stdout
    assert "POST /v1/control/register-node HTTP/1.1\" 404" in gateway_log
    assert "POST /v1/control/start-run HTTP/1.1\" 404" in gateway_log


def test_each_container_holds_only_its_own_secrets_and_runs_unprivileged(federation):
    from qfl import pki

    compose, _ = federation
    roles = {"superlink": "superlink", "gateway": "gateway", "key-manager": "key-manager",
             "supernode-0": "node-0", "supernode-1": "node-1"}
    list_files = ("import os, json; print(json.dumps(sorted(os.path.relpath(os.path.join(d, f), '/certs') "
                  "for d, _, fs in os.walk('/certs') for f in fs)))")
    find_ca_key = ("import os; print([os.path.join(d, 'ca.key') for d, _, fs in os.walk('/') "
                   "if 'ca.key' in fs and not d.startswith(('/proc', '/sys'))])")
    # every process's real, effective, saved and file-system uid, named; a process that ends
    # while it is read is skipped
    privileged = (
        "import json, os\n"
        "def who(pid):\n"
        "    try:\n"
        "        uids = next(line.split()[1:] for line in open(f'/proc/{pid}/status') if line.startswith('Uid:'))\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode(errors='replace').strip()\n"
        "        return {'pid': int(pid), 'uids': uids, 'comm': open(f'/proc/{pid}/comm').read().strip(), 'cmdline': cmd}\n"
        "    except OSError:\n"
        "        return None\n"
        "seen = [w for w in map(who, filter(str.isdigit, os.listdir('/proc'))) if w]\n"
        "print(json.dumps([w for w in seen if set(w['uids']) != {'10001'}] if seen else 'no process seen'))"
    )
    with _ca_copy() as ca:
        for service, role in roles.items():
            held = json.loads(_exec(compose, service, "python", "-c", list_files, check=True).stdout)
            assert held == sorted(pki.role_files(ca, role)), (service, held)
            assert _exec(compose, service, "python", "-c", find_ca_key, check=True).stdout.strip() == "[]", service
            others = json.loads(_exec(compose, service, "python", "-c", privileged, check=True).stdout)
            assert others == [], f"{service}: processes not running as uid 10001: {others}"
    # node-0 trying to read node-1's key, or the server's SAE key
    for path in ("/certs/node-1", "/certs/sae/node-1.key", "/certs/sae/server.key", "/certs/ca.key"):
        assert _exec(compose, "supernode-0", "cat", path).returncode != 0, path


class _ca_copy:
    """The ``ca`` volume's file names, read by a throw-away container (for ``role_files``)."""

    def __enter__(self) -> Path:
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="qfl-ca-names-"))
        names = _run(["docker", "run", "--rm", "--user", "root", "-v", f"{PROJECT}_ca:/v:ro", "--entrypoint", "sh", IMAGE,
                      "-c", "cd /v && find . -type f"]).stdout.split()
        for name in names:  # empty files with the same names: role_files only looks at which exist
            (self.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / name).touch()
        return self.dir

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        shutil.rmtree(self.dir, ignore_errors=True)


def test_a_supernode_killed_mid_run_and_the_run_finishes_without_it(federation):
    compose, _ = federation
    # rounds of several seconds (100 local epochs), so that the kill lands in round 2 or 3:
    # at the default 2 epochs a round takes a second and the run is over before the kill
    # round-timeout 90 s: a surviving client's 100 epochs on a loaded 2-core machine can outlast 40 s (the
    # run then ended with a round that had no valid update, and the test waited out its deadline)
    config = _config("compose-kill", 3, **{"round-timeout": "90.0", "local-epochs": "100"})
    compose("run", "-d", "-e", f"QFL_RUN_CONFIG={config}", "submit")
    deadline = time.monotonic() + 600
    while not any(r["round"] == "1" for r in _rows("compose-kill")):
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(2)
    victim = compose("ps", "-a", "-q", "supernode-1").stdout.split()[0]
    _run(["docker", "kill", victim])
    deadline = time.monotonic() + 900
    while len(_rows("compose-kill")) < 4:
        assert time.monotonic() < deadline, f"the run did not finish:\n{compose('logs', '--tail', '80').stdout}"
        time.sleep(2)
    rows = _rows("compose-kill")
    assert int(rows[1]["clients_ok"]) == 2 and int(rows[3]["clients_ok"]) == 1
    _start_again(compose, "supernode-1")  # back for the next test


def test_a_third_client_added_while_the_superlink_runs_joins_the_next_run(federation, tmp_path):
    compose, _ = federation
    # as docs/deploy.md tells a user: its key and SAE certificate, its registration, its container
    override = tmp_path / "third-client.yml"
    override.write_text((PROJECT_DIR / "docs" / "examples" / "third-client.yml").read_text())
    compose("-f", "docker-compose.yml", "-f", str(override), "run", "--rm", "certs", "python", "scripts/gen_certs.py",
            "/ca", "--nodes", "3", "--sae", "server", "--sae", "node-0", "--sae", "node-1", "--sae", "node-2",
            "--bundle", "/secrets", "--owner", "10001:10001")
    compose("run", "--rm", "register", "python", "scripts/compose/register.py", "/certs/node-2.pub")
    compose("-f", "docker-compose.yml", "-f", str(override), "up", "-d", "--no-deps", "supernode-2")
    compose("run", "--rm", "-e", f"QFL_RUN_CONFIG={_config('compose-three', 1, nodes=3)}", "submit", timeout=900)
    rows = _rows("compose-three")
    assert [int(r["round"]) for r in rows] == [0, 1]
    clients = [r for r in csv.DictReader(io.StringIO(_volume_file("runs", "compose-three/clients.csv"))) if r["round"] == "1"]
    assert len(clients) == 3, clients  # all three answered
    # the example's client holds partition 1 again: the same update as supernode-1's, counted once
    twin = [r for r in clients if r["status"].startswith("rejected: update all but identical to node")]
    assert len(twin) == 1 and twin[0]["partition_id"] == "1", clients
    assert int(rows[1]["clients_ok"]) == 2 and int(rows[1]["clients_rejected"]) == 1


# The flood test runs after every test that needs node 0's QKD keys. Once (a CI run, and here), after
# the flood the key manager did not finish a TLS handshake from node 0's address for 15 minutes, and
# run alone this test failed: the image's Python 3.11.2 ignores a pause in connection_made (CPython
# gh-103607), so a connection waiting its turn at the key manager's handshake gate lost its
# ClientHello and timed out after 10 s, anyone's; and a connection closing around its handshake
# could keep its address's slot for good (both fixed: tests/transport_tests/test_security.py). The
# test now also checks that node 0 is served again once its flood stops.
FLOOD = r"""
import asyncio, json, os, ssl, time, httpx
ctx = ssl.create_default_context(cafile="/certs/ca.crt")
ctx.load_cert_chain("/certs/sae/node-0.pem", "/certs/sae/node-0.key")
codes, deadline = {}, time.monotonic() + 600
async def one(client):
    while time.monotonic() < deadline and not os.path.exists("/tmp/stop-flood"):
        try:
            status = str((await client.post("/api/v1/keys/node-1/enc_keys", json={"number": 1, "size": 256})).status_code)
        except httpx.HTTPError as err:
            status = type(err).__name__
            await asyncio.sleep(1.0)  # refused a connection: come back, without spinning
        codes[status] = codes.get(status, 0) + 1
async def main():
    clients = [httpx.AsyncClient(base_url="https://key-manager:8470", verify=ctx, timeout=60,
                                 limits=httpx.Limits(max_connections=1)) for _ in range(200)]
    await asyncio.gather(*(one(c) for c in clients))
    print(json.dumps(codes))
asyncio.run(main())
"""

# node 0 asks the key manager for its pair's status until answered (at most 90 s: the connections
# its flood left waiting drain at the gate's pace first)
SERVED_AGAIN = r"""
import ssl, sys, time, httpx
ctx = ssl.create_default_context(cafile="/certs/ca.crt")
ctx.load_cert_chain("/certs/sae/node-0.pem", "/certs/sae/node-0.key")
deadline, tries = time.monotonic() + 90, []
while time.monotonic() < deadline:
    try:
        with httpx.Client(base_url="https://key-manager:8470", verify=ctx, timeout=15) as client:
            status = client.get("/api/v1/keys/node-1/status").status_code
        print("served", status, "after", len(tries), "tries", tries[-3:])
        sys.exit(0 if status == 200 else 1)
    except httpx.HTTPError as err:
        tries.append(type(err).__name__)
        time.sleep(2)
print("never served:", tries)
sys.exit(1)
"""


def test_a_supernode_flooding_the_key_manager_stalls_no_one_else(federation):
    # node 0 floods its node-0 -> node-1 pair, which a qkd run does not use: a flood fills the
    # flooder's pair's store (1,024 keys, destroyed 300 s after issue when not fetched), and a
    # flood of node-0 -> server left node 0 unable to send its replies in the runs that follow
    # (key manager refused (503): ... the store is full) for up to 300 s
    compose, _ = federation
    # the third client of the test before holds partition 1 as node 1 does: stopped, so that node 1's
    # update is not the twin the guard sets aside (with it running node 1 was not `ok` in round 1)
    compose(*WITH_THIRD_CLIENT, "stop", "supernode-2", check=False)
    container = compose("ps", "-q", "supernode-0").stdout.split()[0]
    flood = subprocess.Popen(["docker", "exec", container, "python", "-c", FLOOD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        config = _config("compose-flood", 2, **{"round-timeout": "120.0"})
        compose("run", "--rm", "-e", f"QFL_RUN_CONFIG={config}", "submit", timeout=900)
    finally:
        _run(["docker", "exec", container, "touch", "/tmp/stop-flood"], check=False)
        out, err = flood.communicate(timeout=180)
        _run(["docker", "exec", container, "rm", "-f", "/tmp/stop-flood"], check=False)
    # once the flood stops, the flooder's own address and SAE are served again (a handshake slot kept
    # by a connection that closed around its handshake once locked them out for good)
    served = _run(["docker", "exec", container, "python", "-c", SERVED_AGAIN], check=False, timeout=120)
    assert served.returncode == 0, (served.stdout[-2000:], served.stderr[-2000:])
    codes = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    # it flooded, and was refused: 429 (requests in flight), 503 (connections open), and, its
    # TLS handshakes metered per address, connections closed before their handshake
    # (ConnectError) or left waiting their turn past the flooder's 60 s (ConnectTimeout)
    refused = {k: n for k, n in codes.items() if k in ("429", "503", "ConnectError", "ConnectTimeout")}
    assert sum(refused.values()) > 100, (codes, err[-2000:])
    rows = _rows("compose-flood")
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    clients = list(csv.DictReader(io.StringIO(_volume_file("runs", "compose-flood/clients.csv"))))
    for rnd in ("1", "2"):  # the other pair was served every round: node 1's update counted
        assert any(r["round"] == rnd and r["partition_id"] == "1" and r["status"] == "ok" for r in clients), clients


SITES = ("-f", "docker-compose.yml", "-f", "docker-compose.sites.yml")


def _joined(compose, service: str, timeout: float = 300) -> None:
    """Wait until ``service``'s (new) container holds a node ID; started again while the
    SuperLink still counts its key's old instance as online (see ``_start_again``)."""
    container = compose(*SITES, "ps", "-a", "-q", service).stdout.split()[0]
    deadline = time.monotonic() + timeout
    while True:
        logs = _run(["docker", "logs", container], check=False)
        if "SuperNode ID:" in logs.stdout + logs.stderr:
            return
        assert time.monotonic() < deadline, f"{service} did not join:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}"
        if _run(["docker", "inspect", "-f", "{{.State.Status}}", container]).stdout.strip() == "exited":
            time.sleep(5)
            compose(*SITES, "start", service)
        time.sleep(2)


def test_two_sites_each_on_its_own_mounted_data_train_and_evaluate_where_the_data_is(federation):
    # Arrange: docs/deploy.md's "Each site on its own data": the two SuperNodes again, each with its
    # site's folder mounted read-only and its file in its node config
    compose, _ = federation
    compose(*SITES, "up", "-d", "--no-deps", "supernode-0", "supernode-1", timeout=300)
    for service in ("supernode-0", "supernode-1"):
        _joined(compose, service)
    config = _config("compose-sites", 1, transport='"plain"', dataset='"file"', **{
        "data-label": '"diagnosis"', "data-classes": '"benign,malignant"', "data-num-features": "30",
        "fraction-evaluate": "1.0"})

    # Act
    compose("run", "--rm", "-e", f"QFL_RUN_CONFIG={config}", "submit", timeout=900)

    # Assert: both sites trained on their own rows and evaluated on their held-out ones
    rows = _rows("compose-sites")
    assert [int(r["round"]) for r in rows] == [0, 1]
    assert int(rows[1]["clients_ok"]) == 2, rows
    assert int(rows[1]["fed_eval_examples"]) > 0 and float(rows[1]["fed_eval_accuracy"]) > 0.5, rows
    mounts = _run(["docker", "inspect", "-f", "{{json .Mounts}}", compose(*SITES, "ps", "-q", "supernode-0").stdout.split()[0]])
    data = [m for m in json.loads(mounts.stdout) if m["Destination"] == "/data"]
    assert len(data) == 1 and data[0]["RW"] is False


def test_down_keeps_results_and_down_v_leaves_nothing(federation):
    compose, _ = federation
    compose("--profile", "qkd", "down", "--remove-orphans")
    assert _rows("compose-qkd"), "the results did not survive `down`"
    # with the third client's file too, as its header says: its volume is declared there
    compose(*WITH_THIRD_CLIENT, "--profile", "qkd", "down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {kind: _run(["docker", kind, "ls", "-q", "--filter", label] if kind != "container" else
                       ["docker", "ps", "-aq", "--filter", label]).stdout.split()
            for kind in ("container", "network", "volume")}
    assert left == {"container": [], "network": [], "volume": []}
