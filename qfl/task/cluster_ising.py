"""Ground states of the cluster-Ising chain, generated locally and labelled by phase.

The Hamiltonian of Cong, Choi & Lukin ("Quantum convolutional neural networks", Nature
Physics 15, 1273, 2019) on an open chain of ``n`` spins is

.. math::

    H(h_1, h_2) = -J \\sum_{i=0}^{n-3} Z_i X_{i+1} Z_{i+2}
                  \\; - \\; h_1 \\sum_{i=0}^{n-1} X_i
                  \\; - \\; h_2 \\sum_{i=0}^{n-2} X_i X_{i+1} .

Its ground states over the paper's plane :math:`h_1/J \\in [0, 1.6]`,
:math:`h_2/J \\in [-1.6, 1.6]` lie in three phases: the :math:`\\mathbb{Z}_2 \\times
\\mathbb{Z}_2` symmetry-protected topological (SPT) phase of the cluster state, a paramagnet
(PM) and an antiferromagnet (AFM, Néel order along :math:`x`). Where the boundaries are known
exactly the paper's DMRG curves pass through them: at :math:`h_2 = 0` the model is dual to the
transverse-field Ising chain (SPT for :math:`h_1 < J`, PM above), and at :math:`h_1 = 0` it is
free fermions (SPT for :math:`|h_2| < J`, PM above, AFM below :math:`h_2 = -J`; Smacchia et al.,
PRA 84, 022304, 2011).

Each state is labelled by two order parameters computed on it (:func:`order_parameters`):

- the string order parameter of the SPT phase,
  :math:`S = \\langle Z_a X_{a+1} X_{a+3} \\cdots X_{b-1} Z_b \\rangle` (the paper's
  :math:`S_{ab}`), with :math:`a = 1` and :math:`b` the last site before the right edge with
  :math:`b - a` even: 1 in the cluster state, 0 in a product state along :math:`x`;
- the staggered magnetisation along :math:`x`,
  :math:`M = \\langle m_s^2 \\rangle`, :math:`m_s = \\frac{1}{n} \\sum_i (-1)^i X_i`: 1 in a
  Néel state, 0 in the polarised paramagnet, :math:`1/n` in the cluster state;

and the rule (:func:`phase_label`): SPT if :math:`S \\ge 0.6` and :math:`M < 0.5`; AFM if
:math:`M \\ge 0.75` and :math:`S < 0.5`; PM if :math:`S \\le 0.15` and :math:`M \\le 0.3`;
otherwise the point is near a boundary, where a finite chain's order parameters cross over
smoothly, and the data set draws another (as the TFIM set leaves a window around its critical
point out). The thresholds were chosen at 8 to 12 spins so that no label contradicts the exact
boundaries above (``tests/task_tests/test_cluster_ising.py``).

The ground state comes from sparse Lanczos (:func:`scipy.sparse.linalg.eigsh`) from a start
vector seeded by ``n`` alone, so it is a deterministic function of ``(n, h1, h2, J)``. With open
ends the SPT ground state is 4-fold degenerate up to a splitting that closes exponentially with
``n`` (the edge spins), the AFM one 2-fold: the solver returns a vector of that low manifold
(residual at most the splitting), which the bulk order parameters do not tell apart. Wire
ordering follows PennyLane: qubit 0 is the most significant bit of the basis index.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import eigsh

MIN_SPINS = 8  # the string spans the bulk only from here: at fewer spins it touches both edges
H1_RANGE = (0.0, 1.6)  # the paper's plane, in units of J
H2_RANGE = (-1.6, 1.6)
PARAMAGNETIC, SPT, ANTIFERROMAGNETIC = 0, 1, 2
NUM_CLASSES = 3
UNDECIDED = -1  # near a boundary: no label
SPT_MIN_STRING, SPT_MAX_STAGGERED = 0.6, 0.5
AFM_MIN_STAGGERED, AFM_MAX_STRING = 0.75, 0.5
PM_MAX_STRING, PM_MAX_STAGGERED = 0.15, 0.3
MAX_DRAWS_PER_SAMPLE = 20  # about a fifth of the plane is undecided at 8-12 spins
LANCZOS_TOL = 1e-12


def _spins(n: int) -> np.ndarray:
    """``z[k, i]``: the Z eigenvalue (+1 for |0>, -1 for |1>) of qubit ``i`` in basis state ``k``."""
    idx = np.arange(2**n)
    return 1 - 2 * ((idx[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1)


def _bit(n: int, qubit: int) -> int:
    return 1 << (n - 1 - qubit)


@lru_cache(maxsize=4)
def _terms(n: int) -> tuple[sparse.csr_array, sparse.csr_array, sparse.csr_array]:
    """``(-sum Z X Z, -sum X, -sum X X)`` as sparse matrices of ``n`` spins."""
    dim = 2**n
    idx = np.arange(dim)
    z = _spins(n)

    def matrix(flips: list[int], signs: list[np.ndarray]) -> sparse.csr_array:
        rows = np.tile(idx, len(flips))
        cols = np.concatenate([idx ^ f for f in flips])
        return sparse.csr_array((-np.concatenate(signs).astype(float), (rows, cols)), shape=(dim, dim))

    ones = np.ones(dim)
    zxz = matrix([_bit(n, i + 1) for i in range(n - 2)], [z[:, i] * z[:, i + 2] for i in range(n - 2)])
    x = matrix([_bit(n, i) for i in range(n)], [ones] * n)
    xx = matrix([_bit(n, i) | _bit(n, i + 1) for i in range(n - 1)], [ones] * (n - 1))
    return zxz, x, xx


def hamiltonian_sparse(n: int, h1: float, h2: float, j: float = 1.0) -> sparse.csr_array:
    """Sparse ``H(h1, h2)`` of ``n`` spins, ``(2**n, 2**n)``, real symmetric.

    Examples
    --------
    >>> hamiltonian_sparse(3, 0.0, 0.0).toarray().shape
    (8, 8)
    """
    if n < 3:
        raise ValueError(f"n must be >= 3 spins (one Z X Z term), got {n}")
    zxz, x, xx = _terms(n)
    return (j * zxz + h1 * x + h2 * xx).tocsr()


def ground_state(n: int, h1: float, h2: float, j: float = 1.0) -> np.ndarray:
    """Normalised ground state of ``H(h1, h2)``, shape ``(2**n,)``, real, sign-fixed (its
    largest-magnitude amplitude positive)."""
    v0 = np.random.default_rng([n, 0xC1A5]).uniform(0.5, 1.5, size=2**n)
    _, vecs = eigsh(hamiltonian_sparse(n, h1, h2, j), k=1, which="SA", v0=v0, tol=LANCZOS_TOL)
    psi = vecs[:, 0] / np.linalg.norm(vecs[:, 0])
    return psi * np.sign(psi[np.argmax(np.abs(psi))])


def string_ends(n: int) -> tuple[int, int]:
    """``(a, b)`` of the string order parameter: ``a = 1``, ``b`` the last site before the right
    edge with ``b - a`` even."""
    b = n - 2 if (n - 3) % 2 == 0 else n - 3
    return 1, b


def order_parameters(psi: np.ndarray, n: int) -> tuple[float, float]:
    """``(S, M)``: the string order parameter and the mean squared staggered magnetisation along
    ``x`` of a real state of ``n`` spins (module doc)."""
    a, b = string_ends(n)
    z = _spins(n)
    idx = np.arange(2**n)
    mask = sum(_bit(n, q) for q in range(a + 1, b, 2))
    # Z_a X..X Z_b |k> = z_a(k) z_b(k) |k ^ mask>: the X sites and the Z sites differ
    string = float(np.sum(psi[idx ^ mask] * z[:, a] * z[:, b] * psi))
    phi = psi.reshape((2,) * n)
    hadamard = np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)
    for q in range(n):  # to the x basis, where X_i is diagonal with eigenvalue z[:, i]
        phi = np.moveaxis(np.tensordot(hadamard, phi, axes=([1], [q])), 0, q)
    staggered = (z * (-1) ** np.arange(n)).sum(axis=1) / n
    return string, float(phi.ravel() ** 2 @ staggered**2)


def phase_label(string: float, staggered: float) -> int:
    """:data:`SPT`, :data:`ANTIFERROMAGNETIC`, :data:`PARAMAGNETIC` or :data:`UNDECIDED` from the
    order parameters (the rule of the module doc)."""
    if string >= SPT_MIN_STRING and staggered < SPT_MAX_STAGGERED:
        return SPT
    if staggered >= AFM_MIN_STAGGERED and string < AFM_MAX_STRING:
        return ANTIFERROMAGNETIC
    if string <= PM_MAX_STRING and staggered <= PM_MAX_STAGGERED:
        return PARAMAGNETIC
    return UNDECIDED


def cluster_ising_dataset(
    n: int, num: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(states (num, 2**n), fields (num, 2) of (h1, h2), labels (num,))``.

    Points are drawn uniformly from the plane :data:`H1_RANGE` x :data:`H2_RANGE`, in order;
    one whose label is :data:`UNDECIDED` is replaced by the next draw.
    """
    if n < MIN_SPINS:
        raise ValueError(f"the cluster-Ising set needs n >= {MIN_SPINS} spins, got {n}")
    states, fields, labels = [], [], []
    for _ in range(MAX_DRAWS_PER_SAMPLE * num):
        h1, h2 = rng.uniform(H1_RANGE[0], H1_RANGE[1]), rng.uniform(H2_RANGE[0], H2_RANGE[1])
        psi = ground_state(n, h1, h2)
        label = phase_label(*order_parameters(psi, n))
        if label != UNDECIDED:
            states.append(psi)
            fields.append((h1, h2))
            labels.append(label)
            if len(labels) == num:
                return np.stack(states), np.asarray(fields), np.asarray(labels, dtype=np.int64)
    raise ValueError(f"only {len(labels)} of {num} points labelled in {MAX_DRAWS_PER_SAMPLE * num} draws")
