"""Past one machine, on Ray: the simulation on a Ray cluster of two hosts.

Two network namespaces are the two hosts, joined by a veth pair (10.204.1.0/24): a head
started with Ray's own ``ray start --head`` and a worker with ``ray start --address``, each
with 2 CPUs and its own temp dir, as two machines would have. Two ways onto the cluster, each
with clients on both hosts (every message notes the Ray node that ran it,
``ray_where_app.py``) and each against the same run on one host:

- the experiment engine (``qfl experiment --ray-address``'s session): 6 clients, 3 sampled a
  round, 3 rounds; its ``results.csv`` must be the one-host run's, byte for byte;
- ``qfl launch --simulation --ray-address`` (Flower's own ``flwr-simulation`` joins the cluster
  through ``RAY_ADDRESS``): 4 clients, 2 rounds; the same metrics round by round.

Nothing of the result depends on where a client ran: every message reloads the parameters and
reseeds every draw from the seed, round and partition, replies are summed in partition order,
and torch runs one thread on every host (``client/local.py``). Teardown must leave no
namespace, interface or process. Needs root and ``ip netns``; skipped otherwise. About 4
minutes on the 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qfl.launcher import PROJECT_DIR

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slow]

SUFFIX = f"{os.getpid() % 100000}"
HEAD_NS, WORKER_NS = f"qfl-rayh-{SUFFIX}", f"qfl-rayw-{SUFFIX}"
HEAD_IP, WORKER_IP = "10.204.1.1", "10.204.1.2"
VETH = (f"qrh-{SUFFIX}", f"qrw-{SUFFIX}")
GCS_PORT = 6379
CPUS = 2  # per host: one client actor each at Flower's default of 2 CPUs a client (and the engine's here)
HERE = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 600


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "needs Ray (pip install 'qfl[simulation]')"
    probe = f"qfl-rayprobe-{SUFFIX}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


_REASON = _unavailable()
if _REASON:
    pytest.skip(f"Ray cluster test skipped: {_REASON}", allow_module_level=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _in(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def _pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Cluster:
    """Two namespaces, their link, and a Ray head and worker started with ``ray start``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # short: a Ray node's socket paths live under its temp dir (sun_path holds 107 bytes)
        self.temp = Path(f"/tmp/qfl-ray-{SUFFIX}")
        self.where = root / "where.jsonl"
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0", "QFL_CACHE_DIR": str(root / "cache"),
                    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "QFL_TEST_WHERE": str(self.where),
                    "PYTHONPATH": os.pathsep.join([str(HERE), str(PROJECT_DIR)])}
        self.env.pop("RAY_ADDRESS", None)
        self.torn_down = False

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{GCS_PORT}"

    def start(self) -> None:
        for ns in (HEAD_NS, WORKER_NS):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
        for ns, end, ip in ((HEAD_NS, VETH[0], HEAD_IP), (WORKER_NS, VETH[1], WORKER_IP)):
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", end)
            _ip("-n", ns, "link", "set", end, "up")
        ray = str(Path(sys.executable).parent / "ray")
        common = ["--num-cpus", str(CPUS), "--disable-usage-stats"]
        self._ray_start(HEAD_NS, [ray, "start", "--head", "--node-ip-address", HEAD_IP, "--port", str(GCS_PORT),
                                  "--include-dashboard=false", "--temp-dir", str(self.temp / "head"), *common])
        self._ray_start(WORKER_NS, [ray, "start", "--address", self.address, "--node-ip-address", WORKER_IP,
                                    "--temp-dir", str(self.temp / "worker"), *common])
        self.wait_for_nodes(2)

    def _ray_start(self, ns: str, cmd: list[str]) -> None:
        done = subprocess.run([*_in(ns), *cmd], env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    def nodes(self) -> list[tuple[str, float]]:
        """The cluster's live nodes as its GCS lists them (from the head): IP, CPUs."""
        probe = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                 "print(json.dumps([(n['NodeManagerAddress'], n['Resources'].get('CPU', 0)) for n in ray.nodes() "
                 "if n['Alive']]))" % self.address)
        done = self.run(HEAD_NS, [sys.executable, "-c", probe], timeout=120)
        return [tuple(n) for n in json.loads(done.stdout.strip().splitlines()[-1])]

    def wait_for_nodes(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(nodes := self.nodes()) < count:
            assert time.monotonic() < deadline, f"the cluster has {nodes}, not {count} nodes"
            time.sleep(1.0)

    def run(self, ns: str | None, cmd: list[str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
        """``cmd`` in namespace ``ns`` (``None``: this machine's own), as a user runs it."""
        done = subprocess.run([*(_in(ns) if ns else []), *cmd], env=self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def ran_on(self, run_name: str) -> dict[str, int]:
        """Messages each Ray node IP ran for ``run_name`` (the where-app's notes)."""
        counts: dict[str, int] = {}
        for line in self.where.read_text().splitlines() if self.where.exists() else []:
            note = json.loads(line)
            if note["run"] == run_name:
                counts[note["ip"]] = counts.get(note["ip"], 0) + 1
        return counts

    def teardown(self) -> None:
        """End every process in the two namespaces (Ray's, by PID: `ray stop` would end every
        Ray on the machine), then the namespaces (their veth ends with them) and the temp dirs."""
        if self.torn_down:
            return
        self.torn_down = True
        for sig, wait in ((15, 10.0), (9, 5.0)):
            for ns in (HEAD_NS, WORKER_NS):
                for pid in _pids(ns):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + wait
            while any(_pids(ns) for ns in (HEAD_NS, WORKER_NS)) and time.monotonic() < deadline:
                time.sleep(0.2)
        for ns in (HEAD_NS, WORKER_NS):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray_cluster = Cluster(tmp_path_factory.mktemp("ray-cluster"))
    try:
        ray_cluster.start()
        yield ray_cluster
    finally:
        ray_cluster.teardown()


# the engine as `qfl experiment --ray-address` runs it (the catalogue's experiments are too big for
# a test): one arm, one seed, 6 clients, 3 sampled a round; argv: out folder, cluster address or ""
ENGINE_RUN = """
import sys
from pathlib import Path
from qfl.experiments.catalogue import Arm, Experiment
from qfl.experiments.engine import SimulationSession
from qfl.experiments.runner import run_experiment
exp = Experiment(name="cluster", claim="clients on both hosts", clients=6, rounds=3, target=0.6, seeds=1,
                 config={"dataset": "iris", "learning-rate": 0.1, "local-epochs": 2, "fraction-train": 0.5},
                 arms=(Arm("fedavg", {"strategy": "fedavg"}),), baseline="fedavg", client_app="ray_where_app:app")
run_experiment(exp, Path(sys.argv[1]), "test", say=print,
               session_factory=lambda: SimulationSession(cpus_per_client=2.0, ray_address=sys.argv[2] or None))
"""


def test_the_engine_runs_clients_on_both_hosts_and_gets_the_one_host_result(cluster):
    assert sorted(cluster.nodes()) == [(HEAD_IP, CPUS), (WORKER_IP, CPUS)]
    cluster.run(HEAD_NS, [sys.executable, "-c", ENGINE_RUN, str(cluster.root / "on-cluster"), cluster.address])
    ran = cluster.ran_on("fedavg-s1")
    assert set(ran) == {HEAD_IP, WORKER_IP}, ran  # both hosts ran clients
    assert sum(ran.values()) == 3 * 3  # 3 of 6 a round, each once; the engine's node map asked nobody

    cluster.where.rename(cluster.root / "where-cluster.jsonl")
    cluster.run(None, [sys.executable, "-c", ENGINE_RUN, str(cluster.root / "one-host"), ""])  # a Ray of its own
    assert len(cluster.ran_on("fedavg-s1")) == 1
    on_cluster = (cluster.root / "on-cluster" / "cluster" / "results.csv").read_bytes()
    assert on_cluster == (cluster.root / "one-host" / "cluster" / "results.csv").read_bytes()
    rows = on_cluster.decode().splitlines()
    assert len(rows) == 1 + 4 and all(row.split(",")[-2] == "3" for row in rows[2:])  # rounds 0-3; 3 replies each


def _where_app(root: Path) -> Path:
    """The project's app with the where-app as its ClientApp component (``qfl launch --app``)."""
    app = root / "where-app"
    app.mkdir(exist_ok=True)
    text = (PROJECT_DIR / "pyproject.toml").read_text()
    assert text.count('clientapp = "client.app:app"') == 1
    (app / "pyproject.toml").write_text(text.replace('clientapp = "client.app:app"', 'clientapp = "ray_where_app:app"'))
    shutil.copy(HERE / "ray_where_app.py", app / "ray_where_app.py")
    return app


def test_qfl_launch_simulation_joins_the_cluster_and_gets_the_one_host_result(cluster):
    app = _where_app(cluster.root)
    out = cluster.root / "launches"

    def launch(name: str, ns: str | None, *extra: str) -> list[dict]:
        cluster.run(ns, [sys.executable, "-m", "qfl.launcher", "launch", "--simulation", "--clients", "4", "--rounds", "2",
                         "--dataset", "iris", "--seed", "3", "--app", str(app), "--run-name", name, "--set",
                         f'output-dir="{out}"', "--set", "local-epochs=2", "--set", "learning-rate=0.1", *extra])
        return json.loads((out / name / "metrics.json").read_text())["rounds"]

    on_cluster = launch("cluster", HEAD_NS, "--ray-address", cluster.address)
    ran = cluster.ran_on("cluster")
    assert set(ran) == {HEAD_IP, WORKER_IP}, ran  # Flower's own actors, on both hosts
    alone = launch("one-host", None)
    assert len(cluster.ran_on("one-host")) == 1
    keys = ("round", "test_accuracy", "test_loss", "train_loss", "clients_ok", "clients_failed")
    assert [{k: r[k] for k in keys} for r in on_cluster] == [{k: r[k] for k in keys} for r in alone]
    assert [r["clients_ok"] for r in on_cluster[1:]] == [4, 4]


def test_teardown_leaves_no_namespace_link_or_process(cluster):
    heads = _pids(HEAD_NS) + _pids(WORKER_NS)
    assert heads  # the cluster ran until now
    cluster.teardown()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert HEAD_NS not in names and WORKER_NS not in names
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert all(f" {end}@" not in links and f" {end}:" not in links for end in VETH)
    import psutil

    assert [p for p in heads if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
    assert not cluster.temp.exists()
