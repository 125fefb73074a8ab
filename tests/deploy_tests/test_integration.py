"""Real federations: flower-superlink + flower-supernode processes on 127.0.0.1.

Each test runs ``qfl launch`` as a user would, in a subprocess, and checks what it
leaves: metrics, checkpoints, and no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import LAUNCH_TIMEOUT_S, launch_cmd, processes_in, run_rows

from qfl.launcher import PROJECT_DIR

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    """One real 2-node, 2-round run that several tests read (none changes it). Long (~60 s):
    the cold start of a SuperLink, two SuperNodes and their warm workers."""
    out = tmp_path_factory.mktemp("runs")
    proc = subprocess.run(
        launch_cmd(out, "two-nodes", "--clients", "2", "--rounds", "2"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    return proc, out / "two-nodes"


def test_two_nodes_two_rounds_learn(two_node_run):
    proc, run_dir = two_node_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["test_accuracy"] > 1 / 3  # above chance (3 balanced classes)
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    assert all(r["clients_ok"] == 2 and r["clients_failed"] == 0 for r in rows[1:])
    assert all(r["bytes_down"] > 0 and r["bytes_up"] > 0 for r in rows[1:])
    for name in ("metrics.csv", "metrics.png", "checkpoints/round-0002.npz", "checkpoints/latest.npz"):
        assert (run_dir / name).exists(), name
    # progress lines and the final table reach the user
    assert "[qfl] round 2/2" in proc.stdout and "test_acc" in proc.stdout
    assert processes_in(run_dir) == []


def test_resume_continues_from_last_checkpoint(two_node_run, tmp_path):
    import shutil

    run_dir = tmp_path / "two-nodes"  # a copy: the shared run stays as the other tests expect it
    shutil.copytree(two_node_run[1], run_dir, symlinks=True)
    before = run_rows(run_dir)
    proc = subprocess.run(
        launch_cmd(tmp_path, "two-nodes", "--clients", "2", "--rounds", "3", "--resume", "two-nodes"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming from round 2" in proc.stdout
    rows = run_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[:3] == before  # history kept, not recomputed
    assert (run_dir / "checkpoints" / "round-0003.npz").exists()
    assert processes_in(run_dir) == []


@pytest.mark.slow
def test_dead_supernode_does_not_stop_the_run(tmp_path):
    """Three nodes, one killed after round 1. Long (~2 min) because round 2 waits for Flower's
    own verdict on the dead node (two missed heartbeats, up to 60 s) or the round timeout."""
    run_dir = tmp_path / "dead-node"
    proc = subprocess.Popen(
        launch_cmd(tmp_path, "dead-node", "--clients", "3", "--rounds", "2", "--set", "round-timeout=90.0"),
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not any(r["round"] == 1 for r in run_rows(run_dir)):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.5)
        victim = json.loads((run_dir / "logs" / "pids.json").read_text())["supernode-2"]
        os.killpg(victim, signal.SIGKILL)  # the node and its ClientApp die at once
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    rows = run_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]  # the run finished
    assert rows[1]["clients_ok"] == 3
    assert rows[2]["clients_ok"] == 2  # the rest kept training
    assert rows[2]["clients_failed"] >= 1  # ... and the round said one was missing
    # and the console says who and why: Flower reports the node unavailable, or it never answers
    victim_node = next(c["node_id"] for c in _client_rows(run_dir) if c["partition_id"] == "2")
    assert re.search(rf"round 2, node {victim_node}: (failed: .*Node Unavailable|no reply within the round timeout)", out), out[-3000:]
    assert processes_in(run_dir) == []


def test_simulation_engine_runs_the_same_app(tmp_path):
    run_dir = tmp_path / "sim"
    proc = subprocess.run(
        launch_cmd(tmp_path, "sim", "--simulation", "--clients", "5", "--rounds", "2"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients_ok"] == 5 for r in rows[1:])
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    assert processes_in(run_dir) == []


def _launch_until_round_0(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A launch whose ServerApp is up (round 0 recorded) and whose round 1 is under way."""
    run_dir = tmp_path / name
    proc = subprocess.Popen(
        launch_cmd(tmp_path, name, "--clients", "2", "--rounds", "6", *extra),
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # signals as at a terminal: a suite started in the background (`make test &`) hands
        # its children SIGINT ignored, one started under `nohup` SIGHUP, and Python keeps them ignored
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP)],
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not run_rows(run_dir):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the ServerApp never recorded round 0"
        time.sleep(0.2)
    return proc, run_dir


def _none_left(run_dir: Path, within_s: float = 60.0) -> list[str]:
    """The launch's processes still alive once ``within_s`` passed (polled: none, as soon as none)."""
    deadline = time.monotonic() + within_s
    while (left := processes_in(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("sig", [signal.SIGINT, *(pytest.param(s, marks=pytest.mark.slow) for s in (signal.SIGHUP, signal.SIGTERM))],
                         ids=lambda s: s.name)
def test_ctrl_c_a_closed_terminal_and_sigterm_stop_every_process(tmp_path, sig):
    """Ctrl-C (SIGINT), the terminal closing (SIGHUP) and ``kill`` (SIGTERM) mid-round: the
    launcher says so, exits 130 and leaves no process (Flower's detached SuperExec included)."""
    proc, run_dir = _launch_until_round_0(tmp_path, f"signal-{sig.name}")
    try:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: stopping the federation" in out
    assert _none_left(run_dir, within_s=0.0) == []


@pytest.mark.slow
def test_a_launcher_killed_outright_leaves_no_process(tmp_path):
    """SIGKILL runs no handler: the launch's watchdog ends what the launcher had started."""
    proc, run_dir = _launch_until_round_0(tmp_path, "sigkill")
    assert len(processes_in(run_dir)) >= 3  # SuperLink, SuperNodes, SuperExec, ServerApp, ...
    proc.kill()
    proc.communicate(timeout=30)
    assert _none_left(run_dir) == []
    log, deadline = run_dir / "logs" / "watchdog.log", time.monotonic() + 30
    while "the launcher was gone; stopped" not in log.read_text():  # written once they are all gone
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@pytest.mark.slow
def test_qkd_transport_delivers_the_same_plaintext(two_node_run, tmp_path):
    """Long (~80 s): a key manager and two SAEs besides the federation, and a plain run to compare."""
    import numpy as np

    _, plain_dir = two_node_run
    proc = subprocess.run(
        launch_cmd(tmp_path, "qkd", "--clients", "2", "--rounds", "2", "--transport", "qkd"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "qkd"
    assert "transport: qkd" in proc.stdout
    # encrypted both ways, the federation computes exactly what the plain one did
    with np.load(plain_dir / "checkpoints" / "round-0002.npz") as a, np.load(run_dir / "checkpoints" / "round-0002.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    rows = run_rows(run_dir)
    assert all(r["clients_ok"] == 2 for r in rows[1:])
    assert processes_in(run_dir) == []


@pytest.mark.slow
def test_eavesdropped_qkd_link_stops_the_run_and_says_why(tmp_path):
    proc = subprocess.run(
        launch_cmd(tmp_path, "eve", "--clients", "2", "--rounds", "2", "--transport", "qkd", "--qkd-eve-fraction", "1.0"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode != 0  # a round without one valid update ends the run
    run_dir = tmp_path / "eve"
    rows = run_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1]  # round 1 is recorded, nothing is lost
    assert rows[1]["clients_ok"] == 0 and rows[1]["clients_failed"] == 2
    assert rows[1]["test_accuracy"] == rows[0]["test_accuracy"]  # nothing was aggregated, nothing sent in the clear
    # the cause is on the console, with the QBER and the bound
    assert re.search(r"QKD link aborted: QBER 0\.2\d+ above the 0\.11 bound", proc.stdout), proc.stdout[-3000:]
    assert "RunFailed: round 1 got no valid update" in proc.stdout
    assert processes_in(run_dir) == []


@pytest.mark.slow
def test_a_malicious_client_in_a_real_deployment_is_named_and_the_run_goes_on(tmp_path):
    """Long (~90 s): a third node with its own app, so that the attack crosses the real wire."""
    # the reply Flower's own aggregation used to die on: one extra metric key
    app_dir = _attack_app(tmp_path, "extra-key")
    proc = subprocess.run(
        launch_cmd(tmp_path, "attack", "--clients", "3", "--rounds", "2", "--app", str(app_dir)),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(tmp_path / "attack")
    assert [(r["clients_ok"], r["clients_rejected"]) for r in rows[1:]] == [(2, 1), (2, 1)]
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    attacker = [c for c in _client_rows(tmp_path / "attack") if c["partition_id"] == "0"]
    assert len(attacker) == 2 and all("unexpected ['evil']" in c["status"] for c in attacker)
    assert "unexpected ['evil']" in proc.stdout  # named on the console too


def _attack_app(tmp_path: Path, attack: str, partitions: tuple[int, ...] = (0,)) -> Path:
    """A Flower app whose ClientApp is ours, but ``partitions`` corrupt their training replies:
    ``extra-key`` adds a metric, ``sign-flip`` sends the global model minus 3 times the honest update."""
    app_dir = tmp_path / f"attack-app-{attack}"
    app_dir.mkdir()
    pyproject = (PROJECT_DIR / "pyproject.toml").read_text()
    (app_dir / "pyproject.toml").write_text(pyproject.replace('clientapp = "client.app:app"', 'clientapp = "malicious:app"'))
    (app_dir / "malicious.py").write_text(f'''
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.clientapp import ClientApp

import client.app as honest
from transport.flower import HELLO_ACTION, answer_hello, transport_mod


def corrupt(msg, context, call_next):
    reply = call_next(msg, context)
    if msg.metadata.message_type != "train" or context.node_config["partition-id"] not in {partitions!r}:
        return reply
    if {attack!r} == "extra-key":
        reply.content["metrics"] = MetricRecord({{**dict(reply.content["metrics"]), "evil": 1.0}})
    elif {attack!r} == "sign-flip":
        sent = msg.content["arrays"]
        reply.content["arrays"] = ArrayRecord({{k: Array(sent[k].numpy() - 3.0 * (v.numpy() - sent[k].numpy()))
                                                for k, v in reply.content["arrays"].items()}})
    return reply


app = ClientApp(mods=[transport_mod, corrupt])
app.train()(honest.train)
app.evaluate()(honest.evaluate)
app.query(HELLO_ACTION)(answer_hello)
''')
    return app_dir


@pytest.mark.slow
def test_two_colluding_sign_flippers_of_five_in_a_real_deployment_are_named_and_do_not_reverse_learning(tmp_path):
    """Long (~3 min): five SuperNodes for eight rounds, the size the issue asks the default to hold at.

    Partitions 0 and 1 send the global model minus 3 times their honest update (inside the
    guard's 4x norm bar), over the real wire. With no option set, the run ends within 0.10
    of the same federation without attackers (run in this process: same seeds, same code,
    no wire), and both attackers are named in every round.
    """
    from qfl.inprocess import InProcessFederation, task_identity
    from qfl.launch.config import app_defaults

    config = {**app_defaults(PROJECT_DIR), "dataset": "wine", "local-epochs": 3, "learning-rate": 0.1}
    with task_identity():
        clean = InProcessFederation(config, 5).run(8).accuracy[-1]
    app_dir = _attack_app(tmp_path, "sign-flip", partitions=(0, 1))
    proc = subprocess.run(
        launch_cmd(tmp_path, "colluders", "--dataset", "wine", "--clients", "5", "--rounds", "8", "--app", str(app_dir),
                   "--timeout", str(2 * LAUNCH_TIMEOUT_S - 20)),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=2 * LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(tmp_path / "colluders")
    assert len(rows) == 9, rows
    assert clean > 0.8, clean  # a margin around chance would prove nothing
    assert rows[-1]["test_accuracy"] >= clean - 0.10, (rows[-1]["test_accuracy"], clean)
    clients = _client_rows(tmp_path / "colluders")
    attackers = [c for c in clients if c["partition_id"] in ("0", "1")]
    assert len(attackers) == 16, attackers  # both, every round
    # rejected for pointing back; in a round where its own honest update pointed against
    # the others, the flipped one points with them and is only named and cut for its length
    assert all(c["status"].startswith(("rejected: update points against the round's coordinate-wise median",
                                       "scaled: update norm")) for c in attackers), [c["status"] for c in attackers]
    assert sum(c["status"].startswith("rejected") for c in attackers) >= 12, [c["status"] for c in attackers]


@pytest.mark.slow
def test_qkd_plus_dp_composes_and_reports_the_accountants_epsilon(two_node_run, tmp_path):
    """Long (~90 s): a key manager and two SAEs, and a plain run to compare against."""
    import numpy as np

    from transport.dp import epsilon_of, gaussian_event

    _, plain_dir = two_node_run
    proc = subprocess.run(
        launch_cmd(tmp_path, "qkd-dp", "--clients", "2", "--rounds", "2", "--transport", "qkd+dp",
                    "--set", "dp-clip=0.5", "--set", "dp-noise-multiplier=0.8"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(tmp_path / "qkd-dp")
    assert all(r["clients_ok"] == 2 for r in rows[1:])
    for r in rows:  # local DP: the worst client's own releases, one a round, no amplification
        expected = epsilon_of([(gaussian_event(0.8), r["round"])] if r["round"] else [], 1e-5)
        assert r["dp_epsilon"] == pytest.approx(expected, rel=1e-9)
    clients = _client_rows(tmp_path / "qkd-dp")
    assert {c["partition_id"] for c in clients} == {"0", "1"}
    for c in clients:  # and each client's own, in clients.csv
        assert float(c["dp_epsilon"]) == pytest.approx(epsilon_of([(gaussian_event(0.8), int(c["round"]))], 1e-5), rel=1e-9)
    assert "epsilon" in proc.stdout  # the final table shows it
    with np.load(plain_dir / "checkpoints" / "round-0001.npz") as a, np.load(tmp_path / "qkd-dp" / "checkpoints" / "round-0001.npz") as b:
        assert not np.allclose(a["weights"], b["weights"])  # the noise reached the model


@pytest.mark.slow
def test_central_dp_noises_the_aggregate_at_the_server(two_node_run, tmp_path):
    import numpy as np

    from transport.dp import epsilon_of, gaussian_event

    _, plain_dir = two_node_run
    proc = subprocess.run(
        launch_cmd(tmp_path, "central", "--clients", "2", "--rounds", "1", "--transport", "dp",
                    "--set", 'dp-mode="central"', "--set", "dp-noise-multiplier=0.3"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(tmp_path / "central")
    assert rows[1]["clients_ok"] == 2
    # both nodes sampled (fraction-train 1): one release, no amplification
    assert rows[1]["dp_epsilon"] == pytest.approx(epsilon_of([(gaussian_event(0.3), 1)], 1e-5), rel=1e-9)
    log = (tmp_path / "central" / "logs" / "flwr-run.log").read_text()
    assert "Noise multiplier: 0.3" in log  # Flower's DP wrapper ran
    with np.load(plain_dir / "checkpoints" / "round-0001.npz") as a, np.load(tmp_path / "central" / "checkpoints" / "round-0001.npz") as b:
        assert not np.allclose(a["weights"], b["weights"])


@pytest.mark.slow
def test_distributed_dp_under_secure_aggregation_is_accounted_as_central_dp(tmp_path):
    """secagg + central DP on a real deployment: the nodes add their shares of the noise, the
    server sees only the noised sum, and the ledger counts the Gaussian mechanism as
    dp-accounting computes it for the mechanism run (every node sampled: no amplification)."""
    from transport.dp import epsilon_of, gaussian_event

    proc = subprocess.run(
        launch_cmd(tmp_path, "ddp", "--clients", "3", "--rounds", "2", "--transport", "secagg+dp",
                   "--set", 'dp-mode="central"', "--set", "dp-noise-multiplier=0.7"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(tmp_path / "ddp")
    assert [r["clients_ok"] for r in rows[1:]] == [3, 3]
    for n, row in enumerate(rows[1:], start=1):
        assert row["dp_epsilon"] == pytest.approx(epsilon_of([(gaussian_event(0.7), n)], 1e-5), rel=1e-9)
    log = (tmp_path / "ddp" / "logs" / "flwr-run.log").read_text()
    assert "distributed DP, noise split among 2" in log and "Noise multiplier" not in log  # no server-side noise


@pytest.mark.slow
def test_secure_aggregation_survives_a_supernode_killed_after_the_key_exchange(tmp_path):
    """Four nodes under qkd+secagg (pairwise masks keyed by QKD keys; the X25519 path's dropouts
    are in transport_tests/test_secagg_flower.py); once round 1 is unmasked (the nodes hold
    their pair keys), one SuperNode is killed (-9): round 2 ends with the unmasked sum of the
    other three, its masks with them removed by their revealed pair seeds. Long (~2 min): the
    round waits for the dead node until the round timeout."""
    import numpy as np

    run_dir = tmp_path / "secagg"
    proc = subprocess.Popen(
        launch_cmd(tmp_path, "secagg", "--clients", "4", "--rounds", "2", "--transport", "qkd+secagg",
                   "--set", "round-timeout=30.0"),
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = run_dir / "logs" / "flwr-run.log"
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (log.exists() and "the sum of 4 client(s) unmasked" in log.read_text()):  # round 1 done
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "round 1 was never unmasked"
            time.sleep(0.2)
        victim = json.loads((run_dir / "logs" / "pids.json").read_text())["supernode-3"]
        os.killpg(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    rows = run_rows(run_dir)
    assert [r["clients_ok"] for r in rows[1:]] == [4, 3]
    text = log.read_text()
    assert "pairwise masks from QKD keys" in text
    assert "the sum of 4 client(s) unmasked (0 dropped" in text
    assert "the sum of 3 client(s) unmasked (1 dropped after the key exchange)" in text
    with np.load(run_dir / "checkpoints" / "round-0001.npz") as a, np.load(run_dir / "checkpoints" / "round-0002.npz") as b:
        assert not np.allclose(a["weights"], b["weights"])  # the survivors' sum moved the model
    assert processes_in(run_dir) == []


@pytest.mark.slow
def test_secure_aggregation_below_the_threshold_fails_the_round_named_and_the_run_goes_on(tmp_path):
    """Three nodes (k = 2, t = 2); one is killed after round 1: in rounds 2 and 3 each survivor
    has one surviving neighbour, below the threshold, and refuses to reveal anything (its
    own input would be exposed), so no seed can be rebuilt. Each such round fails with its
    reason in the log, the model stays, and the run ends normally."""
    import numpy as np

    run_dir = tmp_path / "below"
    proc = subprocess.Popen(
        launch_cmd(tmp_path, "below", "--clients", "3", "--rounds", "3", "--transport", "secagg",
                   "--set", "round-timeout=20.0"),
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = run_dir / "logs" / "flwr-run.log"
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (log.exists() and "the sum of 3 client(s) unmasked" in log.read_text()):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "round 1 was never unmasked"
            time.sleep(0.2)
        os.killpg(json.loads((run_dir / "logs" / "pids.json").read_text())["supernode-2"], signal.SIGKILL)
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert [r["clients_ok"] for r in run_rows(run_dir)[1:]] == [3, 0, 0]
    text = log.read_text()
    assert text.count("the round: secure aggregation could not unmask the round: 0 share(s) of client") == 2
    assert "1 of this node's neighbours survived, fewer than the threshold 2" in text  # the survivors' refusal
    with np.load(run_dir / "checkpoints" / "round-0001.npz") as a, np.load(run_dir / "checkpoints" / "round-0003.npz") as b:
        assert np.array_equal(a["weights"], b["weights"])  # the failed rounds left the model as it was
    assert processes_in(run_dir) == []


def _client_rows(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "clients.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stale"])  # "drop" is the same path minus folding: unit-tested
def test_qcn_straggler_past_the_deadline_is_dropped_or_folded(tmp_path, policy):
    # partition 0 on a metro link (~0.1 s), partition 1 on a long-haul path (~14 s):
    # with a 10 s deadline the far client is late by one round, every round
    run_name = f"qcn-{policy}"
    proc = subprocess.run(
        launch_cmd(
            tmp_path, run_name, "--clients", "2", "--rounds", "2", "--transport", "qcn",
            "--strategy", "fidelity-weighted", "--set", 'qcn-paths="metro;long-haul"',
            "--set", "round-deadline=10.0", "--set", f'straggler-policy="{policy}"',
        ),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    run_dir = tmp_path / run_name
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = run_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["stragglers"] for r in rows[1:]] == [1, 1]
    # stale: round 1's late update is folded into round 2; drop: never
    assert [r["stale_folded"] for r in rows[1:]] == ([0, 1] if policy == "stale" else [0, 0])
    clients = _client_rows(run_dir)
    assert len(clients) == 4
    for c in clients:
        far = c["partition_id"] == "1"
        assert c["late"] == str(int(far))
        assert (float(c["latency_s"]) > 10.0) == far and (float(c["fidelity"]) < 0.9) == far
    # the on-time client alone still moves the model
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
    assert processes_in(run_dir) == []


# --- the warm runtime -------------------------------------------------------------------------


@pytest.mark.slow
def test_warm_and_cold_runtimes_give_bit_identical_checkpoints(two_node_run, tmp_path):
    """Long (~80 s): the cold runtime starts torch and PennyLane for every message, by design."""
    import numpy as np

    _, warm_dir = two_node_run  # the default: warm workers
    proc = subprocess.run(
        launch_cmd(tmp_path, "cold", "--clients", "2", "--rounds", "2", "--set", "warm-runtime=false"),
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in (1, 2):
        name = f"checkpoints/round-{r:04d}.npz"
        with np.load(warm_dir / name) as warm, np.load(tmp_path / "cold" / name) as cold:
            assert sorted(warm.files) == sorted(cold.files)
            for k in warm.files:  # the checksum too: same bytes
                np.testing.assert_array_equal(warm[k], cold[k])


def _workers(run_dir: Path) -> list[int]:
    """The launch's warm workers: started as ``client.worker``, or forked by its zygote (a child
    of ``client.zygote`` that runs the same command line)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "cwd"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if not str(proc.info["cwd"] or "").startswith(str(run_dir)):
            continue
        try:
            forked = "client.zygote" in cmd and psutil.Process(proc.info["ppid"]).cmdline() == proc.info["cmdline"]
        except psutil.Error:
            forked = False
        if "client.worker" in cmd or forked:
            found.append(proc.info["pid"])
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_round_is_restarted_and_the_round_goes_on(tmp_path):
    """Long (~100 s): a worker is killed mid-round and started again inside the real federation."""
    import psutil

    run_dir = tmp_path / "kill-worker"
    proc = subprocess.Popen(
        launch_cmd(tmp_path, "kill-worker", "--clients", "2", "--rounds", "3", "--set", "local-epochs=25"),
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not any(r["round"] == 1 for r in run_rows(run_dir)):
            assert proc.poll() is None and time.monotonic() < deadline, "round 1 never finished"
            time.sleep(0.2)
        workers = _workers(run_dir)
        assert len(workers) == 2  # one warm worker per node, reused after round 1
        victim = psutil.Process(workers[0])
        start = sum(victim.cpu_times()[:2])
        while sum(victim.cpu_times()[:2]) - start < 0.3:  # it is training round 2 now
            assert time.monotonic() < deadline, "the worker never started round 2"
            time.sleep(0.05)
        victim.kill()
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    rows = run_rows(run_dir)
    assert [(r["round"], r["clients_ok"]) for r in rows[1:]] == [(1, 2), (2, 2), (3, 2)]  # restarted, answered
    assert not psutil.pid_exists(workers[0]) or psutil.Process(workers[0]).status() == psutil.STATUS_ZOMBIE
    assert processes_in(run_dir) == []  # and no worker outlives the launch
