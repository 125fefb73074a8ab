"""``qfl launch`` refuses bad input before any process starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qfl.common.config import DATASETS
from qfl.launch.config import parse_overrides, run_config_arg
from qfl.launch.processes import LaunchError
from qfl.launcher import PROJECT_DIR, check_not_shadowed, main


def _launch_error(capsys, tmp_path, *argv):
    code = main(["launch", "--set", f'output-dir="{tmp_path}"', "--run-name", "bad", *argv])
    err = capsys.readouterr().err
    assert code == 2
    # nothing was started: the launcher creates the run's log folder only when launching
    assert not (tmp_path / "bad" / "logs").exists()
    return err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--dataset", "mnist"], "'dataset': input should be " + ", ".join(f"'{d}'" for d in DATASETS[:-1])
         + f" or '{DATASETS[-1]}', got 'mnist'"),
        (["--rounds", "0"], "'num-server-rounds': input should be greater than or equal to 1, got 0"),
        (["--clients", "0"], "option '--clients': must be a positive integer"),
        (["--clients", "-3"], "'--clients': must be a positive integer"),
        (["--clients", "200", "--dataset", "iris"], "'--clients': 200 clients but dataset 'iris' has only 112"),
        (["--device", "qiskit.aerx"], "'device': no PennyLane device 'qiskit.aerx' is installed here"),
        (["--dataset", "iris", "--n-qubits", "2"], "'n-qubits': dataset 'iris' has 3 classes"),
        (["--strategy", "nosuch"], "'strategy': unknown strategy 'nosuch'"),
        (["--strategy", "nosuch.module:Thing"], "cannot import module 'nosuch.module'"),
        (["--set", "learning_rate=0.1"], "'learning_rate': unknown key"),
        (["--set", "n-layers=0"], "'n-layers': input should be greater than or equal to 1, got 0"),
        (["--log-to", "wandb"], "'log-to': unknown ['wandb']"),
    ],
)
def test_bad_input_fails_before_launch(capsys, tmp_path, argv, fragment):
    err = _launch_error(capsys, tmp_path, *argv)
    assert fragment in err, err


def test_a_users_module_that_shadows_a_project_package_is_named_before_launch(tmp_path, monkeypatch):
    check_not_shadowed()  # this checkout's own packages pass
    (tmp_path / "client.py").write_text("")  # a user's module of the same generic name, first on the path
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "client", raising=False)
    with pytest.raises(LaunchError, match=rf"`import client` finds {tmp_path / 'client.py'}, not this project's"):
        check_not_shadowed(("client",))


def test_overrides_parse_toml_and_bare_words(defaults):
    got = parse_overrides(["dataset=iris", "learning-rate=0.2", "resume=true", 'run-name="a b"'], defaults)
    assert got == {"dataset": "iris", "learning-rate": 0.2, "resume": True, "run-name": "a b"}


def test_run_config_arg_round_trips(defaults):
    from qfl.common.config import RunConfig

    cfg = RunConfig.from_run_config(defaults)
    items = run_config_arg(cfg).split(" ")
    assert parse_overrides(items, defaults) == cfg.to_run_config()


def test_config_file_sets_values_and_rejects_unknown_keys(tmp_path, defaults):
    import argparse

    from qfl.launch.config import build_config
    from qfl.launcher import PROJECT_DIR

    good = tmp_path / "devices.toml"
    good.write_text('device-profiles = "ibm-heron;noisy-nisq"\nstrategy = "noise-isolating"\n')
    from qfl.launcher import build_parser

    args = build_parser().parse_args(["launch", "--config", str(good), "--set", f'output-dir="{tmp_path}"', "--clients", "2"])
    cfg, _ = build_config(args, PROJECT_DIR)
    assert cfg.profile_specs() == ["ibm-heron", "noisy-nisq"] and cfg.strategy == "noise-isolating"
    bad = tmp_path / "bad.toml"
    bad.write_text("device_profile = 'x'\n")
    args.config = str(bad)
    with pytest.raises(Exception, match="'device_profile': unknown key"):
        build_config(args, PROJECT_DIR)


# --- one launch per run folder; no run replaces another -----------------------------------


def test_a_new_run_is_refused_a_folder_that_holds_a_run(capsys, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.json").write_text("{}")
    code = main(["launch", "--set", f'output-dir="{tmp_path}"', "--run-name", "taken", "--dataset", "iris"])
    assert code == 2 and "holds a run already: --resume taken continues it" in capsys.readouterr().err
    assert (tmp_path / "taken" / "metrics.json").read_text() == "{}"  # untouched


def test_a_second_launch_of_a_run_in_use_is_refused(tmp_path):
    from qfl.launch.processes import LaunchError
    from qfl.launch.runs import RunLock

    with RunLock(tmp_path / "run"):
        with pytest.raises(LaunchError, match=r"in use by qfl launch \(pid \d+\)"):
            with RunLock(tmp_path / "run"):
                pass
    with RunLock(tmp_path / "run"):  # free again once the first is done
        pass


def test_new_runs_get_fresh_timestamped_names_and_resume_finds_latest(tmp_path):
    from qfl.launch.runs import point_latest, run_name_for

    first, resume = run_name_for(tmp_path, "", None, False)
    assert resume is False and len(first) == len("20261127-120000")
    (tmp_path / first).mkdir()
    second, _ = run_name_for(tmp_path, "", None, False)
    assert second != first and second.startswith(first[:8])
    with pytest.raises(Exception, match="does not exist"):
        run_name_for(tmp_path, "", "", False)  # nothing to continue yet
    (tmp_path / first / "checkpoints").mkdir()
    point_latest(tmp_path, first)
    assert run_name_for(tmp_path, "", "", False) == (first, True)  # bare --resume
    assert run_name_for(tmp_path, "", first, False) == (first, True)  # --resume NAME
    with pytest.raises(Exception, match="holds no run"):
        run_name_for(tmp_path, "", "nothing-here", False)


@pytest.mark.parametrize("options", ['{ trim-threshold = 4.0, mode = "x" }', "{ trim-threshold = 4.0, mode = 'x' }"])
def test_strategy_options_with_either_quote_reach_flower_intact(defaults, options):
    from flwr.common.config import parse_config_args

    from qfl.common.config import RunConfig

    cfg = RunConfig.from_run_config({**defaults, "strategy-options": options})
    assert parse_config_args([run_config_arg(cfg)]) == cfg.to_run_config()  # what flwr run will read


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # Flower's own FAB builder
def test_the_staged_app_bundles_to_the_same_fab_without_walking_ignored_folders(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    from qfl.launch.runs import stage_app

    app = tmp_path / "app"
    for rel, text in {"pyproject.toml": (PROJECT_DIR / "pyproject.toml").read_text(), ".gitignore": ".venv/\nruns/\n*.log\n",
                      "pkg/__init__.py": "", "pkg/mod.py": "X = 1\n", "docs/a.md": "# a\n", "pkg/data.json": "{}",
                      ".venv/lib/site.py": "venv\n", "runs/r1/metrics.json": "{}", "pkg/run.log": "log\n",
                      "pkg/blob.bin": "binary\n"}.items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(text)
    staged = stage_app(app, tmp_path / "staged")
    copied = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert copied == [".gitignore", "docs/a.md", "pkg/__init__.py", "pkg/data.json", "pkg/mod.py", "pyproject.toml"]
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)  # byte for byte: the same FAB and hash


def test_ports_handed_to_nodes_started_at_once_never_repeat():
    from qfl.launch.processes import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_port_another_process_holds_is_not_taken_for_the_node_that_failed_to_bind(tmp_path):
    import socket
    import subprocess
    import sys

    from qfl.launch.processes import LaunchError, free_port, wait_for_port

    port = free_port()
    with socket.socket() as holder:  # this test process holds the port, as a node started first would
        holder.bind(("127.0.0.1", port))
        holder.listen()
        node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            with pytest.raises(LaunchError, match=f"port {port} is held by another process"):
                wait_for_port(port, node, 5, "flower-supernode 1", tmp_path / "node.log")
        finally:
            node.kill()
            node.wait()


def test_an_unknown_experiment_or_a_single_seed_is_refused_before_anything_runs(capsys):
    assert main(["experiment", "nosuch"]) == 2
    assert "unknown experiment 'nosuch' (choose from noise, qcn" in capsys.readouterr().err
    assert main(["experiment", "noise", "--seeds", "1"]) == 2
    assert "--seeds needs at least 2" in capsys.readouterr().err


# --- --secure: TLS and SuperNode authentication on loopback --------------------------------


def test_secure_commands_use_tls_and_node_keys_and_never_insecure(tmp_path):
    from qfl.launch.commands import CONNECTION
    from qfl.launcher import federation_commands

    certs = tmp_path / "certs"
    cmds = federation_commands(9000, [9001, 9002], certs, simulation=False)
    assert list(cmds) == ["superlink", "register-0", "supernode-0", "register-1", "supernode-1"]
    assert not any("--insecure" in cmd for cmd in cmds.values())
    link = cmds["superlink"]
    assert link[link.index("--ssl-ca-certfile") + 1] == f"{certs}/ca.crt"
    assert link[link.index("--ssl-certfile") + 1] == f"{certs}/server.pem"
    assert link[link.index("--ssl-keyfile") + 1] == f"{certs}/server.key"
    assert "--enable-supernode-auth" in link and link[link.index("--host") + 1] == "127.0.0.1"
    for i in (0, 1):
        node = cmds[f"supernode-{i}"]
        assert node[node.index("--root-certificates") + 1] == str(certs / "ca.crt")
        assert node[node.index("--auth-supernode-private-key") + 1] == str(certs / f"node-{i}")
        assert node[node.index("--superlink") + 1] == "127.0.0.1:9000"
        assert cmds[f"register-{i}"] == ["flwr", "supernode", "register", str(certs / f"node-{i}.pub"), CONNECTION]


def test_without_secure_every_command_is_insecure_and_nothing_is_registered():
    from qfl.launcher import federation_commands

    cmds = federation_commands(9000, [9001, 9002], None, simulation=False)
    assert list(cmds) == ["superlink", "supernode-0", "supernode-1"]
    assert all("--insecure" in cmd for cmd in cmds.values())
    assert not any("--enable-supernode-auth" in cmd or "--auth-supernode-private-key" in cmd for cmd in cmds.values())


def test_secure_flwr_connection_verifies_the_runs_ca(tmp_path):
    import tomllib

    from qfl.launch.commands import CONNECTION, write_flower_config

    write_flower_config(tmp_path, 9000, None, root_cert=str(tmp_path / "certs" / "ca.crt"))
    conn = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"][CONNECTION]
    assert conn == {"address": "127.0.0.1:9000", "root-certificates": str(tmp_path / "certs" / "ca.crt")}  # no insecure


def test_secure_and_qkd_certificates_are_made_once_in_one_folder_with_private_keys(tmp_path, monkeypatch):
    import stat

    from qfl import pki
    from qfl.launcher import make_certs, qkd_credentials, sae_names

    calls = []
    real = pki.generate
    monkeypatch.setattr(pki, "generate", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    certs = make_certs(tmp_path / "run" / "certs", 2, secure=True, saes=list(sae_names(2).values()))
    assert calls == [{"nodes": 2, "saes": ["server", "node-0", "node-1"]}]  # one generate for TLS, node keys and SAEs
    for name in ("ca.crt", "server.pem", "server.key", "node-0", "node-0.pub", "node-1", "node-1.pub", "sae/node-1.pem"):
        assert (certs / name).is_file(), name
    assert all(stat.S_IMODE((certs / key).stat().st_mode) == 0o600 for key in ("ca.key", "server.key", "node-0", "node-1"))
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert set(qkd_credentials(certs, 2)) == {"superlink", "supernode-0", "supernode-1"}  # read, not made again
    assert len(calls) == 1
    assert make_certs(tmp_path / "plain", 2, secure=False, saes=[]) == tmp_path / "plain" and len(calls) == 1
    assert not (tmp_path / "plain").exists()  # an insecure plain run makes no certificate


def test_a_failed_registration_stops_the_launch_with_flowers_words_and_a_known_key_passes(tmp_path):
    import sys

    from qfl.launch.processes import LaunchError, ProcessGroup
    from qfl.launcher import register_nodes

    def flwr_says(words: str, code: int) -> list[str]:  # stands in for `flwr supernode register KEY CONN`
        return [sys.executable, "-c", f"import sys; print({words!r}); sys.exit({code})", "node-0.pub"]

    group = ProcessGroup({}, tmp_path)
    try:
        register_nodes(group, {"register-0": flwr_says("Public key already in use", 1),
                               "register-1": flwr_says("SuperNode 7 registered successfully.", 0)})
        with pytest.raises(LaunchError, match=r"register .* failed \(exit code 1\): .*Connection refused"):
            register_nodes(group, {"register-2": flwr_says("Connection refused at 127.0.0.1:9", 1)})
    finally:
        group.stop()
    assert "Connection refused" in (tmp_path / "register-2.log").read_text()


def test_secure_is_checked_with_check_and_refused_with_simulation(capsys, tmp_path):
    assert main(["launch", "--secure", "--check", "--clients", "2", "--set", f'output-dir="{tmp_path}"']) == 0
    assert "(deployment, secure, 2 clients" in capsys.readouterr().out
    err = _launch_error(capsys, tmp_path, "--secure", "--simulation")
    assert "'--secure': cannot go with --simulation" in err


@pytest.mark.slow
@pytest.mark.integration
def test_a_secure_launch_runs_over_tls_with_registered_nodes_only(tmp_path):
    """Long (~60-90 s): a real SuperLink with TLS and node authentication, two SuperNodes and
    their warm workers from a cold start, after a `flwr supernode register` per node."""
    import json
    import stat
    import subprocess

    from helpers import LAUNCH_TIMEOUT_S, launch_cmd, processes_in, run_rows

    proc = subprocess.run(launch_cmd(tmp_path, "secure", "--secure", "--clients", "2", "--rounds", "1", "--dataset", "wine"),
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "secure"
    rows = run_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["clients_ok"] == 2
    cmds = json.loads((run_dir / "logs" / "commands.json").read_text())
    assert "--insecure" not in cmds["superlink"] and "--enable-supernode-auth" in cmds["superlink"]
    assert all("--insecure" not in cmds[f"supernode-{i}"] for i in (0, 1))
    assert all("registered successfully" in (run_dir / "logs" / f"register-{i}.log").read_text() for i in (0, 1))
    certs = run_dir / "certs"
    assert all(stat.S_IMODE((certs / f"node-{i}").stat().st_mode) == 0o600 for i in (0, 1))
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert "insecure" not in (run_dir / "flwr-home" / "config.toml").read_text()
    assert processes_in(run_dir) == []


# --- qfl-supernode: Flower's SuperNode with a shorter idle poll ---------------------------------


def test_the_supernode_loop_sleeps_no_longer_than_the_poll_interval(monkeypatch):
    from flwr.supernode import start_client_internal

    from qfl.common.flower_internals import _CappedSleep, supernode_main

    slept = []
    capped = _CappedSleep(0.2)
    capped._time = type("Clock", (), {"sleep": staticmethod(slept.append), "monotonic": staticmethod(lambda: 7.0)})
    capped.sleep(3)  # Flower's idle poll of the SuperLink
    capped.sleep(0.5)  # its wait for a ClientApp's reply, in the node's own state
    capped.sleep(0.01)
    assert slept == [0.2, 0.02, 0.01] and capped.monotonic() == 7.0  # everything else is the time module's
    fine = _CappedSleep(0.01)
    fine._time = capped._time
    fine.sleep(3), fine.sleep(0.5)
    assert slept[-2:] == [0.01, 0.01]  # never longer than the poll interval
    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)  # restored after the test
    monkeypatch.setattr(start_client_internal, "subprocess", start_client_internal.subprocess)
    entry = supernode_main(0.25)
    assert start_client_internal.time.cap == 0.25 and entry.__name__ == "flower_supernode"


def test_the_supernodes_superexec_is_flowers_with_forked_clientapps(monkeypatch):
    """``qfl-supernode`` starts Flower's SuperExec with Flower's arguments through
    ``qfl.launch.superexec``; there only ``flwr-clientapp`` launches, as Flower builds them (an
    argument list, nothing else), are forked; every other ``Popen`` is the real one."""
    import subprocess

    from flwr.supernode import start_client_internal

    from qfl.common.flower_internals import _Subprocess, supernode_main

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: started.append((args, kw)) or "popen")
    monkeypatch.setattr(start_client_internal, "subprocess", start_client_internal.subprocess)
    supernode_main(0.2)
    shim = start_client_internal.subprocess
    shim.Popen(["flower-superexec", "--insecure", "--runtime-api-address", "127.0.0.1:1", "--parent-pid", "7"])
    assert started == [([sys.executable, "-m", "qfl.launch.superexec", "--insecure", "--runtime-api-address",
                         "127.0.0.1:1", "--parent-pid", "7"], {})]
    assert shim.DEVNULL == subprocess.DEVNULL  # everything else is the module's
    start_client_internal.subprocess = subprocess
    supernode_main(0.2, fork_clientapps=False)  # --fresh-clientapps: Flower's own SuperExec
    assert start_client_internal.subprocess is subprocess

    forked = []
    apps = _Subprocess("flwr-clientapp", lambda argv: forked.append(argv) or "forked")
    args = ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:2", "--token", "t", "--insecure"]
    assert apps.Popen(args) == "forked" and forked == [args]
    started.clear()
    assert apps.Popen(args, stdout=subprocess.DEVNULL) == "popen" and started[0][0] == args  # output suppressed: Flower's
    assert apps.Popen(["flwr-serverapp", "--token", "t"]) == "popen" and len(forked) == 1


@pytest.mark.parametrize("value", ["0", "5", "nan", "x"])
def test_qfl_supernode_refuses_a_poll_interval_out_of_range(value):
    done = subprocess.run([str(PROJECT_DIR / ".venv" / "bin" / "qfl-supernode"), "--poll-interval", value, "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--poll-interval" in done.stderr


def test_the_launcher_runs_qfl_supernode_and_plain_flower_on_request():
    from qfl.launch.commands import supernode_command
    from qfl.launch.supernode import POLL_INTERVAL_S

    assert supernode_command("h:1", 2, 0, 1)[:3] == ["qfl-supernode", "--poll-interval", str(POLL_INTERVAL_S)]
    assert supernode_command("h:1", 2, 0, 1, poll_interval=None)[0] == "flower-supernode"


def test_object_pulls_retry_after_20_ms_and_still_wait_as_long_as_flowers(monkeypatch):
    """A message listed before its arrays arrived is asked for again after 20 ms, not Flower's
    1 s (``quick_object_pulls``, applied by the ServerApp's grid, qfl-supernode and each forked
    ClientApp), and tries are never more than 0.1 s apart (an object that arrives late is not
    slept past by up to a second); with more tries a missing object is still waited for about as long."""
    from flwr.supercore.constant import PULL_BACKOFF_CAP, PULL_INITIAL_BACKOFF, PULL_MAX_TRIES_PER_OBJECT
    from flwr.supercore.inflatable import inflatable_utils

    from qfl.common.flower_internals import QUICK_PULL, quick_object_pulls
    from server.grid import MeteredGrid

    pulls = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    for pull in pulls:
        monkeypatch.setattr(pull, "__kwdefaults__", dict(pull.__kwdefaults__))  # restored after the test
    assert (PULL_INITIAL_BACKOFF, PULL_BACKOFF_CAP) == (1, 10)  # Flower's, as the seam's comment says
    MeteredGrid(object())
    for pull in pulls:
        assert {k: pull.__kwdefaults__[k] for k in QUICK_PULL} == QUICK_PULL

    def waited(first: float, cap: float, tries: int) -> float:
        delays, d = [], first
        for _ in range(tries - 1):
            delays.append(d)
            d = min(2 * d, cap)
        return sum(delays)

    assert QUICK_PULL["backoff_cap"] <= 0.1
    ours = waited(QUICK_PULL["initial_backoff"], QUICK_PULL["backoff_cap"], QUICK_PULL["max_tries_per_object"])
    flowers = waited(PULL_INITIAL_BACKOFF, PULL_BACKOFF_CAP, PULL_MAX_TRIES_PER_OBJECT)
    assert 0.9 < ours / flowers < 1.1

    before = [dict(pull.__kwdefaults__) for pull in pulls]
    quick_object_pulls()  # idempotent: every process of a node may call it
    assert [pull.__kwdefaults__ for pull in pulls] == before


TINY_APP = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyapp"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "qfltest"

[tool.flwr.app.components]
serverapp = "tinyapp.server:app"
clientapp = "tinyapp.client:app"

[tool.flwr.app.config]
{config}
"""


def tiny_fab(rounds: int) -> bytes:
    import warnings

    from flwr.cli.build import build_fab_from_files

    files = {"pyproject.toml": TINY_APP.format(config=f"num-server-rounds = {rounds}").encode(),
             "tinyapp/__init__.py": b"", "tinyapp/client.py": b"app = None\n", "tinyapp/server.py": b"app = None\n"}
    with warnings.catch_warnings():  # pathspec's own deprecation, inside Flower's build
        warnings.simplefilter("ignore", DeprecationWarning)
        return build_fab_from_files(files)[0]


def test_a_clientapp_installs_a_fab_once_and_any_other_fab_through_flower(tmp_path, monkeypatch):
    """Each forked ClientApp skips extracting and verifying a FAB that Flower's own install put
    in place and stamped with its full hash before (``install_fab_once``); a first install, a
    different FAB, or a folder whose stamp does not match go through Flower's install."""
    from flwr.cli import install as flower_install
    from flwr.supernode.runtime import run_clientapp

    from qfl.common.flower_internals import FAB_STAMP, install_fab_once, installed_fabs_reused

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    calls = []
    real = flower_install.install_from_fab

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(flower_install, "install_from_fab", counted)
    fab, other = tiny_fab(1), tiny_fab(2)
    first = install_fab_once(fab, skip_prompt=True)
    assert (first / "tinyapp" / "client.py").read_text() == "app = None\n" and len(calls) == 1
    assert (first / FAB_STAMP).read_text() == __import__("hashlib").sha256(fab).hexdigest()
    assert list((first / "tinyapp" / "__pycache__").glob("client.*.pyc"))  # compiled once, for every ClientApp after
    assert install_fab_once(fab, skip_prompt=True) == first and len(calls) == 1  # reused
    second = install_fab_once(other, skip_prompt=True)
    assert second != first and len(calls) == 2  # another FAB: Flower's install
    (first / FAB_STAMP).write_text("0" * 64)
    assert install_fab_once(fab, skip_prompt=True) == first and len(calls) == 3  # stamp wrong: Flower's install
    assert install_fab_once(fab, skip_prompt=True) == first and len(calls) == 3  # and stamped again
    with pytest.raises(Exception):  # a broken FAB: Flower's install names it
        install_fab_once(b"not a zip", skip_prompt=True)
    assert len(calls) == 4

    monkeypatch.setattr(run_clientapp, "install_from_fab", run_clientapp.install_from_fab)  # restored after the test
    installed_fabs_reused()
    assert run_clientapp.install_from_fab is install_fab_once


def test_a_forked_clientapp_imports_the_whole_project_from_the_runs_fab(tmp_path):
    """The fork server imported ``qfl`` (this seam's module); a forked ClientApp forgets it, so
    that the app it loads from the FAB's folder finds the FAB's ``qfl``, not the installed one."""
    (tmp_path / "qfl").mkdir()
    (tmp_path / "qfl" / "__init__.py").write_text("FROM_FAB = True\n")
    code = ("import sys, qfl.common.config\n"
            "from qfl.common.flower_internals import forget_project_modules\n"
            "forget_project_modules()\n"
            f"sys.path.insert(0, {str(tmp_path)!r})  # as Flower's load_app puts the FAB's folder first\n"
            "import qfl\n"
            "print(getattr(qfl, 'FROM_FAB', False), 'qfl.common.config' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_DIR, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
