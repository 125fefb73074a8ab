"""The audited federations: members are exactly the rows the nodes train on, and under DP the
project's own mechanisms and ledger give an epsilon the measured attacks do not beat."""

from __future__ import annotations

import numpy as np
import pytest

from qfl.audit.federation import Pool, audit_run_config, draw_membership, write_node_files
from qfl.common.config import NodeConfig, RunConfig
from qfl.common.contract import NODE_NUM_PARTITIONS, NODE_PARTITION_ID


def test_members_are_exactly_the_rows_each_node_trains_on(defaults, tmp_path):
    # Arrange
    from qfl.task.local_data import node_dataset

    pool = Pool.of_dataset("iris", 4, clients=3, seed=0)
    keep = draw_membership(1, len(pool.y), np.random.default_rng(0))[0]
    config = audit_run_config(defaults, pool, seed=9, overrides={})
    # Act
    files, trained = write_node_files(pool, keep, config, tmp_path)
    # Assert
    cfg = RunConfig.from_run_config(config)
    for k, path in enumerate(files):
        node = NodeConfig.from_node_config({NODE_PARTITION_ID: k, NODE_NUM_PARTITIONS: 3, "data-path": str(path)})
        data = node_dataset(cfg, node)  # what the node's ClientApp trains on
        mine = trained & (pool.client == k)
        np.testing.assert_array_equal(data.x_train, pool.x[mine])
        np.testing.assert_array_equal(data.y_train, pool.y[mine])
        assert len(data.y_test) >= 1  # its held-out rows: non-members
    assert (trained <= keep).all() and trained.sum() == keep.sum() - 3
    assert np.bincount(pool.client).max() - np.bincount(pool.client).min() <= 1


@pytest.mark.slow
def test_a_central_dp_federation_audit_stays_within_its_epsilon(defaults, task_identity):
    from qfl.audit.study import audit_setting

    # Arrange: the server's CentralDPFixedClipping and CentralDPLedger, 2 rounds of 2 of 2 clients
    pool = Pool.of_dataset("iris", 4, clients=2, seed=0)
    overrides = {"local-epochs": 1, "learning-rate": 0.1, "transport": "dp", "dp-mode": "central",
                 "dp-noise-multiplier": 4.0}
    # Act
    result = audit_setting(pool, defaults, overrides, models=6, rounds=2, seed=0, resamples=50)
    # Assert
    assert 0 < result["epsilon"] < 5 and result["server_epsilon"] == float("inf")
    for attack in result["attackers"]["outsider"].values():
        assert not attack["dp_check"]["violated"], attack


# --- distributed DP: secure aggregation, each node adding its share of the noise ---------------

DISTRIBUTED = {"transport": "secagg+dp", "dp-mode": "central"}


@pytest.mark.parametrize(("threshold", "split"), [(0.5, 2), (0.9, 3)])
def test_distributed_dp_noised_aggregate_has_the_variance_the_accountant_assumes(defaults, task_identity, tmp_path,
                                                                                threshold, split):
    """The noise in each round's sum, as the server unmasks it, measured over 20 rounds x 42
    coordinates: its variance is n sigma^2 C^2 / m_min (each of the n = 3 nodes adds its share
    N(0, sigma^2 C^2 / m_min), m_min = max(2, ceil(secagg-threshold n))), never below the
    sigma^2 C^2 the ledger counts, and equal to it where m_min = n. A statistical test: with the
    right variance it fails with probability 1e-6 (a two-sided chi-square interval); the
    clipped updates (a sum of L2 norm <= 3 C) add at most 1e-4 of its variance at sigma = 50."""
    from scipy import stats

    from qfl.audit.federation import AuditFederation, secagg_identities
    from qfl.audit.study import distributed_noise
    from qfl.common.records import flatten
    from transport.dp import CentralDPLedger

    # Arrange
    sigma, clip, rounds = 50.0, 1.0, 20
    pool = Pool.of_dataset("iris", 4, clients=3, seed=0)
    keep = draw_membership(1, len(pool.y), np.random.default_rng(1))[0]
    config = audit_run_config(defaults, pool, seed=3, overrides={
        **DISTRIBUTED, "dp-noise-multiplier": sigma, "dp-clip": clip, "secagg-threshold": threshold,
        "local-epochs": 1, "learning-rate": 0.1})
    files, _ = write_node_files(pool, keep, config, tmp_path)
    noise = distributed_noise(config, participants=3)
    # Act: each round's sum = (aggregate - the model sent) x the 3 nodes sampled
    sums = []
    with secagg_identities(3, tmp_path):
        fed = AuditFederation(config, files, tmp_path)
        for rnd in range(1, rounds + 1):
            names = list(fed.arrays.keys())
            sent = flatten(fed.arrays, names)
            fed.round(rnd)
            assert len(fed.received[-1]) == 1  # the server received the aggregate, not one client's update
            aggregate = np.concatenate([fed.received[-1][0][n].ravel() for n in names]).astype(np.float64)
            sums.append((aggregate - sent) * 3)
    draws = np.concatenate(sums)
    # Assert: the project's split, and what the ledger counts
    assert noise["noise_split"] == split and noise["accounted_sum_std"] == sigma * clip
    assert noise["sum_std"] ** 2 == pytest.approx(3 * (sigma * clip) ** 2 / split)
    assert noise["sum_std"] >= noise["accounted_sum_std"]
    assert isinstance(fed.ledger, CentralDPLedger) and fed.ledger.noise_multiplier == sigma
    assert fed.ledger.rounds == [(3, 3)] * rounds
    # the measured variance: n / var * sum(x^2) ~ chi2(n)
    n = draws.size
    lo, hi = stats.chi2.ppf([5e-7, 1 - 5e-7], n) / n
    ratio = float(np.mean(draws ** 2)) / noise["sum_std"] ** 2
    print(f"measured / expected variance {ratio:.3f}, 1e-6 interval [{lo:.3f}, {hi:.3f}], {n} draws")
    assert lo < ratio < hi, (ratio, lo, hi, n)
    if split == 3:  # m_min = n: the sum of the shares is the central noise the accountant counts, exactly
        assert float(np.mean(draws ** 2)) / (sigma * clip) ** 2 == pytest.approx(ratio)


def test_a_distributed_dp_audit_checks_both_attackers_against_the_ledgers_epsilon(defaults, task_identity):
    from qfl.audit.study import audit_setting
    from transport.dp import CentralDPLedger

    # Arrange: secure aggregation of 3 of 3 clients, 2 rounds, each node's share of sigma = 4
    pool = Pool.of_dataset("iris", 4, clients=3, seed=0)
    overrides = {**DISTRIBUTED, "local-epochs": 1, "learning-rate": 0.1, "dp-noise-multiplier": 4.0}
    ledger = CentralDPLedger(4.0, defaults["dp-delta"])
    ledger.record(3, 3)
    ledger.record(3, 3)
    # Act
    result = audit_setting(pool, defaults, overrides, models=4, rounds=2, seed=0, resamples=20)
    # Assert: the server sees the sums the ledger counts: its epsilon is the outsider's
    assert result["epsilon"] == pytest.approx(ledger.epsilon) and 0 < result["epsilon"] < 5
    assert result["server_epsilon"] == result["epsilon"]
    assert result["distributed_dp"]["participants"] == 3 and result["distributed_dp"]["noise_split"] == 2
    assert set(result["attackers"]) == {"outsider", "server"}
    for who, attacks in result["attackers"].items():
        assert set(attacks) == {"lira-online", "lira-offline", "loss"}
        for attack in attacks.values():
            check = attack["dp_check"]
            assert check["epsilon"] == result["epsilon"] and check["delta"] == defaults["dp-delta"], who
            assert not check["violated"], (who, attack)


def test_the_bench_audits_distributed_dp_at_central_dps_noise_multipliers(defaults):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "privacy_audit.py"
    spec = importlib.util.spec_from_file_location("privacy_audit_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    central = {s["dp-noise-multiplier"] for n, s in bench.SETTINGS.items() if n.startswith("central-")}
    distributed = {n: s for n, s in bench.SETTINGS.items() if n.startswith("distributed-")}
    assert {s["dp-noise-multiplier"] for s in distributed.values()} == central
    for settings in distributed.values():
        cfg = RunConfig.from_run_config({**defaults, **settings})  # secure aggregation with central DP: distributed DP
        assert cfg.uses_transport("secagg") and cfg.uses_transport("dp") and cfg.dp_mode == "central"
