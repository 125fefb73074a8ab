"""Secure aggregation against a server that lies and a client that cheats (issue 39, items 2 and 3).

A node checks every instruction against its own run and node config, and sends one masked
input a round; its refusals reach the server's clients.csv. The server checks the unmasked
sum against what honest bounded inputs can make: a client that masks an oversized vector, a
negative weight, a weight of 100 or huge values fails the round, named. What a client can
still do inside the bounds is measured against the figure docs/transport.md states.
"""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from test_secagg_flower import NODES, Federation, _config, _flat, secagg_certs  # noqa: F401 (a fixture)

from qfl.common.config import NodeConfig
from qfl.common.contract import ARRAYS, NUM_EXAMPLES, SECAGG_DROPPED, SECAGG_RECORD, SECAGG_SUMMED
from server.instrumented import InstrumentedStrategy
from server.recorder import RunRecorder
from strategies.validation import ReplySchema
from transport.base import TransportError
from transport.secagg_flower import (
    ANSWERED,
    MAX_SUMMANDS,
    SecAggGrid,
    SecAggTransport,
    max_participants,
    quantisation_steps,
)
from transport.secagg_identity import parameters_statement
from transport.secagg_store import NodeStore

DP = {"transport": "secagg+dp", "dp-mode": "central", "dp-noise-multiplier": 1.0, "dp-clip": 0.05}
OUTSIDE = "the unmasked sum is outside what 4 honest clients can produce"


@pytest.fixture(autouse=True)
def _identity(task_identity, secagg_certs, tmp_path, monkeypatch):
    from test_secagg_flower import use_identities

    use_identities(secagg_certs, tmp_path, monkeypatch)


def _sent_ask(fed: Federation, node: int) -> dict:
    """The secure-aggregation instructions the (honest) server sent ``node`` in its last round."""
    train = [m for m in fed.loop.sent if m.metadata.message_type == "train" and m.metadata.dst_node_id == node]
    return dict(train[-1].content[SECAGG_RECORD].items())


def _node(fed: Federation) -> SecAggTransport:
    return SecAggTransport(cfg=fed.cfg, node=NodeConfig.from_node_config({"partition-id": 0,
                                                                                        "num-partitions": len(NODES)}))


# --- (2) the node checks the server's instructions ------------------------------------------


@pytest.mark.parametrize(("key", "value", "named"), [
    ("participants", 10_000, "instruction participants = 10000: this node takes part in rounds of 2 to 4 clients"),
    ("participants", 5, "instruction participants = 5: .*\\(its num-partitions 4"),
    ("threshold", 1, "instruction threshold = 1: this node's run config gives t = 2 for k = 3"),
    ("threshold", 3, "instruction threshold = 3: this node's run config gives t = 2"),
    ("neighbours", [12, 13], "instruction neighbours: 2 listed, this node's run config gives k = 3"),
    ("neighbours", [11, 12, 13], "instruction neighbours: 3 listed"),  # itself among them
    ("step", 1e-3, "instruction step = 0.001: this node's clip / 2\\^19 says 1.9"),
    ("clip", 100.0, "instruction clip = 100: this node's secagg-clip says 1"),
    ("weight-bound", -1.0, "instruction weight-bound = -1.0: a positive bound"),
    ("l2-clip", 1.0, "instruction l2-clip: the server asks for distributed DP, which this run's config does not"),
    ("threshold", True, "instruction threshold = True: an integer is required"),
])
def test_a_node_refuses_an_instruction_its_own_config_does_not_give(defaults, key, value, named):
    fed = Federation(_config(defaults))
    fed.train()
    ask, node = _sent_ask(fed, 11), _node(fed)
    assert node.checked(ConfigRecord(ask), 11).threshold == 2  # the honest server's: accepted
    with pytest.raises(TransportError, match=named):
        node.checked(ConfigRecord({**ask, key: value}), 11)


@pytest.mark.parametrize(("key", "value", "named"), [
    ("l2-clip", None, "instruction l2-clip missing: this node's run config says distributed DP"),
    ("participants", 10_000, "instruction participants = 10000"),
    ("sigma", 0.1, "instruction sigma = 0.1: this node's dp-noise-multiplier says 1"),
    ("noise-split", 4, "instruction noise-split = 4: this node's run's threshold for 4 participants says 2"),
    ("l2-clip", 5.0, "instruction l2-clip = 5: this node's dp-clip says 0.05"),
])
def test_under_distributed_dp_a_node_refuses_a_split_or_clip_not_its_own(defaults, key, value, named):
    fed = Federation(_config(defaults, **DP))
    fed.train()
    ask, node = _sent_ask(fed, 12), _node(fed)
    node.checked(ConfigRecord(ask), 12)
    changed = {k: v for k, v in ask.items() if k != key} if value is None else {**ask, key: value}
    with pytest.raises(TransportError, match=named):
        node.checked(ConfigRecord(changed), 12)


@pytest.mark.parametrize(("members", "named"), [
    ([11, 13, 14, 15], "instruction members: 4 distinct participants listed for participants = 4, which must include "
                       "this node and its neighbours"),
    ([11, 12, 13], "instruction members: 3 distinct participants"),
    ([11, 11, 12, 13], "instruction members: 3 distinct participants"),
])
def test_a_node_refuses_participants_without_itself_or_its_neighbours_or_of_another_count(defaults, members, named):
    """The participants are the survivor set a node signs with its masked input: they must be
    ``participants`` distinct nodes, itself and its neighbours among them."""
    fed = Federation(_config(defaults))
    fed.train()
    ask = _sent_ask(fed, 12)
    assert _node(fed).checked(ConfigRecord(ask), 12).members == [11, 12, 13, 14]
    with pytest.raises(TransportError, match=re.escape(named)):
        _node(fed).checked(ConfigRecord({**ask, "members": members}), 12)


@pytest.mark.parametrize("extra", [{}, DP], ids=["secagg", "secagg+dp"])
def test_every_number_the_server_states_is_a_round_parameter_the_consistency_round_signs(defaults, extra):
    """The participant count and the weight bound are the server's word (checked only for range):
    they, and every other number of the instructions, are in the parameters each node signs with
    its survivor set, so that nodes given different ones find each other's signatures invalid."""
    fed = Federation(_config(defaults, **extra))
    fed.train()
    ask = _sent_ask(fed, 12)
    told = _node(fed).checked(ConfigRecord(ask), 12)
    numbers = {k for k, v in ask.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {name for name, _ in told.parameters} == numbers
    assert numbers >= ({"participants", "noise-split", "sigma"} if extra else {"participants", "weight-bound"})
    other = _node(fed).checked(ConfigRecord({**ask, "participants": 3, "neighbours": [11, 13], "members": [11, 12, 13]}), 12)
    assert parameters_statement(other.parameters) != parameters_statement(told.parameters)


class OmitsTheNoise(SecAggGrid):
    """A lying server: it leaves ``l2-clip`` out, hoping for raw updates."""

    def _instructions(self, *args):  # noqa: ANN002, ANN202
        return {k: v for k, v in super()._instructions(*args).items() if k != "l2-clip"}


class ClaimsThousands(SecAggGrid):
    """A lying server: 10,000 participants, so that each node would add 1/5,000 of the noise."""

    def _instructions(self, round_id, nodes, t, floor):  # noqa: ANN001, ANN202
        return {**super()._instructions(round_id, nodes, t, floor), "participants": 10_000, "noise-split": 5_000}


def _clients_csv(fed: Federation, replies: list[Message], tmp_path) -> list[dict]:  # noqa: ANN001
    """What the server's guard and recorder make of the round's replies: the clients.csv rows."""
    guard = InstrumentedStrategy(FedAvg(), ReplySchema(metrics=frozenset((NUM_EXAMPLES, SECAGG_SUMMED, SECAGG_DROPPED))))
    guard.aggregate_train(1, replies)
    recorder = RunRecorder(tmp_path / "run")
    recorder.add_client_rows(1, guard.take_client_rows())
    with open(tmp_path / "run" / "clients.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(("server", "named"), [
    (OmitsTheNoise, "instruction l2-clip missing"),
    (ClaimsThousands, "instruction participants = 10000"),
])
def test_a_lying_servers_round_is_refused_by_every_node_and_the_reason_reaches_clients_csv(defaults, tmp_path,
                                                                                            server, named):
    fed = Federation(_config(defaults, **DP), grid_class=server)
    replies = fed.train()
    assert len(replies) == 4 and all(r.has_error() for r in replies)  # no masked input, no aggregate
    assert fed.grid.failures == ["0 masked input(s), the threshold is 2"]
    rows = _clients_csv(fed, replies, tmp_path)
    assert sorted(int(r["node_id"]) for r in rows) == NODES
    for row in rows:  # refused before training: the message never reached the trainer
        assert row["status"].startswith("failed: transport secagg+dp: refused incoming message: secagg: ")
        assert named in row["status"]


def test_a_node_sends_one_masked_input_a_round_so_s_and_s_minus_x_cannot_both_be_summed(defaults, tmp_path):
    fed = Federation(_config(defaults))
    (aggregate,) = fed.train()
    assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
    replies = fed.train(nodes=[11, 12, 13], again=True)  # the same round without node 14
    assert [r.has_error() for r in replies] == [True] * 3
    assert fed.grid.failures == ["0 masked input(s), the threshold is 2"]
    rows = _clients_csv(fed, replies, tmp_path)
    assert all("a training message for round 1: this node sent its masked input for round 1 already" in r["status"]
               for r in rows) and len(rows) == 3
    fed.round = 0  # an earlier round: refused as well
    assert all(r.has_error() and "for round 0" in r.error.reason for r in fed.train(again=True))
    fed.round = 1
    (aggregate,) = fed.train()  # round 2: every node answers again
    assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4


def test_a_node_that_refuses_while_others_sum_is_a_failed_client_row_and_not_counted_twice(defaults, tmp_path):
    fed = Federation(_config(defaults))
    fed.train()
    with NodeStore.of(fed.run_id, 14).open() as data:  # as if it had answered round 5 already
        data[ANSWERED] = 5
    replies = fed.train()
    aggregate = next(r for r in replies if not r.has_error())
    metrics = aggregate.content.metric_records["metrics"]
    assert (metrics[SECAGG_SUMMED], metrics[SECAGG_DROPPED]) == (3, 0)  # node 14 comes as its own error reply
    rows = _clients_csv(fed, replies, tmp_path)
    assert [(r["node_id"], r["status"][:9]) for r in rows if r["status"] != "ok"] == [("14", "failed: t")]


# --- (3) the field: how many participants it holds --------------------------------------------


def test_the_field_holds_4095_participants_whatever_the_clip_and_the_server_refuses_more(defaults):
    fed = Federation(_config(defaults, **{"secagg-clip": 0.05}))
    steps = quantisation_steps(fed.cfg, 5)
    assert steps[-1] == 2.0**-19 and steps[0] == 0.05 * 2.0**-19  # the weight has its own step
    assert max_participants(fed.cfg) == MAX_SUMMANDS == 4095
    assert 4000 < max_participants(Federation(_config(defaults, **DP)).cfg) < 4095  # the noise takes its room
    start = fed.start
    replies = fed.grid.send_and_receive([Message(RecordDict({ARRAYS: start, "config": ConfigRecord({"server-round": 1})}),
                                                 dst_node_id=n, message_type="train") for n in range(1, 4097)])
    assert replies == [] and fed.loop.sent == []  # refused before anything is sent
    assert fed.grid.failures[0].startswith("4096 nodes sampled, more than the 4095 whose sum the field Z_2^32 holds")


# --- (3) a malicious client: outside the bounds, rejected ------------------------------------


def _malicious(monkeypatch, fed: Federation, node: int, forge) -> None:  # noqa: ANN001
    """``node`` sends ``forge(what it would honestly send)`` instead (any vector the field holds)."""
    honest = SecAggTransport._release

    def release(self, content, request, ask, participants):  # noqa: ANN001, ANN202
        x, steps = honest(self, content, request, ask, participants)
        me = set(NODES) - {int(j) for j in ask["neighbours"]}  # every other node is a neighbour: the one left is it
        return (forge(x.copy()), steps) if me == {node} else (x, steps)

    monkeypatch.setattr(SecAggTransport, "_release", release)


def _set(x: np.ndarray, update: float | None = None, weight: float | None = None, first: float | None = None) -> np.ndarray:
    if update is not None:
        x[:-1] = update
    if weight is not None:
        x[-1] = weight
    if first is not None:
        x[0] = first
    return x


@pytest.mark.parametrize(("forge", "named"), [
    (lambda x: _set(x, update=300.0, weight=1.0), "coordinate \\d+ sums to 30\\d\\.\\d+, beyond clip 1 x total weight 4"),
    (lambda x: _set(x, update=0.0, weight=-2.999), "coordinate \\d+ sums to .*, beyond clip 1 x total weight 0\\.00(09|10)"),
    (lambda x: _set(x, update=300.0, weight=100.0), "the weights sum to 103, outside \\[0, 4\\]"),
    (lambda x: _set(x, first=4000.0), "coordinate 0 sums to 400\\d\\.\\d+, beyond"),  # 2^31 steps is the field's end
    (lambda x: _set(x, weight=-5.0), "the weights sum to -2, outside \\[0, 4\\]"),
])
def test_a_client_outside_the_bounds_fails_the_round_named_and_the_model_stays(defaults, monkeypatch, forge, named):
    fed = Federation(_config(defaults), weight_bound=1)  # every honest weight is 1
    _malicious(monkeypatch, fed, 11, forge)
    assert fed.train() == []  # no aggregate: the strategy keeps the model
    (why,) = fed.grid.failures
    assert why.startswith(OUTSIDE)
    assert re.search(named, why), why


@pytest.mark.parametrize(("forge", "named"), [
    (lambda x: np.full_like(x, 100 * 0.05 / np.sqrt(x.size)), "its L2 norm is [45]\\.\\d+, beyond 4 x clip 0.05"),  # 100 C
    (lambda x: _set(np.concatenate([x, [0.0]]), first=100.0)[:-1], "its L2 norm is (99|100)\\.\\d+"),  # 2000 C, finite
    (lambda x: x * 30, "its L2 norm is"),  # 30 times its update and its noise share
])
def test_under_distributed_dp_a_client_outside_the_norm_bound_fails_the_round(defaults, monkeypatch, forge, named):
    fed = Federation(_config(defaults, **DP))
    _malicious(monkeypatch, fed, 13, forge)
    assert fed.train() == []
    (why,) = fed.grid.failures
    assert why.startswith(OUTSIDE) and re.search(named, why), why


# --- (3) a malicious client inside the bounds: how far it moves the average -------------------


def _honest_average(defaults) -> np.ndarray:  # noqa: ANN001
    """The average of nodes 12, 13 and 14 alone (11 gone before training), every weight 1."""
    fed = Federation(_config(defaults), crash={11: "train"}, weight_bound=1)
    (aggregate,) = fed.train()
    return _flat(aggregate.content[ARRAYS]) - _flat(fed.start)


def test_the_worst_in_bound_client_moves_the_average_by_at_most_2_clip_over_the_total_weight(defaults, monkeypatch):
    """Node 11 sends +clip on every coordinate with weight 1, the most an input inside its own
    bounds can be: the average moves by (clip - honest average) / W per coordinate, W = 4,
    at most 2 clip / W (docs/transport.md)."""
    honest = _honest_average(defaults)
    fed = Federation(_config(defaults), weight_bound=1)
    _malicious(monkeypatch, fed, 11, lambda x: _set(x, update=1.0, weight=1.0))  # secagg-clip 1
    (aggregate,) = fed.train()
    shift = _flat(aggregate.content[ARRAYS]) - _flat(fed.start) - honest
    np.testing.assert_allclose(shift, (1.0 - honest) / 4, atol=1e-5)  # the quantisation
    assert np.max(np.abs(shift)) <= 2 * 1.0 / 4
    assert np.min(shift) > 0.2  # near clip / W: the honest updates are small beside the clip


def test_a_client_beyond_its_own_clip_passes_while_the_sum_stays_in_bounds(defaults, monkeypatch):
    """The check bounds the sum, not each input: 2.5 clip with weight 1 keeps every coordinate
    of the sum within clip x W = 4 and passes, moving the average further than any in-bound
    client can (0.62 clip where the in-bound worst is 0.5); the average still stays within
    clip of the start on every coordinate (docs/transport.md: the limit of the check)."""
    honest = _honest_average(defaults)
    fed = Federation(_config(defaults), weight_bound=1)
    _malicious(monkeypatch, fed, 11, lambda x: _set(x, update=2.5, weight=1.0))
    (aggregate,) = fed.train()
    moved = _flat(aggregate.content[ARRAYS]) - _flat(fed.start)
    np.testing.assert_allclose(moved - honest, (2.5 - honest) / 4, atol=1e-5)
    assert np.min(moved - honest) > 2 * 1.0 / 4  # beyond the in-bound worst
    assert np.max(np.abs(moved)) <= 1.0 + 1e-5  # never beyond the box
