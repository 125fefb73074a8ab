"""Flower Datasets' partitioners by name (partitioner = "flower:<Class>[:options]")."""

from __future__ import annotations

import numpy as np
import pytest

from qfl.common.config import ConfigError, RunConfig, defaults
from qfl.task.data import partition_indices

pytest.importorskip("flwr_datasets", reason="the data extra: pip install 'qfl[data]'")

LABELS = np.repeat(np.arange(4), 25)  # 100 rows, 4 classes


def covers_once(parts: list[np.ndarray], n: int) -> bool:
    rows = np.concatenate(parts)
    return len(rows) == n and len(np.unique(rows)) == n


def test_iid_partitioner_cuts_every_row_once_into_equal_parts() -> None:
    parts = partition_indices(LABELS, 5, "flower:IidPartitioner", seed=1)
    assert covers_once(parts, 100) and [len(p) for p in parts] == [20] * 5


def test_pathological_partitioner_gives_each_partition_its_options_number_of_classes() -> None:
    parts = partition_indices(LABELS, 4, "flower:PathologicalPartitioner:num-classes-per-partition=1,"
                                         "class-assignment-mode=deterministic", seed=1)
    assert covers_once(parts, 100)
    assert sorted(len(np.unique(LABELS[p])) for p in parts) == [1, 1, 1, 1]


@pytest.mark.filterwarnings("ignore:The specified min_partition_size:UserWarning")  # Flower redraws, and says so
def test_dirichlet_partitioner_is_seeded_by_the_run_seed() -> None:
    spec = "flower:DirichletPartitioner:alpha=0.3,min-partition-size=2"
    first = partition_indices(LABELS, 4, spec, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, partition_indices(LABELS, 4, spec, seed=7)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, partition_indices(LABELS, 4, spec, seed=8)))


@pytest.mark.parametrize(("spec", "words"), [
    ("flower:NoSuchPartitioner", ["no partitioner 'NoSuchPartitioner'", "DirichletPartitioner"]),
    ("flower:DirichletPartitioner", ["flower:DirichletPartitioner", "alpha"]),  # a required option missing
    ("flower:ShardPartitioner:num-shards-per-partition", ["is not key=value"]),
])
def test_a_bad_flower_partitioner_is_named(spec, words) -> None:  # noqa: ANN001
    with pytest.raises(ValueError) as err:
        partition_indices(LABELS, 4, spec, seed=1)
    for word in words:
        assert word in str(err.value)


def test_the_run_config_takes_flower_names_and_refuses_others() -> None:
    assert RunConfig.from_run_config({**defaults(), "partitioner": "flower:IidPartitioner"}).partitioner == "flower:IidPartitioner"
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config({**defaults(), "partitioner": "shards"})
    assert err.value.key == "partitioner"
