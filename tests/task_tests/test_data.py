"""Data sets and partitions: disjoint, covering, reproducible, skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest

from qfl.task import tfim
from qfl.task.data import load_dataset, load_partition, num_train_samples, partition_indices


@pytest.mark.parametrize(("name", "n_classes"), [("iris", 3), ("wine", 3), ("breast-cancer", 2), ("digits", 4), ("tfim", 2)])
def test_datasets_are_prepared(name, n_classes):
    data = load_dataset(name, n_qubits=4, seed=7, tfim_samples=64)
    assert data.n_classes == n_classes
    assert len(data.y_train) == num_train_samples(name, 0.25, 64)
    assert set(np.unique(data.y_train)) == set(range(n_classes))
    if name == "tfim":
        assert data.x_train.shape[1] == 16
        np.testing.assert_allclose(np.linalg.norm(data.x_train, axis=1), 1.0, atol=1e-12)
    else:
        assert data.x_train.shape[1] == 4
        assert data.x_train.min() >= 0.0 and data.x_train.max() <= np.pi + 1e-12
    again = load_dataset(name, n_qubits=4, seed=7, tfim_samples=64, cache=False)
    np.testing.assert_array_equal(data.x_test, again.x_test)  # cache == fresh


def test_fewer_features_than_qubits_repeat_cyclically():
    data = load_dataset("iris", n_qubits=6, seed=0)
    np.testing.assert_array_equal(data.x_train[:, 4:6], data.x_train[:, 0:2])


def _check_partition(parts, n):
    flat = np.concatenate(parts)
    assert len(flat) == n and len(np.unique(flat)) == n  # disjoint and covering
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_partitions_disjoint_covering_reproducible(method):
    labels = np.repeat(np.arange(3), 40)
    parts = partition_indices(labels, 5, method, seed=11, alpha=0.5)
    _check_partition(parts, len(labels))
    again = partition_indices(labels, 5, method, seed=11, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(labels, 5, method, seed=12, alpha=0.5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def _label_skew(labels, parts, n_classes):
    """Mean total-variation distance between client label mix and global mix."""
    glob = np.bincount(labels, minlength=n_classes) / len(labels)
    return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=n_classes) / len(p) - glob).sum() for p in parts])


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(3), 100)
    iid = _label_skew(labels, partition_indices(labels, 6, "iid", seed=0), 3)
    mild = _label_skew(labels, partition_indices(labels, 6, "dirichlet", seed=0, alpha=100.0), 3)
    strong = _label_skew(labels, partition_indices(labels, 6, "dirichlet", seed=0, alpha=0.1), 3)
    assert iid < 0.1 and mild < 0.15
    assert strong > 0.35 > mild


def test_h_range_gives_each_client_its_own_field_range():
    data = load_dataset("tfim", n_qubits=4, seed=3, tfim_samples=96)
    parts = partition_indices(data.y_train, 4, "h-range", seed=3, fields=data.h_train)
    _check_partition(parts, len(data.y_train))
    ranges = [(data.h_train[p].min(), data.h_train[p].max()) for p in parts]
    assert all(hi_prev <= lo_next for (_, hi_prev), (lo_next, _) in zip(ranges, ranges[1:]))
    # the lowest range is all ordered phase, the highest all paramagnetic
    assert set(data.y_train[parts[0]]) == {0} and set(data.y_train[parts[-1]]) == {1}


def test_more_partitions_than_samples_is_an_error():
    with pytest.raises(ValueError, match="exceeds the 10 training samples"):
        partition_indices(np.zeros(10, dtype=int), 11, "iid", seed=0)


def test_load_partition_returns_that_clients_rows():
    data = load_dataset("wine", n_qubits=4, seed=1)
    x, y = load_partition(data, 2, 4, "iid", seed=1, alpha=0.5)
    idx = partition_indices(data.y_train, 4, "iid", seed=1)[2]
    np.testing.assert_array_equal(x, data.x_train[idx])
    np.testing.assert_array_equal(y, data.y_train[idx])


@pytest.mark.parametrize("n", [4, 6])
def test_tfim_ground_states_normalised_and_phases_right(n):
    ordered = tfim.ground_state(n, 0.2)
    para = tfim.ground_state(n, 5.0)
    for psi, h in ((ordered, 0.2), (para, 5.0)):
        assert np.linalg.norm(psi) == pytest.approx(1.0, abs=1e-12)
        ham = tfim.tfim_hamiltonian(n, h)
        energy = psi @ ham @ psi
        assert energy == pytest.approx(np.linalg.eigvalsh(ham)[0], abs=1e-9)  # a ground state
    zz_o, mx_o = tfim.magnetisation_observables(ordered, n)
    zz_p, mx_p = tfim.magnetisation_observables(para, n)
    assert zz_o > 0.95 and mx_o < 0.2  # ferromagnetic order along z
    assert mx_p > 0.95 and zz_p < 0.2  # polarised along x (ZZ ~ J/2h)
    assert tfim.phase_label(0.2) == 0 and tfim.phase_label(5.0) == 1


def test_tfim_fields_avoid_the_critical_window():
    h = tfim.sample_fields(2000, np.random.default_rng(0))
    lo, hi = tfim.H_GAP
    assert not np.any((h > lo) & (h < hi))
    assert h.min() >= tfim.H_RANGE[0] and h.max() <= tfim.H_RANGE[1]


def test_digits_keep_classes_zero_to_three_with_a_test_set_large_enough_to_decide():
    data = load_dataset("digits", n_qubits=4, seed=1)
    assert len(data.y_test) == 180 and len(data.y_train) + len(data.y_test) == 720
    assert np.bincount(data.y_test).min() >= 40  # stratified: every class well represented
