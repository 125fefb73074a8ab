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
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
import pennylane as qml

COUPLINGS = ("all-to-all", "line", "ring", "grid", "heavy-hex")

# IBM Falcon r4 (27 qubits) heavy-hex coupling map, from IBM's public backend data.
FALCON_27_EDGES = (
    (0, 1), (1, 2), (1, 4), (2, 3), (3, 5), (4, 7), (5, 8), (6, 7), (7, 10), (8, 9),
    (8, 11), (10, 12), (11, 14), (12, 13), (12, 15), (13, 14), (14, 16), (15, 18),
    (16, 19), (17, 18), (18, 21), (19, 20), (19, 22), (21, 23), (22, 25), (23, 24),
    (24, 25), (25, 26),
)

# Pauli index p = 2*x + z for X^x Z^z:  0 = I, 1 = Z, 2 = X, 3 = Y (up to phase).
_X_BIT = np.array([0, 0, 1, 1])
_Z_BIT = np.array([0, 1, 0, 1])


@dataclass(frozen=True)
class DeviceProfile:
    """One client's simulated quantum device.

    Attributes
    ----------
    name : str
    platform : str
        ``"superconducting"``, ``"trapped-ion"`` or ``"ideal"``.
    p1, p2 : float
        Depolarizing probability per 1- and 2-qubit gate.
    t1_us, t2_us : float
        Relaxation and dephasing times in microseconds (``inf``: none); ``t2 <= 2 t1``.
    gate_ns_1q, gate_ns_2q : float
        Gate durations in nanoseconds.
    readout_error : float
        Symmetric bit-flip probability at measurement.
    shots : int
        Shots per expectation value; ``0`` for exact expectations.
    n_qubits : int
        Qubits available on the device.
    coupling : str
        One of :data:`COUPLINGS`.
    """

    name: str
    platform: str
    p1: float
    p2: float
    t1_us: float
    t2_us: float
    gate_ns_1q: float
    gate_ns_2q: float
    readout_error: float
    shots: int
    n_qubits: int
    coupling: str

    def __post_init__(self) -> None:
        for field in ("p1", "p2", "readout_error"):
            v = getattr(self, field)
            if isinstance(v, bool) or not 0.0 <= v < 0.5:
                raise ValueError(f"device profile {self.name!r}: {field} must be in [0, 0.5), got {v!r}")
        for field in ("t1_us", "t2_us"):
            if not getattr(self, field) > 0:
                raise ValueError(f"device profile {self.name!r}: {field} must be > 0")
        if self.t2_us > 2 * self.t1_us:
            raise ValueError(f"device profile {self.name!r}: t2_us must be <= 2 * t1_us (physical bound)")
        for field in ("gate_ns_1q", "gate_ns_2q"):
            v = getattr(self, field)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"device profile {self.name!r}: {field} must be a finite number >= 0")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise ValueError(f"device profile {self.name!r}: shots must be an integer >= 0")
        if isinstance(self.n_qubits, bool) or not isinstance(self.n_qubits, int) or self.n_qubits < 1:
            raise ValueError(f"device profile {self.name!r}: n_qubits must be a positive integer")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"device profile {self.name!r}: coupling must be one of {', '.join(COUPLINGS)}")

    @property
    def is_noiseless(self) -> bool:
        return (
            self.p1 == 0 and self.p2 == 0 and self.readout_error == 0 and self.shots == 0
            and math.isinf(self.t1_us) and math.isinf(self.t2_us)
        )

    def pauli_probs_1q(self) -> np.ndarray:
        """``(4,)`` probabilities of I, Z, X, Y after a 1-qubit gate."""
        return _compose_1q(_depolarizing_1q(self.p1), self._relaxation(self.gate_ns_1q))

    def pauli_probs_2q(self) -> np.ndarray:
        """``(16,)`` probabilities of ``P_a (x) P_b`` (index ``4a + b``) after a 2-qubit gate."""
        relax = self._relaxation(self.gate_ns_2q)
        return _compose_2q(_depolarizing_2q(self.p2), np.outer(relax, relax).ravel())

    def _relaxation(self, gate_ns: float) -> np.ndarray:
        """Pauli-twirled amplitude + phase damping over ``gate_ns`` (I, Z, X, Y)."""
        t_us = gate_ns * 1e-3
        a = 1.0 - math.exp(-t_us / self.t1_us)
        d = 1.0 - math.exp(-t_us / self.t2_us)
        px = py = a / 4
        pz = max(0.0, d / 2 - a / 4)
        return np.array([1.0 - px - py - pz, pz, px, py])


def _depolarizing_1q(p: float) -> np.ndarray:
    return np.array([1.0 - p, p / 3, p / 3, p / 3])


def _depolarizing_2q(p: float) -> np.ndarray:
    probs = np.full(16, p / 15)
    probs[0] = 1.0 - p
    return probs


def _compose_1q(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pauli channels compose by XOR-convolution of their (x, z) labels."""
    out = np.zeros(4)
    for i in range(4):
        for j in range(4):
            out[i ^ j] += a[i] * b[j]
    return out


def _compose_2q(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(16)
    for i in range(16):
        out[i ^ np.arange(16)] += a[i] * b
    return out


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("ideal", "ideal", 0.0, 0.0, math.inf, math.inf, 0.0, 0.0, 0.0, 0, 32, "all-to-all"),
        # IBM Heron r2 class (public calibration medians, 2024): CZ ~3e-3, SX ~2.5e-4,
        # read-out ~1.2e-2, T1 ~250 us, T2 ~150 us, 1q 32 ns, 2q 68 ns; heavy-hex.
        DeviceProfile("ibm-heron", "superconducting", 2.5e-4, 3e-3, 250.0, 150.0, 32.0, 68.0, 1.2e-2, 0, 133, "heavy-hex"),
        # IBM Eagle r3 class (2023-24): ECR ~7.5e-3, SX ~2.5e-4, read-out ~1.5e-2,
        # T1 ~270 us, T2 ~170 us, 1q 60 ns, 2q 660 ns; heavy-hex.
        DeviceProfile("ibm-eagle", "superconducting", 2.5e-4, 7.5e-3, 270.0, 170.0, 60.0, 660.0, 1.5e-2, 0, 127, "heavy-hex"),
        # Google Sycamore (Arute et al., Nature 574, 505 (2019)): 1q 0.16 %, 2q 0.62 %
        # (simultaneous), read-out ~3.8 %, T1 ~16 us, 1q 25 ns, 2q 12 ns; square grid.
        DeviceProfile("google-sycamore", "superconducting", 1.6e-3, 6.2e-3, 16.0, 16.0, 25.0, 12.0, 3.8e-2, 0, 53, "grid"),
        # Quantinuum H1-1 class (product data sheet, 2024): 1q ~2e-5, 2q ~1e-3,
        # SPAM ~3e-3; coherence in seconds; all-to-all via ion transport.
        DeviceProfile("quantinuum-h1", "trapped-ion", 2e-5, 1e-3, 1e7, 1e6, 1e4, 2.5e5, 3e-3, 0, 20, "all-to-all"),
        # IonQ Aria class (public specs, 2023): 1q ~6e-4, 2q ~6e-3, SPAM ~4e-3,
        # T1 ~10-100 s, T2 ~1 s, 1q 135 us, 2q 600 us; all-to-all.
        DeviceProfile("ionq-aria", "trapped-ion", 6e-4, 6e-3, 1e7, 1e6, 1.35e5, 6e5, 4e-3, 0, 25, "all-to-all"),
        # A deliberately poor NISQ device (early-generation figures) for experiments:
        # 1q 0.5 %, 2q 5 %, read-out 5 %, T1 30 us, T2 20 us, 1q 50 ns, 2q 400 ns; line.
        DeviceProfile("noisy-nisq", "superconducting", 5e-3, 5e-2, 30.0, 20.0, 50.0, 400.0, 5e-2, 0, 16, "line"),
    )
}


def get_profile(spec: str) -> DeviceProfile:
    """A named profile, optionally with fields overridden: ``"ibm-eagle"``,
    ``"noisy-nisq:shots=1024"``, ``"ideal:p2=0.02,coupling=ring"``.

    Raises
    ------
    ValueError
        Unknown profile name or field, or an invalid value (naming it).
    """
    name, _, overrides = spec.partition(":")
    if name not in PROFILES:
        raise ValueError(f"unknown device profile {name!r} (choose from {', '.join(PROFILES)})")
    profile = PROFILES[name]
    if not overrides:
        return profile
    types = {k: type(v) for k, v in asdict(profile).items()}
    changes: dict[str, object] = {}
    for item in overrides.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types or key == "name":
            raise ValueError(f"device profile {spec!r}: bad override {item!r} (fields: {', '.join(t for t in types if t != 'name')})")
        try:
            changes[key] = raw.strip() if types[key] is str else types[key](float(raw)) if types[key] is int else float(raw)
        except ValueError as err:
            raise ValueError(f"device profile {spec!r}: {key}={raw!r} is not a number") from err
    return replace(profile, **changes, name=spec)


def coupling_edges(kind: str, n: int) -> list[tuple[int, int]] | None:
    """Edges of a coupling map on ``n`` qubits (``None`` for all-to-all).

    ``grid``: row-major on ``ceil(sqrt(n))`` columns; ``heavy-hex``: the first ``n`` qubits
    of IBM's 27-qubit heavy-hex map in breadth-first order from qubit 1 (a connected
    fragment), relabelled ``0..n-1``.
    """
    if kind == "all-to-all" or n < 2:
        return None
    if kind == "line":
        return [(i, i + 1) for i in range(n - 1)]
    if kind == "ring":
        return [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]
    if kind == "grid":
        cols = math.ceil(math.sqrt(n))
        edges = []
        for q in range(n):
            if (q + 1) % cols and q + 1 < n:
                edges.append((q, q + 1))
            if q + cols < n:
                edges.append((q, q + cols))
        return edges
    if kind == "heavy-hex":
        return _heavy_hex_fragment(n)
    raise ValueError(f"unknown coupling {kind!r} (choose from {', '.join(COUPLINGS)})")


@lru_cache(maxsize=32)
def _heavy_hex_edges_cached(n: int) -> tuple[tuple[int, int], ...]:
    if n > 27:
        raise ValueError("the heavy-hex fragment covers at most 27 qubits")
    adj: dict[int, list[int]] = {}
    for a, b in FALCON_27_EDGES:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, []).append(a)
    order, seen = [], {1}
    queue = [1]
    while queue and len(order) < n:
        q = queue.pop(0)
        order.append(q)
        for nb in sorted(adj[q]):
            if nb not in seen:
                seen.add(nb)
                queue.append(nb)
    label = {q: i for i, q in enumerate(order)}
    return tuple(sorted((min(label[a], label[b]), max(label[a], label[b])) for a, b in FALCON_27_EDGES if a in label and b in label))


def _heavy_hex_fragment(n: int) -> list[tuple[int, int]]:
    return list(_heavy_hex_edges_cached(n))


# --- transforms -----------------------------------------------------------------------


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


@qml.transform
def pauli_trajectories(tape, profile: DeviceProfile, rng: np.random.Generator):
    """Insert one sampled Pauli error per gate and batch element (see the module doc).

    ``rng`` is advanced on every execution, so each call draws fresh trajectories.
    """
    size = tape.batch_size or 1
    p1 = profile.pauli_probs_1q()
    p2 = profile.pauli_probs_2q()
    p_swap = _compose_2q(_compose_2q(p2, p2), p2)
    like = next((p for p in tape.get_parameters(trainable_only=False) if qml.math.get_interface(p) != "numpy"), None)

    def angle(bits: np.ndarray):
        a = np.pi * bits.astype(np.float64)
        a = a if tape.batch_size else a[0]
        return a if like is None else qml.math.convert_like(a, like)

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
        "depth": int(body.graph.get_depth()),
        "gates": len(ops),
        "two-qubit-gates": sum(1 for op in ops if len(op.wires) == 2),
        "swaps": sum(1 for op in ops if op.name == "SWAP"),
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
