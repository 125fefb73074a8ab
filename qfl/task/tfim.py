"""Ground states of the transverse-field Ising chain, generated locally.

The Hamiltonian on a periodic chain of ``n`` spins is

.. math::

    H(h) = -J \\sum_{i=0}^{n-1} Z_i Z_{i+1} \\; - \\; h \\sum_{i=0}^{n-1} X_i,
    \\qquad Z_n \\equiv Z_0 .

In the thermodynamic limit the chain has a quantum phase transition at
:math:`h/J = 1`: ferromagnetic order for :math:`h < 1` (label 0) and a paramagnet
polarised along :math:`+x` for :math:`h > 1` (label 1). ``H(h) = D + h\\,X`` with
``D`` diagonal and ``X`` fixed, so both are built once and each ground state costs
one partial eigendecomposition.

Wire ordering follows PennyLane: qubit 0 is the most significant bit of the
computational-basis index.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.linalg import eigh

CRITICAL_FIELD = 1.0
# Field strengths the data set samples from; the open interval around the critical
# point is left out so that labels are physical, not finite-size artefacts.
H_RANGE = (0.05, 2.5)
H_GAP = (0.85, 1.15)


def _bonds(n: int) -> list[tuple[int, int]]:
    """Nearest-neighbour bonds of the periodic chain (a 2-spin ring has one bond)."""
    return [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]


@lru_cache(maxsize=8)
def _tfim_terms(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (diag of -sum Z_i Z_{i+1}, matrix of -sum X_i) for ``n`` spins."""
    dim = 2**n
    idx = np.arange(dim)
    # bit of qubit i (qubit 0 = most significant) -> spin z = +1 for |0>, -1 for |1>
    bits = (idx[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1
    z = 1 - 2 * bits
    zz = np.zeros(dim)
    for i, j in _bonds(n):
        zz += z[:, i] * z[:, j]
    x = np.zeros((dim, dim))
    for i in range(n):
        x[idx, idx ^ (1 << (n - 1 - i))] += 1.0
    return -zz, -x


def tfim_hamiltonian(n: int, h: float, j: float = 1.0) -> np.ndarray:
    """Dense Hamiltonian ``H(h)`` of shape ``(2**n, 2**n)`` (real symmetric)."""
    if n < 2:
        raise ValueError(f"n must be >= 2 spins, got {n}")
    diag, x = _tfim_terms(n)
    return j * np.diag(diag) + h * x


def ground_state(n: int, h: float, j: float = 1.0) -> np.ndarray:
    """Normalised ground state of ``H(h)``, shape ``(2**n,)``, real, sign-fixed.

    The sign is fixed so that the largest-magnitude amplitude is positive, which makes
    the state a deterministic function of ``(n, h, j)``.
    """
    _, vecs = eigh(tfim_hamiltonian(n, h, j), subset_by_index=[0, 0])
    psi = vecs[:, 0]
    psi = psi / np.linalg.norm(psi)
    return psi * np.sign(psi[np.argmax(np.abs(psi))])


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
    diag, x = _tfim_terms(n)
    zz = float(psi @ (-diag * psi)) / len(_bonds(n))
    mx = float(psi @ (-x @ psi)) / n
    return zz, mx
