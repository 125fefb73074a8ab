"""Simulated NISQ devices: what each client's hardware is (no PennyLane here).

A :class:`DeviceProfile` describes one client's hardware: gate error rates, T1/T2 against
gate times, read-out error, shot count, register size and coupling map. Named profiles
(:data:`PROFILES`) are modelled on public figures; see ``docs/noise.md`` for sources. How a
profile's noise is simulated is :mod:`qfl.task.noise`. This module imports only numpy, so
that a run's configuration can be checked without loading PennyLane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from qfl.common.specs import from_spec
from qfl.task.relaxation import relaxation_probs

COUPLINGS = ("all-to-all", "line", "ring", "grid", "heavy-hex")
CALIBRATED_PREFIXES = ("ibm:", "google:")  # a real device's calibration snapshot (qfl.task.calibrated)
CALIBRATED_FIXED = ("name", "n_qubits", "coupling")  # a real device's: no override changes them

# IBM Falcon r4 (27 qubits) heavy-hex coupling map, from IBM's public backend data.
FALCON_27_EDGES = (
    (0, 1), (1, 2), (1, 4), (2, 3), (3, 5), (4, 7), (5, 8), (6, 7), (7, 10), (8, 9),
    (8, 11), (10, 12), (11, 14), (12, 13), (12, 15), (13, 14), (14, 16), (15, 18),
    (16, 19), (17, 18), (18, 21), (19, 20), (19, 22), (21, 23), (22, 25), (23, 24),
    (24, 25), (25, 26),
)




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
    coupling : str or tuple of (int, int)
        One of :data:`COUPLINGS`, or the device's own edges ``(a, b)`` on qubits
        ``0..n_qubits-1`` (a calibrated device, :mod:`qfl.task.calibrated`), ordered so that
        the first ``m`` qubits are connected for every ``m``.
    readout_asymmetry : float
        ``p(0|1) - p(1|0)``: read-out's bias toward ``|0>`` (a superconducting qubit decays
        during read-out). ``readout_error`` is the mean of the two probabilities, so the
        asymmetry lies within +-2 ``readout_error``, and ``<Z>`` becomes
        ``(1 - 2 readout_error) <Z> + readout_asymmetry``. Default 0: symmetric.
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
    coupling: str | tuple[tuple[int, int], ...]
    readout_asymmetry: float = 0.0

    def __post_init__(self) -> None:
        for field in ("p1", "p2", "readout_error"):
            v = getattr(self, field)
            if isinstance(v, bool) or not 0.0 <= v < 0.5:
                raise ValueError(f"device profile {self.name!r}: {field} must be in [0, 0.5), got {v!r}")
        if isinstance(self.readout_asymmetry, bool) or not abs(self.readout_asymmetry) <= 2 * self.readout_error:
            raise ValueError(f"device profile {self.name!r}: readout_asymmetry = p(0|1) - p(1|0) must lie within "
                             f"+-2 x readout_error = +-{2 * self.readout_error:g}, got {self.readout_asymmetry!r}")
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
        if isinstance(self.coupling, tuple):
            if not all(len(e) == 2 and all(isinstance(q, int) and 0 <= q < self.n_qubits for q in e) and e[0] != e[1]
                       for e in self.coupling):
                raise ValueError(f"device profile {self.name!r}: coupling edges must join two distinct qubits "
                                 f"of 0..{self.n_qubits - 1}")
        elif self.coupling not in COUPLINGS:
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
        return relaxation_probs(self.t1_us, self.t2_us, gate_ns)


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
        # IBM Eagle r3 ibm_cusco, calibration of 2025-02-26 as published in qiskit-ibm-runtime's
        # fake provider (props_cusco.json): the worst median 2q error of the IBM devices there
        # dated 2025 (ECR 2.2e-2; SX 6.3e-4), T1 131 us, T2 80 us, 1q 44 ns, 2q 460 ns,
        # read-out p(0|1) 3.6 %, p(1|0) 3.3 % (medians); heavy-hex.
        DeviceProfile("ibm-cusco", "superconducting", 6.3e-4, 2.2e-2, 131.0, 80.0, 44.0, 460.0, 3.45e-2, 0, 127,
                      "heavy-hex", 3e-3),
        # IBM Falcon ibmq_16_melbourne, calibration of 2021-03-15 (same source, props_melbourne.json):
        # CX 2.9e-2, SX 1.1e-3, T1 53 us, T2 55 us, 1q 53 ns, 2q 900 ns, and a biased read-out,
        # p(0|1) 7.0 %, p(1|0) 1.9 % (medians); a 2 x 7 ladder (grid).
        DeviceProfile("ibmq-melbourne", "superconducting", 1.1e-3, 2.9e-2, 53.0, 55.0, 53.0, 900.0, 4.45e-2, 0, 15,
                      "grid", 5.1e-2),
    )
}


def get_profile(spec: str, n_qubits: int | None = None) -> DeviceProfile:
    """A named profile, optionally with fields overridden: ``"ibm-eagle"``,
    ``"noisy-nisq:shots=1024"``, ``"ideal:p2=0.02,coupling=ring"``; or a real device's
    calibration, ``"ibm:torino"``, ``"ibm:torino@0,1,2:shots=1024"``, ``"google:willow"``
    (:mod:`qfl.task.calibrated`, which needs the ``calibrated`` extra).

    Parameters
    ----------
    spec : str
        The profile's spec.
    n_qubits : int, optional
        The run's register size: a calibrated spec that names no qubits chooses this many;
        named profiles ignore it.

    Raises
    ------
    ValueError
        Unknown profile name or field, or an invalid value (naming it).
    """
    if spec.strip().startswith(CALIBRATED_PREFIXES):
        return _calibrated_profile(spec, n_qubits)
    profile, changed = from_spec(spec, PROFILES, "device profile", fixed=("name",))
    return replace(profile, name=spec.strip()) if changed else profile


def _calibrated_profile(spec: str, n_qubits: int | None) -> DeviceProfile:
    """A real device's profile (:func:`qfl.task.calibrated.calibrated_fields`), its overrides applied."""
    from qfl.task.calibrated import calibrated_fields  # reads the json files of an optional package

    name, fields, overrides = calibrated_fields(spec, n_qubits)
    profile = DeviceProfile(name=name, **fields)
    if not overrides:
        return profile
    # from_spec splits a name at its first ':', so the overrides go on a placeholder name
    placeholder = f"calibrated:{overrides}"
    try:
        changed, _ = from_spec(placeholder, {"calibrated": profile}, "device profile", fixed=CALIBRATED_FIXED)
    except ValueError as err:
        raise ValueError(str(err).replace(repr(placeholder), repr(spec.strip()))) from err
    return replace(changed, name=f"{name}:{overrides}")


def coupling_edges(kind: str | tuple[tuple[int, int], ...], n: int) -> list[tuple[int, int]] | None:
    """Edges of a coupling map on ``n`` qubits (``None`` for all-to-all).

    A device's own edges (a tuple): those among its first ``n`` qubits. ``grid``: row-major
    on ``ceil(sqrt(n))`` columns; ``heavy-hex``: the first ``n`` qubits of IBM's 27-qubit
    heavy-hex map in breadth-first order from qubit 1 (a connected fragment), relabelled
    ``0..n-1``.
    """
    if isinstance(kind, tuple):
        return [(a, b) for a, b in kind if a < n and b < n] if n >= 2 else None
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


def check_profile(key: str, spec: str, n_qubits: int) -> None:
    """A device-profile spec must name a profile with at least ``n_qubits`` qubits; raise
    :class:`~qfl.common.config.ConfigError` naming ``key`` otherwise."""
    from qfl.common.config import ConfigError

    try:
        profile = get_profile(spec, n_qubits)
    except ValueError as err:
        raise ConfigError(key, str(err)) from err
    if n_qubits > profile.n_qubits:
        raise ConfigError(key, f"profile {spec!r} has {profile.n_qubits} qubits, n-qubits is {n_qubits}")
