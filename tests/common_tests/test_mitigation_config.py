"""The `mitigation` option (none, zne, pec) and the older `zne` switch beside it."""

from __future__ import annotations

import pytest

from qfl.common.config import ConfigError, NodeConfig, RunConfig, defaults
from qfl.task.model import PQCClassifier

NODE = {"partition-id": 0, "num-partitions": 1}


def _run(**changes):
    return RunConfig.from_run_config({**defaults(), **changes})


def test_mitigation_and_the_older_zne_switch():
    assert _run().mitigation_method == "none"
    assert _run(mitigation="pec").mitigation_method == "pec"
    assert _run(zne=True).mitigation_method == "zne"
    assert _run(zne=True, mitigation="zne").mitigation_method == "zne"
    with pytest.raises(ConfigError, match="'zne': zne = true asks for zero-noise extrapolation"):
        _run(zne=True, mitigation="pec")
    with pytest.raises(ConfigError, match="'mitigation'"):
        _run(mitigation="richardson")


def test_mitigation_conflicts_name_the_key_that_asked():
    with pytest.raises(ConfigError, match="'mitigation': the classical baseline"):
        _run(model="mlp", mitigation="pec")
    with pytest.raises(ConfigError, match="'zne': the classical baseline"):
        _run(model="mlp", zne=True)
    with pytest.raises(ConfigError, match="'mitigation': zero-noise extrapolation needs angle data"):
        _run(dataset="tfim", mitigation="zne")
    assert _run(dataset="tfim", mitigation="pec").mitigation_method == "pec"  # PEC needs no folding


def test_a_nodes_mitigation_comes_first():
    run = _run(mitigation="pec", **{"device-profiles": "ibm-heron"})
    assert NodeConfig.from_node_config(NODE).device_for(run) == ("ibm-heron", "pec")
    assert NodeConfig.from_node_config({**NODE, "mitigation": "none"}).device_for(run)[1] == "none"
    assert NodeConfig.from_node_config({**NODE, "zne": True}).device_for(run)[1] == "zne"
    assert NodeConfig.from_node_config({**NODE, "zne": False}).device_for(run)[1] == "none"
    assert NodeConfig.from_node_config({**NODE, "zne": True, "mitigation": "zne"}).device_for(run)[1] == "zne"
    with pytest.raises(ConfigError, match="'zne': zne = true contradicts mitigation = \"pec\""):
        NodeConfig.from_node_config({**NODE, "zne": True, "mitigation": "pec"})
    with pytest.raises(ConfigError, match="'mitigation'"):
        NodeConfig.from_node_config({**NODE, "mitigation": "yes"})


def test_the_model_refuses_an_unknown_mitigation_and_zne_on_states():
    with pytest.raises(ValueError, match="mitigation must be one of none, zne, pec"):
        PQCClassifier(2, 1, 2, mitigation="magic")
    with pytest.raises(ValueError, match="global folding cannot invert a state preparation"):
        PQCClassifier(2, 1, 2, kind="states", mitigation="zne")
