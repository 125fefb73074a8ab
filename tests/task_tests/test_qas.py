"""The per-client circuit search: seeded, on budget, and never a circuit the device cannot run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qfl.task.architecture import CircuitSpec, SearchSpace, parse_space
from qfl.task.profiles import get_profile
from qfl.task.qas import cached_search, circuit_scores, depth_for_device, search, split_validation


def _data(rows: int = 24, qubits: int = 3, seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, np.pi, size=(rows, qubits))
    return split_validation(x, (x[:, 0] > np.pi / 2).astype(np.int64), seed)


def _deeper_is_better(calls: list):  # noqa: ANN202
    """A stand-in for the short training: loss falls with depth, so only the limits hold it back."""
    def train(spec, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append(spec)
        return 1.0 / spec.layers + (0.1 if spec.entangler == "none" else 0.0)
    return train


def test_the_search_is_deterministic_for_a_seed():
    # Arrange: the real short training on a small task
    space, data, device = SearchSpace(max_layers=3), _data(), get_profile("ibm-heron", 3)

    # Act
    runs = [search(space, data, 2, "angles", device, n_trials=4, seed=11, batch_size=8) for _ in range(2)]
    other = search(space, data, 2, "angles", device, n_trials=4, seed=12, batch_size=8)

    # Assert
    assert runs[0] == runs[1]
    assert [t["label"] for t in other.trials] != [t["label"] for t in runs[0].trials]


@pytest.mark.parametrize("budget", [1, 5, 9])
def test_the_search_spends_exactly_its_budget(budget):
    calls: list = []
    result = search(SearchSpace(max_layers=4), _data(), 2, "angles", None, n_trials=budget, seed=0,
                    train=_deeper_is_better(calls))
    assert len(result.trials) == budget
    assert len(set(calls)) == len(calls) <= budget  # a circuit proposed twice is scored once


def test_never_a_circuit_over_the_depth_limit():
    # Arrange: the device's routed depth limit lets only shallow circuits through
    device = get_profile("noisy-nisq", 3)
    limit = circuit_scores(CircuitSpec(2), 3, 2, "angles", device).depth
    space = SearchSpace(max_layers=5, max_depth=limit)
    calls: list = []

    # Act
    result = search(space, _data(), 2, "angles", device, n_trials=12, seed=3, train=_deeper_is_better(calls))

    # Assert: nothing deeper was trained or chosen, and the pruned trials count against the budget
    assert result.scores.depth <= limit
    assert all(circuit_scores(spec, 3, 2, "angles", device).depth <= limit for spec in calls)
    assert len(result.trials) == 12 and any(t["objective"] is None for t in result.trials)


def test_never_a_register_the_device_does_not_have():
    small = dataclasses.replace(get_profile("ideal"), name="two-qubit", n_qubits=2)
    with pytest.raises(ValueError, match="has 2 qubits"):
        search(SearchSpace(max_layers=2), _data(qubits=3), 2, "angles", small, n_trials=2, seed=0,
               train=_deeper_is_better([]))
    with pytest.raises(ValueError, match="has 2 qubits"):
        depth_for_device(CircuitSpec(3), 3, 2, "angles", small, 0.5)


def test_every_circuit_over_the_limit_is_refused_by_name():
    with pytest.raises(ValueError, match="max-depth 1"):
        search(SearchSpace(max_layers=2, max_depth=1), _data(), 2, "angles", None, n_trials=3, seed=0,
               train=_deeper_is_better([]))


def test_a_cleaner_device_affords_a_deeper_circuit():
    depths = [depth_for_device(CircuitSpec(6), 4, 3, "angles", get_profile(name, 4), 0.5).layers
              for name in ("ideal", "ibm-heron", "noisy-nisq")]
    assert depths[0] == 6 and depths[0] >= depths[1] > depths[2] == 1


def test_the_choice_is_kept_and_searched_again_when_the_device_changes(tmp_path):
    # Arrange
    x, y = np.ones((6, 3)), np.arange(6) % 2
    calls: list = []

    def run():  # noqa: ANN202
        calls.append(1)
        return search(SearchSpace(max_layers=2), _data(), 2, "angles", None, n_trials=2, seed=0,
                      train=_deeper_is_better([]))

    # Act
    first, cached_first = cached_search(tmp_path, get_profile("ibm-heron", 3), x, y, {"trials": 2}, run)
    again, cached_again = cached_search(tmp_path, get_profile("ibm-heron", 3), x, y, {"trials": 2}, run)
    _, cached_moved = cached_search(tmp_path, get_profile("ibm-heron:p2=0.01", 3), x, y, {"trials": 2}, run)
    _, cached_data = cached_search(tmp_path, get_profile("ibm-heron", 3), x + 1, y, {"trials": 2}, run)

    # Assert
    assert (cached_first, cached_again, cached_moved, cached_data) == (False, True, False, False)
    assert again == first and len(calls) == 3


def test_the_declared_space_is_parsed_and_checked():
    assert parse_space("{}", 4).size == 4 * 3 * 3 * 2
    assert parse_space('{ entanglers = ["line"], reuploads = [true], min-layers = 2 }', 4).size == 3 * 3
    with pytest.raises(ValueError, match="unknown key"):
        parse_space("{ depth = 3 }", 4)
    with pytest.raises(ValueError, match="entanglers"):
        parse_space('{ entanglers = ["star"] }', 4)
