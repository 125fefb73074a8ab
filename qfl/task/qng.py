r"""Quantum natural gradient (QNG) and the quantum Fisher information of a client's circuit.

The quantum natural gradient (Stokes, Izaac, Killoran, Carleo, "Quantum Natural Gradient",
Quantum 4, 269 (2020)) preconditions the gradient by the Fubini-Study metric tensor
:math:`g` of the circuit's state, the quantum Fisher information (QFI) over four:

.. math::

    \theta \leftarrow \theta - \eta\, (g(\theta) + \lambda I)^{+}\, \nabla_\theta \mathcal{L}(\theta),

with :math:`^{+}` the pseudo-inverse and :math:`\lambda \ge 0` a regularisation, exactly the
step of PennyLane's :class:`~pennylane.QNGOptimizer` (``stepsize`` :math:`\eta`, ``lam``
:math:`\lambda`) with this metric. The metric is the block-diagonal one of the noiseless circuit
(a pure state): the circuits of PennyLane's :func:`pennylane.metric_tensor` with
``approx="block-diag"``, run on every sample of the mini-batch in one broadcast execution, and
averaged over the batch (the data are re-uploaded, so the metric depends on the input). Its
blocks are whole layers: the transform cuts its blocks greedily in the order a tape lists the
trainable gates (``CircuitGraph.parametrized_layers``), and a circuit that writes one ``Rot``
per wire lists ``RZ RY RZ`` of wire 0, then of wire 1, ...: 9 blocks and 9 circuits a layer on 4
wires. :func:`layerwise` lists the same gates (the same unitary) layer by layer, so that a block
holds one rotation slot of a layer on every wire: 3 blocks and 3 circuits a layer, the
couplings between wires within a slot kept. The rotation
angles (``weights``) take the QNG step; the classical read-out and a trainable embedding, for
which the circuit's metric says nothing, take a plain gradient step of the same size.

:func:`effective_dimension` counts the directions of parameter space that move the state:
the rank of the QFI (Haug, Bharti, Kim, "Capacity and quantum geometry of parametrized quantum
circuits", PRX Quantum 2, 040309 (2021), their effective quantum dimension), with the full
metric from the state's Jacobian (:meth:`CircuitMetric.full`: what
:func:`pennylane.adjoint_metric_tensor` computes: 0.17 s against 1.44 s for a client's two
probes at 4 qubits and 6 layers).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import block_diag as scipy_block_diag

from qfl.task.model import PQCClassifier, make_circuit
from qfl.task.qml import qml
from qfl.task.simulators import make_device

QFI_RANK_TOL = 1e-8  # an eigenvalue of the Fubini-Study metric above this counts as a direction
EFFECTIVE_DIMENSION_PROBES = 2  # inputs the rank is averaged over (data-independent, seeded)
CODE_OFFSET = 1e6  # marks the angles of `weights` in a tape (inputs and embeddings stay below it)


class CircuitMetric:
    """The Fubini-Study metric of a model's rotation angles, from PennyLane's transforms.

    Parameters
    ----------
    model : PQCClassifier
        Its circuit (member of the family, depth, embedding) is rebuilt noiselessly on
        ``default.qubit`` with NumPy parameters; the model itself is not touched.
    """

    def __init__(self, model: PQCClassifier) -> None:
        self.model = model
        self.shape = tuple(model.weights.shape)
        circuit = make_circuit(model.n_qubits, model.n_layers, model.n_classes, model.kind, model.embedding_kind,
                               model.circuit)
        self.qnode = qml.QNode(circuit, make_device("default.qubit", model.n_qubits), interface="autograd")
        # which entry of `weights` each trainable gate parameter is, in the tape's order
        code = np.arange(int(np.prod(self.shape)), dtype=np.float64).reshape(self.shape)
        probe = np.zeros((1, model.n_qubits) if model.kind == "angles" else (1, 2**model.n_qubits))
        if model.kind == "states":
            probe[0, 0] = 1.0
        tape = self._tape(probe[0], code)
        self.positions = np.rint(np.array(tape.get_parameters(trainable_only=True), dtype=np.float64)).astype(int)
        # the same with every Rot written as RZ RY RZ (same angles, same order), for the adjoint
        # metric: which of that tape's parameters are angles of `weights` (inputs are below the code)
        marked = self._plain(self._tape(probe[0], code + CODE_OFFSET))
        self.expanded_trainable = [i for i, v in enumerate(marked.get_parameters(trainable_only=False))
                                   if np.ndim(v) == 0 and v >= CODE_OFFSET]
        # the same, listed layer by layer (`layerwise`) for the block-diagonal metric: which tape
        # parameters are angles of `weights`, and which entry each one is
        layered = layerwise(marked, self.expanded_trainable)
        values = layered.get_parameters(trainable_only=False)
        self.layered_trainable = [i for i, v in enumerate(values) if np.ndim(v) == 0 and v >= CODE_OFFSET]
        self.layered_positions = np.rint([values[i] - CODE_OFFSET for i in self.layered_trainable]).astype(int)
        layered.trainable_params = self.layered_trainable
        self.readouts = layer_readouts(layered)  # the structure's, whatever the angles

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def _tape(self, x: np.ndarray, weights: np.ndarray):  # noqa: ANN202
        from pennylane import numpy as pnp

        embed = self.model.embedding.detach().numpy()
        args = (pnp.array(x, requires_grad=False), pnp.array(weights, requires_grad=True),
                pnp.array(embed, requires_grad=False))
        return qml.workflow.construct_batch(self.qnode, level="user")(*args)[0][0]

    def _embed(self, block: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """A metric over the tape's parameters as one over every entry of ``weights``."""
        positions = self.positions if positions is None else positions
        full = np.zeros((self.size, self.size))
        full[np.ix_(positions, positions)] = block
        return full

    def block_diag(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``(d, d)`` block-diagonal metric at ``weights``, averaged over the rows of ``x``.

        The circuits are PennyLane's (``qml.metric_tensor(approx="block-diag")`` on the circuit
        listed by :func:`layerwise`, one broadcast execution for the whole batch); each block is
        the covariance of its layer's generators in the state before the layer, read from those
        circuits' probabilities for every row at once (:func:`layer_covariance`) where
        PennyLane's own processing takes one row at a time (``qml.math.cov_matrix``; 10-30 ms a
        row at 6 layers, most of a step). ``tests/task_tests/test_qng.py`` checks the blocks
        against PennyLane's exact metric (``adjoint_metric_tensor``)."""
        tapes, _ = qml.metric_tensor(self.layered_tape(x, weights), approx="block-diag")
        results = qml.execute(tapes, self.qnode.device, diff_method=None)  # NumPy throughout: nothing to trace
        blocks = [layer_covariance(np.atleast_2d(probs), *readout)
                  for probs, readout in zip(results, self.readouts, strict=True)]
        return self._embed(scipy_block_diag(*blocks), self.layered_positions)

    def layered_tape(self, x: np.ndarray, weights: np.ndarray):  # noqa: ANN201 (QuantumScript)
        """The circuit at ``weights`` on the rows of ``x`` (one broadcast tape), listed by
        :func:`layerwise`, NumPy parameters, the angles of ``weights`` its trainable ones."""
        x = np.asarray(x, dtype=np.float64)
        tape = layerwise(self._plain(self._tape(x if x.ndim == 1 or len(x) > 1 else x[0], weights)),
                         self.expanded_trainable)
        tape.trainable_params = self.layered_trainable
        return tape

    @staticmethod
    def _plain(tape):  # noqa: ANN001, ANN205
        """``tape`` with every ``Rot`` decomposed and NumPy parameters (PennyLane's adjoint metric
        tensor on autograd arrays spends seconds in scatter-adds)."""
        ops = [d for op in tape.operations for d in (op.decomposition() if op.name == "Rot" else [op])]
        expanded = tape.copy(operations=ops)
        values = expanded.get_parameters(trainable_only=False)
        return expanded.bind_new_parameters([np.asarray(v, dtype=np.float64) for v in values], list(range(len(values))))

    def full(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        r"""``(d, d)`` full metric at one input ``x``: :math:`g = \mathrm{Re}(J^\dagger J - J^\dagger
        \psi\, \psi^\dagger J)`, with :math:`J = \partial\psi/\partial\theta` the Jacobian of the
        circuit's state, from torch's vectorised autograd through PennyLane's ``default.qubit``.

        The same matrix as :func:`pennylane.adjoint_metric_tensor` (``tests/task_tests/test_qng.py``
        checks it to 1e-12), which applies the circuit's gates one Python call at a time, a
        number of times quadratic in the parameters: 0.78 s a probe at 4 qubits and 6 layers
        (72 angles) against 0.12 s here, once torch has traced the vectorised backward pass.
        """
        tape = self._plain(self._tape(x, weights)).copy(measurements=[qml.state()])
        values = [torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in tape.get_parameters(trainable_only=False)]
        trainable = self.expanded_trainable
        device = self.qnode.device

        def state(theta: torch.Tensor) -> torch.Tensor:
            params = list(values)
            for k, i in enumerate(trainable):
                params[i] = theta[k]
            bound = tape.bind_new_parameters(params, list(range(len(params))))
            return torch.view_as_real(qml.execute([bound], device, diff_method="backprop")[0]).reshape(-1)

        theta = torch.stack([values[i] for i in trainable])
        with torch.no_grad():
            pairs = state(theta)
        jac = torch.autograd.functional.jacobian(state, theta, vectorize=True).numpy()
        pairs = pairs.numpy()
        psi, jac = pairs[0::2] + 1j * pairs[1::2], jac[0::2] + 1j * jac[1::2]
        overlaps = jac.conj().T @ psi
        return self._embed(np.real(jac.conj().T @ jac - np.outer(overlaps, overlaps.conj())))


def layerwise(tape, trainable: list[int]):  # noqa: ANN001, ANN201 (QuantumScript -> QuantumScript)
    """``tape``'s gates listed layer by layer: each trainable gate after every trainable gate it
    depends on, as early as that allows; the same unitary and measurements.

    A gate's layer is one more than the deepest trainable gate before it on any of its wires
    (a gate that is not trainable, an entangler or an input's rotation, takes that depth and
    adds none); the gates are listed by layer, ties in their order in ``tape``. Every gate
    still follows every gate it shares a wire with and came after, so the unitary is the
    same; trainable gates of one layer never depend on each other, and PennyLane's
    block-diagonal metric, which cuts a block wherever a gate depends on the block so far,
    gets one block per layer. ``trainable``: the indices of the tape's trainable parameters.
    """
    trainable_ops, index = set(), 0
    for op in tape.operations:
        if any(index + k in trainable for k in range(op.num_params)):
            trainable_ops.add(id(op))
        index += op.num_params
    depth_on_wire: dict = {}
    layered = []
    for order, op in enumerate(tape.operations):
        depth = max((depth_on_wire.get(w, 0) for w in op.wires), default=0) + (id(op) in trainable_ops)
        for w in op.wires:
            depth_on_wire[w] = depth
        layered.append((depth, order, op))
    return tape.copy(operations=[op for _, _, op in sorted(layered, key=lambda item: item[:2])])


def layer_readouts(tape) -> list[tuple[np.ndarray, np.ndarray]]:  # noqa: ANN001 (QuantumScript)
    """Per circuit of PennyLane's block-diagonal metric of ``tape`` (its layers with a trainable
    gate, in order: ``CircuitGraph.iterate_parametrized_layers``), what its probabilities are read
    with: each trainable gate's generator (``qml.generator``: observable :math:`G_i`, prefactor
    :math:`c_i`) as its value on every outcome over ``tape.wires`` (``(2**n, k)``; the circuit
    ends in the generators' common eigenbasis, where :math:`G_i` is diagonal with the eigenvalues
    ``G_i.eigvals()`` over its own wires), and the prefactors ``(k,)``."""
    trainable, wires = set(tape.trainable_params), tape.wires
    n, outcomes = len(wires), np.arange(2 ** len(tape.wires))
    readouts = []
    for _, ops, param_indices, _ in tape.graph.iterate_parametrized_layers():
        generators = [qml.generator(op, format="prefactor") for p, op in zip(param_indices, ops, strict=True)
                      if p in trainable]
        if not generators:
            continue  # no circuit for this layer
        columns = []
        for observable, _ in generators:
            positions = [wires.index(w) for w in observable.wires]
            local = sum(((outcomes >> (n - 1 - pos)) & 1) << (len(positions) - 1 - j) for j, pos in enumerate(positions))
            columns.append(np.asarray(observable.eigvals(), dtype=np.float64)[local])
        readouts.append((np.stack(columns, axis=1), np.array([c for _, c in generators], dtype=np.float64)))
    return readouts


def layer_covariance(probs: np.ndarray, values: np.ndarray, prefactors: np.ndarray) -> np.ndarray:
    r"""One block of the metric, averaged over a batch: :math:`c_i c_j \overline{(\langle G_i G_j
    \rangle - \langle G_i\rangle \langle G_j\rangle)}`, the mean over the rows of what PennyLane's
    processing (``qml.math.cov_matrix``) computes for one row at a time.

    ``probs`` ``(B, 2**n)``: each row's probabilities of one metric circuit; ``values``,
    ``prefactors``: that circuit's :func:`layer_readouts`.
    """
    means = probs @ values  # (B, k)
    second = np.einsum("bo,oi,oj->ij", probs, values, values) / len(probs)
    return np.outer(prefactors, prefactors) * (second - means.T @ means / len(probs))


def natural_direction(metric: np.ndarray, grad: np.ndarray, lam: float) -> np.ndarray:
    """:math:`(g + \\lambda I)^{+} \\nabla`, as :class:`pennylane.QNGOptimizer` computes it."""
    return np.linalg.pinv(metric + lam * np.eye(len(metric))) @ grad


class QNGOptimizer:
    """Quantum natural gradient for the model's ``weights``, plain gradient steps for the rest.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        The parameters it steps, by the model's names; with a leading replica axis ``R``
        (:func:`qfl.task.train.train_local`'s replicas) each replica gets its own metric.
    model : PQCClassifier
    lr : float
        Step size :math:`\\eta`.
    lam : float
        Regularisation :math:`\\lambda` of the metric.
    replicated : bool
        Whether ``params`` carry the leading replica axis.
    """

    def __init__(self, params: dict[str, torch.Tensor], model: PQCClassifier, lr: float, lam: float = 0.0,
                 replicated: bool = False) -> None:
        if not lr > 0 or not lam >= 0:
            raise ValueError(f"QNG needs lr > 0 and lam >= 0, got lr={lr!r}, lam={lam!r}")
        self.params, self.lr, self.lam, self.replicated = params, float(lr), float(lam), replicated
        self.metric = CircuitMetric(model)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> None:
        """One step from the gradients in ``.grad``, the metric measured on the batch ``x``."""
        inputs = x.detach().numpy()
        for name, p in self.params.items():
            if p.grad is None:
                continue
            if name != "weights":  # not a contract name: the model's rotation angles
                p -= self.lr * p.grad
                continue
            known: list[tuple[np.ndarray, np.ndarray]] = []  # replicas at the same angles share one metric
            for r, (value, grad) in enumerate(zip(*((p, p.grad) if self.replicated else ([p], [p.grad])))):
                angles = value.detach().numpy()
                g = next((m for a, m in known if np.array_equal(a, angles)), None)
                if g is None:  # the replicas start each round at the same angles: one metric for all there
                    g = self.metric.block_diag(inputs, angles)
                    known.append((angles.copy(), g))
                step = natural_direction(g, grad.detach().numpy().ravel(), self.lam).reshape(value.shape)
                (p[r] if self.replicated else p).sub_(self.lr * torch.as_tensor(step, dtype=p.dtype))


def probe_inputs(model: PQCClassifier, count: int, seed: int) -> np.ndarray:
    """``count`` seeded inputs independent of any data: angles uniform in ``[0, pi)``, or real
    unit state vectors."""
    rng = np.random.default_rng([seed, 0xEFD1])
    if model.kind == "angles":
        return rng.uniform(0.0, np.pi, size=(count, model.n_qubits))
    states = rng.normal(size=(count, 2**model.n_qubits))
    return states / np.linalg.norm(states, axis=1, keepdims=True)


def effective_dimension(model: PQCClassifier, probes: int = EFFECTIVE_DIMENSION_PROBES, seed: int = 0,
                        tol: float = QFI_RANK_TOL) -> float:
    """The rank of the QFI of the model's rotation angles at its current parameters, averaged
    over ``probes`` data-independent inputs (:func:`probe_inputs`): how many independent
    directions the circuit's state can move in (Haug et al. 2021). At most the number of
    angles the circuit uses, and at most :math:`2^{n+1} - 2` (a pure state's real dimension).

    Cost: one full, exact, noiseless metric per probe (:meth:`CircuitMetric.full`, 0.12 s at 4
    qubits and 6 layers).
    """
    metric = CircuitMetric(model)
    weights = model.weights.detach().numpy()
    ranks = [int((np.linalg.eigvalsh(metric.full(x, weights)) > tol).sum()) for x in probe_inputs(model, probes, seed)]
    return float(np.mean(ranks))
