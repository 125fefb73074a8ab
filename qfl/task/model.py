"""The parameterised quantum circuit (PQC) classifier: PennyLane + torch.

Circuit on ``n`` qubits with ``L`` layers, for an input ``x``:

- angle data (``kind="angles"``, ``x`` of shape ``(n,)``): data re-uploading,

  .. math::

      U(x; \\theta) = \\prod_{l=L-1}^{0} W(\\theta_l)\\, R_Y(x),
      \\qquad R_Y(x) = \\bigotimes_i R_Y(x_i),

- state data (``kind="states"``, ``x`` of shape ``(2**n,)``): the state is prepared
  once, then the trainable layers act: :math:`U = \\prod_l W(\\theta_l)`.

Each trainable layer :math:`W(\\theta_l)` applies ``Rot(phi, theta, omega)`` on every
qubit followed by a ring of CNOTs ``(i, i+1 mod n)`` (a ``StronglyEntanglingLayers``
layer of range 1, written out so later transpilation sees plain gates).

Read-out: one Pauli-Z expectation per class, scaled and shifted by trainable
classical parameters into logits,

.. math:: \\mathrm{logit}_c = s_c \\langle Z_c \\rangle + b_c, \\qquad c < C \\le n .

Batches go through PennyLane's parameter broadcasting: one circuit execution
evaluates the whole batch (inputs of shape ``(B, n)`` or ``(B, 2**n)``).

On a simulated NISQ device (``profile``, see :mod:`qfl.task.noise`) the circuit is routed to
the device's coupling map, optionally mitigated (``mitigation``: zero-noise extrapolation by
folding, or probabilistic error cancellation, :mod:`qfl.task.pec`), run with sampled
Pauli-error trajectories, and read out with bit-flip error and finite shots.
With a trainable embedding (:func:`make_circuit`) a parameter ``embedding`` joins them.
Parameters (``torch.float64``) are named ``weights (L, n, 3)``, ``scale (C,)``,
``bias (C,)`` in the state dict that travels as Flower's ``ArrayRecord``.
"""

from __future__ import annotations

import numpy as np
import torch

from qfl.common.config import MITIGATIONS
from qfl.task.architecture import CircuitSpec
from qfl.task.noise import DeviceProfile, coupling_edges, pauli_trajectories, route
from qfl.task.pec import circuit_gamma, pec_trajectories
from qfl.task.qml import qml
from qfl.task.simulators import AUTO, choose_simulator, make_device, runs_noise_gates

WEIGHT_INIT_STD = 0.1  # near-identity initialisation avoids barren plateaus at start
SCALE_INIT = 2.0
ZNE_SCALE_FACTORS = (1.0, 3.0, 5.0)  # odd: global folding U (U^dag U)^k is exact
NO_MITIGATION, ZNE, PEC = MITIGATIONS


def entangling_layer(weights: torch.Tensor, wires: range) -> None:
    """One trainable layer: ``Rot`` on every wire, then a CNOT ring.

    ``weights`` has shape ``(n, 3)``.
    """
    n = len(wires)
    for i in wires:
        qml.Rot(weights[i, 0], weights[i, 1], weights[i, 2], wires=i)
    if n == 2:
        qml.CNOT(wires=[0, 1])
    elif n > 2:
        for i in wires:
            qml.CNOT(wires=[i, (i + 1) % n])


def rotation_layer(weights: torch.Tensor, wires: range, rotations: str) -> None:
    """The rotations of one layer (:data:`~qfl.task.architecture.ROTATIONS`): ``Rot(phi, theta,
    omega)``, ``RY(theta) RZ(omega)`` or ``RY(theta)`` on every wire; ``weights (n, 3)``, the
    angles a set does not use left alone."""
    for i in wires:
        if rotations == "rot":
            qml.Rot(weights[i, 0], weights[i, 1], weights[i, 2], wires=i)
        else:
            qml.RY(weights[i, 1], wires=i)
            if rotations == "ryrz":
                qml.RZ(weights[i, 2], wires=i)


def entangler_layer(wires: range, entangler: str) -> None:
    """The entangler after a layer's rotations (:data:`~qfl.task.architecture.ENTANGLERS`): a
    CNOT ring ``(i, i+1 mod n)``, a chain ``(i, i+1)``, or none."""
    n = len(wires)
    if entangler == "none" or n < 2:
        return
    if n == 2 or entangler == "line":
        for i in range(n - 1):
            qml.CNOT(wires=[i, i + 1])
    else:
        for i in wires:
            qml.CNOT(wires=[i, (i + 1) % n])


def variant_layer(weights: torch.Tensor, wires: range, spec: CircuitSpec) -> None:
    """One trainable layer of the circuit ``spec``; the built-in one is :func:`entangling_layer`."""
    if spec.rotations == "rot" and spec.entangler == "ring":
        entangling_layer(weights, wires)  # the built-in circuit, gate for gate
        return
    rotation_layer(weights, wires, spec.rotations)
    entangler_layer(wires, spec.entangler)


def make_circuit(n_qubits: int, n_layers: int, n_classes: int, kind: str, embedding: str = "fixed",
                 spec: CircuitSpec | None = None):
    r"""The circuit function ``(inputs, weights, embed) -> [<Z_0>, ..., <Z_{C-1}>]``.

    With ``embedding = "trainable"`` the data embedding learns too (Lloyd et al.,
    "Quantum embeddings for machine learning", 2020: train the embedding, not only the
    classifier): angle data are re-uploaded as :math:`R_Y(a_{l,i} x_i + b_{l,i})` with
    ``embed`` of shape ``(L, n, 2)`` (starting at :math:`a = 1, b = 0`, the fixed embedding);
    a state is followed by a trainable ``Rot`` on every wire, ``embed`` of shape ``(n, 3)``
    (starting at the identity). With ``"fixed"``, ``embed`` is not used.

    ``spec`` (:class:`~qfl.task.architecture.CircuitSpec`, its depth ``n_layers``) picks another
    member of the family: entangler, rotation set, and angle data encoded once instead of
    re-uploaded; ``None`` is the built-in circuit.
    """
    wires = range(n_qubits)
    trainable = embedding == "trainable"
    spec = CircuitSpec(n_layers) if spec is None else spec.with_layers(n_layers)

    def circuit(inputs: torch.Tensor, weights: torch.Tensor, embed: torch.Tensor | None = None):
        if kind == "states":
            qml.StatePrep(inputs, wires=wires, normalize=False)
            if trainable:
                for i in wires:
                    qml.Rot(embed[i, 0], embed[i, 1], embed[i, 2], wires=i)
            for layer in range(n_layers):
                variant_layer(weights[layer], wires, spec)
        else:
            for layer in range(n_layers):
                # RY(x_i) per wire, as AngleEmbedding, written out for routing
                for i in wires if spec.reupload or layer == 0 else ():
                    angle = embed[layer, i, 0] * inputs[..., i] + embed[layer, i, 1] if trainable else inputs[..., i]
                    qml.RY(angle, wires=i)
                variant_layer(weights[layer], wires, spec)
        return [qml.expval(qml.PauliZ(c)) for c in range(n_classes)]

    return circuit


def _check_circuit(n_qubits: int, n_classes: int, kind: str, embedding: str, profile: DeviceProfile | None,
                   mitigation: str) -> None:
    """Refuse a circuit that cannot be built, naming the argument."""
    if embedding not in ("fixed", "trainable"):
        raise ValueError(f"embedding must be 'fixed' or 'trainable', got {embedding!r}")
    if n_classes > n_qubits:
        raise ValueError(f"n_qubits={n_qubits} is too small for {n_classes} classes (one Pauli-Z read-out per class)")
    if kind not in ("angles", "states"):
        raise ValueError(f"kind must be 'angles' or 'states', got {kind!r}")
    if profile is not None and n_qubits > profile.n_qubits:
        raise ValueError(f"device profile {profile.name!r} has {profile.n_qubits} qubits, the circuit needs {n_qubits}")
    if mitigation not in MITIGATIONS:
        raise ValueError(f"mitigation must be one of {', '.join(MITIGATIONS)}, got {mitigation!r}")
    if mitigation == ZNE and kind == "states":
        raise ValueError("mitigation 'zne': global folding cannot invert a state preparation; use angle data")


def on_device(qnode: qml.QNode, n_qubits: int, profile: DeviceProfile | None, mitigation: str,
              rng: np.random.Generator) -> tuple[qml.QNode, qml.QNode]:
    """``(routed, as run)``: ``qnode`` routed to the profile's coupling map, and that circuit as
    the device runs it: folded for ZNE, then with Pauli noise trajectories drawn from ``rng``;
    or, with PEC, with the noise trajectories and PEC's sampled Paulis in one transform (whose
    circuit returns each element's signed weight after the expectations, :mod:`qfl.task.pec`).

    The transforms run in the order applied: route, then fold, then add noise, so that folded
    copies of the circuit collect their own noise, as on hardware. ``profile=None``: ideal.
    """
    if profile is None:
        return qnode, qnode
    edges = coupling_edges(profile.coupling, n_qubits)
    routed = route(qnode, coupling_map=edges) if edges is not None else qnode
    if mitigation == PEC:
        return routed, pec_trajectories(routed, profile=profile, rng=rng)
    run = routed
    if mitigation == ZNE:
        run = qml.noise.mitigate_with_zne(run, scale_factors=list(ZNE_SCALE_FACTORS), folding=qml.noise.fold_global,
                                          extrapolate=qml.noise.richardson_extrapolate)
    if profile.p1 > 0 or profile.p2 > 0 or not np.isinf(profile.t1_us) or not np.isinf(profile.t2_us):
        run = pauli_trajectories(run, profile=profile, rng=rng)
    return routed, run


class PQCClassifier(torch.nn.Module):
    """Multi-class PQC classifier with data re-uploading.

    Parameters
    ----------
    n_qubits : int
        Register size ``n``; must be ``>= n_classes``.
    n_layers : int
        Number of (re-uploading +) trainable layers ``L``.
    n_classes : int
        Number of classes ``C``: one Pauli-Z read-out per class.
    kind : str
        ``"angles"`` (classical features as rotation angles) or ``"states"``
        (amplitude vectors of length ``2**n``).
    device : str
        PennyLane device name: ``"default.qubit"`` (fast with broadcasting) or
        ``"lightning.qubit"`` (adjoint differentiation, for large ``n``), or ``"auto"``:
        the faster for ``n`` and the noise (:func:`qfl.task.simulators.choose_simulator`).
    diff_method : str
        PennyLane differentiation method; ``"best"`` picks backprop on
        ``default.qubit`` and adjoint on ``lightning.qubit``.
    seed : int
        Seed of the parameter initialisation and of the noise trajectories / shots.
    profile : DeviceProfile, optional
        Simulated device; ``None`` (or a noiseless all-to-all profile) is ideal.
    mitigation : str
        ``"none"``; ``"zne"``: zero-noise extrapolation (global folding at scale factors
        :data:`ZNE_SCALE_FACTORS`, Richardson extrapolation), 9x the gates per forward;
        ``"pec"``: probabilistic error cancellation (:mod:`qfl.task.pec`), one sampled
        circuit per sample, unbiased at :math:`\\gamma^2` times the variance, and read-out
        error undone.
    circuit : CircuitSpec, optional
        Another member of the circuit family (entangler, rotation set, re-uploading;
        :mod:`qfl.task.architecture`) at depth ``n_layers``; ``None``: the built-in circuit.
        The parameters keep their shapes whichever member it is.

    Examples
    --------
    >>> model = PQCClassifier(n_qubits=4, n_layers=2, n_classes=3)
    >>> model(torch.rand(8, 4, dtype=torch.float64)).shape
    torch.Size([8, 3])
    """

    def __init__(
        self,
        n_qubits: int,
        n_layers: int,
        n_classes: int,
        kind: str = "angles",
        device: str = AUTO,
        diff_method: str = "best",
        seed: int = 0,
        profile: DeviceProfile | None = None,
        mitigation: str = NO_MITIGATION,
        embedding: str = "fixed",
        circuit: CircuitSpec | None = None,
    ) -> None:
        super().__init__()
        _check_circuit(n_qubits, n_classes, kind, embedding, profile, mitigation)
        self.n_qubits, self.n_layers, self.n_classes, self.kind = n_qubits, n_layers, n_classes, kind
        self.circuit = CircuitSpec(n_layers) if circuit is None else circuit.with_layers(n_layers)
        self.embedding_kind, self.profile, self.mitigation = embedding, profile, mitigation
        self._init_parameters(seed)
        self.device_name, self.diff_method = choose_simulator(device, diff_method, n_qubits,
                                                              runs_noise_gates(profile, mitigation))
        self.ideal_qnode = qml.QNode(make_circuit(n_qubits, n_layers, n_classes, kind, embedding, self.circuit),
                                     make_device(self.device_name, n_qubits), interface="torch",
                                     diff_method=self.diff_method)
        self.noise_rng = np.random.default_rng([seed, 0x5EED])  # the trajectories' generator, reseeded in place
        self.routed_qnode, self.qnode = on_device(self.ideal_qnode, n_qubits, profile, mitigation, self.noise_rng)
        self.shot_gen = torch.Generator().manual_seed(seed + 0x5407)

    def _init_parameters(self, seed: int) -> None:
        """Rotation angles ``(L, n, 3)`` drawn from ``seed``, read-out scale and bias ``(C,)``, and,
        with a trainable embedding, its own parameters (federated like the others)."""
        gen = torch.Generator().manual_seed(seed)
        n, layers, classes = self.n_qubits, self.n_layers, self.n_classes
        self.weights = torch.nn.Parameter(WEIGHT_INIT_STD * torch.randn(layers, n, 3, generator=gen, dtype=torch.float64))
        self.scale = torch.nn.Parameter(torch.full((classes,), SCALE_INIT, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.zeros(classes, dtype=torch.float64))
        if self.embedding_kind == "trainable":
            start = (torch.tensor([1.0, 0.0], dtype=torch.float64).repeat(layers, n, 1) if self.kind == "angles"
                     else torch.zeros(n, 3, dtype=torch.float64))
            self.embedding = torch.nn.Parameter(start)
        else:
            self.register_buffer("embedding", torch.zeros(0, dtype=torch.float64), persistent=False)  # not a contract name

    def reseed_noise(self, seed: int) -> None:
        """Reseed the noise trajectories and shot sampling (parameters unchanged)."""
        # the noise transform holds this Generator: reseed it in place
        self.noise_rng.bit_generator.state = np.random.default_rng([seed, 0x5EED]).bit_generator.state
        self.shot_gen.manual_seed(seed + 0x5407)

    @property
    def zne(self) -> bool:
        """Whether the device runs zero-noise extrapolation (the ``zne`` claim of a reply)."""
        return self.mitigation == ZNE

    @property
    def is_noisy(self) -> bool:
        """Whether the device adds noise of any kind (gates, read-out or shots)."""
        return self.profile is not None and not self.profile.is_noiseless

    def routed_tape(self, x: torch.Tensor) -> qml.tape.QuantumScript:
        """The circuit for one input of ``x`` as routed to the device (before noise)."""
        return qml.workflow.construct_batch(self.routed_qnode, level="user")(x[:1], self.weights, self.embedding)[0][0]

    def routed_metrics(self, x: torch.Tensor) -> dict[str, int]:
        """Depth, gate, 2-qubit-gate and SWAP counts of the circuit as routed to the device."""
        from qfl.task.noise import circuit_metrics

        return circuit_metrics(self.routed_tape(x))

    def pec_gamma2(self, x: torch.Tensor) -> float:
        r""":math:`\gamma^2` of PEC on this device (gates and read-out, :func:`qfl.task.pec.circuit_gamma`):
        the factor PEC multiplies a sample's variance by; 1.0 without PEC. Cost: one tape
        construction, no execution."""
        if self.mitigation != PEC or self.profile is None:
            return 1.0
        return circuit_gamma(self.routed_tape(x), self.profile) ** 2

    def ideal_expvals(self, x: torch.Tensor) -> torch.Tensor:
        """Exact noiseless Pauli-Z expectations ``(B, C)`` of the same parameters."""
        return torch.stack(list(self.ideal_qnode(x, self.weights, self.embedding)), dim=-1)

    def device_expvals(self, inputs: torch.Tensor, weights: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Pauli-Z expectations ``(B, C)`` as the device reports them (after its mitigation),
        for inputs and circuit parameters already on the broadcast axis (:meth:`expvals`)."""
        out = list(self.qnode(inputs, weights, embed))
        pec_weight = out.pop() if self.mitigation == PEC and self.profile is not None else None
        out = torch.stack(out, dim=-1)
        if self.profile is None:
            return out
        readout = 1.0 - 2.0 * self.profile.readout_error
        offset = self.profile.readout_asymmetry  # p(0|1) - p(1|0): a biased read-out leans toward |0>
        out = out * readout + offset if offset else out * readout
        if self.profile.shots:
            # Estimate from `shots` samples; the gradient flows through the exact value
            # (straight-through), as a parameter-shift gradient would in expectation.
            p_up = ((1.0 + out.detach()) / 2).clamp(0.0, 1.0)
            counts = torch.binomial(torch.full_like(p_up, float(self.profile.shots)), p_up, generator=self.shot_gen)
            estimate = 2.0 * counts / self.profile.shots - 1.0
            out = out + (estimate - out.detach())
        if pec_weight is not None:
            # each sampled circuit's signed weight, then read-out undone: unbiased (qfl.task.pec)
            out = (out - offset if offset else out) * (pec_weight[..., None] / readout)
        return out

    def expvals(self, x: torch.Tensor) -> torch.Tensor:
        """Pauli-Z expectations, shape ``(B, C)`` for a batch ``x``, as the device reports them."""
        return self.device_expvals(x, self.weights, self.embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, C)``."""
        return self.expvals(x) * self.scale + self.bias

    def replica_logits(self, x: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                       embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(R, B, C)`` of ``R`` copies of the model with their own parameters (each
        with a leading axis ``R``: ``weights (R, L, n, 3)``, ...) on the same batch ``x``, in
        one broadcast execution of ``R * B`` circuits, each with its own noise draws.

        The circuit reads one angle per gate; given a trailing axis of length ``R * B``
        (element ``r * B + b``), every gate is broadcast along with the inputs, so the circuit
        function is unchanged. Gradients flow back to each copy's parameters.
        """
        copies, size = weights.shape[0], x.shape[0]

        def spread(param: torch.Tensor) -> torch.Tensor:  # (R, *shape) -> (*shape, R * B)
            return param.movedim(0, -1).repeat_interleave(size, dim=-1)

        embed = spread(embedding) if self.embedding_kind == "trainable" else self.embedding
        inputs = x.repeat(copies, *([1] * (x.dim() - 1)))
        values = self.device_expvals(inputs, spread(weights), embed).reshape(copies, size, self.n_classes)
        return values * scale[:, None, :] + bias[:, None, :]
