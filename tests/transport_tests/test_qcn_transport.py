"""The qcn transport on a node's reply, its composition, and the round deadline."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from helpers import make_reply

from qfl.common.config import NodeConfig, RunConfig
from strategies import FidelityWeightedFedAvg, RoundDeadline, filter_replies, unpack_mask
from transport.base import Envelope
from transport.registry import build_transport

UP = Envelope(run_id=7, server_round=3, node_id=5, src="node-5", dst="server", direction="up")


def _config(defaults, **over):
    return RunConfig.from_run_config({**defaults, **{k.replace("_", "-"): v for k, v in over.items()}})


def _node(**node_config):
    return NodeConfig.from_node_config({"num-partitions": 2, **node_config})


def _exchange(seed=0, size=40):
    rng = np.random.default_rng(seed)
    old = {"a": rng.normal(size=(4, 5)), "b": rng.normal(size=20)}
    new = {k: v + rng.normal(scale=0.1, size=v.shape) for k, v in old.items()}
    request = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in old.items()})})
    reply = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.3}),
        }
    )
    return old, new, request, reply


def test_ideal_path_with_exact_readout_is_bit_identical(defaults):
    old, new, request, reply = _exchange()
    cfg = _config(defaults, qcn_paths="ideal", qcn_copies=0)
    stack = build_transport(cfg.replace(transport="qcn"), _node(**{"partition-id": 0, "num-partitions": 2}))
    wire = stack.encode(reply, UP, request)
    for k in new:
        np.testing.assert_array_equal(wire["arrays"][k].numpy(), new[k])
        assert unpack_mask(wire, k, new[k].shape).all()
    metrics = wire["metrics"]
    assert metrics["fidelity"] == 1.0 and metrics["latency-s"] == 0.0 and metrics["qcn-lost-fraction"] == 0.0
    assert metrics["num-examples"] == 10  # the node's own metrics are kept


def test_partition_picks_its_path_and_lost_values_keep_the_global_value(defaults):
    old, new, request, reply = _exchange(1)
    cfg = _config(defaults, qcn_paths="metro;long-haul:cutoff_s=0.03", qcn_copies=1)
    near = build_transport(cfg.replace(transport="qcn"), _node(**{"partition-id": 0})).encode(reply, UP, request)
    far = build_transport(cfg.replace(transport="qcn"), _node(**{"partition-id": 1})).encode(reply, UP, request)
    assert near["metrics"]["fidelity"] > 0.9 > far["metrics"]["fidelity"]
    assert far["metrics"]["latency-s"] > 10 * near["metrics"]["latency-s"]
    lost = 0
    for k in new:
        mask = unpack_mask(far, k, new[k].shape).astype(bool)
        got = far["arrays"][k].numpy()
        np.testing.assert_array_equal(got[~mask], old[k][~mask])  # no update where lost
        lost += (~mask).sum()
    assert lost > 0 and far["metrics"]["qcn-lost-fraction"] == pytest.approx(lost / 40)
    # a node's own qcn-path overrides its partition's
    own = build_transport(cfg.replace(transport="qcn"), _node(**{"partition-id": 1, "qcn-path": "ideal"})).encode(reply, UP, request)
    assert own["metrics"]["fidelity"] == 1.0


def test_same_seed_round_and_partition_give_the_same_channel(defaults):
    _, _, request, reply = _exchange(2)
    cfg = _config(defaults, qcn_paths="regional")
    a = build_transport(cfg.replace(transport="qcn"), _node(**{"partition-id": 0})).encode(reply, UP, request)
    b = build_transport(cfg.replace(transport="qcn"), _node(**{"partition-id": 0})).encode(reply, UP, request)
    c = build_transport(cfg.replace(transport="qcn"), _node(**{"partition-id": 1})).encode(reply, UP, request)
    np.testing.assert_array_equal(a["arrays"]["a"].numpy(), b["arrays"]["a"].numpy())
    assert not np.array_equal(a["arrays"]["a"].numpy(), c["arrays"]["a"].numpy())


def test_the_channel_is_common_to_every_run_and_arm_of_a_seed(defaults):
    """Common random numbers: another run (Flower's run ID is random), another strategy or
    another node ID leave the draws of (seed, partition, round) as they are; the seed and the
    round change them."""
    from dataclasses import replace

    _, _, request, reply = _exchange(4)
    cfg = _config(defaults, qcn_paths="regional", transport="qcn")

    def sent(config, envelope=UP):  # noqa: ANN001, ANN202
        return build_transport(config, _node(**{"partition-id": 0})).encode(reply, envelope, request)["arrays"]["a"].numpy()

    base = sent(cfg)
    np.testing.assert_array_equal(base, sent(cfg, replace(UP, run_id=123456789, node_id=99)))
    np.testing.assert_array_equal(base, sent(cfg.replace(strategy="fidelity-weighted")))
    assert not np.array_equal(base, sent(cfg.replace(seed=cfg.seed + 1)))
    assert not np.array_equal(base, sent(cfg, replace(UP, server_round=4)))


def test_the_device_noise_is_common_to_every_arm_of_a_seed(defaults):
    """A node's device-noise draws are seeded by (seed, round, partition) (client.local): two
    strategies' runs of a seed train the same parameters to the same noisy numbers."""
    from client.local import LocalTask
    from qfl.common.contract import ARRAYS, CONFIG, METRICS, TRAIN_LOSS

    cfg = _config(defaults, dataset="iris", device_profiles="noisy-nisq:shots=64")
    other = cfg.replace(strategy="fedmedian")
    node = _node(**{"partition-id": 1})
    a, b = LocalTask(cfg, node), LocalTask(other, node)
    request = RecordDict({ARRAYS: ArrayRecord(a.model.state_dict()), CONFIG: ConfigRecord()})

    def loss(task, config, server_round):  # noqa: ANN001, ANN202
        return task.train(config, request, server_round)[METRICS][TRAIN_LOSS]

    assert loss(a, cfg, 2) == loss(b, other, 2)
    assert loss(a, cfg, 2) != loss(a, cfg, 3)


def test_qcn_composes_with_dp_dp_first(defaults):
    old, new, request, reply = _exchange(3)
    cfg = _config(defaults, qcn_paths="ideal", qcn_copies=0, dp_clip=0.01, dp_noise_multiplier=1e-12)
    both = build_transport(cfg.replace(transport="qcn+dp"), _node(**{"partition-id": 0}))
    assert both.name == "qcn+dp"
    wire = both.encode(reply, UP, request)
    dp_only = build_transport(cfg.replace(transport="dp"), _node(**{"partition-id": 0})).encode(reply, UP, request)
    # over an ideal channel, what arrives is the clipped update (DP noise is fresh each
    # time, so it is all but switched off here to compare)
    for k in new:
        np.testing.assert_allclose(wire["arrays"][k].numpy(), dp_only["arrays"][k].numpy(), atol=1e-9)
        assert not np.allclose(wire["arrays"][k].numpy(), new[k])  # clipped: not the raw update
    assert wire["metrics"]["fidelity"] == 1.0
    # the server side of qcn has nothing to undo
    assert build_transport(cfg.replace(transport="qcn")).decode(wire, UP) is wire


def test_a_mask_of_the_wrong_size_is_rejected_before_aggregation(task_identity):
    msg = make_reply({"w": np.zeros(20)}, 5, node_id=1)
    msg.content["mask"] = ConfigRecord({"w": b"\xff"})  # 20 values need 3 bytes
    sound, rejected = filter_replies([msg], {"w": (20,)})
    assert not sound and "3 packed bytes" in rejected[0][1]


# --- RoundDeadline ------------------------------------------------------------------


def _timed(value, n, latency, node):
    msg = make_reply({"w": np.array([float(value)])}, n, node_id=node)
    msg.content["metrics"] = MetricRecord({**dict(msg.content["metrics"]), "latency-s": latency})
    return msg


def test_drop_policy_discards_late_updates(task_identity):
    strategy = RoundDeadline(FedAvg(), deadline_s=5.0, policy="drop")
    arrays, _ = strategy.aggregate_train(1, [_timed(1.0, 10, 1.0, 1), _timed(9.0, 10, 7.0, 2)])
    assert arrays["w"].numpy()[0] == pytest.approx(1.0)
    assert strategy.last_stats == {"stragglers": 1, "stale-folded": 0} and strategy.last_late_nodes == {2}
    # a reply without a latency is on time
    arrays, _ = strategy.aggregate_train(2, [make_reply({"w": np.array([3.0])}, 1, node_id=3)])
    assert arrays["w"].numpy()[0] == pytest.approx(3.0) and strategy.last_stats["stragglers"] == 0


def test_stale_policy_folds_late_updates_into_a_later_round_discounted(task_identity):
    strategy = RoundDeadline(FedAvg(), deadline_s=5.0, policy="stale", staleness_discount=0.5)
    # node 2 arrives at 7 s: one round late; node 3 at 12 s: two rounds late
    arrays, _ = strategy.aggregate_train(1, [_timed(1.0, 10, 1.0, 1), _timed(9.0, 10, 7.0, 2), _timed(5.0, 8, 12.0, 3)])
    assert arrays["w"].numpy()[0] == pytest.approx(1.0) and strategy.pending() == 2
    arrays, _ = strategy.aggregate_train(2, [_timed(2.0, 10, 1.0, 1)])
    # round 2: fresh 2.0 (weight 10) and node 2's 9.0 (weight 10 * 0.5)
    assert arrays["w"].numpy()[0] == pytest.approx((10 * 2.0 + 5 * 9.0) / 15)
    assert strategy.last_stats == {"stragglers": 0, "stale-folded": 1}
    arrays, _ = strategy.aggregate_train(3, [_timed(4.0, 10, 1.0, 1)])
    # round 3: node 3's 5.0 with weight 8 * 0.25
    assert arrays["w"].numpy()[0] == pytest.approx((10 * 4.0 + 2 * 5.0) / 12)
    assert strategy.pending() == 0


def test_deadline_wraps_fidelity_weighting_and_checks_its_arguments(task_identity):
    strategy = RoundDeadline(FidelityWeightedFedAvg(), deadline_s=1.0)
    arrays, _ = strategy.aggregate_train(1, [_timed(2.0, 4, 0.5, 1), _timed(8.0, 4, 3.0, 2)])
    assert arrays["w"].numpy()[0] == pytest.approx(2.0)
    assert strategy.weighted_by_key == "num-examples"
    for bad in ({"deadline_s": 0.0}, {"deadline_s": 1.0, "policy": "wait"}, {"deadline_s": 1.0, "staleness_discount": 0}):
        with pytest.raises(ValueError):
            RoundDeadline(FedAvg(), **bad)


def test_held_update_is_a_copy(task_identity):
    strategy = RoundDeadline(FedAvg(), deadline_s=1.0, policy="stale")
    late = _timed(9.0, 10, 1.5, 2)
    strategy.aggregate_train(1, [late])
    assert late.content["metrics"]["num-examples"] == 10


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian", "noise-isolating", "fidelity-weighted"])
def test_every_strategy_honours_the_loss_mask_behind_the_server_guard(task_identity, strategy):
    from flwr.app import Array, ArrayRecord

    from server.instrumented import InstrumentedStrategy
    from strategies import load_strategy

    # the global value of every coordinate is 0; both clients moved coordinate 0 to 0.98,
    # but client 2's copy of it was lost on the way (the wire carries the global value there)
    glob = ArrayRecord({"w": Array(np.zeros(4))})
    a = make_reply({"w": np.array([0.98, 0.1, 0.2, 0.3])}, 10, node_id=1)
    b = make_reply({"w": np.array([0.0, 0.1, 0.2, 0.3])}, 10, node_id=2)
    b.content["mask"] = ConfigRecord({"w": np.packbits(np.array([0, 1, 1, 1], dtype=np.uint8)).tobytes()})
    guard = InstrumentedStrategy(load_strategy(strategy))
    guard._reference, guard._global = {"w": (4,)}, glob  # as configure_train records them
    arrays, _ = guard.aggregate_train(1, [a, b])
    np.testing.assert_allclose(arrays["w"].numpy(), [0.98, 0.1, 0.2, 0.3], atol=1e-12)  # not 0.49
