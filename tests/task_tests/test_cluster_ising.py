"""The cluster-Ising data set: exact ground states, labels that agree with the published phase
diagram, a seeded and cached split, and a register too small refused by name."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

from qfl.task import cluster_ising as ci
from qfl.task.data import load_dataset, load_partition, num_classes, num_train_samples

PAULI = {"I": np.eye(2), "X": np.array([[0.0, 1.0], [1.0, 0.0]]), "Z": np.diag([1.0, -1.0])}
# points deep in each phase of Cong, Choi & Lukin (Nat. Phys. 2019), Fig. 2: (h1, h2) in units of J
DEEP = {
    ci.SPT: [(0.2, 0.0), (0.1, 0.5), (0.4, -0.5), (1.2, -0.7)],
    ci.PARAMAGNETIC: [(1.5, 0.5), (1.6, 0.3), (0.3, 1.4), (1.4, 1.4)],
    ci.ANTIFERROMAGNETIC: [(0.2, -1.5), (0.6, -1.5), (0.05, -1.3)],
}


def _dense_hamiltonian(n, h1, h2):
    """``H`` from Kronecker products of Pauli matrices (qubit 0 the leftmost factor)."""
    def term(ops):
        return reduce(np.kron, [PAULI[ops.get(i, "I")] for i in range(n)])

    h = -sum(term({i: "Z", i + 1: "X", i + 2: "Z"}) for i in range(n - 2))
    h = h - h1 * sum(term({i: "X"}) for i in range(n))
    return h - h2 * sum(term({i: "X", i + 1: "X"}) for i in range(n - 1))


@pytest.mark.parametrize("n", [3, 5])
def test_the_sparse_hamiltonian_is_the_pauli_sum(n):
    for h1, h2 in [(0.0, 0.0), (0.7, -1.3), (1.6, 0.4)]:
        np.testing.assert_allclose(ci.hamiltonian_sparse(n, h1, h2).toarray(), _dense_hamiltonian(n, h1, h2), atol=1e-14)


@pytest.mark.parametrize(("h1", "h2"), [(0.0, 0.0), (0.1, 0.0), (1.0, 0.0), (1.5, 0.5), (0.2, -1.5), (0.8, -1.0)])
def test_ground_states_are_normalised_eigenvectors_of_the_lowest_energy(h1, h2):
    n = 6
    psi = ci.ground_state(n, h1, h2)
    ham = _dense_hamiltonian(n, h1, h2)
    e0 = np.linalg.eigvalsh(ham)[0]  # the dense diagonalisation
    assert np.linalg.norm(psi) == pytest.approx(1.0, abs=1e-12)
    assert np.linalg.norm(ham @ psi - e0 * psi) < 1e-8
    assert psi @ ham @ psi == pytest.approx(e0, abs=1e-10)
    np.testing.assert_array_equal(psi, ci.ground_state(n, h1, h2))  # deterministic


def _product_state_along_x(signs):
    """The product of |+> (sign +1) and |-> (sign -1) states, qubit 0 first."""
    return reduce(np.kron, [np.array([1.0, float(s)]) / np.sqrt(2.0) for s in signs])


@pytest.mark.parametrize("n", [8, 9])
def test_order_parameters_of_the_reference_states(n):
    cluster = ci.ground_state(n, 0.0, 0.0)  # every stabiliser Z X Z is +1: the string is 1
    assert ci.order_parameters(cluster, n) == pytest.approx((1.0, 1.0 / n), abs=1e-9)
    neel = _product_state_along_x([(-1) ** i for i in range(n)])
    assert ci.order_parameters(neel, n) == pytest.approx((0.0, 1.0), abs=1e-12)
    polarised = _product_state_along_x([1] * n)
    assert ci.order_parameters(polarised, n) == pytest.approx((0.0, (n % 2) / n**2), abs=1e-12)


@pytest.mark.parametrize("n", [8, 10])
@pytest.mark.parametrize("phase", sorted(DEEP))
def test_labels_deep_in_each_phase_match_the_published_diagram(n, phase):
    for h1, h2 in DEEP[phase]:
        label = ci.phase_label(*ci.order_parameters(ci.ground_state(n, h1, h2), n))
        assert label == phase, (h1, h2)


@pytest.mark.parametrize("n", [8, 10])
def test_no_label_contradicts_the_exact_boundaries(n):
    """At h2 = 0 (dual to the Ising chain) SPT ends at h1 = J; at h1 -> 0 (free fermions) SPT
    lies in |h2| < J, AFM below -J, PM above J. A finite chain may leave a point near a boundary
    undecided, never put it on the wrong side."""
    def label(h1, h2):
        return ci.phase_label(*ci.order_parameters(ci.ground_state(n, h1, h2), n))

    for h1 in np.linspace(0.05, 1.6, 16):
        assert label(h1, 0.0) in ((ci.SPT, ci.UNDECIDED) if h1 < 1 else (ci.PARAMAGNETIC, ci.UNDECIDED)), h1
    for h2 in np.linspace(-1.6, 1.6, 17):
        allowed = ci.SPT if abs(h2) < 1 else ci.ANTIFERROMAGNETIC if h2 < 0 else ci.PARAMAGNETIC
        assert label(0.02, h2) in (allowed, ci.UNDECIDED), h2


def test_the_data_set_is_seeded_stratified_and_cached():
    data = load_dataset("cluster-ising", n_qubits=8, seed=3, tfim_samples=80)
    assert (data.kind, data.n_classes, num_classes("cluster-ising")) == ("states", 3, 3)
    assert len(data.y_train) == num_train_samples("cluster-ising", 0.25, 80) == 60 and len(data.y_test) == 20
    assert data.x_train.shape == (60, 256)
    np.testing.assert_allclose(np.linalg.norm(data.x_train, axis=1), 1.0, atol=1e-12)
    assert set(np.unique(data.y_train)) == {0, 1, 2}
    assert data.h_train.min() >= ci.H1_RANGE[0] and data.h_train.max() <= ci.H1_RANGE[1]
    fresh = load_dataset("cluster-ising", n_qubits=8, seed=3, tfim_samples=80, cache=False)
    np.testing.assert_array_equal(data.x_train, fresh.x_train)  # cache == fresh == the seed's set
    np.testing.assert_array_equal(data.y_test, fresh.y_test)
    other = load_dataset("cluster-ising", n_qubits=8, seed=4, tfim_samples=80, cache=False)
    assert not np.array_equal(data.y_train, other.y_train)
    share = np.bincount(data.y_test, minlength=3) / 20 - np.bincount(data.y_train, minlength=3) / 60
    assert np.abs(share).max() <= 0.1  # each phase in its share of the test split


def test_ten_dirichlet_clients_each_hold_states():
    data = load_dataset("cluster-ising", n_qubits=8, seed=1, tfim_samples=240)
    sizes = [len(load_partition(data, i, 10, "dirichlet", seed=1, alpha=0.5)[1]) for i in range(10)]
    assert sum(sizes) == len(data.y_train) and min(sizes) >= 1


@pytest.mark.parametrize("n_qubits", [4, 7])
def test_a_register_under_eight_qubits_is_refused_naming_the_key(n_qubits):
    with pytest.raises(ValueError, match="n-qubits >= 8"):
        load_dataset("cluster-ising", n_qubits=n_qubits, seed=0, tfim_samples=24, cache=False)


def test_h_range_gives_each_client_its_own_band_of_h1_and_too_few_qubits_are_refused_before_launch() -> None:
    from qfl.common.config import ConfigError, RunConfig, defaults
    from qfl.task.data import load_dataset, partition_indices
    from server.checks import check_run

    data = load_dataset("cluster-ising", 8, seed=3, tfim_samples=60)
    parts = partition_indices(data.y_train, 3, "h-range", seed=3, fields=data.h_train)
    bands = [(data.h_train[p].min(), data.h_train[p].max()) for p in parts]
    assert all(hi <= lo for (_, hi), (lo, _) in zip(bands, bands[1:]))  # contiguous, ordered bands of h1
    cfg = RunConfig.from_run_config({**defaults(), "dataset": "cluster-ising", "partitioner": "h-range", "n-qubits": 6})
    with pytest.raises(ConfigError) as err:
        check_run(cfg)
    assert err.value.key == "n-qubits" and ">= 8 qubits" in str(err.value)
