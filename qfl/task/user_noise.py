r"""A model of the user's own on a simulated device: its QNodes rebuilt with the profile's noise.

``model = "package.module:factory"`` returns a ``torch.nn.Module`` holding PennyLane QNodes,
typically as ``qml.qnn.TorchLayer`` s (their ``.qnode``). On a device profile with noise, or with
zero-noise extrapolation, :func:`on_device` finds every QNode held as an attribute of one of
the module's submodules (:func:`find_qnodes`) and puts in its place a :class:`DeviceQNode` that
runs the same circuit as the device would, with PennyLane's own transforms:

1. ``qml.transforms.decompose`` down to gates of at most two wires (templates such as
   ``AngleEmbedding`` or ``StronglyEntanglingLayers`` become their rotations and CNOTs; a
   leading state preparation is kept, as data loading);
2. ``qml.transforms.diagonalize_measurements``: every measurement in the computational basis,
   its basis change a gate like the others;
3. routing to the profile's coupling map (:func:`qfl.task.noise.route`, PennyLane's
   ``transpile``), as the built-in circuit is routed;
4. with ``mitigation = "zne"``: ``qml.noise.mitigate_with_zne``, global folding at the built-in
   circuit's scale factors (:data:`qfl.task.model.ZNE_SCALE_FACTORS`) and Richardson
   extrapolation, applied before the noise so that the folded copies collect their own;
5. the gate noise, ``qml.noise.add_noise`` with a ``qml.NoiseModel`` (:func:`gate_noise_model`):
   after every 1-qubit gate and every 2-qubit gate the Pauli channel the built-in circuit's
   trajectories sample there (:meth:`~qfl.task.profiles.DeviceProfile.pauli_probs_1q`,
   :meth:`~qfl.task.profiles.DeviceProfile.pauli_probs_2q`: depolarizing error composed with the
   Pauli-twirled relaxation over the gate's length; a SWAP routing added costs three 2-qubit
   gates' noise, as there), written as PennyLane ``PauliError`` channels (:func:`pauli_factors`);
6. read-out, ``qml.noise.insert`` at the end of every wire: ``qml.BitFlip(p_ro)``, or where the
   profile's read-out leans toward ``|0>`` ``qml.GeneralizedAmplitudeDamping`` with
   :math:`p(0|1)` and :math:`p(1|0)` (:func:`readout_channel`): on a Z-basis measurement the
   same :math:`\langle Z\rangle \to (1 - 2p_{ro})\langle Z\rangle + (p(0|1) - p(1|0))` as the
   built-in circuit's read-out;

and executes it on ``default.mixed`` (exact density matrices, backprop through torch). The
numbers are the profile's, so hand-typed profiles (:mod:`qfl.task.profiles`) and calibrated
ones (``ibm:<backend>``, :mod:`qfl.task.calibrated`) apply alike; on the built-in circuit written
as a user's TorchLayer the expectation values equal the exact-channel twin of the built-in
circuit's trajectories (:func:`qfl.task.noise.pauli_channels`;
``tests/task_tests/test_user_noise.py``).

A Pauli channel whose transfer eigenvalues are :math:`\lambda_b` (:func:`qfl.task.pec.pauli_eigenvalues`)
is a product of commuting ``PauliError(P_h, q_h)`` channels, one per non-identity Pauli
:math:`P_h`, when :math:`\log\lambda_b = \sum_h [P_h \text{ anticommutes with } P_b]\,\log(1 - 2q_h)`
has a solution with every :math:`q_h \in [0, 1/2)`; the profiles' channels (depolarizing
composed with twirled relaxation, both such products) always have one (:func:`pauli_factors`).

What does not apply, refused naming the key (:func:`check_user_device`; before round 1 by
``server.checks`` for the run's profiles, where the node builds its model for its own): PEC (its sampled
Pauli frames are the built-in circuit's trajectories; :class:`~qfl.common.config.RunConfig`),
finite ``shots`` (the density matrix gives exact expectations: the profile's shots are not
sampled), a circuit with more wires than the profile's qubits or than :data:`MAX_MIXED_WIRES`
(:data:`MAX_MIXED_WIRES_ZNE` with ZNE: a density matrix and backprop's stored states grow as
:math:`4^n`), a module that holds no
QNode as an attribute (a QNode only called from a closure cannot be found), measurements other
than ``expval``, ``var`` or ``probs``, and a circuit PennyLane cannot decompose, route or fold.

The device is exact: the update a client sends has no device randomness (its
``update-noise-var`` claim is 0), the device's noise is a bias, which its ``noise-contraction``
claim measures (:func:`user_noise_metrics`).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from qfl.common.config import KEY, MITIGATIONS
from qfl.common.contract import CIRCUIT_DEPTH, GATES, NOISE_CONTRACTION, NOISE_GAP, PEC_GAMMA2, SWAPS, TWO_QUBIT_GATES
from qfl.task.noise import _is_state_prep, circuit_metrics, coupling_edges, route
from qfl.task.pec import _commutation_signs, pauli_eigenvalues
from qfl.task.profiles import DeviceProfile
from qfl.task.qml import qml

NO_MITIGATION, ZNE, PEC = MITIGATIONS
MIXED_DEVICE = "default.mixed"
# the largest register a noisy user's circuit runs on: default.mixed holds 4^n amplitudes per sample and
# backprop keeps the state after every gate and channel. A training step of batch 32 (bench/user_noise.py,
# docs/usage.md): 6 wires 2.9 GiB; with ZNE's 9x gates 5 wires 5.9 GiB, and 6 wires were killed at 23 GiB
MAX_MIXED_WIRES = 6
MAX_MIXED_WIRES_ZNE = 5
PAULI_LETTERS = "IZXY"  # index 2x + z of X^x Z^z, as qfl.task.noise numbers them
CALIBRATION_INPUTS = 32  # rows of the contraction fit, as the built-in circuit's (qfl.task.noise_estimate)
MIN_CONTRACTION = 1e-3


class UserDeviceError(ValueError):
    """The device profile or mitigation cannot apply to the user's circuit; ``key`` names the run-config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# --- the noise model ------------------------------------------------------------------------


def pauli_factors(probs: np.ndarray) -> list[tuple[str, float]]:
    r"""The Pauli channel ``probs`` (``(4,)`` or ``(16,)``, indexed as in :mod:`qfl.task.noise`: one
    wire's ``2x + z``, two wires' ``4a + b``, ``a`` the first wire's) as ``(pauli word, q)`` pairs
    whose ``qml.PauliError(word, q)`` channels, applied in any order, compose to it; the pairs with
    ``q = 0`` left out.

    Raises
    ------
    ValueError
        The channel is no such product (an eigenvalue :math:`\le 0`, or a factor outside [0, 1/2)).
    """
    probs = np.asarray(probs, dtype=np.float64)
    k = {4: 1, 16: 2}[probs.shape[0]]
    eig = pauli_eigenvalues(probs)
    if np.any(eig <= 0):
        raise ValueError(f"the Pauli channel has a transfer eigenvalue {eig.min():.3g} <= 0: no product of Pauli errors")
    anticommute = (1.0 - _commutation_signs(k))[1:, 1:] / 2  # [P_b anticommutes with P_h], identity left out
    log_u = np.linalg.solve(anticommute, np.log(eig[1:]))
    q = (1.0 - np.exp(log_u)) / 2  # PauliError(P_h, q): eigenvalue 1 - 2q on the Paulis P_h anticommutes with
    if np.any(q < -1e-12) or np.any(q >= 0.5):
        raise ValueError("the Pauli channel is not a product of Pauli errors with probabilities in [0, 1/2)")
    words = [PAULI_LETTERS[h] if k == 1 else PAULI_LETTERS[h // 4] + PAULI_LETTERS[h % 4] for h in range(1, 4**k)]
    return [(word, float(max(p, 0.0))) for word, p in zip(words, q) if p > 1e-15]


def _errors(factors: list[tuple[str, float]], wires) -> None:  # noqa: ANN001
    for word, q in factors:
        qml.PauliError(word, q, wires=wires)


def gate_noise_model(profile: DeviceProfile) -> qml.NoiseModel:
    """A ``qml.NoiseModel`` that follows every gate with the profile's Pauli channel (module doc):
    a 1-qubit gate with :meth:`~qfl.task.profiles.DeviceProfile.pauli_probs_1q`, a 2-qubit gate with
    :meth:`~qfl.task.profiles.DeviceProfile.pauli_probs_2q`, a SWAP with that channel three times
    (the built-in circuit's cost of a routed SWAP). A state preparation gets none."""
    from qfl.task.profiles import _compose_2q

    one = pauli_factors(profile.pauli_probs_1q())
    p2 = profile.pauli_probs_2q()
    two = pauli_factors(p2)
    swap = pauli_factors(_compose_2q(_compose_2q(p2, p2), p2))

    def gate(op: qml.operation.Operator, wires: int) -> bool:
        return len(op.wires) == wires and not _is_state_prep(op)

    def after_one(op, **_):  # noqa: ANN001, ANN003, ANN202
        _errors(one, op.wires)

    def after_two(op, **_):  # noqa: ANN001, ANN003, ANN202
        _errors(swap if op.name == "SWAP" else two, op.wires)

    return qml.NoiseModel({qml.BooleanFn(lambda op: gate(op, 1)): after_one,
                           qml.BooleanFn(lambda op: gate(op, 2)): after_two})


def readout_channel(profile: DeviceProfile) -> tuple[type, tuple[float, ...]] | None:
    r"""The read-out error as a channel before a Z-basis measurement, ``(class, arguments)``:
    ``qml.BitFlip(p_ro)`` where it is symmetric, else ``qml.GeneralizedAmplitudeDamping(gamma, p)``
    with :math:`\gamma = p(0|1) + p(1|0) = 2p_{ro}` and :math:`p = p(1|0)/\gamma` (PennyLane's
    channel flips 0 to 1 with probability :math:`\gamma p` and 1 to 0 with :math:`\gamma (1 - p)`),
    whose diagonal is the read-out's confusion matrix; ``None`` without read-out error."""
    p_ro, lean = profile.readout_error, profile.readout_asymmetry
    if p_ro == 0:
        return None
    if lean == 0:
        return qml.BitFlip, (p_ro,)
    p1_given0 = p_ro - lean / 2  # lean = p(0|1) - p(1|0), p_ro their mean
    return qml.GeneralizedAmplitudeDamping, (2 * p_ro, p1_given0 / (2 * p_ro))


@qml.transform
def _batched_result(tape):  # noqa: ANN001, ANN201
    """PennyLane 0.45's ``mitigate_with_zne`` returns a broadcast circuit's single measurement as a
    tuple over the batch: stacked back here into the one batched value the circuit returns."""
    single = len(tape.measurements) == 1 and tape.batch_size

    def stacked(results):  # noqa: ANN001, ANN202
        out = results[0]
        if single and isinstance(out, (tuple, list)) and len(out) == tape.batch_size:
            return qml.math.stack(out)
        return out

    return [tape], stacked


def _stops(op: qml.operation.Operator) -> bool:
    """What decomposition keeps: a gate of at most two wires, or a state preparation (data loading)."""
    return _is_state_prep(op) or (len(op.wires) <= 2 and op.has_matrix)


def on_device(qnode: qml.QNode, profile: DeviceProfile, mitigation: str) -> tuple[qml.QNode, qml.QNode]:
    """``(routed, as run)``: ``qnode``'s circuit decomposed, measured in the Z basis and routed to
    the profile's coupling map, and that circuit as the device runs it: folded for ZNE, with the
    profile's gate noise and read-out error, on ``default.mixed`` (module doc)."""
    device = qml.device(MIXED_DEVICE, wires=qnode.device.wires)
    run = qnode.update(device=device, diff_method="backprop")
    run = qml.transforms.decompose(run, stopping_condition=_stops)
    run = qml.transforms.diagonalize_measurements(run)
    edges = coupling_edges(profile.coupling, len(qnode.device.wires))
    if edges is not None:
        run = route(run, coupling_map=edges)
    routed = run
    if mitigation == ZNE:
        from qfl.task.model import ZNE_SCALE_FACTORS

        run = _batched_result(run)  # its post-processing runs after ZNE's
        run = qml.noise.mitigate_with_zne(run, scale_factors=list(ZNE_SCALE_FACTORS), folding=qml.noise.fold_global,
                                          extrapolate=qml.noise.richardson_extrapolate)
    run = qml.noise.add_noise(run, gate_noise_model(profile))
    readout = readout_channel(profile)
    if readout is not None:
        channel, args = readout
        run = qml.noise.insert(run, channel, args if len(args) > 1 else args[0], position="end")
    return routed, run


# --- the user's module on the device -------------------------------------------------------


def find_qnodes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, qml.QNode]]:
    """Every QNode held as an attribute of ``module`` or one of its submodules (a TorchLayer's
    ``qnode``), as ``(owner, attribute, qnode)``: a QNode two submodules share, once for each."""
    return [(owner, name, value) for owner in module.modules() for name, value in list(vars(owner).items())
            if isinstance(value, qml.QNode)]


class DeviceQNode:
    """What stands where the user's QNode stood: runs the device's circuit (or, inside
    :meth:`UserDevice.ideal`, the user's own), and records its calls when asked to."""

    def __init__(self, ideal: qml.QNode, routed: qml.QNode, device: qml.QNode) -> None:
        self.ideal_qnode, self.routed, self.device = ideal, routed, device
        self.use_ideal = False
        self.calls: list[tuple[tuple, dict, object]] | None = None

    def __getattr__(self, name: str):  # noqa: ANN204 (what else the user's code reads of its QNode)
        ideal = self.__dict__.get("ideal_qnode")
        if ideal is None:
            raise AttributeError(name)
        return getattr(ideal, name)

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        if self.use_ideal:
            out = self.ideal_qnode(*args, **kwargs)
        else:
            with warnings.catch_warnings():
                # PennyLane 0.45's PauliError builds all four Pauli matrices in its parameter's dtype, and
                # casting Y to a real one warns although a word without Y never uses it
                warnings.filterwarnings("ignore", "Casting complex values to real", np.exceptions.ComplexWarning,
                                        r"autoray\.")
                out = self.device(*args, **kwargs)
        if self.calls is not None:
            self.calls.append((args, kwargs, out))
        return out


def _flat(result: object) -> torch.Tensor:
    """A QNode's result (a tensor, or a tuple of them) as one flat float64 vector."""
    if isinstance(result, (tuple, list)):
        return torch.cat([_flat(r) for r in result])
    return torch.as_tensor(result).reshape(-1).to(torch.float64)


@dataclass
class UserDevice:
    """The user's module with its QNodes on a device profile (:func:`attach`)."""

    profile: DeviceProfile
    mitigation: str
    qnodes: list[DeviceQNode]

    @contextmanager
    def ideal(self):  # noqa: ANN201
        """Run the user's own QNodes, noiselessly, inside the block."""
        for q in self.qnodes:
            q.use_ideal = True
        try:
            yield
        finally:
            for q in self.qnodes:
                q.use_ideal = False

    @contextmanager
    def recording(self):  # noqa: ANN201
        """Record every QNode call inside the block: ``[(device qnode, args, kwargs, result)]``."""
        calls: list = []
        for q in self.qnodes:
            q.calls = []
        try:
            yield calls
        finally:
            for q in self.qnodes:
                calls.extend((q, *c) for c in q.calls)
                q.calls = None


def check_user_device(qnodes: list[tuple[torch.nn.Module, str, qml.QNode]], profile: DeviceProfile,
                      mitigation: str) -> None:
    """Refuse, naming the key, a profile or mitigation that cannot apply to these QNodes (module doc)."""
    if mitigation == PEC:
        raise UserDeviceError(KEY.mitigation, "pec samples the built-in circuit's noise trajectories; a model of your "
                                              "own runs its circuit's exact noisy channels: use zne or none")
    if not qnodes:
        raise UserDeviceError(KEY.device_profiles, f"device profile {profile.name!r}: the model holds no PennyLane QNode "
                                                   "as an attribute (e.g. a qml.qnn.TorchLayer), so its circuit cannot be "
                                                   "put on the device")
    if profile.shots:
        raise UserDeviceError(KEY.device_profiles, f"device profile {profile.name!r} samples {profile.shots} shots; a model "
                                                   "of your own runs exact expectations of its noisy channels (set "
                                                   "shots=0)")
    for _, name, qnode in qnodes:
        wires = len(qnode.device.wires)
        if wires > profile.n_qubits:
            raise UserDeviceError(KEY.device_profiles, f"device profile {profile.name!r} has {profile.n_qubits} qubits; "
                                                       f"the model's QNode {name!r} uses {wires} wires")
        if wires > MAX_MIXED_WIRES:
            raise UserDeviceError(KEY.device_profiles, f"device profile {profile.name!r}: the model's QNode {name!r} uses "
                                                       f"{wires} wires; a model of your own runs noisy on {MIXED_DEVICE}, "
                                                       f"at most {MAX_MIXED_WIRES} wires")
        if mitigation == ZNE and wires > MAX_MIXED_WIRES_ZNE:
            raise UserDeviceError(KEY.mitigation, f"zne folds the model's QNode {name!r} to 9x its gates on "
                                                  f"{MIXED_DEVICE}: at most {MAX_MIXED_WIRES_ZNE} wires, it uses {wires}")
        if isinstance(profile.coupling, tuple) or profile.coupling != "all-to-all":
            if list(qnode.device.wires) != list(range(wires)):
                raise UserDeviceError(KEY.device_profiles, f"device profile {profile.name!r} routes to its coupling map, "
                                                           f"which needs wires 0..{wires - 1}; the model's QNode {name!r} "
                                                           f"has wires {list(qnode.device.wires)}")


def attach(module: torch.nn.Module, profile: DeviceProfile, mitigation: str) -> UserDevice | None:
    """Put ``module``'s QNodes on the device (module doc), in place; ``None`` where nothing changes
    (a noiseless profile without mitigation: the user's own QNodes run as they are).

    Raises
    ------
    UserDeviceError
        What cannot apply, naming the key.
    """
    if profile.is_noiseless and mitigation == NO_MITIGATION:
        return None
    qnodes = find_qnodes(module)
    check_user_device(qnodes, profile, mitigation)
    replaced: dict[int, DeviceQNode] = {}  # one device QNode for each of the user's, wherever it is held
    for owner, name, qnode in qnodes:
        if id(qnode) not in replaced:
            replaced[id(qnode)] = DeviceQNode(qnode, *on_device(qnode, profile, mitigation))
        setattr(owner, name, replaced[id(qnode)])
    return UserDevice(profile, mitigation, list(replaced.values()))


def check_measurements(device: UserDevice, calls: list) -> None:
    """Refuse measurements the read-out model does not cover (after the first forward pass)."""
    allowed = (qml.measurements.ExpectationMP, qml.measurements.VarianceMP, qml.measurements.ProbabilityMP)
    for q, args, kwargs, _ in calls:
        tape = qml.workflow.construct_batch(q.ideal_qnode, level="top")(*args, **kwargs)[0][0]
        bad = [type(m).__name__ for m in tape.measurements if not isinstance(m, allowed)]
        if bad:
            raise UserDeviceError(KEY.device_profiles, f"device profile {device.profile.name!r}: the model's circuit "
                                                       f"returns {', '.join(bad)}; on a device it may return expval, var "
                                                       "or probs")


# --- what a client measures of it ----------------------------------------------------------


def user_noise_metrics(model, x: np.ndarray, y: np.ndarray, regression: bool = False) -> dict[str, float]:  # noqa: ANN001
    """A user's model's noise claims and circuit metrics on its device: ``noise-gap`` (noiseless
    minus noisy accuracy, regression :math:`R^2`, on the local data), ``noise-contraction`` (the
    built-in circuit's fit through the origin, :mod:`qfl.task.noise_estimate`, of the QNodes'
    device outputs on their noiseless ones for the first :data:`CALIBRATION_INPUTS` rows, the read-out's
    offset taken off as for a ``<Z>``; one evaluation each, the device being exact),
    ``pec-gamma2`` 1, and the routed circuits' depth, gates, 2-qubit gates and SWAPs (summed over
    the QNodes a forward pass of one row runs). Ideal: zeros and 1."""
    from qfl.task.train import evaluate

    device = model.device
    if device is None:
        return {CIRCUIT_DEPTH: 0.0, GATES: 0.0, TWO_QUBIT_GATES: 0.0, SWAPS: 0.0, NOISE_GAP: 0.0,
                NOISE_CONTRACTION: 1.0, PEC_GAMMA2: 1.0}
    xt = torch.as_tensor(x)
    out = {k: 0.0 for k in (CIRCUIT_DEPTH, GATES, TWO_QUBIT_GATES, SWAPS)}
    with torch.no_grad(), device.recording() as calls:
        model(xt[:1])
    for q, args, kwargs, _ in calls:
        tape = qml.workflow.construct_batch(q.routed, level="user")(*args, **kwargs)[0][0]
        for key, value in circuit_metrics(tape).items():
            out[key] += float(value)
    out[PEC_GAMMA2] = 1.0
    out[NOISE_CONTRACTION] = contraction(model, xt[:CALIBRATION_INPUTS])
    with device.ideal():
        ideal = evaluate(model, x, y, regression=regression)["accuracy"]
    out[NOISE_GAP] = ideal - evaluate(model, x, y, regression=regression)["accuracy"]
    return out


@torch.no_grad()
def contraction(model, x: torch.Tensor) -> float:  # noqa: ANN001
    """The factor :math:`c \\in (0, 1]` by which the device shrinks the QNodes' outputs on ``x``
    (:func:`user_noise_metrics`); 1.0 on a noiseless device."""
    device = model.device
    if device is None or device.profile.is_noiseless:
        return 1.0
    with device.recording() as calls:
        model(x)
    noisy = [_flat(result) - device.profile.readout_asymmetry for _, _, _, result in calls]
    ideal = [_flat(q.ideal_qnode(*args, **kwargs)) for q, args, kwargs, _ in calls]
    if not noisy:
        return 1.0
    noisy_v, ideal_v = torch.cat(noisy), torch.cat(ideal)
    norm = float((ideal_v**2).sum())
    if norm == 0.0 or not math.isfinite(norm):
        return 1.0
    return float(min(1.0, max(MIN_CONTRACTION, float((noisy_v * ideal_v).sum()) / norm)))
