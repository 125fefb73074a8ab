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
RUN_IDS = itertools.count(1)


class LoopbackGrid(DelegatingGrid):
    """Delivers each message to the real ClientApp of its node, in this process; ``crash``
    names nodes whose ClientApp is gone from a given stage on (``"train"`` or a secagg stage)."""

    def __init__(self, run_config: dict, crash: dict[int, str] | None = None, run_id: int = 1,
                 num_partitions: int = len(NODES)) -> None:
        self.run_config, self.crash = run_config, crash or {}
        self.contexts = {n: Context(run_id=run_id, node_id=n, node_config={"partition-id": i, "num-partitions": num_partitions},
                                    state=RecordDict(), run_config=run_config) for i, n in enumerate(NODES)}
        self.tamper = None  # a lying server's hook: each message as it leaves the server -> what the node gets
        self.seen: list[Message] = []  # every reply as the server received it
        self.sent: list[Message] = []  # every message as the nodes received it
        self._ids = itertools.count()
        self._gone: set[int] = set()

    def get_node_ids(self):  # noqa: ANN201
        return list(NODES)

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        replies = []
        for msg in messages:
            stamp(msg, message_id=f"m{next(self._ids)}", src_node_id=0)
            if self.tamper is not None:
                self.tamper(msg)
            self.sent.append(msg)
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


class Federation:
    """The server's SecAggGrid over the loopback, one training round per :meth:`train` (the
    round number the transport envelope carries goes up by one each time, as the server's
    rounds do; ``again=True`` sends the same round number once more)."""

    def __init__(self, run_config: dict, crash: dict[int, str] | None = None, weight_bound: float = 40,
                 grid_class: type = SecAggGrid, num_partitions: int = len(NODES)) -> None:
        self.cfg = RunConfig.from_run_config(run_config)
        self.start = ArrayRecord(build_model(self.cfg, build_dataset(self.cfg)).state_dict())
        self.run_id = next(RUN_IDS)  # a run of its own: the nodes' stores are per run and node
        self.loop = LoopbackGrid(run_config, crash, self.run_id, num_partitions)
        self.round = 0
        wire = TransportGrid(self.loop, build_transport(self.cfg, None), run_id=self.run_id, round_fn=lambda: self.round)
        self.grid = grid_class(wire, self.cfg, weight_bound=weight_bound)

    def train(self, nodes: list[int] = NODES, again: bool = False) -> list[Message]:
        self.round += 0 if again else 1
        return list(self.grid.send_and_receive([
            Message(RecordDict({ARRAYS: self.start, "config": ConfigRecord({"server-round": 1, "round-offset": 0})}),
                    dst_node_id=n, message_type="train") for n in nodes]))


def _train(run_config: dict, crash=None):  # noqa: ANN001, ANN202
    """One secure-aggregation round; (aggregate reply list, the loopback, the grid, the global arrays)."""
    fed = Federation(run_config, crash)
    return fed.train(), fed.loop, fed.grid, fed.start


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


IDENTITIES = 8  # node-0 .. node-7 are certified (a test may run with more partitions than nodes)


@pytest.fixture(scope="session")
def secagg_certs(tmp_path_factory):
    """A deployment's CA and the secure-aggregation identities node-0 .. node-7 (qfl.pki)."""
    from qfl.pki import generate

    certs = tmp_path_factory.mktemp("secagg-certs") / "certs"
    generate(certs, nodes=0, identities=[f"node-{i}" for i in range(IDENTITIES)])
    return certs


def use_identities(certs, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Each node finds its identity through its environment and keeps its secrets in a
    private directory of this test's own (0700)."""
    from transport.secagg_identity import CERTS_ENV

    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o700)
    monkeypatch.setenv(CERTS_ENV, str(certs))
    monkeypatch.setenv("QFL_RUNTIME_DIR", str(runtime))


@pytest.fixture(autouse=True)
def _identity(task_identity, secagg_certs, tmp_path, monkeypatch):
    use_identities(secagg_certs, tmp_path, monkeypatch)


def test_the_server_gets_fedavgs_average_and_sees_only_masked_inputs(defaults):
    (aggregate,), loop, _, start = _train(_config(defaults))
    assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
    plain = _plain_average(defaults, start, NODES)
    np.testing.assert_allclose(_flat(aggregate.content[ARRAYS]), plain, atol=1e-5)  # the quantisation error
    masked = [r for r in loop.seen if r.metadata.message_type == "train"]
    assert len(masked) == 4
    for reply in masked:  # on the wire of a training reply: one array in Z_2^32, encrypted shares, no metric, no claim
        content = reply.content
        assert set(content.array_records) == {SECAGG_MASKED} and not content.metric_records
        assert not set(content.config_records) - {"transport-envelope", SECAGG_RECORD}  # the first: Flower's wire record
        # the encrypted shares, and the signature on the participants as the survivor set
        assert set(content.config_records[SECAGG_RECORD]) == {"b-tokens", "sig"}
    # the keys once a run: the signed keys of the 4 (no warm-up here), then the 3 lower ends of
    # the 6 pairs encapsulate (ML-KEM); then the round's two exchanges: training (each of the 4
    # signs the participants with its masked input: all arrived, so no consistency round),
    # unmask (3 of 4 hold t = 2 shares of each)
    assert _stages(loop) == ["keys"] * 4 + ["keys"] * 3 + ["train"] * 4 + ["unmask"] * 3
    keys = [m for m in loop.sent if m.metadata.message_type == SECAGG_TYPE][4:7]
    assert [(m.metadata.dst_node_id, list(m.content[SECAGG_RECORD]["kem-with"])) for m in keys] == \
        [(11, [12, 13, 14]), (12, [13, 14]), (13, [14])]


def _stages(loop: LoopbackGrid, since: int = 0) -> list[str]:
    """What the server sent, message by message: ``train`` or the secagg stage."""
    return [m.metadata.message_type if m.metadata.message_type == "train" else LoopbackGrid._stage(m)
            for m in loop.sent[since:]]


def test_a_second_round_is_two_exchanges_with_the_keys_of_the_first(defaults):
    fed = Federation(_config(defaults))
    for _ in range(2):
        (aggregate,) = fed.train()
        assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
    sent = fed.loop.sent[14:]  # round 2: no keys query, no ciphertext nor certificate relayed again
    assert _stages(fed.loop, 14) == ["train"] * 4 + ["unmask"] * 3
    assert all(not list(m.content[SECAGG_RECORD]["kem-cts"]) for m in sent[:4])
    assert all(not list(m.content[SECAGG_RECORD]["intro-certs"]) for m in sent[:4])


def test_a_node_gone_before_its_masked_input_leaves_the_average_of_the_others(defaults):
    (aggregate,), loop, _, start = _train(_config(defaults), crash={13: "train"})
    # a participant's input missing: the signatures on the participants do not serve, and
    # the three survivors sign the survivor set in a consistency round
    assert [m.metadata.dst_node_id for m, stage in zip(loop.sent, _stages(loop)) if stage == "consistency"] == [11, 12, 14]
    metrics = aggregate.content.metric_records["metrics"]
    assert (metrics[SECAGG_SUMMED], metrics[SECAGG_DROPPED]) == (3, 1)
    np.testing.assert_allclose(_flat(aggregate.content[ARRAYS]), _plain_average(defaults, start, [11, 12, 14]), atol=1e-5)
    assert metrics[NUM_EXAMPLES] > 0


def test_a_node_gone_after_its_masked_input_still_counts(defaults):
    """Its self-mask seed is rebuilt from its neighbours' shares: the sum of all four. It was
    one of the three asked to unmask; the server then asks the fourth for the shares it held."""
    (aggregate,), loop, _, start = _train(_config(defaults), crash={13: "unmask"})
    unmask = [m.metadata.dst_node_id for m, stage in zip(loop.sent, _stages(loop)) if stage == "unmask"]
    assert unmask == [11, 12, 13, 14]
    metrics = aggregate.content.metric_records["metrics"]
    assert (metrics[SECAGG_SUMMED], metrics[SECAGG_DROPPED]) == (4, 0)
    np.testing.assert_allclose(_flat(aggregate.content[ARRAYS]), _plain_average(defaults, start, NODES), atol=1e-5)


def test_below_the_threshold_the_round_fails_with_a_named_reason(defaults, caplog):
    replies, _, grid, _ = _train(_config(defaults), crash={12: "train", 13: "train", 14: "train"})
    assert replies == []
    assert grid.failures and "masked input(s), the threshold is 2" in grid.failures[0]


def _stage(ctx: Context, stage: str, **ask) -> Message:  # noqa: ANN003
    from transport.secagg_flower import secagg_stage

    msg = stamp(Message(RecordDict({SECAGG_RECORD: ConfigRecord({"stage": stage, "round-id": "r", **ask})}),
                        dst_node_id=ctx.node_id, message_type=SECAGG_TYPE), message_id="u")
    return secagg_stage(msg, ctx)


def _in_flight(ctx: Context, **round_state) -> None:  # noqa: ANN003
    """Put round ``r`` in flight in the node's store, as if it had sent its masked input."""
    from transport.secagg_flower import ROUND
    from transport.secagg_store import NodeStore

    with NodeStore.of(ctx.run_id, ctx.node_id).open() as data:
        data[ROUND] = {"round-id": "r", "neighbours": [12, 13, 14], "threshold": 2, "participants": 4,
                       "parameters": [["participants", 4], ["threshold", 2]], **round_state}


def test_a_node_signs_one_survivor_set_a_round_and_reveals_only_for_it(defaults):
    """The consistency round: a node signs a survivor set only if it lists it and at least t
    of its neighbours, one set a round; it reveals nothing for a set it did not sign, nor
    without t valid neighbours' signatures on that set; both secrets of one client follow
    from one set, so it never reveals both."""
    _, loop, _, _ = _train(_config(defaults))
    ctx = loop.contexts[11]
    _in_flight(ctx)
    reply = _stage(ctx, "consistency", survivors=[11, 12])
    assert isinstance(reply.error, Error) and "1 of this node's neighbours survived, fewer than the threshold 2" in reply.error.reason
    reply = _stage(ctx, "unmask", survivors=[11, 12, 13], owners=[], **{"b-tokens": []})
    assert "the consistency round was skipped" in reply.error.reason
    assert not _stage(ctx, "consistency", survivors=[11, 12, 13]).has_error()
    reply = _stage(ctx, "consistency", survivors=[11, 12, 13, 14])
    assert "a second, different survivor set for round 'r'" in reply.error.reason
    reply = _stage(ctx, "unmask", survivors=[11, 12, 13, 14], owners=[], **{"b-tokens": []})
    assert "is not the one this node signed" in reply.error.reason
    reply = _stage(ctx, "unmask", survivors=[11, 12, 13], owners=[], **{"b-tokens": [], "sig-from": [12, 13],
                                                                       "sigs": [b"x" * 3309, b"y" * 3309]})
    assert "0 valid signature(s) of surviving neighbours on the survivor set and round parameters this node signed " \
           "(participants 4, threshold 2), fewer than the threshold 2 (not valid: [12, 13]: another set or other " \
           "parameters)" in reply.error.reason


def test_a_node_that_signed_the_participants_signs_at_most_one_subset_and_reveals_for_one_set(defaults):
    """With its masked input a node signed the participants as the survivor set (the round in
    which every input arrives needs no consistency round). If one did not arrive, it signs
    one subset of the participants in a consistency round, never a set with others in it;
    from then on it reveals only for that subset, and without t valid signatures for nothing."""
    _, loop, _, _ = _train(_config(defaults))
    ctx = loop.contexts[11]
    everyone = [11, 12, 13, 14]
    _in_flight(ctx, presigned=everyone)
    reply = _stage(ctx, "unmask", survivors=everyone, owners=[], **{"b-tokens": []})
    assert "0 valid signature(s) of surviving neighbours on the survivor set and round parameters this node " \
           "signed (participants 4, threshold 2), fewer than the threshold 2" in reply.error.reason
    reply = _stage(ctx, "consistency", survivors=[11, 12, 13, 15])
    assert "survivors [15] were not among the round's participants [11, 12, 13, 14]" in reply.error.reason
    assert not _stage(ctx, "consistency", survivors=[11, 12, 13]).has_error()
    assert "a second, different survivor set" in _stage(ctx, "consistency", survivors=[11, 12, 14]).error.reason
    reply = _stage(ctx, "unmask", survivors=everyone, owners=[], **{"b-tokens": []})
    assert "the survivor set [11, 12, 13, 14] is not the one this node signed ([11, 12, 13])" in reply.error.reason


def test_distributed_dp_adds_each_nodes_share_of_the_noise_and_the_server_the_sample(defaults):
    """secagg + central DP: each node clips to C and adds N(0, sigma^2 C^2 / m_min); the sum of
    the four carries sigma C sqrt(4 / m_min), the server divides by the four sampled."""
    sigma, clip = 4.0, 0.05
    run_config = _config(defaults, transport="secagg+dp", **{"dp-mode": "central", "dp-noise-multiplier": sigma,
                                                              "dp-clip": clip})
    fed = Federation(run_config)
    deviations = []
    for _ in range(6):  # the noise is OS entropy: pool a few rounds' coordinates
        (aggregate,) = fed.train()
        assert fed.grid.last_sample == (4, 4)
        deviations.append(_flat(aggregate.content[ARRAYS]) - _flat(fed.start))
    deviation = np.concatenate(deviations)
    expected = sigma * clip * np.sqrt(4 / 2) / 4  # per coordinate: m_min = 2 of 4 (secagg-threshold 0.5)
    # the clipped updates' mean has L2 norm <= C: next to the noise (1.4 C per coordinate) it is small
    assert np.linalg.norm(deviation) / np.sqrt(deviation.size) == pytest.approx(expected, rel=0.35)


@pytest.mark.parametrize(("extra", "key"), [
    ({"strategy": "fedmedian"}, "strategy"), ({"strategy": "noise-isolating"}, "strategy"),
    ({"transport": "secagg+qcn"}, "transport"), ({"transport": "secagg+dp", "dp-mode": "local"}, "dp-mode"),
])
def test_what_needs_each_clients_update_is_refused_with_secure_aggregation(defaults, extra, key):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_run_config(_config(defaults, **extra))


def test_secure_aggregation_sits_inside_encryption():
    assert transport_parts("secagg+qkd") == ["qkd", "secagg"]


@pytest.mark.parametrize(("n", "k", "t", "dropped"), [(4, 3, 2, []), (20, 8, 4, []), (20, 8, 4, [3, 11]), (50, 12, 6, [7])])
def test_the_unmask_stage_asks_few_survivors_and_enough(n, k, t, dropped):
    from transport.secagg import neighbours
    from transport.secagg_flower import unmask_holders

    graph = neighbours(list(range(n)), k, seed=5)
    survivors = [i for i in range(n) if i not in dropped]
    holders = unmask_holders(graph, survivors, dropped, t, {i: [] for i in survivors}, set())
    assert all(len(graph[i] & holders) >= t for i in survivors)  # t shares of every survivor's seed
    assert all(graph[j] & set(survivors) <= holders for j in dropped)  # every pair seed with a dropped client
    assert len(holders) < len(survivors)
    shares = {i: [b"s"] * len(graph[i] & holders) for i in survivors}
    assert unmask_holders(graph, survivors, dropped, t, shares, holders) == set()  # all answered: nobody more
