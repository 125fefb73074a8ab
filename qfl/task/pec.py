r"""Probabilistic error cancellation (PEC) for the simulated devices' Pauli noise.

Temme, Bravyi & Gambetta, PRL 119, 180509 (2017); Endo, Benjamin & Li, PRX 8, 031027 (2018).

Every gate of a device profile is followed by a Pauli channel
:math:`\Lambda(\rho) = \sum_a p_a P_a \rho P_a` (:mod:`qfl.task.noise`). Its Pauli transfer
matrix is diagonal, with eigenvalue on the Pauli :math:`P_b`

.. math::

    \lambda_b = \sum_a p_a\, \chi_{ab}, \qquad
    \chi_{ab} = \begin{cases} +1 & P_a P_b = P_b P_a \\ -1 & \text{otherwise,} \end{cases}

so its inverse is the Pauli-diagonal map with eigenvalues :math:`1/\lambda_b`, which is again a
combination of Pauli conjugations, now with quasi-probabilities (a Walsh-Hadamard transform,
closed form for any Pauli channel on :math:`k` qubits):

.. math::

    \Lambda^{-1}(\rho) = \sum_a q_a P_a \rho P_a, \qquad
    q_a = 4^{-k} \sum_b \chi_{ab} / \lambda_b, \qquad
    \gamma = \sum_a |q_a| \ge 1 .

For depolarizing noise this is mitiq's ``represent_operation_with_global_depolarizing_noise``
(the optimal representation, Takagi 2020); ``tests/task_tests/test_pec.py`` checks the two agree.
The ideal gate :math:`\mathcal U = \Lambda^{-1}\circ\Lambda\circ\mathcal U` is then
:math:`\sum_a q_a\, \mathcal P_a \circ \Lambda \circ \mathcal U`: the noisy gate followed by a
Pauli :math:`P_a` (a Pauli channel commutes with Pauli conjugation, so the Pauli may sit on
either side of the noise; as in Temme et al. and mitiq, the appended Pauli is taken as
noiseless: merged into the gate, or tracked in software as a Pauli frame).

Monte-Carlo (Temme et al., Endo et al.): for each gate :math:`g` draw :math:`a` with probability
:math:`|q_a|/\gamma_g`, run the circuit with the drawn Paulis and weigh its value by
:math:`\gamma\, \prod_g \operatorname{sign}(q_{a_g})`, :math:`\gamma = \prod_g \gamma_g`. The
weighted value is an unbiased estimate of the noiseless expectation; its second moment is at
most :math:`\gamma^2` (each sample's value lies in :math:`[-1, 1]`), so it needs about
:math:`\gamma^2` times the samples of an unmitigated estimate for the same precision (Endo et
al.): ``pec-gamma2`` is :math:`\gamma^2`.

Read-out: a symmetric bit flip before measuring :math:`Z` has eigenvalue :math:`1 - 2p_{ro}` on
:math:`Z`; its quasi-probability inverse (:math:`\gamma_{ro} = 1/(1 - 2p_{ro})`) applied to a
single-qubit :math:`Z` read-out gives exactly the value rescaled by :math:`1/(1-2p_{ro})` in
every sample, so the model rescales (same estimator, no draws). Shot noise is not a bias and
stays; :math:`\gamma_{ro}^2` multiplies its variance, and is part of :func:`circuit_gamma`.
Not covered: the non-Pauli part of amplitude damping, which the profiles' noise model already
drops (it twirls relaxation, ``docs/noise.md``); a real device's model error would remain.

On the broadcast axis: :func:`pec_trajectories` draws, for every gate and every batch element,
the device's noise Pauli and the PEC Pauli, and inserts their product (Paulis compose by XOR of
their ``(x, z)`` bits, up to a phase that no expectation sees) as ``RX(pi x) RZ(pi z)`` with one
angle per element: one state-vector execution runs a different sampled circuit with its own
noise trajectory for every element, as :func:`qfl.task.noise.pauli_trajectories` does for the
noise alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from qfl.task.noise import _X_BIT, _Z_BIT, DeviceProfile, _compose_2q, _is_state_prep, pauli_angles
from qfl.task.qml import qml


def _commutation_signs(n_qubits: int) -> np.ndarray:
    """``chi[a, b] = +1`` if Paulis ``a`` and ``b`` commute, else ``-1``; shape ``(4^k, 4^k)``.

    Index of a ``k``-qubit Pauli: base-4 digits, first qubit most significant, each digit
    ``2x + z`` for ``X^x Z^z`` (0 = I, 1 = Z, 2 = X, 3 = Y), as in :mod:`qfl.task.noise`.
    """
    size = 4**n_qubits
    index = np.arange(size)
    symplectic = np.zeros((size, size), dtype=np.int64)
    for qubit in range(n_qubits):
        digit = (index >> (2 * qubit)) & 3
        x, z = digit >> 1, digit & 1
        symplectic += np.outer(x, z) + np.outer(z, x)
    return np.where(symplectic % 2 == 0, 1.0, -1.0)


def pauli_eigenvalues(probs: np.ndarray) -> np.ndarray:
    r"""Pauli transfer eigenvalues :math:`\lambda_b = \sum_a p_a \chi_{ab}` of a Pauli channel.

    ``probs`` has shape ``(4,)`` or ``(16,)`` (1 or 2 qubits, indexed as in :mod:`qfl.task.noise`).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n_qubits = {4: 1, 16: 2}.get(probs.shape[0]) if probs.ndim == 1 else None
    if n_qubits is None:
        raise ValueError(f"probs must have shape (4,) or (16,), got {probs.shape}")
    return _commutation_signs(n_qubits) @ probs


def pauli_inverse(probs: np.ndarray) -> np.ndarray:
    r"""Quasi-probabilities :math:`q` of the inverse of a Pauli channel (module doc):
    :math:`\Lambda^{-1}(\rho) = \sum_a q_a P_a \rho P_a`, same shape and indexing as ``probs``.

    Raises
    ------
    ValueError
        The channel is not invertible (some :math:`\lambda_b \le 0`).
    """
    eig = pauli_eigenvalues(probs)
    if np.any(eig <= 1e-12):
        raise ValueError(f"the Pauli channel is not invertible: Pauli transfer eigenvalue {eig.min():.3g} <= 0")
    chi = _commutation_signs(1 if len(eig) == 4 else 2)
    return chi @ (1.0 / eig) / len(eig)


@dataclass(frozen=True)
class PECRepresentation:
    """The quasi-probability representations of one profile's gates (module doc).

    Attributes
    ----------
    q1, q2, q_swap : numpy.ndarray
        Quasi-probabilities ``(4,)``, ``(16,)``, ``(16,)`` of the Paulis appended after a
        1-qubit gate, a 2-qubit gate, and a SWAP added by routing (three 2-qubit gates' noise).
    readout_factor : float
        :math:`1 - 2p_{ro}`: what read-out does to a Pauli-Z expectation.
    """

    q1: np.ndarray
    q2: np.ndarray
    q_swap: np.ndarray
    readout_factor: float

    @property
    def gamma_1q(self) -> float:
        return float(np.abs(self.q1).sum())

    @property
    def gamma_2q(self) -> float:
        return float(np.abs(self.q2).sum())

    @property
    def gamma_swap(self) -> float:
        return float(np.abs(self.q_swap).sum())

    def for_op(self, op: qml.operation.Operator) -> np.ndarray:
        """The quasi-probabilities of the Pauli appended after ``op``."""
        n = len(op.wires)
        if n == 1:
            return self.q1
        if n == 2:
            return self.q_swap if op.name == "SWAP" else self.q2
        raise ValueError(f"PEC: {op.name} acts on {n} qubits; decompose it first")


@lru_cache(maxsize=64)
def representation(profile: DeviceProfile) -> PECRepresentation:
    """The PEC representation of ``profile``'s gate noise and its read-out factor."""
    p2 = profile.pauli_probs_2q()
    p_swap = _compose_2q(_compose_2q(p2, p2), p2)
    return PECRepresentation(pauli_inverse(profile.pauli_probs_1q()), pauli_inverse(p2), pauli_inverse(p_swap),
                             1.0 - 2.0 * profile.readout_error)


def circuit_gamma(tape: qml.tape.QuantumScript, profile: DeviceProfile, readout: bool = True) -> float:
    r""":math:`\gamma = \prod_g \gamma_g` over the tape's gates (state preparation is not a gate),
    times :math:`\gamma_{ro} = 1/(1 - 2p_{ro})` of the read-out with ``readout=True``.

    ``pec-gamma2`` is its square. Cost: one pass over the tape's operations, no execution.
    """
    rep = representation(profile)
    log_gamma = sum(np.log(np.abs(rep.for_op(op)).sum()) for op in tape.operations if not _is_state_prep(op))
    gamma = float(np.exp(log_gamma))
    return gamma / rep.readout_factor if readout else gamma


def _sampler(quasi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities |q|/gamma, signs)`` to draw from a quasi-probability distribution."""
    return np.abs(quasi) / np.abs(quasi).sum(), np.sign(quasi)


@qml.transform
def pec_trajectories(tape, profile: DeviceProfile, rng: np.random.Generator):
    r"""The device's Pauli noise trajectories with PEC's sampled Paulis (module doc).

    After every gate and for every batch element ``b`` it draws the noise Pauli :math:`e_b`
    (probabilities :math:`p`, as :func:`~qfl.task.noise.pauli_trajectories`) and the PEC Pauli
    :math:`a_b` (probabilities :math:`|q|/\gamma_g`), and inserts :math:`P_{a_b} P_{e_b}`.

    The transformed circuit returns the tape's results followed by the signed weight
    :math:`w_b = \gamma \prod_g \operatorname{sign}(q_{a_{g,b}})` of every element's sampled
    circuit, shape ``(B,)`` (a scalar without broadcasting): :math:`w_b \langle O\rangle_b`
    estimates the noiseless :math:`\langle O\rangle` without bias (before read-out, which the
    caller undoes). ``rng`` is advanced on every execution: each call draws fresh circuits.
    """
    size = tape.batch_size or 1
    rep = representation(profile)
    noise_1q, noise_2q = profile.pauli_probs_1q(), profile.pauli_probs_2q()
    noise_swap = _compose_2q(_compose_2q(noise_2q, noise_2q), noise_2q)
    angle = pauli_angles(tape)
    signs = np.ones(size)
    gamma = 1.0
    new_ops = []
    for op in tape.operations:
        new_ops.append(op)
        if _is_state_prep(op):
            continue
        quasi = rep.for_op(op)
        probs, quasi_signs = _sampler(quasi)
        gamma *= float(np.abs(quasi).sum())
        if len(op.wires) == 1:
            noise = noise_1q
        else:
            noise = noise_swap if op.name == "SWAP" else noise_2q
        drawn_noise = rng.choice(len(noise), size=size, p=noise)
        drawn_pec = rng.choice(len(quasi), size=size, p=probs)
        signs *= quasi_signs[drawn_pec]
        pauli = drawn_noise ^ drawn_pec  # the product of two Paulis, up to a phase
        digits = pauli[:, None] if len(op.wires) == 1 else np.stack([pauli // 4, pauli % 4], axis=1)
        for k, wire in enumerate(op.wires):
            x, z = _X_BIT[digits[:, k]], _Z_BIT[digits[:, k]]
            if x.any():
                new_ops.append(qml.RX(angle(x), wires=wire))
            if z.any():
                new_ops.append(qml.RZ(angle(z), wires=wire))
    weights = gamma * (signs if tape.batch_size else signs[0])

    def with_weights(results):
        res = results[0]
        values = tuple(res) if isinstance(res, (tuple, list)) else (res,)
        return (*values, qml.math.convert_like(weights, values[0]))

    return [tape.copy(operations=new_ops)], with_weights
