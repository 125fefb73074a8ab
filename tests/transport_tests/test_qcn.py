"""QCN channel formulas against hand-computed values, and fidelity-weighted averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from helpers import from_node

from strategies import FidelityWeightedFedAvg, fidelity_weight
from transport.qcn import (
    PATHS,
    QCNPath,
    bbpssw,
    decayed_fidelity,
    dejmps,
    get_path,
    sample_pairs,
    swap_fidelity,
    transmit,
)


def test_two_hop_werner_swap_by_hand():
    # w = (4*0.9 - 1)/3 = 13/15; w12 = (13/15)^2; F = (1 + 3 w12)/4 = 0.81333...
    assert swap_fidelity(0.9, 0.9) == pytest.approx((1 + 3 * (13 / 15) ** 2) / 4, abs=1e-15)
    assert swap_fidelity(0.9, 0.9) == pytest.approx(0.8133333, abs=1e-7)
    assert swap_fidelity(1.0, 1.0) == 1.0
    assert swap_fidelity(0.9, 0.9, f_swap=0.97) < swap_fidelity(0.9, 0.9)


def test_one_bbpssw_round_by_hand():
    # F = 0.8: p = 0.64 + 2*0.8*(0.2/3) + 5*(0.2/3)^2 = 0.768889; F' = (0.64 + (0.2/3)^2) / p = 0.838150
    f_out, p = bbpssw(0.8)
    assert p == pytest.approx(0.7688889, abs=1e-7)
    assert f_out == pytest.approx(0.8381503, abs=1e-7)
    assert bbpssw(0.5)[0] == pytest.approx(0.5)  # the fixed point: no gain at F = 1/2


def test_dejmps_on_werner_input_matches_bbpssw_fidelity_first_round():
    f = 0.8
    rest = (1 - f) / 3
    (a, b, c, d), n = dejmps((f, rest, rest, rest))
    assert a + b + c + d == pytest.approx(1.0)
    assert a == pytest.approx(bbpssw(f)[0]) and n == pytest.approx(bbpssw(f)[1])


def test_decay_after_t_equal_t2_by_hand():
    assert decayed_fidelity(1.0, 1.0, 1.0) == pytest.approx(0.25 + 0.75 * math.exp(-1))
    assert decayed_fidelity(0.9, 0.0, 1.0) == 0.9
    assert decayed_fidelity(0.9, 5.0, math.inf) == 0.9


def test_longer_paths_lower_fidelity_and_distillation_raises_it():
    rng = np.random.default_rng(0)
    mean_f = lambda path: sample_pairs(path, 3000, rng)[0].mean()  # noqa: E731
    near, far = QCNPath(distance_km=10, hops=0), QCNPath(distance_km=100, hops=3)
    assert mean_f(near) > mean_f(far)
    distilled = QCNPath(distance_km=100, hops=3, distillation_rounds=1)
    assert mean_f(distilled) > mean_f(far)
    assert mean_f(QCNPath(distance_km=100, hops=3, distillation_rounds=1, protocol="dejmps")) > mean_f(far)


def test_pairs_without_memory_noise_match_the_swap_formula():
    # infinite coherence: every raw pair has exactly the swapped fidelity of its links
    path = QCNPath(distance_km=30, hops=2, link_fidelity=0.95, swap_fidelity=0.98, coherence_time_s=math.inf,
                   cutoff_s=math.inf)
    f, t = sample_pairs(path, 200, np.random.default_rng(1))
    expected = swap_fidelity(swap_fidelity(0.95, 0.95, 0.98), 0.95, 0.98)
    np.testing.assert_allclose(f, expected, rtol=0, atol=1e-12)
    # at least one attempt per segment plus the swap signalling
    assert t.min() >= path.attempt_time_s + 2 * path.segment_km / 2e5 - 1e-15


def test_fidelity_one_and_no_loss_give_bit_identical_parameters():
    values = np.random.default_rng(1).normal(size=50)
    sent = transmit(values, PATHS["ideal"], copies=0, rng=np.random.default_rng(2))
    assert sent.delivered.all() and np.array_equal(sent.estimates, values)
    assert sent.fidelity == 1.0 and sent.latency_s == 0.0 and sent.lost_copies == 0.0


def test_low_fidelity_and_few_copies_add_noise():
    values = np.random.default_rng(3).uniform(-1, 1, size=500)
    err = {}
    for spec in ("metro", "long-haul:cutoff_s=10"):
        sent = transmit(values, get_path(spec), copies=100, rng=np.random.default_rng(4), channels=8)
        assert sent.delivered.all()
        err[spec] = np.mean(np.abs(sent.estimates - values))
    assert err["long-haul:cutoff_s=10"] > 2 * err["metro"]


def test_carriers_past_the_cutoff_are_lost_and_masked():
    values = np.linspace(-1, 1, 400)
    # one copy per value; a cutoff near the typical pair time loses a good fraction
    path = get_path("long-haul:cutoff_s=0.03")
    sent = transmit(values, path, copies=1, rng=np.random.default_rng(5))
    lost = ~sent.delivered
    assert 0.1 < lost.mean() < 0.9
    assert np.isnan(sent.estimates[lost]).all() and np.isfinite(sent.estimates[~lost]).all()
    assert sent.lost_copies == pytest.approx(lost.mean())


def test_more_channels_cut_latency():
    values = np.zeros(64) + 0.5
    slow = transmit(values, PATHS["regional"], copies=10, rng=np.random.default_rng(6), channels=1)
    fast = transmit(values, PATHS["regional"], copies=10, rng=np.random.default_rng(6), channels=16)
    assert fast.latency_s < slow.latency_s / 8


def test_path_specs_parse_and_name_bad_fields():
    assert get_path("metro:hops=2,distance_km=40").hops == 2
    with pytest.raises(ValueError, match="unknown QCN path 'moon'"):
        get_path("moon")
    with pytest.raises(ValueError, match="bad override 'warp=9'"):
        get_path("metro:warp=9")
    with pytest.raises(ValueError, match="p_gen must be in"):
        get_path("metro:p_gen=0")


# --- FidelityWeightedFedAvg -----------------------------------------------------------


def _reply(x, n, fidelity=None, mask=None, node=0):
    metrics = {"num-examples": n, "train-loss": 1.0}
    if fidelity is not None:
        metrics["fidelity"] = fidelity
    content = {"arrays": ArrayRecord({"w": Array(np.asarray(x, dtype=float))}), "metrics": MetricRecord(metrics)}
    if mask is not None:
        content["mask"] = ConfigRecord({"w": np.packbits(np.asarray(mask, dtype=bool)).tobytes()})
    return from_node(Message(content=RecordDict(content), dst_node_id=0, message_type="train"), node)


def test_equals_fedavg_at_fidelity_one(task_identity):
    rng = np.random.default_rng(5)
    replies = [_reply(rng.normal(size=6), n, fidelity=1.0, mask=np.ones(6), node=i) for i, n in enumerate((3, 5, 9))]
    ours, _ = FidelityWeightedFedAvg().aggregate_train(1, replies)
    ref, _ = FedAvg().aggregate_train(1, [_reply(r.content["arrays"]["w"].numpy(), n) for r, n in zip(replies, (3, 5, 9))])
    np.testing.assert_allclose(ours["w"].numpy(), ref["w"].numpy(), rtol=0, atol=1e-12)


def test_sparse_average_uses_only_delivered_coordinates(task_identity):
    strategy = FidelityWeightedFedAvg()
    strategy._global = ArrayRecord({"w": Array(np.full(3, 7.0))})
    a = _reply([1.0, 100.0, 5.0], 1, fidelity=1.0, mask=[1, 0, 0])  # 100 was lost: must not count
    b = _reply([3.0, 2.0, 999.0], 1, fidelity=1.0, mask=[1, 1, 0])
    got, _ = strategy.aggregate_train(1, [a, b])
    np.testing.assert_allclose(got["w"].numpy(), [2.0, 2.0, 7.0])  # mean, only b, previous


def test_low_fidelity_client_is_down_weighted(task_identity):
    good, bad = _reply([1.0], 10, fidelity=0.99), _reply([5.0], 10, fidelity=0.6)
    got, _ = FidelityWeightedFedAvg().aggregate_train(1, [good, bad])
    g_good, g_bad = fidelity_weight(0.99), fidelity_weight(0.6)
    assert got["w"].numpy()[0] == pytest.approx((g_good * 1 + g_bad * 5) / (g_good + g_bad))
    assert fidelity_weight(0.25) == 0.0 and fidelity_weight(1.0) == 1.0
