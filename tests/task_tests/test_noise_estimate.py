"""A client's measurements of its own noise against the truth.

``update-noise-var`` against the spread of the same local training repeated with independent
device seeds; ``noise-contraction`` against the same fit on exact noisy expectations
(``default.mixed``, the channels as Kraus operators)."""

from __future__ import annotations

import numpy as np
import pennylane as qml
import pytest
import torch

from qfl.common.contract import UPDATE_NOISE_VAR
from qfl.task.model import PQCClassifier, make_circuit
from qfl.task.noise import coupling_edges, get_profile, pauli_channels, route
from qfl.task.noise_estimate import CALIBRATION_INPUTS, noise_contraction, update_noise_variance
from qfl.task.train import NOISE_REPLICAS, train_local

N_QUBITS, N_LAYERS, N_CLASSES = 3, 2, 3
TRAINING = {"epochs": 2, "batch_size": 8, "learning_rate": 0.05}


def _data(seed: int, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, np.pi, size=(n, N_QUBITS)), rng.integers(0, N_CLASSES, size=n)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _repeated_updates(model: PQCClassifier, x, y, seeds) -> torch.Tensor:  # noqa: ANN001
    """``(M, d)``: the update of the same training (same start, same data order), once per
    device seed."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before = _flat(model)
    updates = []
    for seed in seeds:
        model.load_state_dict(start)
        model.reseed_noise(seed)
        train_local(model, x, y, seed=0, **TRAINING)
        updates.append(_flat(model) - before)
    model.load_state_dict(start)
    return torch.stack(updates)


@pytest.mark.parametrize("spec, mitigation", [("noisy-nisq", "none"),  # gate noise trajectories, read-out
                                              ("ibm-eagle:shots=128", "none"),  # and shot noise
                                              ("ibm-heron:shots=256", "pec")])  # and PEC's sampled circuits
def test_update_noise_var_agrees_with_the_spread_of_repeated_training(spec, mitigation):
    x, y = _data(1)
    model = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=1, profile=get_profile(spec), mitigation=mitigation)
    true_var = float(_repeated_updates(model, x, y, range(100, 132)).var(dim=0, unbiased=True).mean())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    estimates = []
    for seed in range(8):  # the client's estimate, from 8 rounds' worth of replicated trainings
        model.load_state_dict(start)
        model.reseed_noise(500 + seed)
        metrics = train_local(model, x, y, seed=0, noise_replicas=NOISE_REPLICAS, **TRAINING)
        estimates.append(metrics[UPDATE_NOISE_VAR])
    assert true_var > 1e-4  # the device's noise moves the update
    assert 0.5 < np.mean(estimates) / true_var < 2.0, (estimates, true_var)
    assert all(0.1 < e / true_var < 10 for e in estimates)  # one round's estimate, of the right order


def test_update_noise_var_is_zero_on_the_ideal_device_and_replica_zero_is_an_ordinary_run():
    x, y = _data(2)
    model = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=2, profile=get_profile("ideal"))
    updates = _repeated_updates(model, x, y, range(4))
    assert float(updates.abs().max()) > 0.01 and float((updates - updates[0]).abs().max()) == 0.0  # deterministic
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, x, y, seed=0, **TRAINING)
    plain = _flat(model)
    model.load_state_dict(start)
    metrics = train_local(model, x, y, seed=0, noise_replicas=4, **TRAINING)
    assert metrics[UPDATE_NOISE_VAR] < 1e-24
    # the model keeps replica 0 (rounding of the broadcast sums differs, and Adam divides by small gradients)
    torch.testing.assert_close(_flat(model), plain, rtol=0, atol=1e-8)


def test_replicas_draw_independent_noise():
    model = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=3, profile=get_profile("noisy-nisq"))
    x = torch.tensor(_data(3, 4)[0])
    params = {n: p.detach().unsqueeze(0).repeat(2, *([1] * p.dim())) for n, p in model.named_parameters()}
    logits = model.replica_logits(x, **params).detach()
    assert logits.shape == (2, 4, N_CLASSES)
    assert not torch.allclose(logits[0], logits[1])
    ideal = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=3)
    torch.testing.assert_close(ideal.replica_logits(x, **params)[1], ideal(x))


def test_update_noise_variance_is_the_mean_unbiased_variance():
    start = {"a": torch.zeros(2), "b": torch.zeros(1)}
    replicas = {"a": torch.tensor([[1.0, 0.0], [3.0, 0.0]]), "b": torch.tensor([[0.0], [2.0]])}
    assert update_noise_variance(start, replicas) == pytest.approx((2.0 + 0.0 + 2.0) / 3)
    with pytest.raises(ValueError, match="at least 2 replicas"):
        update_noise_variance(start, {"a": torch.zeros(1, 2), "b": torch.zeros(1, 1)})
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="noise_replicas=3: Linear has no device"):
        train_local(model, np.zeros((2, 2)), np.zeros(2, dtype=np.int64), seed=0, noise_replicas=3, **TRAINING)


def _exact_contraction(spec: str, x: torch.Tensor, model: PQCClassifier) -> float:
    """The contraction fit on exact noisy expectations: the channels on default.mixed."""
    profile = get_profile(spec)
    qnode = qml.QNode(make_circuit(N_QUBITS, N_LAYERS, N_CLASSES, "angles"),
                      qml.device("default.mixed", wires=N_QUBITS), interface="torch")
    edges = coupling_edges(profile.coupling, N_QUBITS)
    exact = pauli_channels(route(qnode, coupling_map=edges) if edges else qnode, profile=profile)
    with torch.no_grad():
        noisy = torch.stack(list(exact(x, model.weights)), dim=-1) * (1 - 2 * profile.readout_error)
        ideal = model.ideal_expvals(x)
    return float((noisy * ideal).sum() / (ideal**2).sum())


@pytest.mark.parametrize("spec", ["noisy-nisq", "ibm-eagle:shots=64", "ibmq-melbourne:shots=128"])
def test_noise_contraction_agrees_with_the_exact_channels(spec):
    """The fit against the exact channels (a biased read-out's calibrated offset taken off: it
    shifts the values, it does not contract them)."""
    x = torch.tensor(_data(4, CALIBRATION_INPUTS)[0])
    model = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=4, profile=get_profile(spec))
    exact = _exact_contraction(spec, x, model)
    estimates = []
    for seed in range(10):
        model.reseed_noise(seed)
        estimates.append(noise_contraction(model, x))
    mean, err = np.mean(estimates), np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert exact < 0.95  # there is a contraction to find
    assert abs(mean - exact) < max(4 * err, 1e-3), (estimates, exact)
    assert np.std(estimates, ddof=1) < 0.1  # one round's estimate is already useful


def test_noise_contraction_is_one_without_noise_or_with_pec_and_zne_raises_it():
    x = torch.tensor(_data(5, CALIBRATION_INPUTS)[0])
    ideal = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=5, profile=get_profile("ideal"))
    assert noise_contraction(ideal, x) == 1.0
    assert noise_contraction(PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=5,
                                           profile=get_profile("noisy-nisq"), mitigation="pec"), x) == 1.0
    plain = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=5, profile=get_profile("ibm-eagle"))
    zne = PQCClassifier(N_QUBITS, N_LAYERS, N_CLASSES, seed=5, profile=get_profile("ibm-eagle"), mitigation="zne")
    # ZNE extrapolates the gate noise away, not the read-out: c moves from ~0.9 toward 1 - 2 p_ro
    assert noise_contraction(plain, x) < noise_contraction(zne, x) <= 1.0
