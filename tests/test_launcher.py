"""``qfl launch`` refuses bad input before any process starts."""

from __future__ import annotations

import pytest

from server.launcher import main, parse_overrides, run_config_arg


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
        (["--dataset", "mnist"], "'dataset': unknown value 'mnist'"),
        (["--rounds", "0"], "'num-server-rounds': must be a positive integer"),
        (["--clients", "0"], "'--clients': must be a positive integer"),
        (["--clients", "-3"], "'--clients': must be a positive integer"),
        (["--clients", "200", "--dataset", "iris"], "'--clients': 200 clients but dataset 'iris' has only 112"),
        (["--device", "qiskit.aer"], "'device': unknown value 'qiskit.aer'"),
        (["--dataset", "iris", "--n-qubits", "2"], "'n-qubits': dataset 'iris' has 3 classes"),
        (["--strategy", "nosuch"], "'strategy': unknown strategy 'nosuch'"),
        (["--strategy", "nosuch.module:Thing"], "cannot import module 'nosuch.module'"),
        (["--set", "learning_rate=0.1"], "'learning_rate': unknown key"),
        (["--set", "n-layers=0"], "'n-layers': must be a positive integer"),
    ],
)
def test_bad_input_fails_before_launch(capsys, tmp_path, argv, fragment):
    err = _launch_error(capsys, tmp_path, *argv)
    assert fragment in err, err


def test_overrides_parse_toml_and_bare_words(defaults):
    got = parse_overrides(["dataset=iris", "learning-rate=0.2", "resume=true", 'run-name="a b"'], defaults)
    assert got == {"dataset": "iris", "learning-rate": 0.2, "resume": True, "run-name": "a b"}


def test_run_config_arg_round_trips(defaults):
    from client.config import RunConfig

    cfg = RunConfig.from_run_config(defaults)
    items = run_config_arg(cfg).split(" ")
    assert parse_overrides(items, defaults) == cfg.to_run_config()


def test_config_file_sets_values_and_rejects_unknown_keys(tmp_path, defaults):
    import argparse

    from server.launcher import PROJECT_DIR, build_config

    good = tmp_path / "devices.toml"
    good.write_text('device-profiles = "ibm-heron;noisy-nisq"\nstrategy = "noise-isolating"\n')
    args = argparse.Namespace(
        config=str(good), set=[f'output-dir="{tmp_path}"'], clients=2, simulation=False, resume=False,
        rounds=None, dataset=None, partitioner=None, n_qubits=None, n_layers=None, device=None,
        strategy=None, transport=None, run_name=None, seed=None,
    )
    cfg, _ = build_config(args, PROJECT_DIR)
    assert cfg.profile_specs() == ["ibm-heron", "noisy-nisq"] and cfg.strategy == "noise-isolating"
    bad = tmp_path / "bad.toml"
    bad.write_text("device_profile = 'x'\n")
    args.config = str(bad)
    with pytest.raises(Exception, match="'device_profile': unknown key"):
        build_config(args, PROJECT_DIR)
