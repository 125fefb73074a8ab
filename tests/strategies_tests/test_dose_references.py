"""The references of the noise-dose experiment: the oracle that drops exactly the noisy clients,
plain inverse-claimed-variance weighting, and the ablations of noise isolation (no contraction
division, no cap), each changing only what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg
from helpers import make_reply

from qfl.common.contract import (
    DEVICE,
    DEVICE_PROFILE,
    NOISE_CONTRACTION,
    REPORT_NOISE_SOURCE,
    REPORT_TRIMMED,
    REPORT_WEIGHT,
    TRAIN_METRICS,
    UPDATE_NOISE_VAR,
)
from strategies import (
    InverseVarianceFedAvg,
    NoiseIsolatingFedAvg,
    NoisyDeviceOracle,
    inverse_variance_weights,
    load_strategy,
    parse_strategy_options,
)
from strategies.inverse_variance import LARGEST_CLAIM

D = 12
GLOBAL = {"w": np.linspace(-1.0, 1.0, D), "bias": np.array([0.1, -0.1])}
NOISY = "ibm:cusco:shots=128"
GOOD = ("ibm-heron:shots=128", "quantinuum-h1:shots=128")


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


class _Grid:
    def get_node_ids(self):  # noqa: ANN201
        return list(range(10))


def reply(node: int, *, profile: str | None = None, claim: float | None = None, told: float | None = None,
          examples: float = 20.0, seed: int = 0) -> Message:
    """A training reply with an update drawn from ``seed`` and ``node``, naming ``profile``."""
    rng = np.random.default_rng(1000 * seed + node)
    msg = make_reply({k: v + rng.normal(scale=0.1, size=v.shape) for k, v in GLOBAL.items()}, examples, node)
    for key, value in ((UPDATE_NOISE_VAR, claim), (NOISE_CONTRACTION, told)):
        if value is not None:
            msg.content["metrics"][key] = value
    if profile is not None:
        msg.content[DEVICE] = ConfigRecord({DEVICE_PROFILE: profile})
    return msg


def started(strategy):  # noqa: ANN001, ANN201
    list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), _Grid()))
    return strategy


def same(a: ArrayRecord, b: ArrayRecord) -> bool:
    return set(a.keys()) == set(b.keys()) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a.keys())


# --- the oracle -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("noisy_nodes", [(5,), (1, 3, 5), (0, 1, 2, 3, 4)])
def test_the_oracle_drops_exactly_the_clients_on_a_noisy_device(noisy_nodes):
    # Arrange: six clients, unequal counts; the noisy ones name the noisy spec, the others good ones
    replies = [reply(k, profile=NOISY if k in noisy_nodes else GOOD[k % 2], examples=10 + 3 * k) for k in range(6)]
    clean = [m for m in replies if m.metadata.src_node_id not in noisy_nodes]
    oracle = load_strategy("oracle-drop-noisy", **parse_strategy_options(f'{{ noisy-profiles = ["{NOISY}"] }}'))
    # Act
    ours, metrics = oracle.aggregate_train(1, replies)
    ref, ref_metrics = FedAvg().aggregate_train(1, clean)
    # Assert: FedAvg of exactly the others, bit for bit; the dropped ones reported trimmed, weight 0
    assert same(ours, ref) and dict(metrics) == dict(ref_metrics)
    report = oracle.round_report().clients
    assert {n for n, c in report.items() if c[REPORT_TRIMMED]} == set(noisy_nodes)
    assert all(report[n][REPORT_WEIGHT] == 0.0 for n in noisy_nodes)
    assert sum(c[REPORT_WEIGHT] for c in report.values()) == pytest.approx(1.0)
    # and it must drop them: with every client kept the aggregate is another one
    assert not same(ours, FedAvg().aggregate_train(1, replies)[0])


def test_the_oracle_without_noisy_devices_is_fedavg_and_with_only_noisy_ones_takes_no_step():
    replies = [reply(k, profile=GOOD[k % 2], examples=5 + k) for k in range(4)]
    assert same(NoisyDeviceOracle().aggregate_train(1, replies)[0], FedAvg().aggregate_train(1, replies)[0])
    assert same(NoisyDeviceOracle(noisy_profiles=[NOISY]).aggregate_train(1, replies)[0],
                FedAvg().aggregate_train(1, replies)[0])
    everyone_noisy = [reply(k, profile=NOISY) for k in range(3)]
    assert NoisyDeviceOracle(noisy_profiles=[NOISY]).aggregate_train(1, everyone_noisy) == (None, None)
    # another shot count is another spec: not the device the oracle was told of
    other_shots = [reply(0, profile="ibm:cusco:shots=4096"), reply(1, profile=GOOD[0])]
    assert not any(c[REPORT_TRIMMED] for c in _report(NoisyDeviceOracle(noisy_profiles=[NOISY]), other_shots).values())


def _report(strategy, replies):  # noqa: ANN001, ANN202
    strategy.aggregate_train(1, replies)
    return strategy.round_report().clients


def test_behind_the_servers_guard_the_oracle_still_reads_each_replys_device():
    """The guard passes the ``device`` record through: the noisy client is trimmed, named so in clients.csv."""
    from server.instrumented import InstrumentedStrategy, train_reply_schema

    guard = InstrumentedStrategy(NoisyDeviceOracle(noisy_profiles=[NOISY]), train_reply_schema(), 4.0, 4.0, None, False)
    guard.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), _Grid())
    replies = [reply(k, profile=NOISY if k == 2 else GOOD[0]) for k in range(1, 5)]
    for msg in replies:  # every metric our ClientApp sends, as the ServerApp's schema wants them
        for key in TRAIN_METRICS:
            msg.content["metrics"].setdefault(key, 0.5)
    guard.aggregate_train(1, replies)
    status = {row["node_id"]: row["status"] for row in guard.take_client_rows()}
    assert status == {1: "ok", 2: "trimmed", 3: "ok", 4: "ok"}


@pytest.mark.parametrize("value", ["ibm:cusco", [1], [""]])
def test_the_oracle_refuses_options_that_are_not_a_list_of_specs(value):
    with pytest.raises(ValueError, match="noisy_profiles"):
        NoisyDeviceOracle(noisy_profiles=value)


# --- inverse-variance weighting -------------------------------------------------------------------------

def test_inverse_variance_weights_are_n_over_v_normalised():
    counts = np.array([10.0, 20.0, 30.0, 40.0])
    claims = [0.01, 0.04, 0.001, 0.2]
    weights, used, source = inverse_variance_weights(counts, claims)
    want = counts / np.array(claims)
    np.testing.assert_allclose(weights / weights.sum(), want / want.sum(), rtol=1e-12)
    assert used.tolist() == claims and set(source) == {"claimed"}
    # the aggregate is that weighted mean of the parameters
    replies = [reply(k, claim=v, examples=n) for k, (n, v) in enumerate(zip(counts, claims))]
    strategy = started(InverseVarianceFedAvg())
    arrays, _ = strategy.aggregate_train(1, replies)
    share = want / want.sum()
    for key in GLOBAL:
        mean = sum(a * m.content["arrays"][key].numpy() for a, m in zip(share, replies))
        np.testing.assert_allclose(arrays[key].numpy(), mean, rtol=1e-12, atol=1e-15)
    report = strategy.round_report().clients
    np.testing.assert_allclose([report[k][REPORT_WEIGHT] for k in range(4)], share, rtol=1e-12)


@pytest.mark.parametrize("claim", [0.0, 1e-6, 0.3])
def test_equal_claimed_variances_give_fedavg_bit_for_bit(claim):
    replies = [reply(k, claim=claim, examples=7 + 5 * k) for k in range(5)]
    ours, our_metrics = started(InverseVarianceFedAvg()).aggregate_train(1, replies)
    ref, ref_metrics = FedAvg().aggregate_train(1, replies)
    assert same(ours, ref)
    assert {k: our_metrics[k] for k in ref_metrics} == dict(ref_metrics)
    # unequal claims do move it (the test above can fail)
    replies[0].content["metrics"][UPDATE_NOISE_VAR] = claim + 1.0
    assert not same(started(InverseVarianceFedAvg()).aggregate_train(1, replies)[0], ref)


def test_inverse_variance_edge_cases_are_the_formulas_limits():
    counts = np.array([10.0, 20.0, 30.0])
    weights, _, _ = inverse_variance_weights(counts, [0.0, 0.0, 0.5])  # zero claims share everything by n_k
    np.testing.assert_allclose(weights / weights.sum(), [1 / 3, 2 / 3, 0.0])
    weights, used, source = inverse_variance_weights(counts, [0.1, None, 0.4])  # no claim: the noisiest claimant
    assert used.tolist() == [0.1, 0.4, 0.4] and source[1] == LARGEST_CLAIM
    weights, used, source = inverse_variance_weights(counts, [None, None, None])  # nobody claims: FedAvg
    assert weights.tolist() == counts.tolist() and all(math.isnan(v) for v in used) and set(source) == {"unseparated"}
    strategy = started(InverseVarianceFedAvg())
    strategy.aggregate_train(1, [reply(0, claim=0.1), reply(1)])
    assert strategy.round_report().clients[1][REPORT_NOISE_SOURCE] == LARGEST_CLAIM


# --- the ablations of noise isolation -------------------------------------------------------------------

def noisy_federation(seed: int, told: bool = True) -> list[Message]:
    """Two good clients and four whose updates are noisier and contracted, all claiming honestly."""
    return [reply(k, claim=1e-3 if k < 2 else 0.05, told=(1.0 if k < 2 else 0.3) if told else None, seed=seed,
                  examples=20 + k) for k in range(6)]


@pytest.mark.parametrize("seed", range(3))
def test_the_defaults_keep_todays_aggregate_bit_for_bit(seed):
    replies = noisy_federation(seed)
    today, today_metrics = started(NoiseIsolatingFedAvg()).aggregate_train(1, replies)
    spelled, spelled_metrics = started(load_strategy("noise-isolating", **parse_strategy_options(
        "{ weight-cap = 2.0, heterogeneity-factor = 9.0, min-contraction = 0.25 }"))).aggregate_train(1, replies)
    assert same(today, spelled) and dict(today_metrics) == dict(spelled_metrics)


@pytest.mark.parametrize("seed", range(3))
def test_no_division_leaves_the_contraction_out_and_nothing_else(seed):
    # Arrange / Act: min-contraction 1 on replies that tell their contraction ...
    ablated = started(load_strategy("noise-isolating", **parse_strategy_options("{ min-contraction = 1.0 }")))
    ours, _ = ablated.aggregate_train(1, noisy_federation(seed))
    # ... is the whole strategy on the same replies with no contraction told, bit for bit
    untold, _ = started(NoiseIsolatingFedAvg()).aggregate_train(1, noisy_federation(seed, told=False))
    divided, _ = started(NoiseIsolatingFedAvg()).aggregate_train(1, noisy_federation(seed))
    # Assert
    assert same(ours, untold)
    assert [c.contraction for c in ablated.last_clients] == [1.0] * 6
    assert not same(ours, divided)  # the default divides the told 0.3 (by 0.3): another aggregate


def test_no_cap_lets_a_weight_exceed_the_cap_and_the_cap_holds_it():
    # Arrange: one precise client among noisy ones wants far more than 2 x its FedAvg share
    replies = [reply(0, claim=1e-6), *(reply(k, claim=0.5) for k in range(1, 6))]
    capped = started(NoiseIsolatingFedAvg())
    free = started(load_strategy("noise-isolating", **parse_strategy_options("{ weight-cap = inf }")))
    # Act
    capped_arrays, _ = capped.aggregate_train(1, replies)
    free_arrays, free_metrics = free.aggregate_train(1, replies)
    # Assert: the share of node 0 over its FedAvg share (1/6)
    assert capped.last_clients[0].weight * 6 == pytest.approx(2.0)
    assert free.last_clients[0].weight * 6 > 2.0 * 2 and free.last_kept == 0.0 and free_metrics["ni-kept"] == 0.0
    assert sum(c.weight for c in free.last_clients) == pytest.approx(1.0)
    assert not same(capped_arrays, free_arrays)
    # where no cap binds, no cap changes nothing, bit for bit
    equal = [reply(k, claim=0.01, examples=10 + k) for k in range(5)]
    assert same(started(NoiseIsolatingFedAvg()).aggregate_train(1, equal)[0],
                started(NoiseIsolatingFedAvg(weight_cap=math.inf)).aggregate_train(1, equal)[0])


@pytest.mark.parametrize("value", [-math.inf, 0.5, math.nan])
def test_only_plus_infinity_or_a_number_from_one_is_a_cap(value):
    with pytest.raises(ValueError, match="weight_cap"):
        NoiseIsolatingFedAvg(weight_cap=value)
