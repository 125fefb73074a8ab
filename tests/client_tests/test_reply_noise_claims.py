"""What a training reply says of the client's own noise: the three noise claims, measured by
the client on its device, and the device record's mitigation."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.job import model_key, request
from client.local import LocalTask, answer
from qfl.common.config import NodeConfig, RunConfig
from qfl.common.config import defaults as run_defaults
from qfl.common.contract import (
    DEVICE,
    DEVICE_MITIGATION,
    DEVICE_ZNE,
    METRICS,
    NOISE_CLAIM_METRICS,
    NOISE_CONTRACTION,
    PEC_GAMMA2,
    TRAIN_METRICS,
    UPDATE_NOISE_VAR,
)
from qfl.task.build import build_dataset, build_model

NODE = {"partition-id": 0, "num-partitions": 2}


def _train(defaults, node=NODE, **run):
    run_config = {**defaults, "dataset": "iris", "n-qubits": 3, "n-layers": 2, "local-epochs": 1, **run}
    cfg = RunConfig.from_run_config(run_config)
    arrays = ArrayRecord(build_model(cfg, build_dataset(cfg)).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "round-offset": 0})})
    reply = answer(request("train", content, run_config, node))
    return reply[METRICS], reply[DEVICE], LocalTask(cfg, NodeConfig.from_node_config(node))


def test_a_noiseless_client_claims_no_noise(defaults):
    metrics, device, _ = _train(defaults)
    assert set(metrics.keys()) == {*TRAIN_METRICS, *NOISE_CLAIM_METRICS}
    assert (metrics[UPDATE_NOISE_VAR], metrics[NOISE_CONTRACTION], metrics[PEC_GAMMA2]) == (0.0, 1.0, 1.0)
    assert device[DEVICE_MITIGATION] == "none" and device[DEVICE_ZNE] is False


def test_a_noisy_client_measures_its_variance_and_contraction(defaults):
    metrics, device, _ = _train(defaults, **{"device-profiles": "noisy-nisq"})
    assert metrics[UPDATE_NOISE_VAR] > 0
    assert 0.05 < metrics[NOISE_CONTRACTION] < 0.6  # ~20 noisy gates at 5 %, 5 % read-out
    assert metrics[PEC_GAMMA2] == 1.0


def test_a_pec_client_reports_its_overhead_and_no_contraction(defaults):
    metrics, device, task = _train(defaults, **{"device-profiles": "ibm-heron", "mitigation": "pec"})
    assert device[DEVICE_MITIGATION] == "pec" and device[DEVICE_ZNE] is False

    assert metrics[PEC_GAMMA2] == pytest.approx(task.model.pec_gamma2(torch.as_tensor(task.x)), rel=1e-12)
    assert 1.0 < metrics[PEC_GAMMA2] < 3.0
    assert metrics[NOISE_CONTRACTION] == 1.0 and metrics[UPDATE_NOISE_VAR] > 0


def test_the_older_zne_switch_still_turns_on_zne(defaults):
    _, device, task = _train(defaults, node={**NODE, "zne": True}, **{"device-profiles": "ibm-heron"})
    assert device[DEVICE_MITIGATION] == "zne" and device[DEVICE_ZNE] is True and task.model.mitigation == "zne"


def test_the_mitigation_is_part_of_the_model_key():
    """Two messages share a task only if the model is the same: the mitigation changes it (the
    node's own keys, zne and mitigation, do not hide the run's)."""
    node = NodeConfig.from_node_config(NODE)
    keys = {model_key(RunConfig.from_run_config({**run_defaults(), **run}), node)
            for run in ({}, {"mitigation": "pec"}, {"mitigation": "zne"}, {"zne": True})}
    assert len(keys) == 4
