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


def test_a_node_below_its_privacy_floor_or_budget_replies_why_and_trains_nothing(defaults, tmp_path):
    """The floor is in the node config; the server sees the reason in the error reply."""
    ctx, cfg = _context(defaults, 0)
    sent = ArrayRecord(build_model(cfg, build_dataset(cfg)).state_dict())
    ctx.node_config = {**ctx.node_config, "dp-min-noise-multiplier": 1.0}
    reply = app(_message(sent, MessageType.TRAIN, 0), ctx)  # the run asks for no DP at all
    assert reply.has_error() and "trains only under local DP" in reply.error.reason
    ctx.run_config = {**ctx.run_config, "transport": "dp", "dp-noise-multiplier": 1.0}
    ctx.node_config = {**ctx.node_config, "dp-max-epsilon": 1.0, "dp-ledger": str(tmp_path / "ledger.json")}
    from transport.flower import ENVELOPE_RECORD

    msg = _message(sent, MessageType.TRAIN, 0)
    msg.content[ENVELOPE_RECORD] = ConfigRecord({"round": 1, "sae": "server"})  # as the server's TransportGrid sends it
    reply = app(msg, ctx)  # one release at sigma 1 is epsilon > 1 already
    assert reply.has_error() and "privacy budget is spent" in reply.error.reason
    assert not (tmp_path / "ledger.json").exists()  # nothing was released, so nothing was spent
