"""NoiseIsolatingFedAvg: the clients' own noise claims, heterogeneity by DerSimonian-Laird.

A synthetic federation follows the strategy's model: client k's update is
c_k (mu + h_k) + e_k with heterogeneity h_k (spread ``spread`` per coordinate) and device
noise e_k (``noise`` per coordinate); it claims ``claim`` as its update's device variance.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg
from helpers import make_reply

from qfl.common.contract import NOISE_CONTRACTION, PEC_GAMMA2, UPDATE_NOISE_VAR
from strategies import MedianNoiseIsolatingFedAvg, NoiseIsolatingFedAvg, dersimonian_laird, load_strategy
from strategies.noise_isolating import (
    CLAIMED,
    CONTRADICTED,
    SERVER_ESTIMATE,
    SIGNIFICANCE,
    UNSEPARATED,
    Z_UPPER,
    capped_weights,
    chi2_upper,
)

D = 40
GLOBAL = {"w": np.linspace(-1.0, 1.0, D), "bias": np.array([0.1, -0.1])}
MU = {"w": np.ones(D) / np.sqrt(D), "bias": np.array([0.2, -0.3])}
TYPICAL = 0.1  # heterogeneity of a typical client, per coordinate (sd)
CLEAN = 0.02  # device noise of a good device, per coordinate (sd)


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


class _Grid:
    """What ``configure_train`` samples from."""

    def get_node_ids(self):  # noqa: ANN201
        return list(range(10))


def client(node: int, rng: np.random.Generator, *, spread: float = TYPICAL, noise: float = CLEAN,
           claim: float | None = None, contraction: float = 1.0, told: float | None = None,
           examples: float = 20, gamma2: float | None = None) -> Message:
    """A reply whose update is ``contraction (mu + h) + e`` (the ``bias`` outside the circuit
    is not contracted), claiming variance ``claim`` and contraction ``told``."""
    update = {k: (1.0 if k == "bias" else contraction) * (MU[k] + spread * rng.normal(size=MU[k].shape))
              + noise * rng.normal(size=MU[k].shape) for k in MU}
    msg = make_reply({k: GLOBAL[k] + update[k] for k in GLOBAL}, examples, node)
    for key, value in ((UPDATE_NOISE_VAR, claim), (NOISE_CONTRACTION, told), (PEC_GAMMA2, gamma2)):
        if value is not None:
            msg.content["metrics"][key] = value
    return msg


def started(strategy):  # noqa: ANN001, ANN201
    """``strategy`` after ``configure_train`` has shown it the global model."""
    list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), _Grid()))
    return strategy


def step(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: arrays[k].numpy() - GLOBAL[k] for k in GLOBAL}


def relative_weights(strategy: NoiseIsolatingFedAvg | MedianNoiseIsolatingFedAvg) -> dict[int, float]:
    """Each client's weight over its FedAvg share."""
    found = getattr(strategy, "last_clients", None) or strategy.last_estimates
    total = sum(c.num_examples for c in found)
    return {c.node_id: c.weight / (c.num_examples / total) for c in found}


# --- reduces to FedAvg ---------------------------------------------------------------------------

@pytest.mark.parametrize("spread", [0.0, TYPICAL, 1.0])
@pytest.mark.parametrize("num_clients", [2, 3, 6])
def test_equal_noise_claims_give_fedavg_bit_for_bit_whatever_the_heterogeneity(num_clients, spread):
    # Arrange: unequal example counts, every client claims the same noise
    rng = np.random.default_rng(num_clients)
    replies = [client(i, rng, spread=spread, claim=CLEAN**2, examples=7 + 5 * i) for i in range(num_clients)]
    # Act
    ours, our_metrics = started(NoiseIsolatingFedAvg()).aggregate_train(1, replies)
    ref, ref_metrics = FedAvg().aggregate_train(1, replies)
    # Assert
    for k in GLOBAL:
        assert np.array_equal(ours[k].numpy(), ref[k].numpy()), k
    assert {k: our_metrics[k] for k in ref_metrics} == dict(ref_metrics)


def test_without_a_global_model_or_claims_it_is_fedavg_too():
    rng = np.random.default_rng(11)
    replies = [client(i, rng, examples=5 + i) for i in range(4)]
    strategy = NoiseIsolatingFedAvg()  # aggregate_train without configure_train
    ours, _ = strategy.aggregate_train(1, replies)
    ref, _ = FedAvg().aggregate_train(1, replies)
    assert all(np.array_equal(ours[k].numpy(), ref[k].numpy()) for k in GLOBAL)
    assert {c.source for c in strategy.last_clients} == {UNSEPARATED}


# --- heterogeneity is not noise ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_an_unusual_but_clean_client_keeps_its_weight_where_a_noisy_one_loses_it(seed):
    """Clients 4 and 5 deviate from the others alike (variance 4 x the typical heterogeneity):
    4 because its data are unusual (honest small noise), 5 because its device is noisy (and it
    says so). The median-distance method cannot tell them apart and punishes both; this one
    keeps 4 at its FedAvg weight and down-weights 5."""
    # Arrange
    def replies(with_claims: bool) -> list[Message]:
        rng = np.random.default_rng(seed)
        claim = (lambda v: v) if with_claims else (lambda v: None)
        honest = [client(i, rng, claim=claim(CLEAN**2)) for i in range(4)]
        unusual = client(4, rng, spread=2 * TYPICAL, claim=claim(CLEAN**2))
        noisy_var = 3 * TYPICAL**2
        noisy = client(5, rng, noise=np.sqrt(noisy_var), claim=claim(noisy_var))
        return [*honest, unusual, noisy]

    # Act
    new = started(NoiseIsolatingFedAvg())
    new.aggregate_train(1, replies(with_claims=True))
    old = started(MedianNoiseIsolatingFedAvg())
    old.aggregate_train(1, replies(with_claims=False))
    # Assert
    ours, theirs = relative_weights(new), relative_weights(old)
    assert ours[4] == pytest.approx(ours[0]) and ours[4] > 0.95, ours  # unusual: weighed as the typical ones
    assert ours[5] < 0.5, ours  # noisy: down-weighted
    assert theirs[4] < 0.75 and theirs[5] < 0.75 and 0.5 < theirs[4] / theirs[5] < 2.0, theirs  # both alike
    assert [c.source for c in new.last_clients] == [CLAIMED] * 6 and not any(c.named for c in new.last_clients)


def test_an_honest_federation_names_nobody():
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        noise = [CLEAN, CLEAN, 0.1, 0.2, 0.05, CLEAN]
        replies = [client(i, rng, spread=TYPICAL * (1 + 0.5 * (i % 3)), noise=s, claim=s**2) for i, s in enumerate(noise)]
        strategy = started(NoiseIsolatingFedAvg())
        strategy.aggregate_train(1, replies)
        assert not any(c.named for c in strategy.last_clients), (seed, strategy.last_clients)


# --- a client that lies about its noise ------------------------------------------------------------

@pytest.mark.parametrize("claim", [0.0, 1e-12, CLEAN**2])
def test_a_noisy_client_claiming_little_noise_is_named_and_down_weighted(claim):
    # Arrange: node 4's update is noisy (variance 1 per coordinate, 100 x the heterogeneity)
    rng = np.random.default_rng(5)
    replies = [*(client(i, rng, claim=CLEAN**2) for i in range(4)), client(4, rng, noise=1.0, claim=claim)]
    strategy = started(NoiseIsolatingFedAvg())
    # Act
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Assert
    liar = strategy.last_clients[4]
    assert liar.source == CONTRADICTED and liar.named.startswith(f"contradicted: claimed {UPDATE_NOISE_VAR}")
    assert liar.noise_var == pytest.approx(1.0, rel=0.5)  # what its spread says
    assert relative_weights(strategy)[4] < 0.05 and metrics["ni-contradicted"] == 1
    assert [c.source for c in strategy.last_clients[:4]] == [CLAIMED] * 4
    ref, _ = FedAvg().aggregate_train(1, replies)
    error = lambda rec: np.linalg.norm(step(rec)["w"] - MU["w"])  # noqa: E731
    assert error(arrays) < 0.5 * error(ref)
    assert strategy.round_report().clients[replies[4].metadata.src_node_id]["named"] == liar.named


@pytest.mark.parametrize("cap", [1.0, 1.25, 1.5, 2.0, 4.0])
def test_claiming_no_noise_buys_at_most_the_cap(cap):
    """Noisy devices everywhere, little heterogeneity: node 4 is as noisy as the others but
    claims none. With the claims untested it gains what the cap leaves it (a false zero also
    raises tau^2, which limits its own gain); by default its spread stays under the bar (which
    allows 9 x the typical heterogeneity) and the cap still bounds it; by the plain chi-square
    test (factor 1) the claim falls and node 4 weighs as the others."""
    # Arrange
    def replies() -> list[Message]:
        rng = np.random.default_rng(6)
        return [*(client(i, rng, spread=0.02, noise=0.1, claim=0.01) for i in range(4)),
                client(4, rng, spread=0.02, noise=0.1, claim=0.0)]

    def gain(**options) -> tuple[float, NoiseIsolatingFedAvg]:  # noqa: ANN003
        strategy = started(NoiseIsolatingFedAvg(**options))
        strategy.aggregate_train(1, replies())
        return relative_weights(strategy)[4], strategy

    # Act
    free, _ = gain(weight_cap=1e9, heterogeneity_factor=0)
    untested, untested_strategy = gain(weight_cap=cap, heterogeneity_factor=0)
    default, _ = gain(weight_cap=cap)
    strict, strict_strategy = gain(weight_cap=cap, heterogeneity_factor=1)
    # Assert
    assert free > 1.5  # without a cap the false zero would buy this much
    assert untested == pytest.approx(min(cap, free)) and untested_strategy.last_clients[4].source == CLAIMED
    # the weights and the share a binding cap left with the global model (no step) make 1
    assert sum(c.weight for c in untested_strategy.last_clients) + untested_strategy.last_kept == pytest.approx(1.0)
    assert default <= cap * (1 + 1e-12)
    assert strict_strategy.last_clients[4].source == CONTRADICTED and strict_strategy.last_clients[4].named
    assert strict == pytest.approx(relative_weights(strict_strategy)[0], rel=0.5)


def test_capped_weights_fill_the_water_level():
    # FedAvg shares 0.1, 0.1, 0.2, 0.6; cap 2: bounds 0.2, 0.2, 0.4, 1.2. Node 0 is cut to 0.2,
    # the rest shared by raw weight puts node 1 at 0.27, above its bound: cut too; 2 and 3 share 0.6.
    counts = np.array([10.0, 10.0, 20.0, 60.0])
    share = capped_weights(np.array([100.0, 1.0, 1.0, 1.0]), counts, 2.0)
    np.testing.assert_allclose(share, [0.2, 0.2, 0.3, 0.3], rtol=1e-12)
    # nothing above its bound: the raw weights come back as they are (FedAvg's own arithmetic follows)
    assert np.array_equal(capped_weights(counts, counts, 2.0), counts)


def test_a_binding_cap_hands_the_precise_clients_excess_to_noise_only_as_far_as_it_helps():
    """The regime of the noise experiment (docs/results.md): 2 precise clients and 4 whose updates
    are noise with no signal (a device whose gradient the noise swamps), all honest. The precise
    ones want more than 2 x their FedAvg share and are capped at it. Water-filling (the limit of
    infinite signal) would hand the remaining third to the noisy four; with the estimated signal
    power they keep their own precision shares and the rest stays with the global model (no
    step): a smaller error than water-filling and than FedAvg, in every one of 20 seeds."""
    from strategies.noise_isolating import separate_noise

    errors = {"ours": [], "water-filling": [], "fedavg": []}
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        replies = [*(client(i, rng, claim=CLEAN**2) for i in range(2)),
                   *(client(i, rng, noise=0.5, claim=0.25, contraction=0.0) for i in range(2, 6))]
        strategy = started(NoiseIsolatingFedAvg())
        arrays, metrics = strategy.aggregate_train(1, replies)
        shares = np.array([c.weight for c in strategy.last_clients])
        assert np.allclose(shares[:2], 2 / 6) and shares[2:].sum() < 0.15  # water-filling: 1/3
        assert strategy.last_kept == pytest.approx(1 - shares.sum()) and metrics["ni-kept"] > 0.2
        updates = np.stack([np.concatenate([step(r.content["arrays"])[k] for k in GLOBAL]) for r in replies])
        np.testing.assert_allclose(np.concatenate([step(arrays)[k] for k in GLOBAL]), shares @ updates, atol=1e-12)
        claimed = np.array([CLEAN**2, CLEAN**2, 0.25, 0.25, 0.25, 0.25])
        water = separate_noise(updates, np.full(6, 20.0), claimed, 2.0, 9.0)  # updates' offset unknown: water-filling
        assert water.kept == 0.0 and np.isclose(water.weights[2:].sum(), 1 / 3)
        truth = np.concatenate([MU[k] for k in GLOBAL])
        errors["ours"].append(np.linalg.norm(shares @ updates - truth))
        errors["water-filling"].append(np.linalg.norm(water.weights @ updates - truth))
        errors["fedavg"].append(np.linalg.norm(updates.mean(axis=0) - truth))
    ours = np.array(errors["ours"])
    assert np.all(ours < np.array(errors["water-filling"])) and np.all(ours < np.array(errors["fedavg"]))


def test_capped_weights_keep_the_excess_where_the_others_carry_no_signal_and_fill_where_they_do():
    counts = np.full(4, 10.0)
    raw = np.array([100.0, 10.0, 10.0, 10.0])  # node 0 capped at 2 x 0.25 = 0.5; the others' shares 0.077
    noise = np.array([0.01, 1.0, 1.0, 1.0])
    filled = capped_weights(raw, counts, 2.0)  # the default: infinite signal, water-filling
    np.testing.assert_allclose(filled, [0.5, 1 / 6, 1 / 6, 1 / 6], rtol=1e-12)
    np.testing.assert_allclose(capped_weights(raw, counts, 2.0, noise, signal=1e6), filled, rtol=1e-5)
    none = capped_weights(raw, counts, 2.0, noise, signal=0.0)  # no signal: they keep their own shares
    np.testing.assert_allclose(none, [0.5, *(raw[1:] / raw.sum())], rtol=1e-12)
    some = capped_weights(raw, counts, 2.0, noise, signal=0.3)
    assert none[1] < some[1] < filled[1] and some[0] == 0.5  # in between, by the mean squared error
    assert np.array_equal(capped_weights(counts, counts, 2.0, noise, signal=0.0), counts)  # no cap binds: as before


# --- bias ------------------------------------------------------------------------------------------

def test_a_told_contraction_is_corrected_and_recovers_the_true_mean():
    # Arrange: the same direction mu, contracted by each device as it tells
    contractions = [1.0, 0.8, 0.6, 0.5, 0.4]

    def replies(tell: bool) -> list[Message]:
        rng = np.random.default_rng(7)
        return [client(i, rng, spread=0.02, noise=0.01, claim=1e-4, contraction=c, told=c if tell else None)
                for i, c in enumerate(contractions)]

    # Act
    ours, _ = started(NoiseIsolatingFedAvg()).aggregate_train(1, replies(tell=True))
    untold, _ = started(NoiseIsolatingFedAvg()).aggregate_train(1, replies(tell=False))
    ref, _ = FedAvg().aggregate_train(1, replies(tell=True))
    # Assert: FedAvg shrinks the step by the mean contraction; corrected, it is mu
    norm = np.linalg.norm(MU["w"])
    assert np.linalg.norm(step(ours)["w"] - MU["w"]) < 0.1 * norm
    assert np.linalg.norm(step(ref)["w"] - np.mean(contractions) * MU["w"]) < 0.1 * norm  # 0.34 short of mu
    assert np.linalg.norm(step(untold)["w"] - MU["w"]) > 0.25 * norm  # only when told
    np.testing.assert_allclose(step(ours)["bias"], MU["bias"], atol=0.03)  # outside the circuit: not divided


def test_a_contraction_below_the_floor_is_divided_by_the_floor():
    rng = np.random.default_rng(8)
    replies = [client(i, rng, claim=1e-4, contraction=0.05, told=0.05) for i in range(3)]
    strategy = started(NoiseIsolatingFedAvg(min_contraction=0.25))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert [c.contraction for c in strategy.last_clients] == [0.25] * 3
    mean = np.mean([step(r.content["arrays"])["w"] for r in replies], axis=0)  # (equal counts)
    np.testing.assert_allclose(step(arrays)["w"], mean / 0.25, rtol=1e-12, atol=1e-12)


# --- missing claims --------------------------------------------------------------------------------

def test_no_claims_fall_back_to_fedavg_and_say_why(caplog):
    rng = np.random.default_rng(9)
    replies = [client(i, rng, noise=0.3 if i == 0 else CLEAN, examples=10 + i) for i in range(5)]
    strategy = started(NoiseIsolatingFedAvg())
    with caplog.at_level(logging.INFO):
        ours, metrics = strategy.aggregate_train(1, replies)
    ref, _ = FedAvg().aggregate_train(1, replies)
    assert all(np.array_equal(ours[k].numpy(), ref[k].numpy()) for k in GLOBAL)
    assert {c.source for c in strategy.last_clients} == {UNSEPARATED} and metrics["ni-claims"] == 0
    assert f"fewer than two clients reported '{UPDATE_NOISE_VAR}'" in caplog.text
    assert "noise cannot be told from heterogeneity" in caplog.text


def test_a_client_without_a_claim_gets_the_servers_estimate_and_is_named_in_the_log(caplog):
    # Arrange: four clients claim, node 4 (noise variance 0.09) sends no claim
    rng = np.random.default_rng(10)
    replies = [*(client(i, rng, claim=CLEAN**2) for i in range(4)), client(4, rng, noise=0.3)]
    strategy = started(NoiseIsolatingFedAvg())
    # Act
    with caplog.at_level(logging.INFO):
        _, metrics = strategy.aggregate_train(1, replies)
    # Assert
    silent = strategy.last_clients[4]
    assert silent.source == SERVER_ESTIMATE and np.isnan(silent.claimed_var) and not silent.named
    assert silent.noise_var == pytest.approx(0.09, rel=0.5)
    assert relative_weights(strategy)[4] < 0.3
    assert f"node {replies[4].metadata.src_node_id} reported no '{UPDATE_NOISE_VAR}'" in caplog.text
    assert UPDATE_NOISE_VAR not in metrics  # averaged only over the keys every reply carries
    assert metrics["ni-claims"] == 4


def test_claims_outside_their_range_are_bounded_by_the_strategy_too():
    rng = np.random.default_rng(12)
    replies = [client(i, rng, claim=CLEAN**2) for i in range(3)]
    replies.append(client(3, rng, claim=-5.0, told=3.0, gamma2=0.5))
    strategy = started(NoiseIsolatingFedAvg())
    strategy.aggregate_train(1, replies)
    odd = strategy.last_clients[3]
    assert (odd.claimed_var, odd.contraction, odd.gamma2) == (0.0, 1.0, 1.0)


def test_a_bad_reply_is_left_out_with_its_reason(caplog):
    rng = np.random.default_rng(13)
    replies = [client(i, rng, claim=CLEAN**2) for i in range(3)]
    bad = client(9, rng, claim=CLEAN**2)
    bad.content["arrays"] = ArrayRecord({"w": Array(np.full(D, np.nan)), "bias": Array(GLOBAL["bias"])})
    strategy = started(NoiseIsolatingFedAvg())
    with caplog.at_level(logging.WARNING):
        arrays, _ = strategy.aggregate_train(1, [*replies, bad])
    assert "node 9" in caplog.text and "NaN or Inf" in caplog.text
    assert [c.node_id for c in strategy.last_clients] == [0, 1, 2] and np.all(np.isfinite(arrays["w"].numpy()))


# --- DerSimonian-Laird -----------------------------------------------------------------------------

def test_dersimonian_laird_matches_a_textbook_example():
    """Lipsey & Wilson (2001), *Practical Meta-Analysis*, Exhibit 7.3 (p. 133): tau^2 = 0.025955
    (as metafor's test suite reproduces it)."""
    y = np.array([-0.33, 0.32, 0.39, 0.31, 0.17, 0.64, -0.33, 0.15, -0.02, 0.00])
    v = np.array([0.084, 0.035, 0.017, 0.034, 0.072, 0.117, 0.102, 0.093, 0.012, 0.067])
    assert round(dersimonian_laird(y[:, None], v), 6) == 0.025955


def test_dersimonian_laird_matches_the_bcg_trials():
    """The 13 BCG vaccine trials (Colditz et al. 1994; metafor's ``dat.bcg``), log risk ratios:
    tau^2 = 0.3088 with DerSimonian-Laird (Stata's metan and metafor agree)."""
    t = np.array([[4, 119, 11, 128], [6, 300, 29, 274], [3, 228, 11, 209], [62, 13536, 248, 12619],
                  [33, 5036, 47, 5761], [180, 1361, 372, 1079], [8, 2537, 10, 619], [505, 87886, 499, 87892],
                  [29, 7470, 45, 7232], [17, 1699, 65, 1600], [186, 50448, 141, 27197], [5, 2493, 3, 2338],
                  [27, 16886, 29, 17825]], dtype=float)
    a, b, c, d = t.T
    y = np.log(a / (a + b)) - np.log(c / (c + d))
    v = 1 / a - 1 / (a + b) + 1 / c - 1 / (c + d)
    assert round(dersimonian_laird(y[:, None], v), 4) == 0.3088


def _dl_one_coordinate(y: list[float], v: list[float]) -> float:
    """DerSimonian-Laird written out for one coordinate, untruncated (an independent reference)."""
    w = [1 / x for x in v]
    mean = sum(wi * yi for wi, yi in zip(w, y)) / sum(w)
    q = sum(wi * (yi - mean) ** 2 for wi, yi in zip(w, y))
    return (q - (len(y) - 1)) / (sum(w) - sum(wi * wi for wi in w) / sum(w))


@pytest.mark.parametrize("seed", range(5))
def test_dersimonian_laird_pools_the_coordinates(seed):
    # the pooled estimate is the mean of the per-coordinate (untruncated) ones, then truncated
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.01, 0.2, size=6)
    y = rng.normal(size=(6, 1)) * 0.3 + rng.normal(size=(6, 8)) * np.sqrt(v)[:, None] + seed * 0.05 * rng.normal(size=(6, 8))
    expected = np.mean([_dl_one_coordinate(list(y[:, j]), list(v)) for j in range(8)])
    assert dersimonian_laird(y, v) == pytest.approx(max(0.0, expected), rel=1e-12, abs=1e-15)


def test_dersimonian_laird_with_equal_variances_is_the_sample_variance_less_them():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(5, 7))
    assert dersimonian_laird(y, np.full(5, 0.1)) == pytest.approx(max(0.0, np.var(y, axis=0, ddof=1).mean() - 0.1))
    assert dersimonian_laird(y, np.zeros(5)) == pytest.approx(np.var(y, axis=0, ddof=1).mean())
    assert dersimonian_laird(np.zeros((4, 3)), np.array([0.0, 1.0, 0.5, 0.0])) == 0.0


def test_the_chi_square_bar_agrees_with_scipy():
    from scipy.stats import chi2, norm

    assert Z_UPPER == pytest.approx(norm.ppf(1 - SIGNIFICANCE), rel=1e-12)
    for d in (1, 2, 3, 5, 8, 10, 40, 200, 5000):
        exact = chi2.ppf(1 - SIGNIFICANCE, d)
        assert exact <= chi2_upper(d) <= exact * (1.031 if d < 8 else 1.01), d  # never below: a bar no lower


# --- the constructor and the registry ----------------------------------------------------------------

@pytest.mark.parametrize(("option", "value"), [
    ("weight_cap", 0.5), ("weight_cap", float("nan")), ("weight_cap", True), ("weight_cap", "2"),
    ("heterogeneity_factor", 0.5), ("heterogeneity_factor", -1.0), ("heterogeneity_factor", float("inf")),
    ("min_contraction", 0.0), ("min_contraction", 1.5), ("min_contraction", float("nan")),
    ("uncorrected_parameters", "bias"), ("uncorrected_parameters", [1]),
])
def test_bad_options_are_refused_by_name(option, value):
    with pytest.raises(ValueError, match=option):
        NoiseIsolatingFedAvg(**{option: value})


def test_both_noise_isolating_strategies_are_selectable_by_name():
    new = load_strategy("noise-isolating", weight_cap=3.0, heterogeneity_factor=0, uncorrected_parameters=[])
    old = load_strategy("noise-isolating-median", trim_threshold=4.0)
    assert isinstance(new, NoiseIsolatingFedAvg) and (new.weight_cap, new.heterogeneity_factor) == (3.0, 0.0)
    assert isinstance(old, MedianNoiseIsolatingFedAvg) and old.trim_threshold == 4.0
    with pytest.raises(ValueError, match="does not accept"):
        load_strategy("noise-isolating", trim_threshold=4.0)
