"""Run-config validation: every bad value fails with a message naming its key."""

from __future__ import annotations

import pytest

from client.config import ConfigError, RunConfig, node_partition


def test_defaults_are_valid(defaults):
    cfg = RunConfig.from_run_config(defaults)
    assert cfg.dataset in ("iris", "wine", "breast-cancer", "tfim")
    assert cfg.to_run_config() == {k: defaults[k] for k in cfg.to_run_config()}


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("dataset", "mnist", "unknown value 'mnist'"),
        ("num-server-rounds", 0, "positive integer"),
        ("num-server-rounds", 2.5, "must be an integer"),
        ("n-qubits", -1, "positive integer"),
        ("n-qubits", 40, "<= 16"),
        ("device", "ibm.quantum", "unknown value 'ibm.quantum'"),
        ("diff-method", "backprop-ish", "unknown value"),
        ("learning-rate", float("nan"), "finite"),
        ("learning-rate", 0.0, "> 0"),
        ("fraction-train", 1.5, "[0, 1]"),
        ("test-fraction", 1.0, "(0, 1)"),
        ("resume", "yes", "true or false"),
        ("batch-size", True, "must be an integer"),
        ("run-name", "../escape", "letters, digits"),
        ("partitioner", "h-range", "does not apply to dataset 'wine'"),
        ("qcn-paths", "metro;moon", "unknown QCN path 'moon'"),
        ("qcn-paths", "metro:hops=x", "is not a number"),
        ("qcn-copies", -1, ">= 0"),
        ("qcn-channels", 0, "positive integer"),
        ("round-deadline", -1.0, ">= 0"),
        ("straggler-policy", "wait", "unknown value 'wait'"),
        ("staleness-discount", 0.0, "(0, 1]"),
    ],
)
def test_bad_value_names_the_key(defaults, key, value, fragment):
    bad = {**defaults, "dataset": "wine", key: value}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config(bad)
    assert err.value.key == key
    assert f"'{key}'" in str(err.value) and fragment in str(err.value)


def test_adjoint_needs_a_supporting_device(defaults):
    with pytest.raises(ConfigError, match="'diff-method'.*lightning"):
        RunConfig.from_run_config({**defaults, "device": "lightning.qubit", "diff-method": "backprop"})


def test_missing_key_is_named(defaults):
    partial = {k: v for k, v in defaults.items() if k != "seed"}
    with pytest.raises(ConfigError, match="'seed': missing"):
        RunConfig.from_run_config(partial)


def test_node_partition():
    assert node_partition({"partition-id": 1, "num-partitions": 3}) == (1, 3)
    with pytest.raises(ConfigError, match="partition-id"):
        node_partition({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigError, match="num-partitions"):
        node_partition({"partition-id": 0})
