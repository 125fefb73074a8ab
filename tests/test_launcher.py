"""``qfl launch`` refuses bad input before any process starts."""

from __future__ import annotations

import pytest

from server.launch.config import parse_overrides, run_config_arg
from server.launcher import PROJECT_DIR, main


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
        (["--dataset", "mnist"], "'dataset': input should be 'iris', 'wine', 'breast-cancer', 'digits' or 'tfim', got 'mnist'"),
        (["--rounds", "0"], "'num-server-rounds': input should be greater than or equal to 1, got 0"),
        (["--clients", "0"], "'--clients': must be a positive integer"),
        (["--clients", "-3"], "'--clients': must be a positive integer"),
        (["--clients", "200", "--dataset", "iris"], "'--clients': 200 clients but dataset 'iris' has only 112"),
        (["--device", "qiskit.aer"], "'device': input should be 'default.qubit' or 'lightning.qubit', got 'qiskit.aer'"),
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


def test_overrides_parse_toml_and_bare_words(defaults):
    got = parse_overrides(["dataset=iris", "learning-rate=0.2", "resume=true", 'run-name="a b"'], defaults)
    assert got == {"dataset": "iris", "learning-rate": 0.2, "resume": True, "run-name": "a b"}


def test_run_config_arg_round_trips(defaults):
    from transport.config import RunConfig

    cfg = RunConfig.from_run_config(defaults)
    items = run_config_arg(cfg).split(" ")
    assert parse_overrides(items, defaults) == cfg.to_run_config()


def test_config_file_sets_values_and_rejects_unknown_keys(tmp_path, defaults):
    import argparse

    from server.launch.config import build_config
    from server.launcher import PROJECT_DIR

    good = tmp_path / "devices.toml"
    good.write_text('device-profiles = "ibm-heron;noisy-nisq"\nstrategy = "noise-isolating"\n')
    from server.launcher import build_parser

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
    from server.launch.processes import LaunchError
    from server.launch.runs import RunLock

    with RunLock(tmp_path / "run"):
        with pytest.raises(LaunchError, match=r"in use by qfl launch \(pid \d+\)"):
            with RunLock(tmp_path / "run"):
                pass
    with RunLock(tmp_path / "run"):  # free again once the first is done
        pass


def test_new_runs_get_fresh_timestamped_names_and_resume_finds_latest(tmp_path):
    from server.launch.runs import point_latest, run_name_for

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

    from transport.config import RunConfig

    cfg = RunConfig.from_run_config({**defaults, "strategy-options": options})
    assert parse_config_args([run_config_arg(cfg)]) == cfg.to_run_config()  # what flwr run will read


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # Flower's own FAB builder
def test_the_staged_app_bundles_to_the_same_fab_without_walking_ignored_folders(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    from server.launch.runs import stage_app

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
    from server.launch.processes import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_port_another_process_holds_is_not_taken_for_the_node_that_failed_to_bind(tmp_path):
    import socket
    import subprocess
    import sys

    from server.launch.processes import LaunchError, free_port, wait_for_port

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
