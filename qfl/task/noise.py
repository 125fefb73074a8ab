"""Simulated NISQ devices: device profiles, coupling maps and fast noisy execution.

A :class:`DeviceProfile` describes one client's hardware: gate error rates, T1/T2 against
gate times, read-out error, shot count, register size and coupling map. Named profiles
(:data:`PROFILES`) are modelled on public figures; see ``docs/noise.md`` for sources.

Noise model (per gate, then at read-out)
-----------------------------------------
- Depolarizing error after every gate: a 1-qubit gate applies X, Y or Z with probability
  ``p1/3`` each; a 2-qubit gate one of the 15 non-identity two-qubit Paulis with
  probability ``p2/15`` each (PennyLane's ``DepolarizingChannel`` convention).
- Relaxation during the gate time ``t`` on each qubit it acts on, in its Pauli-twirled
  form (Ghosh, Fowler & Geller, PRA 86, 062318 (2012)):

  .. math::

      p_x = p_y = \\frac{1 - e^{-t/T_1}}{4}, \\qquad
      p_z = \\frac{1 - e^{-t/T_2}}{2} - \\frac{1 - e^{-t/T_1}}{4}.

  The twirl keeps the channel's Pauli-diagonal part: exact for phase damping, and for
  amplitude damping exact in its effect on Pauli expectations to first order.
- A SWAP added by routing costs three CNOTs' worth of noise.
- Read-out: each measured bit flips with probability ``p_ro``, so
  :math:`\\langle Z\\rangle \\to (1 - 2p_{ro})\\langle Z\\rangle`; with ``shots > 0`` the
  expectation is then estimated from ``shots`` samples.

Simulation: Monte-Carlo Pauli trajectories on the broadcast axis
------------------------------------------------------------------
A Pauli channel is a mixture of unitaries, so sampling one Pauli per gate and per
sample and running the resulting pure circuit gives an unbiased estimate of the noisy
expectation. The sampled Paulis are inserted as ``RX(pi * x_b) RZ(pi * z_b)`` (``X^x Z^z``
up to a global phase) with one angle per batch element ``b``, so one broadcast
state-vector execution simulates a different trajectory for every sample; error slots
that no sample drew are skipped. This costs a few times a noiseless run, where
``default.mixed`` costs 2^n times more memory and time (``bench/noisy_training.py``).
"""

from __future__ import annotations

import math

import numpy as np

from qfl.common.contract import CIRCUIT_DEPTH, GATES, SWAPS, TWO_QUBIT_GATES
from qfl.task.profiles import (  # noqa: F401 (re-exported: the noise model's vocabulary)
    COUPLINGS,
    PROFILES,
    DeviceProfile,
    _compose_2q,
    check_profile,
    coupling_edges,
    get_profile,
)
from qfl.task.qml import qml

# Pauli index p = 2*x + z for X^x Z^z:  0 = I, 1 = Z, 2 = X, 3 = Y (up to phase).
_X_BIT = np.array([0, 0, 1, 1])
_Z_BIT = np.array([0, 1, 0, 1])


def _is_state_prep(op: qml.operation.Operator) -> bool:
    return isinstance(op, qml.operation.StatePrepBase) or op.name in ("StatePrep", "BasisState")


@qml.transform
def route(tape, coupling_map):
    """Transpile a tape to ``coupling_map`` with PennyLane's ``transpile``.

    Leading state preparations (data loading, not gates) are kept out of routing and put
    back in front; ``transpile`` starts from the identity layout, so they stay valid.
    """
    prep = []
    ops = list(tape.operations)
    while ops and _is_state_prep(ops[0]):
        prep.append(ops.pop(0))
    body = tape.copy(operations=ops)
    [routed], _ = qml.transforms.transpile(body, coupling_map=coupling_map)
    new = tape.copy(operations=prep + list(routed.operations), measurements=list(routed.measurements))
    return [new], lambda results: results[0]


def pauli_angles(tape):  # noqa: ANN001, ANN201 (a QuantumScript; a function of bit arrays)
    """``angle(bits)``: the rotation angles ``pi * bits`` (shape ``(B,)``) that insert an X or Z
    per batch element of ``tape`` (a scalar for an unbatched tape), in the interface of the
    tape's trainable parameters so that gradients flow through the rest of the circuit."""
    like = next((p for p in tape.get_parameters(trainable_only=False) if qml.math.get_interface(p) != "numpy"), None)

    def angle(bits: np.ndarray):  # noqa: ANN202
        a = np.pi * bits.astype(np.float64)
        a = a if tape.batch_size else a[0]
        return a if like is None else qml.math.convert_like(a, like)

    return angle


@qml.transform
def pauli_trajectories(tape, profile: DeviceProfile, rng: np.random.Generator):
    """Insert one sampled Pauli error per gate and batch element (see the module doc).

    ``rng`` is advanced on every execution, so each call draws fresh trajectories.
    """
    size = tape.batch_size or 1
    p1 = profile.pauli_probs_1q()
    p2 = profile.pauli_probs_2q()
    p_swap = _compose_2q(_compose_2q(p2, p2), p2)
    angle = pauli_angles(tape)
    new_ops = []
    for op in tape.operations:
        new_ops.append(op)
        if _is_state_prep(op):
            continue
        wires = list(op.wires)
        if len(wires) == 1:
            draws = rng.choice(4, size=size, p=p1)[:, None]  # (B, 1)
        elif len(wires) == 2:
            draws2 = rng.choice(16, size=size, p=p_swap if op.name == "SWAP" else p2)
            draws = np.stack([draws2 // 4, draws2 % 4], axis=1)  # (B, 2)
        else:
            raise ValueError(f"pauli_trajectories: {op.name} acts on {len(wires)} qubits; decompose it first")
        for k, w in enumerate(wires):
            x, z = _X_BIT[draws[:, k]], _Z_BIT[draws[:, k]]
            if x.any():
                new_ops.append(qml.RX(angle(x), wires=w))
            if z.any():
                new_ops.append(qml.RZ(angle(z), wires=w))
    return [tape.copy(operations=new_ops)], lambda results: results[0]


def circuit_metrics(tape) -> dict[str, int]:
    """Hardware-specific metrics of a (transpiled) tape: depth, 2-qubit gates, SWAPs."""
    ops = [op for op in tape.operations if not _is_state_prep(op)]
    body = tape.copy(operations=ops)
    return {
        CIRCUIT_DEPTH: int(body.graph.get_depth()),
        GATES: len(ops),
        TWO_QUBIT_GATES: sum(1 for op in ops if len(op.wires) == 2),
        SWAPS: sum(1 for op in ops if op.name == "SWAP"),
    }


_PAULI_1Q = (
    np.eye(2),
    np.diag([1.0, -1.0]),  # Z
    np.array([[0.0, 1.0], [1.0, 0.0]]),  # X
    np.array([[0.0, -1j], [1j, 0.0]]),  # Y
)


def _kraus(probs: np.ndarray) -> list[np.ndarray]:
    """Kraus operators sqrt(p_i) P_i of a Pauli channel (1 or 2 qubits; index as above)."""
    if len(probs) == 4:
        paulis = _PAULI_1Q
    else:
        paulis = tuple(np.kron(_PAULI_1Q[i // 4], _PAULI_1Q[i % 4]) for i in range(16))
    return [math.sqrt(p) * P.astype(complex) for p, P in zip(probs, paulis) if p > 0]


@qml.transform
def pauli_channels(tape, profile: DeviceProfile):
    """The exact-channel twin of :func:`pauli_trajectories`, for mixed-state devices.

    After every gate it inserts the same Pauli channel as a ``QubitChannel`` with Kraus
    operators :math:`\\sqrt{p_i} P_i`. Run on ``default.mixed``, it gives the exact
    noisy expectation that the trajectories estimate (reference and benchmark baseline).
    """
    k1 = _kraus(profile.pauli_probs_1q())
    p2 = profile.pauli_probs_2q()
    k2 = _kraus(p2)
    k_swap = _kraus(_compose_2q(_compose_2q(p2, p2), p2))
    new_ops = []
    for op in tape.operations:
        new_ops.append(op)
        if _is_state_prep(op):
            continue
        if len(op.wires) == 1:
            new_ops.append(qml.QubitChannel(k1, wires=op.wires))
        elif len(op.wires) == 2:
            new_ops.append(qml.QubitChannel(k_swap if op.name == "SWAP" else k2, wires=op.wires))
        else:
            raise ValueError(f"pauli_channels: {op.name} acts on {len(op.wires)} qubits; decompose it first")
    return [tape.copy(operations=new_ops)], lambda results: results[0]
