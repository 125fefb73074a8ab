"""The quantum natural gradient against PennyLane's own optimiser, and the QFI's rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pennylane import numpy as pnp
from torch.nn import functional as F

from qfl.task.architecture import CircuitSpec
from qfl.task.model import PQCClassifier, make_circuit
from qfl.task.qml import qml
from qfl.task.qng import CircuitMetric, QNGOptimizer, effective_dimension
from qfl.task.train import train_local


def _our_step(model: PQCClassifier, x: np.ndarray, y: np.ndarray, lr: float, lam: float) -> np.ndarray:
    params = dict(model.named_parameters())
    opt = QNGOptimizer(params, model, lr, lam)
    opt.zero_grad()
    F.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    opt.step(torch.as_tensor(x))
    return model.weights.detach().numpy()


def _layer_blocks(shape: tuple[int, ...]) -> np.ndarray:
    """Which pairs of ``weights`` entries share a block: the same layer and rotation slot (every
    wire's first angle of a layer, every wire's second, ...), Stokes et al.'s layers."""
    layers, wires, slots = shape
    layer, _, slot = np.meshgrid(range(layers), range(wires), range(slots), indexing="ij")
    layer, slot = layer.ravel(), slot.ravel()
    return (layer[:, None] == layer[None, :]) & (slot[:, None] == slot[None, :])


def _pennylane_step(model: PQCClassifier, x: np.ndarray, y: np.ndarray, lr: float, lam: float,
                    start: np.ndarray) -> np.ndarray:
    """The same cost with the read-out held fixed; as ``metric_tensor_fn``, PennyLane's exact
    metric (``adjoint_metric_tensor``, another algorithm than ours) per sample, averaged over the
    batch, kept on the blocks of one layer's rotation slot (``_layer_blocks``) and zero elsewhere."""
    qnode = qml.QNode(make_circuit(model.n_qubits, model.n_layers, model.n_classes, model.kind, spec=model.circuit),
                      qml.device("default.qubit", wires=model.n_qubits), interface="autograd")
    blocks = _layer_blocks(tuple(start.shape))
    scale, bias = model.scale.detach().numpy().copy(), model.bias.detach().numpy().copy()
    rows = [pnp.array(r, requires_grad=False) for r in x]

    def cost(w):  # noqa: ANN001, ANN202
        total = 0.0
        for row, label in zip(rows, y):
            logits = scale * pnp.stack(qnode(row, w, None)) + bias
            total = total - (logits[label] - pnp.log(pnp.sum(pnp.exp(logits))))
        return total / len(rows)

    def metric(w):  # noqa: ANN001, ANN202
        exact = sum(qml.adjoint_metric_tensor(qnode)(row, w, None) for row in rows) / len(rows)
        exact = np.asarray(exact).reshape(start.size, start.size)
        return pnp.array(np.where(blocks, exact, 0.0).reshape(*start.shape, *start.shape))

    opt = qml.QNGOptimizer(stepsize=lr, approx="block-diag", lam=lam)
    return np.asarray(opt.step(cost, pnp.array(start, requires_grad=True), metric_tensor_fn=metric))


@pytest.mark.parametrize(("rows", "spec"), [(1, None), (3, None), (2, CircuitSpec(2, "line", "ryrz", False))])
def test_qng_step_matches_pennylanes_qng_optimizer(rows, spec):
    # Arrange: a 2-qubit, 2-layer classifier and a few samples
    model = PQCClassifier(n_qubits=2, n_layers=2, n_classes=2, seed=3, circuit=spec)
    with torch.no_grad():
        model.weights.normal_(0.0, 0.8, generator=torch.Generator().manual_seed(1))  # away from the identity
    rng = np.random.default_rng(7)
    x, y = rng.uniform(0, np.pi, size=(rows, 2)), rng.integers(0, 2, size=rows)
    start = model.weights.detach().numpy().copy()
    expected = _pennylane_step(model, x, y, lr=0.1, lam=0.01, start=start)

    # Act
    ours = _our_step(model, x, y, lr=0.1, lam=0.01)

    # Assert: the same step, and a step that is not the plain gradient's
    assert np.allclose(ours, expected, atol=1e-10)
    assert not np.allclose(ours, start)


def test_the_metric_is_pennylanes_block_diagonal_one_on_the_circuit_listed_layer_by_layer():
    # Arrange: 3 wires, 2 layers of Rot, a batch of 5
    model = PQCClassifier(n_qubits=3, n_layers=2, n_classes=2, seed=3)
    with torch.no_grad():
        model.weights.normal_(0.0, 0.8, generator=torch.Generator().manual_seed(2))
    metric = CircuitMetric(model)
    x, weights = np.random.default_rng(4).uniform(0, np.pi, size=(5, 3)), model.weights.detach().numpy()

    # Act: ours, and PennyLane's own processing of the same circuits, one row at a time
    ours = metric.block_diag(x, weights)
    tapes, post = qml.metric_tensor(metric.layered_tape(x, weights), approx="block-diag")
    results = qml.execute(tapes, qml.device("default.qubit", wires=3))
    theirs = sum(np.asarray(post([r[b] for r in results])) for b in range(len(x))) / len(x)

    # Assert: the same matrix; one circuit per layer and rotation slot (PennyLane's layering of the
    # model's own listing cuts each layer into more: one Rot per wire is RZ RY RZ of wire 0, then 1, ...)
    np.testing.assert_allclose(ours, metric._embed(theirs, metric.layered_positions), atol=1e-12)
    assert len(tapes) == 2 * 3
    assert len(qml.metric_tensor(metric._tape(x, weights), approx="block-diag")[0]) > len(tapes)


def test_qng_trains_and_adam_stays_the_default():
    # Arrange
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, np.pi, size=(12, 3)), rng.integers(0, 2, size=12)
    models = {name: PQCClassifier(n_qubits=3, n_layers=2, n_classes=2, seed=5) for name in ("default", "adam", "qng")}

    # Act
    out = {name: train_local(m, x, y, epochs=2, batch_size=6, learning_rate=0.05, seed=1,
                             **({} if name == "default" else {"optimizer": name, "qng_lam": 0.01}))
           for name, m in models.items()}

    # Assert
    assert torch.equal(models["default"].weights, models["adam"].weights)
    assert out["default"] == out["adam"]
    assert np.isfinite(out["qng"]["train-loss"]) and not torch.equal(models["qng"].weights, models["adam"].weights)


def test_effective_dimension_is_the_rank_of_the_qfi():
    # Arrange: a product circuit of RY gates has one direction per used angle; a deeper entangled
    # one more, bounded by the state's real dimension 2^(n+1) - 2
    product = PQCClassifier(n_qubits=2, n_layers=1, n_classes=2, seed=0, circuit=CircuitSpec(1, "none", "ry", True))
    deep = PQCClassifier(n_qubits=2, n_layers=3, n_classes=2, seed=0)

    # Act
    small, large = effective_dimension(product, probes=2), effective_dimension(deep, probes=2)

    # Assert
    assert small == 2.0
    assert small < large <= 2 ** 3 - 2


def test_each_replica_takes_its_own_qng_step():
    # Arrange: two replicas (train_local's noise replicas) at the same start, gradients g and 2 g
    model = PQCClassifier(n_qubits=2, n_layers=2, n_classes=2, seed=1)
    x = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = {n: torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(2))
             for n, p in model.named_parameters()}
    single = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    stacked = {n: p.detach().unsqueeze(0).repeat(2, *([1] * p.dim())).requires_grad_(True)
               for n, p in model.named_parameters()}
    for n in grads:
        single[n].grad, stacked[n].grad = grads[n].clone(), torch.stack([grads[n], 2 * grads[n]])

    # Act
    QNGOptimizer(single, model, 0.1, 0.01).step(x)
    QNGOptimizer(stacked, model, 0.1, 0.01, replicated=True).step(x)

    # Assert: replica 0 is the single step, replica 1 twice its move (the metric is the same)
    for n in grads:
        assert torch.allclose(stacked[n][0], single[n])
        assert torch.allclose(stacked[n][1] - getattr(model, n), 2 * (single[n] - getattr(model, n)))


def test_replicas_at_different_angles_each_get_their_own_metric():
    # Arrange: two replicas apart (a later step of a round), the same gradient: each must move
    # as a single model at its own angles does, with its own metric
    model = PQCClassifier(n_qubits=2, n_layers=2, n_classes=2, seed=1)
    x = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(model.weights.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    starts = [model.weights.detach().clone(), model.weights.detach().clone() + 0.7]
    stacked = {"weights": torch.stack(starts).requires_grad_(True)}
    stacked["weights"].grad = torch.stack([grad, grad])
    singles = [{"weights": w.clone().requires_grad_(True)} for w in starts]

    # Act
    QNGOptimizer(stacked, model, 0.1, 0.01, replicated=True).step(x)
    for single in singles:
        single["weights"].grad = grad.clone()
        QNGOptimizer(single, model, 0.1, 0.01).step(x)

    # Assert: each replica is its own single step, and the two moves differ (different metrics)
    for r, single in enumerate(singles):
        assert torch.allclose(stacked["weights"][r], single["weights"])
    moves = [single["weights"] - start for single, start in zip(singles, starts)]
    assert not torch.allclose(moves[0], moves[1])


@pytest.mark.parametrize("spec", [None, CircuitSpec(2, "ring", "rot", True)])
def test_the_full_metric_is_pennylanes_adjoint_metric_tensor(spec):
    # Arrange: PennyLane's exact metric of the same circuit at one input (another algorithm:
    # the adjoint method, gate by gate), against ours from the state's Jacobian
    model = PQCClassifier(n_qubits=3, n_layers=2, n_classes=2, seed=4, circuit=spec)
    qnode = qml.QNode(make_circuit(model.n_qubits, model.n_layers, model.n_classes, model.kind, spec=model.circuit),
                      qml.device("default.qubit", wires=model.n_qubits), interface="autograd")
    row = np.array([0.3, -1.1, 0.7])
    weights = model.weights.detach().numpy()

    # Act
    ours = CircuitMetric(model).full(row, weights)
    exact = np.asarray(qml.adjoint_metric_tensor(qnode)(pnp.array(row, requires_grad=False),
                                                        pnp.array(weights, requires_grad=True), None))

    # Assert: the same matrix, and not a trivial one
    np.testing.assert_allclose(ours, exact.reshape(weights.size, weights.size), atol=1e-12)
    assert np.linalg.matrix_rank(ours, tol=1e-8) > 2
