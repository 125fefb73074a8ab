"""The run configuration: declared once, every bad value named, and the copies agree."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qfl.common.config import DATASETS, ConfigError, NodeConfig, RunConfig, keys
from qfl.common.config import defaults as model_defaults
from qfl.launcher import PROJECT_DIR, build_parser


def test_defaults_are_valid(defaults):
    cfg = RunConfig.from_run_config(defaults)
    assert cfg.to_run_config() == defaults


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("dataset", "mnist", ", ".join(f"'{d}'" for d in DATASETS[:-1]) + f" or '{DATASETS[-1]}', got 'mnist'"),
        ("num-server-rounds", 0, "greater than or equal to 1"),
        ("num-server-rounds", 2.5, "valid integer"),
        ("n-qubits", -1, "greater than or equal to 1"),
        ("n-qubits", 40, "less than or equal to 16"),
        ("device", "ibm.quantum", "no PennyLane device 'ibm.quantum' is installed here"),
        ("diff-method", "backprop-ish", "got 'backprop-ish'"),
        ("learning-rate", float("nan"), "finite"),
        ("learning-rate", 0.0, "greater than 0"),
        ("fraction-train", 1.5, "less than or equal to 1"),
        ("test-fraction", 1.0, "less than 1"),
        ("resume", "yes", "valid boolean"),
        ("batch-size", True, "valid integer"),
        ("run-name", "../escape", "letters, digits"),
        ("run-name", "latest", "not be 'latest'"),
        ("partitioner", "h-range", "does not apply to dataset 'wine'"),
        ("qcn-copies", -1, "greater than or equal to 0"),
        ("qcn-channels", 0, "greater than or equal to 1"),
        ("round-deadline", -1.0, "greater than or equal to 0"),
        ("straggler-policy", "wait", "got 'wait'"),
        ("staleness-discount", 0.0, "greater than 0"),
        ("kms-url", "http://127.0.0.1:8470", "'^https://'"),
        ("robust-norm-factor", 0.5, "0 (off) or > 1"),
        ("log-to", "wandb", "unknown ['wandb']"),
        ("device-profiles", " ; ", "at least one entry"),
    ],
)
def test_bad_value_names_the_key(defaults, key, value, fragment):
    bad = {**defaults, "dataset": "wine", key: value}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config(bad)
    assert err.value.key == key
    assert f"'{key}'" in str(err.value) and fragment in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("qcn-paths", "metro;moon", "unknown QCN path 'moon'"),
        ("qcn-paths", "metro:hops=x", "is not a number"),
        ("device-profiles", "ibm-heron;nonesuch", "nonesuch"),
        ("strategy", "nosuch", "unknown strategy 'nosuch'"),
        ("strategy-options", "{ trim-threshold = 0.5 }", "trim_threshold"),
        ("transport", "qkd+telepathy", "unknown transport 'telepathy'"),
    ],
)
def test_what_only_another_package_knows_is_checked_before_the_run(defaults, key, value, fragment):
    from server.checks import check_run

    cfg = RunConfig.from_run_config({**defaults, "strategy": "noise-isolating" if key == "strategy-options" else "fedavg",
                                     key: value})
    with pytest.raises(ConfigError) as err:
        check_run(cfg)
    assert err.value.key == key and fragment in str(err.value), str(err.value)


def test_adjoint_needs_a_supporting_device(defaults):
    with pytest.raises(ConfigError, match="'diff-method'.*lightning"):
        RunConfig.from_run_config({**defaults, "device": "lightning.qubit", "diff-method": "backprop"})


def test_missing_key_is_named(defaults):
    partial = {k: v for k, v in defaults.items() if k != "seed"}
    with pytest.raises(ConfigError, match="'seed': missing"):
        RunConfig.from_run_config(partial)


def test_node_config():
    node = NodeConfig.from_node_config({"partition-id": 1, "num-partitions": 3, "device-profile": "ibm-heron"})
    assert (node.partition_id, node.num_partitions, node.device_profile) == (1, 3, "ibm-heron")
    with pytest.raises(ConfigError, match="'partition-id'"):
        NodeConfig.from_node_config({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigError, match="'num-partitions'"):
        NodeConfig.from_node_config({"partition-id": 0})
    with pytest.raises(ConfigError, match="'zne'"):
        NodeConfig.from_node_config({"partition-id": 0, "num-partitions": 1, "zne": "yes"})


# --- one declaration, three places that show it ----------------------------------------------


def test_pyproject_and_readme_are_generated_from_the_model():
    done = subprocess.run([sys.executable, "scripts/sync_config.py", "--check"], cwd=PROJECT_DIR,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pyproject_declares_exactly_the_models_keys_and_defaults(defaults):
    assert defaults == model_defaults()  # Flower reads pyproject.toml; the model must agree


def test_launch_help_lists_every_key():
    help_text = build_parser()._subparsers._group_actions[0].choices["launch"].format_help()
    assert all(key in help_text for key in keys())
