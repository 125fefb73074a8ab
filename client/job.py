"""What a ClientApp hands its work in: the job record, and the key of the task it needs.

A request is a Flower ``RecordDict``: the message's arrays and config, SCAFFOLD's control
variates, and a ``ConfigRecord`` (:data:`JOB`) naming the operation with the run and node
config as JSON. The same bytes go to a warm worker (:mod:`client.runtime`) or stay in this
process (:mod:`client.local`); both read them with this module.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, RecordDict

from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.contract import ARRAYS, CONFIG, CONTROL
from qfl.common.flower_internals import record_bytes, record_from_bytes

JOB = "qfl-job"  # a request's ConfigRecord: op, run config and node config (JSON)
OPS = ("train", "evaluate", "prepare")
CLIENT_CONTROL = "client-control"  # SCAFFOLD: this client's control variate, kept in its node's state


def encode(content: RecordDict) -> bytes:
    return record_bytes(content)


def decode(data: bytes) -> RecordDict:
    return record_from_bytes(data)


def request(op: str, content: RecordDict, run_config: dict, node_config: dict, state: RecordDict | None = None) -> RecordDict:
    """The request for ``op`` on a message's ``content`` (global arrays, the server's config, and
    SCAFFOLD's control variate if it sent one); ``state`` is the node's Flower state, where
    this client's own control variate lives between rounds."""
    job = ConfigRecord({"op": op, "run-config": json.dumps(run_config), "node-config": json.dumps(node_config)})
    if op == "prepare":  # builds the task, trains nothing: no arrays, no round
        return RecordDict({JOB: job})
    req = RecordDict({ARRAYS: content[ARRAYS], CONFIG: content[CONFIG], JOB: job})
    if CONTROL in content.array_records:
        req[CONTROL] = content.array_records[CONTROL]
        if state is not None and CLIENT_CONTROL in state.array_records:
            req[CLIENT_CONTROL] = state.array_records[CLIENT_CONTROL]
    return req


def model_key(cfg: RunConfig, node: NodeConfig) -> str:
    """What decides a node's data partition and model: two messages with the same key can
    share a :class:`LocalTask`. Training settings (epochs, learning rate, ...) are not in it."""
    run = cfg.to_run_config()
    keys = (KEY.dataset, KEY.partitioner, KEY.dirichlet_alpha, KEY.test_fraction, KEY.tfim_samples, KEY.seed,
            KEY.n_qubits, KEY.n_layers, KEY.device, KEY.diff_method, KEY.device_profiles, KEY.zne,
            KEY.mitigation, KEY.embedding, KEY.model, KEY.task_kind, KEY.data_path, KEY.data_label, KEY.data_features, KEY.data_classes,
            KEY.data_num_features, KEY.data_min_samples, KEY.data_reduction, KEY.validation_fraction)
    # two parts, not one merged mapping: the node's keys (zne, mitigation) would hide the run's
    return json.dumps([{k: run[k] for k in keys}, node.model_dump()], sort_keys=True)
