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
