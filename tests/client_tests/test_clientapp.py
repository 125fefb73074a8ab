"""The ClientApp itself, called in-process with real Flower messages and contexts."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.app import app
from qfl.common.config import RunConfig
from qfl.task.build import build_dataset, build_model


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


def _context(defaults, pid):
    run_config = {**defaults, "dataset": "iris", "n-qubits": 3, "n-layers": 2, "local-epochs": 3, "learning-rate": 0.1}
    node_config = {"partition-id": pid, "num-partitions": 2}
    ctx = Context(run_id=1, node_id=pid + 1, node_config=node_config, state=RecordDict(), run_config=run_config)
    return ctx, RunConfig.from_run_config(run_config)


def _message(arrays, msg_type, pid):
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "round-offset": 0})})
    return Message(content=content, dst_node_id=pid + 1, message_type=msg_type)


def test_train_reply_keeps_keys_and_shapes_and_learns(defaults):
    ctx, cfg = _context(defaults, 0)
    model = build_model(cfg, build_dataset(cfg))
    sent = ArrayRecord(model.state_dict())
    before = app(_message(sent, MessageType.EVALUATE, 0), ctx).content["metrics"]
    reply = app(_message(sent, MessageType.TRAIN, 0), ctx)
    assert not reply.has_error()
    got = reply.content["arrays"]
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in sent.items()}
    assert not np.allclose(got["weights"].numpy(), sent["weights"].numpy())
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 56  # half of iris' 112 training samples
    after = app(_message(got, MessageType.EVALUATE, 0), ctx).content["metrics"]
    assert after["eval-loss"] < before["eval-loss"]
