"""Device profiles read from real calibrations: ``ibm:<backend>`` and ``google:<device>``.

``qiskit-ibm-runtime`` ships, for each of its fake IBM backends, the calibration snapshot of
the real device as data (``fake_provider/backends/<name>/props_<name>.json`` with per-qubit
T1, T2 and read-out errors and per-gate errors and lengths, and ``conf_<name>.json`` with its
basis gates). This module reads those files with :mod:`json` (the package is only located,
never imported) and turns one backend and a connected subset of its qubits into a
:class:`~qfl.task.profiles.DeviceProfile`.

Spec: ``ibm:<backend>[@q0,q1,...][:field=value,...]``, e.g. ``"ibm:torino"`` (the best
connected ``n_qubits`` qubits), ``"ibm:torino@0,1,2,3"`` (wire ``i`` on physical qubit
``q_i``), ``"ibm:torino:shots=1024"`` (the usual overrides). The profile's name is the spec
with the chosen qubits written out, so that it names the same profile again.

Conversion (per qubit or coupling of the subset, then averaged over the subset: a profile
holds one number per quantity, so per-qubit spread is lost; ``docs/noise.md`` measures what
that costs against qiskit-aer):

- A logical 1-qubit gate (``RY``, ``Rot``) is a generic rotation, which IBM hardware runs as
  two ``sx`` pulses between virtual ``rz`` frame changes: its error is
  :math:`1 - (1 - e_{sx})^2`, its length twice the pulse's (``u2`` counts as one pulse on
  the oldest backends).
- A 2-qubit gate is the backend's native one (``cz``, ``ecr`` or ``cx``, the best of those
  calibrated on the coupling); a CNOT's 1-qubit dressing merges with neighbouring rotations
  and is not counted.
- A reported gate error :math:`e` is an average gate infidelity that already contains the
  relaxation during the gate (qiskit-aer's ``NoiseModel.from_backend`` reads it so). The
  depolarizing part is what remains: with :math:`d = 2^k` for a ``k``-qubit gate and
  :math:`r` the average infidelity of the relaxation over the gate's length (of its Pauli
  twirl, which has the same average fidelity), the channel
  :math:`\\rho \\mapsto (1-\\lambda)\\rho + \\lambda\\, \\mathrm{tr}(\\rho) I/d` composed with it has
  infidelity :math:`e` when

  .. math::

      \\lambda = \\frac{d\\,(e - r)}{d\\,(1 - r) - 1},

  and in this project's convention (probability :math:`p` of one of the :math:`d^2 - 1`
  non-identity Paulis, uniformly) :math:`p = \\lambda (d^2 - 1)/d^2`, so that without
  relaxation :math:`e = p\\, d/(d + 1)`: :math:`p_1 = 3e/2`, :math:`p_2 = 5e/4`.
- T1 and T2 (each T2 capped at 2 T1, the physical bound) are averaged as rates (harmonic
  mean): a relaxation error over a short gate is linear in :math:`1/T`.
- Read-out: ``readout_error`` is the mean of :math:`p(0|1)` and :math:`p(1|0)` and
  ``readout_asymmetry`` :math:`= p(0|1) - p(1|0)`, each averaged over the subset.
- Coupling: the subset's usable couplings, relabelled ``0..n-1`` in the subset's order.

Google devices (``google:rainbow``, ``google:weber``, ``google:willow``; qubits named
``row_col``, e.g. ``"google:rainbow@5_2,5_3"``): the snapshots cirq-google ships, read from
:mod:`qfl.task.google_calibrations` (extracted from the wheel's JSON, which says why), and
converted as cirq-google's ``noise_properties_from_calibration`` does: T1 as given; the
dephasing time from randomized benchmarking's incoherent error ``r_inc`` of a 25 ns
``PhasedXZ`` gate, :math:`1/T_\\phi = 3 (r_{inc} - t/(3 T_1)) / t` (none where that is not
positive) and :math:`1/T_2 = 1/(2T_1) + 1/T_\\phi`; a logical rotation is one ``PhasedXZ``
with benchmarking's Pauli error; a CNOT is one ``cz`` (Willow) or two of the better of
``sqrt_iswap`` (32 ns) and ``sycamore`` (12 ns) on the coupling (Rainbow, Weber), each with its
XEB Pauli error per cycle. Google's figures are Pauli errors that contain the decoherence
during the gate; as cirq does, the depolarizing part is the figure less each qubit's Pauli
error of relaxation over the gate (never below 0). Read-out: ``p00`` and ``p11`` errors as
p(1|0) and p(0|1). cirq's coherent fSim angle errors (theta, phi) are not modelled: a profile
holds Pauli channels only.

A qubit or coupling whose error is at least :data:`OUT_OF_USE` (IBM writes 1.0 for a broken
one) is left out of the coupling map.

Choosing the subset: a beam search (width :data:`BEAM_WIDTH`, deterministic) grows connected
sets one neighbour at a time and keeps those of lowest cost, the read-out errors of its qubits
plus the 2-qubit errors of the couplings that grew it (a spanning tree); ties go to the lower
qubit labels. The chosen qubits are ordered breadth-first from the lowest label, so every
prefix ``0..m-1`` is connected too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qfl.task.relaxation import relaxation_probs

IBM_PREFIX = "ibm:"  # qfl.task.profiles.CALIBRATED_PREFIXES send these specs here
GOOGLE_PREFIX = "google:"
PREFIXES = (IBM_PREFIX, GOOGLE_PREFIX)
INSTALL_HINT = "pip install 'qfl[calibrated]'"
NATIVE_TWO_QUBIT_GATES = ("cz", "ecr", "cx")  # CNOT-equivalent; a fractional rzz is not
PULSE_GATES = ("sx", "u2")  # one pi/2 pulse; a generic rotation takes two
PULSES_PER_ROTATION = 2
OUT_OF_USE = 0.5  # an error at or above this marks a qubit or coupling out of use
BEAM_WIDTH = 256
GOOGLE_ROTATION_NS = 25.0  # a PhasedXZ, cirq-google's DEFAULT_GATE_NS
GOOGLE_GATE_NS = {"sqrt_iswap": 32.0, "sycamore": 12.0, "cz": 32.0}  # the same table's 2-qubit gates
GOOGLE_GATES_PER_CNOT = {"sqrt_iswap": 2, "sycamore": 2, "cz": 1}
NO_DEPHASING_NS = 1e10  # cirq's T_phi where benchmarking leaves no dephasing


@dataclass(frozen=True)
class Calibration:
    """One backend's calibration snapshot, the usable qubits and couplings only.

    Attributes
    ----------
    backend : str
        The name in the spec (``"torino"``).
    date : str
        ``last_update_date`` of the snapshot (ISO 8601).
    n_physical : int
        Qubits on the device, usable or not.
    t1_us, t2_us : dict[int, float]
        Per qubit, in microseconds; T2 already capped at 2 T1.
    p0_given1, p1_given0 : dict[int, float]
        Per qubit: read-out of 0 when prepared in 1 (``prob_meas0_prep1``), and the reverse.
    pulse_error : dict[int, float]
        Per qubit, the error of one ``sx`` (or ``u2``) pulse.
    pulse_ns : dict[int, float]
        Per qubit, its length in nanoseconds.
    two_qubit_error : dict[tuple[int, int], float]
        Per coupling ``(a, b)``, ``a < b``: the error of the best native 2-qubit gate on it.
    two_qubit_ns : dict[tuple[int, int], float]
        That gate's length in nanoseconds.
    labels : tuple[str, ...]
        Each qubit's name on the device by index (``"5_2"`` on Google's grids); empty: the index.
    errors : str
        ``"average"``: gate errors are average gate infidelities (IBM); ``"pauli"``: Pauli
        errors (Google); either contains the relaxation during the gate (module doc).
    pulses_per_rotation : int
        Pulses (``pulse_error``, ``pulse_ns``) a logical rotation takes.
    gates_per_cnot : int
        Native 2-qubit gates (``two_qubit_error``, ``two_qubit_ns``) a CNOT takes.
    """

    backend: str
    date: str
    n_physical: int
    t1_us: dict[int, float]
    t2_us: dict[int, float]
    p0_given1: dict[int, float]
    p1_given0: dict[int, float]
    pulse_error: dict[int, float]
    pulse_ns: dict[int, float]
    two_qubit_error: dict[tuple[int, int], float]
    two_qubit_ns: dict[tuple[int, int], float]
    labels: tuple[str, ...] = ()
    errors: str = "average"
    pulses_per_rotation: int = PULSES_PER_ROTATION
    gates_per_cnot: int = 1

    def label(self, q: int) -> str:
        """Qubit ``q``'s name on the device."""
        return self.labels[q] if self.labels else str(q)

    def readout(self, q: int) -> float:
        """Qubit ``q``'s read-out error, the mean of its two flip probabilities."""
        return (self.p0_given1[q] + self.p1_given0[q]) / 2

    def neighbours(self) -> dict[int, list[int]]:
        """Usable qubit -> its usable neighbours, ascending."""
        adj: dict[int, list[int]] = {q: [] for q in self.t1_us}
        for a, b in self.two_qubit_error:
            adj[a].append(b)
            adj[b].append(a)
        return {q: sorted(nb) for q, nb in adj.items()}


def backends_folder(spec: str) -> Path:
    """The folder of qiskit-ibm-runtime's fake backends, found without importing the package.

    Raises
    ------
    ValueError
        qiskit-ibm-runtime is not installed (the ``calibrated`` extra), naming ``spec``.
    """
    found = importlib.util.find_spec("qiskit_ibm_runtime")
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"device profile {spec!r} needs the calibrated extra: {INSTALL_HINT}")
    return Path(next(iter(found.submodule_search_locations))) / "fake_provider" / "backends"


def available_backends(spec: str = IBM_PREFIX) -> list[str]:
    """Names of the IBM backends with a calibration snapshot, sorted."""
    folder = backends_folder(spec)
    return sorted(d.name for d in folder.iterdir() if (d / f"props_{d.name}.json").is_file())


def load_calibration(backend: str, spec: str | None = None) -> Calibration:
    """Read ``props_<backend>.json`` and ``conf_<backend>.json`` (see :class:`Calibration`).

    Raises
    ------
    ValueError
        No snapshot of that name (listing those there are), naming ``spec``.
    """
    spec = spec or IBM_PREFIX + backend
    folder = backends_folder(spec) / backend
    props_file, conf_file = folder / f"props_{backend}.json", folder / f"conf_{backend}.json"
    if not backend.isidentifier() or not props_file.is_file() or not conf_file.is_file():
        raise ValueError(f"unknown device profile {spec!r}: no IBM calibration named {backend!r} "
                         f"(choose from {', '.join(available_backends(spec))})")
    props = json.loads(props_file.read_text())
    conf = json.loads(conf_file.read_text())
    qubit_values = [{item["name"]: item["value"] for item in params} for params in props["qubits"]]
    pulse_error, pulse_ns, edge_error, edge_ns = {}, {}, {}, {}
    native = [g for g in NATIVE_TWO_QUBIT_GATES if g in conf["basis_gates"]]
    for gate in props["gates"]:  # not a contract name: the calibration file's field
        values = {item["name"]: item["value"] for item in gate["parameters"]}
        error, length = values.get("gate_error"), values.get("gate_length")
        if error is None or length is None or error >= OUT_OF_USE:
            continue
        qubits = gate["qubits"]
        if len(qubits) == 1 and gate["gate"] in PULSE_GATES and gate["gate"] in conf["basis_gates"]:
            pulse_error[qubits[0]], pulse_ns[qubits[0]] = error, length
        elif len(qubits) == 2 and gate["gate"] in native:
            edge = (min(qubits), max(qubits))
            if error < edge_error.get(edge, math.inf):
                edge_error[edge], edge_ns[edge] = error, length
    usable = [q for q, v in enumerate(qubit_values)
              if q in pulse_error and v["T1"] > 0 and v["T2"] > 0
              and max(v["prob_meas0_prep1"], v["prob_meas1_prep0"]) < OUT_OF_USE]
    edges = {e: err for e, err in edge_error.items() if e[0] in usable and e[1] in usable}
    return Calibration(
        backend=backend,
        date=props["last_update_date"],
        n_physical=int(conf["n_qubits"]),
        t1_us={q: qubit_values[q]["T1"] for q in usable},
        t2_us={q: min(qubit_values[q]["T2"], 2 * qubit_values[q]["T1"]) for q in usable},
        p0_given1={q: qubit_values[q]["prob_meas0_prep1"] for q in usable},
        p1_given0={q: qubit_values[q]["prob_meas1_prep0"] for q in usable},
        pulse_error={q: pulse_error[q] for q in usable},
        pulse_ns={q: pulse_ns[q] for q in usable},
        two_qubit_error=edges,
        two_qubit_ns={e: edge_ns[e] for e in edges},
    )


def google_devices() -> list[str]:
    """Names of the Google devices with a calibration snapshot (cirq-google's), sorted."""
    from qfl.task.google_calibrations import SNAPSHOTS

    return sorted(SNAPSHOTS)


def load_google_calibration(device: str, spec: str | None = None) -> Calibration:
    """One of cirq-google's snapshots (:mod:`qfl.task.google_calibrations`) as a
    :class:`Calibration`, converted as cirq-google does (module doc); qubit ``i`` is the
    ``i``-th of the device's qubits in (row, column) order.

    Raises
    ------
    ValueError
        No snapshot of that name (listing those there are), naming ``spec``.
    """
    from qfl.task.google_calibrations import QUBIT_FIELDS, SNAPSHOTS

    spec = spec or GOOGLE_PREFIX + device
    if device not in SNAPSHOTS:
        raise ValueError(f"unknown device profile {spec!r}: no Google calibration named {device!r} "
                         f"(choose from {', '.join(google_devices())})")
    snapshot = SNAPSHOTS[device]
    labels = tuple(snapshot["qubits"])
    index = {name: i for i, name in enumerate(labels)}
    values = [dict(zip(QUBIT_FIELDS, snapshot["qubits"][name], strict=True)) for name in labels]
    usable = [q for q, v in enumerate(values) if v["t1_us"] > 0 and v["rb_pauli_error"] < OUT_OF_USE
              and max(v["p1_given0"], v["p0_given1"]) < OUT_OF_USE]
    t2_us = {}
    for q in usable:
        t1_ns = values[q]["t1_us"] * 1e3
        dephasing = values[q]["rb_incoherent_error"] - GOOGLE_ROTATION_NS / (3 * t1_ns)
        tphi_ns = NO_DEPHASING_NS if dephasing <= 0 else GOOGLE_ROTATION_NS / (3 * dephasing)
        t2_us[q] = 1e-3 / (1 / (2 * t1_ns) + 1 / tphi_ns)
    edge_error, edge_ns, per_cnot = {}, {}, set()
    for gate, couplings in snapshot["couplings"].items():
        for pair, error in couplings.items():
            a, b = (index[name] for name in pair.split("-"))
            edge = (min(a, b), max(a, b))
            if a in t2_us and b in t2_us and error < min(OUT_OF_USE, edge_error.get(edge, math.inf)):
                edge_error[edge], edge_ns[edge] = error, GOOGLE_GATE_NS[gate]
                per_cnot.add(GOOGLE_GATES_PER_CNOT[gate])
    if len(per_cnot) > 1:  # not so in any snapshot: sqrt_iswap and sycamore both take two
        raise ValueError(f"device profile {spec!r}: its native gates take different numbers per CNOT")
    date = re.search(r"(\d{4})_(\d{2})_(\d{2})", snapshot["file"])
    return Calibration(
        backend=device,
        date="-".join(date.groups()) if date else "",
        n_physical=len(labels),
        t1_us={q: values[q]["t1_us"] for q in usable},
        t2_us=t2_us,
        p0_given1={q: values[q]["p0_given1"] for q in usable},
        p1_given0={q: values[q]["p1_given0"] for q in usable},
        pulse_error={q: values[q]["rb_pauli_error"] for q in usable},
        pulse_ns={q: GOOGLE_ROTATION_NS for q in usable},
        two_qubit_error=edge_error,
        two_qubit_ns=edge_ns,
        labels=labels,
        errors="pauli",
        pulses_per_rotation=1,
        gates_per_cnot=per_cnot.pop() if per_cnot else 1,
    )


def choose_qubits(cal: Calibration, n_qubits: int, spec: str) -> tuple[int, ...]:
    """The connected ``n_qubits`` usable qubits of lowest cost (module doc), breadth-first.

    Raises
    ------
    ValueError
        No connected set of that size, naming ``spec``.
    """
    adj = cal.neighbours()
    beam = sorted((cal.readout(q), (q,)) for q in adj)
    for _ in range(n_qubits - 1):
        grown: dict[tuple[int, ...], float] = {}
        for cost, subset in beam:
            for u in subset:
                for v in adj[u]:
                    if v in subset:
                        continue
                    key = tuple(sorted((*subset, v)))
                    step = cal.two_qubit_error[(min(u, v), max(u, v))] + cal.readout(v)
                    grown[key] = min(grown.get(key, math.inf), cost + step)
        beam = sorted((cost, key) for key, cost in grown.items())[:BEAM_WIDTH]
    if not beam:
        raise ValueError(f"device profile {spec!r}: {cal.backend} has no connected set of {n_qubits} usable qubits "
                         f"(couplings with a gate error below {OUT_OF_USE})")
    return _breadth_first(beam[0][1], adj)


def _breadth_first(subset: tuple[int, ...], adj: dict[int, list[int]]) -> tuple[int, ...]:
    """``subset`` (connected) in breadth-first order from its lowest label."""
    inside = set(subset)
    order, queue = [min(subset)], [min(subset)]
    while queue:
        for v in adj[queue.pop(0)]:
            if v in inside and v not in order:
                order.append(v)
                queue.append(v)
    return tuple(order)


def _check_subset(cal: Calibration, qubits: tuple[int, ...], spec: str) -> None:
    """The named qubits must be distinct, on the device, usable and connected."""
    adj = cal.neighbours()
    if len(set(qubits)) != len(qubits):
        raise ValueError(f"device profile {spec!r}: a qubit is named twice")
    for q in qubits:
        if not 0 <= q < cal.n_physical:
            raise ValueError(f"device profile {spec!r}: qubit {q} is not on {cal.backend} "
                             f"(qubits 0-{cal.n_physical - 1})")
        if q not in adj:
            raise ValueError(f"device profile {spec!r}: qubit {cal.label(q)} of {cal.backend} is out of use "
                             f"(an error of {OUT_OF_USE} or more in its calibration)")
    if len(_breadth_first(qubits, adj)) != len(qubits):
        raise ValueError(f"device profile {spec!r}: qubits {', '.join(map(cal.label, qubits))} are not connected "
                         f"on {cal.backend}'s coupling map")


def _depolarizing(error: float, relaxation: np.ndarray, dim: int) -> float:
    """The depolarizing probability ``p`` that, composed with a Pauli ``relaxation`` channel
    (its probabilities, identity first), gives average gate infidelity ``error`` (module doc)."""
    relax_infidelity = (1.0 - relaxation[0]) * dim / (dim + 1)
    lam = dim * (error - relax_infidelity) / (dim * (1.0 - relax_infidelity) - 1.0)
    return max(0.0, lam) * (dim * dim - 1) / (dim * dim)


def _qubit_relaxation(cal: Calibration, q: int, gate_ns: float) -> np.ndarray:
    """Qubit ``q``'s Pauli-twirled relaxation over ``gate_ns`` (I, Z, X, Y)."""
    return relaxation_probs(cal.t1_us[q], cal.t2_us[q], gate_ns)


def _gate_depolarizing(cal: Calibration, error: float, relaxations: list[np.ndarray]) -> float:
    """The depolarizing part of a gate's calibrated ``error``, given the relaxation of each
    qubit it touches over its length: an average infidelity (IBM, :func:`_depolarizing`) or
    a Pauli error (Google: less each qubit's Pauli error of relaxation, as cirq-google does)."""
    if cal.errors == "pauli":
        return max(0.0, error - sum(1.0 - r[0] for r in relaxations))
    joint = relaxations[0] if len(relaxations) == 1 else np.outer(*relaxations).ravel()
    return _depolarizing(error, joint, 2 ** len(relaxations))


def _repeated(error: float, times: int) -> float:
    """The error of ``times`` gates of error ``error`` in a row."""
    return error if times == 1 else 1.0 - (1.0 - error) ** times


def _p2(cal: Calibration, edge: tuple[int, int]) -> float:
    """The depolarizing part of a CNOT's error on coupling ``edge`` (its native gates')."""
    a, b = edge
    ns = cal.gates_per_cnot * cal.two_qubit_ns[edge]
    error = _repeated(cal.two_qubit_error[edge], cal.gates_per_cnot)
    return _gate_depolarizing(cal, error, [_qubit_relaxation(cal, a, ns), _qubit_relaxation(cal, b, ns)])


def profile_numbers(cal: Calibration, qubits: tuple[int, ...]) -> dict[str, object]:
    """The :class:`~qfl.task.profiles.DeviceProfile` fields of ``qubits`` (in that order), less ``name``.

    Means over the subset's qubits and couplings; a single qubit, which has no coupling of
    its own, takes the device's median 2-qubit figures (no gate of its circuit uses them).
    """
    label = {q: i for i, q in enumerate(qubits)}
    edges = sorted(e for e in cal.two_qubit_error if e[0] in label and e[1] in label)
    rotation_ns = {q: cal.pulses_per_rotation * cal.pulse_ns[q] for q in qubits}
    p1 = [_gate_depolarizing(cal, _repeated(cal.pulse_error[q], cal.pulses_per_rotation),
                             [_qubit_relaxation(cal, q, rotation_ns[q])]) for q in qubits]
    if edges:
        p2 = np.mean([_p2(cal, e) for e in edges])
        ns_2q = cal.gates_per_cnot * np.mean([cal.two_qubit_ns[e] for e in edges])
    elif cal.two_qubit_error:
        p2 = np.median([_p2(cal, e) for e in cal.two_qubit_error])
        ns_2q = cal.gates_per_cnot * np.median(list(cal.two_qubit_ns.values()))
    else:  # a one-qubit device
        p2, ns_2q = 0.0, 0.0
    return {
        "platform": "superconducting",
        "p1": float(np.mean(p1)),
        "p2": float(p2),
        "t1_us": len(qubits) / sum(1.0 / cal.t1_us[q] for q in qubits),
        "t2_us": len(qubits) / sum(1.0 / cal.t2_us[q] for q in qubits),
        "gate_ns_1q": float(np.mean([rotation_ns[q] for q in qubits])),
        "gate_ns_2q": float(ns_2q),
        "readout_error": float(np.mean([cal.readout(q) for q in qubits])),
        "readout_asymmetry": float(np.mean([cal.p0_given1[q] - cal.p1_given0[q] for q in qubits])),
        "shots": 0,
        "n_qubits": len(qubits),
        "coupling": tuple((label[a], label[b]) for a, b in edges),
    }


def _parse(spec: str) -> tuple[str, str, tuple[str, ...] | None, str]:
    """``<prefix><device>[@qubits][:overrides]`` -> ``(prefix, device, qubit names or None, overrides)``."""
    spec = spec.strip()
    prefix = next(p for p in PREFIXES if spec.startswith(p))
    device, _, overrides = spec[len(prefix):].partition(":")
    backend, at, listed = device.partition("@")
    names = tuple(q.strip() for q in listed.split(",")) if at else None
    return prefix, backend.strip(), names, overrides


def _qubits_named(cal: Calibration, names: tuple[str, ...], spec: str) -> tuple[int, ...]:
    """The indices of the qubits a spec names: integers on IBM devices, ``row_col`` on Google's."""
    if not cal.labels:
        try:
            return tuple(int(q) for q in names)
        except ValueError as err:
            raise ValueError(f"device profile {spec!r}: the qubits after '@' must be integers, "
                             f"got {','.join(names)!r}") from err
    index = {name: i for i, name in enumerate(cal.labels)}
    unknown = [q for q in names if q not in index]
    if unknown:
        raise ValueError(f"device profile {spec!r}: no qubit {unknown[0]!r} on {cal.backend} (its qubits are "
                         f"named row_col: {', '.join(cal.labels[:4])}, ...)")
    return tuple(index[q] for q in names)


def calibrated_fields(spec: str, n_qubits: int | None = None) -> tuple[str, dict[str, object], str]:
    """The :class:`~qfl.task.profiles.DeviceProfile` of a real device's calibration snapshot
    (module doc), as ``(name, fields, overrides)``; :func:`qfl.task.profiles.get_profile`
    builds it and applies the overrides.

    Parameters
    ----------
    spec : str
        ``"ibm:<backend>[@q0,q1,...][:field=value,...]"`` or
        ``"google:<device>[@r_c,r_c,...][:field=value,...]"``.
    n_qubits : int, optional
        The run's register size: how many qubits to choose when the spec names none; with
        named qubits, at most their number (the run uses the first ``n_qubits``, which
        must be connected). Required when the spec names no qubits.

    Returns
    -------
    name : str
        ``"ibm:<backend>@<qubits>"`` (``"google:<device>@<qubits>"``): the chosen qubits written out.
    fields : dict
        The profile's other fields (:func:`profile_numbers`).
    overrides : str
        The spec's ``field=value,...`` part (``""`` if none).

    Raises
    ------
    ValueError
        The extra is missing (IBM), the device unknown (listing those known), a qubit invalid,
        out of use, or the subset not connected or too small; each naming ``spec``.

    Examples
    --------
    >>> calibrated_fields("ibm:torino", n_qubits=3)[0]
    'ibm:torino@28,29,36'
    """
    spec = spec.strip()
    prefix, backend, names, overrides = _parse(spec)
    cal = load_google_calibration(backend, spec) if prefix == GOOGLE_PREFIX else load_calibration(backend, spec)
    if names is None:
        if n_qubits is None:
            raise ValueError(f"device profile {spec!r}: name its qubits ('{prefix}{backend}@"
                             f"{','.join(map(cal.label, range(min(3, cal.n_physical))))}') "
                             "or give the run's n_qubits to choose them")
        qubits = choose_qubits(cal, n_qubits, spec)
    else:
        qubits = _qubits_named(cal, names, spec)
        _check_subset(cal, qubits, spec)
        if n_qubits is not None and n_qubits > len(qubits):
            raise ValueError(f"device profile {spec!r} has {len(qubits)} qubits, the run needs {n_qubits}")
        if n_qubits is not None and len(_breadth_first(qubits[:n_qubits], cal.neighbours())) != n_qubits:
            raise ValueError(f"device profile {spec!r}: the run uses its first {n_qubits} qubits, "
                             f"{', '.join(map(cal.label, qubits[:n_qubits]))}, which are not connected")
    return f"{prefix}{backend}@{','.join(map(cal.label, qubits))}", profile_numbers(cal, qubits), overrides
