"""TFIM ground states from the sparse Hamiltonian: the dense solution where both fit, the even,
positive ground state where the dense solver cannot resolve it, data sets that grow with n-qubits."""

from __future__ import annotations

import numpy as np
import pytest

from qfl.common.config import RunConfig
from qfl.task import tfim
from qfl.task.build import build_dataset
from qfl.task.data import load_dataset

FIELDS = (0.05, 0.3, 0.84, 1.16, 2.5)  # deep in the ordered phase to deep in the paramagnet


@pytest.mark.parametrize("n", [2, 4, 5])
def test_the_sparse_hamiltonian_is_the_dense_one(n):
    for h in (0.0, 0.7, 2.0):
        np.testing.assert_array_equal(tfim.tfim_hamiltonian_sparse(n, h, j=1.3).toarray(), tfim.tfim_hamiltonian(n, h, j=1.3))


@pytest.mark.parametrize("n", [4, 6])
@pytest.mark.parametrize("h", FIELDS)
def test_sparse_ground_state_equals_the_dense_one(n, h):
    dense = tfim.ground_state(n, h, method="dense")
    sparse = tfim.ground_state(n, h, method="sparse")
    ham = tfim.tfim_hamiltonian(n, h)
    assert abs(dense @ sparse) == pytest.approx(1.0, abs=1e-12)  # fidelity 1 (both sign-fixed, real)
    assert sparse @ ham @ sparse == pytest.approx(dense @ ham @ dense, abs=1e-10)
    assert sparse @ ham @ sparse == pytest.approx(np.linalg.eigvalsh(ham)[0], abs=1e-10)


def test_below_the_sparse_size_auto_is_the_dense_solver_bit_for_bit():
    """The states every existing (4-qubit) data set was built from do not change."""
    assert tfim.SPARSE_FROM_SPINS > 4
    for h in FIELDS:
        np.testing.assert_array_equal(tfim.ground_state(4, h), tfim.ground_state(4, h, method="dense"))


@pytest.mark.parametrize("h", [0.05, 0.84, 1.16, 2.5])
def test_a_12_spin_ground_state_is_the_even_positive_eigenvector(h):
    """At 12 spins and h = 0.05 the odd partner lies ~h^12 above the ground state, far below any
    solver's resolution: the state must still be the unique, flip-even, positive one."""
    n = 12
    psi = tfim.ground_state(n, h)
    np.testing.assert_array_equal(psi, tfim.ground_state(n, h, method="sparse"))
    np.testing.assert_array_equal(psi, tfim.ground_state(n, h))  # deterministic (seeded start vector)
    ham = tfim.tfim_hamiltonian_sparse(n, h)
    energy = psi @ ham @ psi
    assert np.linalg.norm(ham @ psi - energy * psi) < 1e-9  # an eigenvector
    assert np.linalg.norm(psi) == pytest.approx(1.0, abs=1e-12)
    assert psi.min() > 0  # Perron-Frobenius: the ground state is positive, hence the lowest state
    np.testing.assert_allclose(psi, psi[::-1], atol=1e-14)  # even under the flip of every spin
    zz, mx = tfim.magnetisation_observables(psi, n)
    assert (zz > mx) == (tfim.phase_label(h) == 0)


def test_a_12_qubit_tfim_set_follows_n_qubits_and_is_cached():
    cfg = RunConfig(dataset="tfim", n_qubits=12, tfim_samples=24, seed=4)
    data = build_dataset(cfg)
    assert data.kind == "states" and data.x_train.shape == (18, 2**12) and data.x_test.shape == (6, 2**12)
    np.testing.assert_allclose(np.linalg.norm(data.x_train, axis=1), 1.0, atol=1e-12)
    assert set(np.unique(data.y_train)) == {0, 1}
    np.testing.assert_array_equal(data.y_train, tfim.phase_label(data.h_train))
    fresh = load_dataset("tfim", n_qubits=12, seed=4, tfim_samples=24, cache=False)
    np.testing.assert_array_equal(data.x_train, fresh.x_train)  # cached == rebuilt from the seed
    for psi, h in zip(data.x_train[:3], data.h_train[:3], strict=True):
        np.testing.assert_array_equal(psi, tfim.ground_state(12, float(h)))


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="method must be"):
        tfim.ground_state(4, 1.0, method="lanczos")
