"""The per-process task cache: what one Ray actor of the simulation engine keeps while it
serves thousands of clients in turn. It must stay bounded whatever the number of clients (no
model or data set per client), and give each client exactly the rows and the answer a task
built from scratch gives."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client.job import request
from client.local import CACHE_SIZE, DATA_CACHE_SIZE, LocalTask, TaskCache, answer
from qfl.common.config import NodeConfig, RunConfig
from qfl.task.build import build_dataset, build_model
from qfl.task.data import load_partition

CLIENTS = 60  # 180 training states of 240: three each, as in the scale experiments


@pytest.fixture
def tfim(defaults, tmp_path, monkeypatch):
    monkeypatch.setenv("QFL_CACHE_DIR", str(tmp_path / "cache"))
    run_config = {**defaults, "dataset": "tfim", "tfim-samples": 240, "batch-size": 4, "local-epochs": 1}
    return run_config, RunConfig.from_run_config(run_config)


def test_an_actors_cache_stays_bounded_however_many_clients_it_serves(tfim):
    _, cfg = tfim
    cache = TaskCache()
    tasks = [cache.get(cfg, NodeConfig(partition_id=p, num_partitions=CLIENTS)) for p in range(CLIENTS)]
    assert cache.sizes() == (CACHE_SIZE, 1, 1)  # 8 tasks; one data set and one split, shared
    # the tasks hold their own three rows, not the data set: nothing grows with the clients beyond their data
    assert all(len(t.y) == 3 and t.x.base is None for t in tasks)
    # other data sets and splits replace the least recently used, up to DATA_CACHE_SIZE of each
    for seed in (1, 2, 3):
        cache.get(cfg.replace(seed=seed), NodeConfig(partition_id=0, num_partitions=CLIENTS))
    assert cache.sizes() == (CACHE_SIZE, DATA_CACHE_SIZE, DATA_CACHE_SIZE)


def test_a_cached_clients_rows_and_reply_are_those_of_a_task_built_from_scratch(tfim, task_identity):
    run_config, cfg = tfim
    cache = TaskCache(size=2)
    data = build_dataset(cfg)
    arrays = ArrayRecord(build_model(cfg, data).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 3, "round-offset": 0})})
    for partition in (0, 17, 59, 17):  # 17 twice: the second time from the cache
        node = NodeConfig(partition_id=partition, num_partitions=CLIENTS)
        x, y = load_partition(data, partition, CLIENTS, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha)
        task = cache.get(cfg, node)
        assert np.array_equal(task.x, x) and np.array_equal(task.y, y)
        assert np.array_equal(LocalTask(cfg, node).x, x)  # the uncached path
        req = request("train", content, run_config, {"partition-id": partition, "num-partitions": CLIENTS})
        cached, fresh = answer(req, cache), answer(req)
        for name, values in fresh["arrays"].items():
            assert np.array_equal(cached["arrays"][name].numpy(), values.numpy()), name
        assert cached["metrics"]["num-examples"] == fresh["metrics"]["num-examples"] == len(y)
