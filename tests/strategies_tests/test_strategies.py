"""Strategies: invariants every strategy keeps, and noise isolation's own behaviour."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from helpers import make_reply

from strategies import (
    MedianNoiseIsolatingFedAvg,
    NoiseIsolatingFedAvg,
    isolate_noise,
    load_strategy,
    parse_strategy_options,
    resolve_strategy,
)

SHAPES = {"weights": (3, 4, 3), "scale": (3,), "bias": (3,)}


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


def random_params(rng, scale=1.0):
    return {k: scale * rng.normal(size=s) for k, s in SHAPES.items()}


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


STRATEGIES = [FedAvg, NoiseIsolatingFedAvg, MedianNoiseIsolatingFedAvg]


@pytest.mark.parametrize("cls", STRATEGIES)
def test_every_strategy_keeps_keys_and_shapes(cls):
    rng = np.random.default_rng(0)
    replies = [make_reply(random_params(rng), 10 + i, i) for i in range(4)]
    arrays, metrics = cls().aggregate_train(1, replies)
    assert {k: v.shape for k, v in as_numpy(arrays).items()} == SHAPES
    assert "train-loss" in metrics


@pytest.mark.parametrize("cls", [NoiseIsolatingFedAvg, MedianNoiseIsolatingFedAvg])
@pytest.mark.parametrize("num_clients", [2, 3, 5])
def test_noise_isolating_equals_fedavg_on_identical_clients(num_clients, cls):
    rng = np.random.default_rng(1)
    params = random_params(rng)
    replies = [make_reply(params, 5 * (i + 1), i) for i in range(num_clients)]
    ours, _ = cls().aggregate_train(1, replies)
    ref, _ = FedAvg().aggregate_train(1, replies)
    for k in SHAPES:
        np.testing.assert_allclose(as_numpy(ours)[k], as_numpy(ref)[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [NoiseIsolatingFedAvg, MedianNoiseIsolatingFedAvg])
def test_noise_isolating_equals_fedavg_when_clients_deviate_equally(cls):
    # consensus +/- the same deviation: every client is "equally clean"
    rng = np.random.default_rng(2)
    centre = random_params(rng)
    delta = random_params(rng, 0.1)
    ps = [{k: centre[k] + sgn * delta[k] for k in SHAPES} for sgn in (1, -1, 1, -1)]
    replies = [make_reply(p, n, i) for i, (p, n) in enumerate(zip(ps, (4, 4, 7, 7)))]
    ours, _ = cls().aggregate_train(1, replies)
    ref, _ = FedAvg().aggregate_train(1, replies)
    for k in SHAPES:
        np.testing.assert_allclose(as_numpy(ours)[k], as_numpy(ref)[k], atol=1e-12)


def test_noisy_client_is_down_weighted_and_the_average_is_closer_to_the_truth():
    # Arrange: 5 clients = truth + small heterogeneity; client 4 adds large device noise
    rng = np.random.default_rng(3)
    truth = random_params(rng)
    ps = [{k: truth[k] + 0.05 * rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(5)]
    ps[4] = {k: v + 0.6 * rng.normal(size=v.shape) for k, v in ps[4].items()}
    replies = [make_reply(p, 20, i) for i, p in enumerate(ps)]
    strategy = MedianNoiseIsolatingFedAvg(trim_threshold=1e6)  # no trimming: test the weighting
    # Act
    ours, metrics = strategy.aggregate_train(1, replies)
    ref, _ = FedAvg().aggregate_train(1, replies)
    # Assert
    est = {e.node_id: e for e in strategy.last_estimates}
    assert est[4].weight < 0.05 < min(est[i].weight for i in range(4))
    assert est[4].shrinkage < 0.1  # pulled most of the way to the consensus
    assert all(est[i].shrinkage > 0.5 for i in range(4))
    assert sum(est[i].shrinkage == 1.0 for i in range(4)) >= 2  # those at or below the median keep theirs
    err = lambda rec: sum(np.sum((as_numpy(rec)[k] - truth[k]) ** 2) for k in SHAPES)  # noqa: E731
    assert err(ours) < 0.2 * err(ref)
    assert metrics["ni-trimmed"] == 0 and metrics["ni-noise-var-max"] > 10 * metrics["ni-noise-var-median"]


def test_outlier_beyond_threshold_is_trimmed():
    rng = np.random.default_rng(4)
    truth = random_params(rng)
    ps = [{k: truth[k] + 0.05 * rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(4)]
    ps.append({k: truth[k] + 5.0 for k in SHAPES})
    strategy = MedianNoiseIsolatingFedAvg()
    _, metrics = strategy.aggregate_train(1, [make_reply(p, 10, i) for i, p in enumerate(ps)])
    assert metrics["ni-trimmed"] == 1
    assert [e.node_id for e in strategy.last_estimates if e.trimmed] == [4]
    assert strategy.last_estimates[4].weight == 0.0


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda p: {**p, "scale": np.array([np.nan, 1.0, 1.0])}, "NaN or Inf"),
        (lambda p: {**p, "bias": np.array([np.inf, 1.0, 1.0])}, "NaN or Inf"),
        (lambda p: {**p, "weights": np.zeros((2, 4, 3))}, "holds data of shape (2, 4, 3)"),
        (lambda p: {k: v for k, v in p.items() if k != "bias"}, "parameter names"),
    ],
)
def test_bad_updates_are_rejected_with_a_logged_reason(caplog, corrupt, reason):
    rng = np.random.default_rng(5)
    good = [make_reply(random_params(rng), 10, i) for i in range(3)]
    bad = make_reply(corrupt(random_params(rng)), 10, 99)
    strategy = MedianNoiseIsolatingFedAvg()
    strategy._reference = dict(SHAPES)  # as configure_train records it
    with caplog.at_level(logging.WARNING):
        arrays, _ = strategy.aggregate_train(1, [*good, bad])
    assert "node 99" in caplog.text and reason in caplog.text
    assert all(np.all(np.isfinite(v)) for v in as_numpy(arrays).values())
    assert {e.node_id for e in strategy.last_estimates} == {0, 1, 2}


def test_isolate_noise_weights_sum_to_one():
    rng = np.random.default_rng(6)
    stacked = rng.normal(size=(6, 40))
    _, weights, shrink, var, trimmed = isolate_noise(stacked, np.arange(1, 7.0), trim_threshold=9.0)
    assert weights.sum() == pytest.approx(1.0)
    assert np.all((shrink > 0) & (shrink <= 1)) and np.all(var > 0) and not trimmed.any()


def test_trim_threshold_is_validated():
    with pytest.raises(ValueError, match="trim_threshold"):
        MedianNoiseIsolatingFedAvg(trim_threshold=0.5)


def test_registry_names_paths_and_options():
    assert resolve_strategy("noise-isolating") is NoiseIsolatingFedAvg
    assert resolve_strategy("noise-isolating-median") is MedianNoiseIsolatingFedAvg
    assert resolve_strategy("flwr.serverapp.strategy:FedProx").__name__ == "FedProx"
    strategy = load_strategy("noise-isolating-median", **parse_strategy_options("{ trim-threshold = 4.0 }"))
    assert strategy.trim_threshold == 4.0
    with pytest.raises(ValueError, match="does not accept"):
        load_strategy("fedavg", trim_threshold=4.0)
    with pytest.raises(ValueError, match="not a flwr Strategy"):
        resolve_strategy("numpy:ndarray")
    with pytest.raises(ValueError, match="inline table"):
        parse_strategy_options("trim = 4")


def test_wrappers_compose_central_dp_keeps_noise_isolatings_per_client_columns():
    # Flower's DP wrapper forwards no attributes; the per-client report still gets through
    from server.instrumented import InstrumentedStrategy
    from strategies.central_dp import CentralDPFixedClipping

    rng = np.random.default_rng(7)
    base = random_params(rng)
    replies = [make_reply({k: v + 0.01 * rng.normal(size=v.shape) for k, v in base.items()}, 10, i) for i in range(4)]
    guard = InstrumentedStrategy(CentralDPFixedClipping(NoiseIsolatingFedAvg(), noise_multiplier=0.1, clipping_norm=1.0))
    glob = ArrayRecord({k: __import__("flwr.app", fromlist=["Array"]).Array(v) for k, v in base.items()})
    guard._reference, guard._global = dict(SHAPES), glob  # as configure_train records them
    guard.strategy.current_arrays = glob
    guard.aggregate_train(1, replies)
    rows = guard.take_client_rows()
    assert len(rows) == 4
    assert all(isinstance(r["noise_var"], float) and isinstance(r["weight"], float) for r in rows)
