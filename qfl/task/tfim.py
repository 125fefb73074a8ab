"""Ground states of the transverse-field Ising chain, generated locally.

The Hamiltonian on a periodic chain of ``n`` spins is

.. math::

    H(h) = -J \\sum_{i=0}^{n-1} Z_i Z_{i+1} \\; - \\; h \\sum_{i=0}^{n-1} X_i,
    \\qquad Z_n \\equiv Z_0 .

In the thermodynamic limit the chain has a quantum phase transition at
:math:`h/J = 1`: ferromagnetic order for :math:`h < 1` (label 0) and a paramagnet
polarised along :math:`+x` for :math:`h > 1` (label 1). ``H(h) = D + h\\,X`` with
``D`` diagonal and ``X`` fixed, so both are built once and each ground state costs
one partial eigendecomposition: dense (:func:`scipy.linalg.eigh`) below
:data:`SPARSE_FROM_SPINS` spins, sparse Lanczos (:func:`scipy.sparse.linalg.eigsh`) from
there, where the dense matrix (``8 * 4**n`` bytes: 134 MB at 12 spins, 34 GB at 16) and its
:math:`O(8^n)` decomposition no longer fit.

The ground state of the finite periodic chain is unique for :math:`h > 0` and even under the
spin flip :math:`P = \\prod_i X_i` (Perron-Frobenius: in the computational basis ``H`` has
non-positive off-diagonal entries and connects every basis state, so its ground state has
strictly positive amplitudes). In the ordered phase its odd partner lies only
:math:`\\sim h^n` above it, below Lanczos's resolution at small ``h`` and large ``n``, so the
sparse solver starts from an even vector and projects its result back onto the even sector,
:math:`\\psi \\to (1 + P)\\psi / \\lVert (1 + P)\\psi \\rVert`. ``P`` reverses the amplitude
vector (it flips every bit of the basis index).

Wire ordering follows PennyLane: qubit 0 is the most significant bit of the
computational-basis index.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import sparse
from scipy.linalg import eigh
from scipy.sparse.linalg import eigsh

CRITICAL_FIELD = 1.0
# Field strengths the data set samples from; the open interval around the critical
# point is left out so that labels are physical, not finite-size artefacts.
H_RANGE = (0.05, 2.5)
H_GAP = (0.85, 1.15)
# From this many spins ground states come from the sparse Hamiltonian (below it the dense
# solver, whose states every existing data set was built from, is kept bit for bit).
SPARSE_FROM_SPINS = 12
LANCZOS_TOL = 1e-12  # eigsh's relative accuracy of the eigenvalue (0 would mean machine precision)


def _bonds(n: int) -> list[tuple[int, int]]:
    """Nearest-neighbour bonds of the periodic chain (a 2-spin ring has one bond)."""
    return [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]


@lru_cache(maxsize=8)
def _tfim_terms(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (diag of -sum Z_i Z_{i+1}, matrix of -sum X_i) for ``n`` spins."""
    dim = 2**n
    idx = np.arange(dim)
    x = np.zeros((dim, dim))
    for i in range(n):
        x[idx, idx ^ (1 << (n - 1 - i))] += 1.0
    return _zz_diagonal(n), -x


@lru_cache(maxsize=8)
def _zz_diagonal(n: int) -> np.ndarray:
    """The diagonal of :math:`-\\sum_i Z_i Z_{i+1}`, shape ``(2**n,)``."""
    idx = np.arange(2**n)
    # bit of qubit i (qubit 0 = most significant) -> spin z = +1 for |0>, -1 for |1>
    bits = (idx[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1
    z = 1 - 2 * bits
    zz = np.zeros(2**n)
    for i, j in _bonds(n):
        zz += z[:, i] * z[:, j]
    return -zz


@lru_cache(maxsize=4)
def _transverse_sparse(n: int) -> sparse.csr_array:
    """:math:`-\\sum_i X_i` as a sparse matrix: ``n`` entries ``-1`` per row (``X_i`` flips bit
    ``n - 1 - i`` of the basis index), 17 MB at 16 spins."""
    dim = 2**n
    idx = np.arange(dim)
    rows = np.repeat(idx, n)
    cols = (idx[:, None] ^ (1 << (n - 1 - np.arange(n)))[None, :]).ravel()
    return sparse.csr_array((np.full(dim * n, -1.0), (rows, cols)), shape=(dim, dim))


def tfim_hamiltonian(n: int, h: float, j: float = 1.0) -> np.ndarray:
    """Dense Hamiltonian ``H(h)`` of shape ``(2**n, 2**n)`` (real symmetric)."""
    if n < 2:
        raise ValueError(f"n must be >= 2 spins, got {n}")
    diag, x = _tfim_terms(n)
    return j * np.diag(diag) + h * x


def tfim_hamiltonian_sparse(n: int, h: float, j: float = 1.0) -> sparse.csr_array:
    """Sparse Hamiltonian ``H(h)``, ``(2**n, 2**n)`` with ``n + 1`` entries per row."""
    if n < 2:
        raise ValueError(f"n must be >= 2 spins, got {n}")
    return (j * sparse.diags_array(_zz_diagonal(n)) + h * _transverse_sparse(n)).tocsr()


def ground_state(n: int, h: float, j: float = 1.0, method: str = "auto") -> np.ndarray:
    """Normalised ground state of ``H(h)``, shape ``(2**n,)``, real, sign-fixed.

    ``method``: ``"dense"`` (full matrix, :func:`scipy.linalg.eigh`), ``"sparse"``
    (:func:`scipy.sparse.linalg.eigsh`, Lanczos from a seeded even start vector, then the even
    projection of the module doc) or ``"auto"``: sparse from :data:`SPARSE_FROM_SPINS` spins.
    The sign is fixed so that the largest-magnitude amplitude is positive, which makes
    the state a deterministic function of ``(n, h, j)``.
    """
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    if method == "sparse" or method == "auto" and n >= SPARSE_FROM_SPINS:
        psi = _sparse_ground_state(n, h, j)
    else:
        _, vecs = eigh(tfim_hamiltonian(n, h, j), subset_by_index=[0, 0])
        psi = vecs[:, 0]
    psi = psi / np.linalg.norm(psi)
    return psi * np.sign(psi[np.argmax(np.abs(psi))])


def _sparse_ground_state(n: int, h: float, j: float) -> np.ndarray:
    """Lowest eigenvector of the sparse ``H(h)`` in the even sector (unnormalised)."""
    # a fixed seed: the start vector, hence the state to the last bit, depends on (n, h, j) only
    v0 = np.random.default_rng([n, 0x7F1A]).uniform(0.5, 1.5, size=2**n)
    v0 = v0 + v0[::-1]  # even under P: Lanczos stays away from the near-degenerate odd state
    _, vecs = eigsh(tfim_hamiltonian_sparse(n, h, j), k=1, which="SA", v0=v0, tol=LANCZOS_TOL)
    psi = vecs[:, 0]
    return psi + psi[::-1]  # (1 + P) psi: rounding's odd part removed


def phase_label(h: float | np.ndarray) -> np.ndarray:
    """0 for the ordered phase (h < 1), 1 for the paramagnetic phase (h > 1)."""
    return (np.asarray(h) > CRITICAL_FIELD).astype(np.int64)


def sample_fields(num: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``num`` field strengths uniformly from ``H_RANGE`` minus ``H_GAP``."""
    lo, hi = H_RANGE
    g_lo, g_hi = H_GAP
    width_low, width_high = g_lo - lo, hi - g_hi
    u = rng.uniform(0.0, width_low + width_high, size=num)
    return np.where(u < width_low, lo + u, g_hi + (u - width_low))


def tfim_dataset(
    n: int, num: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(states (num, 2**n), fields (num,), labels (num,))``."""
    fields = sample_fields(num, rng)
    states = np.stack([ground_state(n, float(h)) for h in fields])
    return states, fields, phase_label(fields)


def magnetisation_observables(psi: np.ndarray, n: int) -> tuple[float, float]:
    """Return (mean nearest-neighbour <Z_i Z_i+1>, mean <X_i>) of a state."""
    zz = float(psi @ (-_zz_diagonal(n) * psi)) / len(_bonds(n))
    mx = float(psi @ (-(_transverse_sparse(n) @ psi))) / n
    return zz, mx
