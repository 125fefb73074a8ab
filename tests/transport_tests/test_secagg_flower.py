"""Secure aggregation in the Message API: the real ClientApp (its transport mod, its query
handler, its node state) and the server's SecAggGrid behind the real TransportGrid, joined by
a grid that delivers in this process instead of a SuperLink (the real deployment is in
deploy_tests/test_integration.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from client.app import app
from qfl.common.config import ConfigError, RunConfig
from qfl.common.contract import ARRAYS, NUM_EXAMPLES, SECAGG_DROPPED, SECAGG_MASKED, SECAGG_RECORD, SECAGG_SUMMED
from qfl.common.flower_internals import stamp
from qfl.task.build import build_dataset, build_model
from transport.flower import DelegatingGrid, TransportGrid
from transport.registry import build_transport, transport_parts
from transport.secagg_flower import SECAGG_TYPE, SecAggGrid

NODES = [11, 12, 13, 14]


class LoopbackGrid(DelegatingGrid):
    """Delivers each message to the real ClientApp of its node, in this process; ``crash``
    names nodes whose ClientApp is gone from a given stage on (``"train"`` or a secagg stage)."""

    def __init__(self, run_config: dict, crash: dict[int, str] | None = None) -> None:
        self.run_config, self.crash = run_config, crash or {}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": i, "num-partitions": len(NODES)},
                                    state=RecordDict(), run_config=run_config) for i, n in enumerate(NODES)}
        self.seen: list[Message] = []  # every reply as the server received it
        self._ids = itertools.count()
        self._gone: set[int] = set()

    def get_node_ids(self):  # noqa: ANN201
        return list(NODES)

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        replies = []
        for msg in messages:
            stamp(msg, message_id=f"m{next(self._ids)}", src_node_id=0)
            node = msg.metadata.dst_node_id
            stage = "train" if msg.metadata.message_type == "train" else self._stage(msg)
            if node in self._gone or self.crash.get(node) == stage:
                self._gone.add(node)  # gone for good: no reply now, none later
                continue
            reply = app(msg, self.contexts[node])
            stamp(reply, src_node_id=node, reply_to_message_id=msg.metadata.message_id)
            self.seen.append(reply)
            replies.append(reply)
        return replies

    @staticmethod
    def _stage(msg: Message) -> str | None:
        """A secagg query's stage (what travels is encrypted only with qkd; here it is plain)."""
        record = msg.content.config_records.get(SECAGG_RECORD)
        return None if record is None else record.get("stage")


def _config(defaults, **extra) -> dict:  # noqa: ANN001
    return {**defaults, "dataset": "iris", "n-qubits": 3, "n-layers": 1, "local-epochs": 1, "transport": "secagg",
            "robust-direction": False, **extra}


def _train(run_config: dict, crash=None):  # noqa: ANN001, ANN202
    """One secure-aggregation round; (aggregate reply list, the loopback, the global arrays)."""
    cfg = RunConfig.from_run_config(run_config)
    start = ArrayRecord(build_model(cfg, build_dataset(cfg)).state_dict())
    loop = LoopbackGrid(run_config, crash)
    wire = TransportGrid(loop, build_transport(cfg, None), run_id=1, round_fn=lambda: 1)
    grid = SecAggGrid(wire, cfg, weight_bound=40)
    messages = [Message(RecordDict({ARRAYS: start, "config": ConfigRecord({"server-round": 1, "round-offset": 0})}),
                        dst_node_id=n, message_type="train") for n in NODES]
    return list(grid.send_and_receive(messages)), loop, grid, start


def _plain_average(defaults, start: ArrayRecord, nodes: list[int]) -> np.ndarray:  # noqa: ANN001
    """What FedAvg makes of the same nodes' plain replies (the same seeds train the same)."""
    run_config = _config(defaults, transport="plain")
    replies = []
    for i, n in enumerate(NODES):
        if n not in nodes:
            continue
        ctx = Context(run_id=1, node_id=n, node_config={"partition-id": i, "num-partitions": len(NODES)},
                      state=RecordDict(), run_config=run_config)
        msg = stamp(Message(RecordDict({ARRAYS: start, "config": ConfigRecord({"server-round": 1, "round-offset": 0})}),
                            dst_node_id=n, message_type="train"), message_id=f"p{n}")
        replies.append(stamp(app(msg, ctx), src_node_id=n))
    arrays, _ = FedAvg().aggregate_train(1, replies)
    return np.concatenate([v.numpy().ravel() for v in arrays.values()])


def _flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([v.numpy().ravel() for v in record.values()])


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


def test_the_server_gets_fedavgs_average_and_sees_only_masked_inputs(defaults):
    (aggregate,), loop, _, start = _train(_config(defaults))
    assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
    plain = _plain_average(defaults, start, NODES)
    np.testing.assert_allclose(_flat(aggregate.content[ARRAYS]), plain, atol=1e-5)  # the quantisation error
    masked = [r for r in loop.seen if r.metadata.message_type == "train"]
    assert len(masked) == 4
    for reply in masked:  # on the wire of a training reply: one array in Z_2^32, no metric, no claim
        content = reply.content
        assert set(content.array_records) == {SECAGG_MASKED} and not content.metric_records
        assert not set(content.config_records) - {"transport-envelope"}  # not a contract name: Flower's wire record


def test_a_node_gone_after_the_key_exchange_leaves_the_average_of_the_others(defaults):
    (aggregate,), _, _, start = _train(_config(defaults), crash={13: "train"})
    metrics = aggregate.content.metric_records["metrics"]
    assert (metrics[SECAGG_SUMMED], metrics[SECAGG_DROPPED]) == (3, 1)
    np.testing.assert_allclose(_flat(aggregate.content[ARRAYS]), _plain_average(defaults, start, [11, 12, 14]), atol=1e-5)
    assert metrics[NUM_EXAMPLES] > 0


def test_below_the_threshold_the_round_fails_with_a_named_reason(defaults, caplog):
    replies, _, grid, _ = _train(_config(defaults), crash={12: "train", 13: "train", 14: "train"})
    assert replies == []
    assert grid.failures and "masked input(s), the threshold is 2" in grid.failures[0]


def test_a_node_will_not_reveal_both_shares_of_one_client(defaults):
    """A server that says a client both survived and dropped gets an error, not the shares."""
    _, loop, _, _ = _train(_config(defaults))
    ctx = loop.contexts[11]
    ctx.state["qfl-secagg"] = ConfigRecord({"round-id": "r", "stage": "masked", "c-sk": bytes(32), "neighbours": [12],
                                            "c-pks": [bytes(32)]})
    ask = ConfigRecord({"stage": "unmask", "round-id": "r", "survivors": [11, 12], "dropped": [12], "owners": [12],
                        "b-tokens": [b"x"], "sk-tokens": [b"y"]})
    msg = stamp(Message(RecordDict({SECAGG_RECORD: ask}), dst_node_id=11, message_type=SECAGG_TYPE), message_id="u")
    from transport.secagg_flower import secagg_stage

    reply = secagg_stage(msg, ctx)
    assert isinstance(reply.error, Error) and "will not reveal both shares" in reply.error.reason


@pytest.mark.parametrize(("extra", "key"), [
    ({"strategy": "fedmedian"}, "strategy"), ({"strategy": "noise-isolating"}, "strategy"),
    ({"transport": "secagg+qcn"}, "transport"), ({"transport": "secagg+dp"}, "transport"),
])
def test_what_needs_each_clients_update_is_refused_with_secure_aggregation(defaults, extra, key):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_run_config(_config(defaults, **extra))


def test_secure_aggregation_sits_inside_encryption():
    assert transport_parts("secagg+qkd") == ["qkd", "secagg"]
