"""The PQC: gradients agree across methods; broadcasting equals a per-sample loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qfl.task.model import PQCClassifier
from qfl.task.train import evaluate, train_local


def _loss_and_grads(model: PQCClassifier, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), model.weights.grad.detach().clone()


@pytest.mark.parametrize("kind", ["angles", "states"])
def test_backprop_gradient_matches_parameter_shift(kind):
    rng = np.random.default_rng(0)
    n = 3
    if kind == "angles":
        x = torch.tensor(rng.uniform(0, np.pi, size=(5, n)))
    else:
        psi = rng.normal(size=(5, 2**n))
        x = torch.tensor(psi / np.linalg.norm(psi, axis=1, keepdims=True))
    y = torch.tensor([0, 1, 1, 0, 1])
    bp = PQCClassifier(n, 2, 2, kind=kind, diff_method="backprop", seed=3)
    ps = PQCClassifier(n, 2, 2, kind=kind, diff_method="parameter-shift", seed=3)
    loss_bp, g_bp = _loss_and_grads(bp, x, y)
    loss_ps, g_ps = _loss_and_grads(ps, x, y)
    assert loss_bp == pytest.approx(loss_ps, abs=1e-10)
    assert g_bp.abs().max() > 1e-3  # a gradient that is not trivially zero
    torch.testing.assert_close(g_bp, g_ps, atol=1e-8, rtol=1e-6)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    model = PQCClassifier(3, 2, 3, seed=5)
    x = torch.tensor(rng.uniform(0, np.pi, size=(4, 3)))
    y = torch.tensor([0, 1, 2, 1])
    _, grad = _loss_and_grads(model, x, y)
    eps = 1e-6
    flat = model.weights.data.view(-1)
    fd = torch.zeros_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            up = torch.nn.functional.cross_entropy(model(x), y).item()
            flat[i] = old - eps
            down = torch.nn.functional.cross_entropy(model(x), y).item()
            flat[i] = old
            fd[i] = (up - down) / (2 * eps)
    torch.testing.assert_close(grad.view(-1), fd, atol=1e-6, rtol=1e-5)


def test_broadcast_equals_per_sample_loop():
    rng = np.random.default_rng(2)
    model = PQCClassifier(4, 2, 3, seed=1)
    x = torch.tensor(rng.uniform(0, np.pi, size=(6, 4)))
    batched = model(x)
    looped = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    assert batched.shape == (6, 3)
    torch.testing.assert_close(batched, looped)


def test_lightning_adjoint_matches_default_qubit():
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.uniform(0, np.pi, size=(3, 3)))
    y = torch.tensor([0, 1, 0])
    ref = PQCClassifier(3, 2, 2, seed=2)
    adj = PQCClassifier(3, 2, 2, device="lightning.qubit", seed=2)
    assert adj.diff_method == "adjoint"
    _, g_ref = _loss_and_grads(ref, x, y)
    _, g_adj = _loss_and_grads(adj, x, y)
    torch.testing.assert_close(g_ref, g_adj, atol=1e-8, rtol=1e-6)


def test_too_few_qubits_for_classes():
    with pytest.raises(ValueError, match="too small for 3 classes"):
        PQCClassifier(2, 1, 3)


def test_local_training_lowers_loss():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, np.pi, size=(40, 2))
    y = (x[:, 0] > np.pi / 2).astype(np.int64)  # learnable from one angle
    x4 = np.concatenate([x, x], axis=1)
    model = PQCClassifier(4, 2, 2, seed=0)
    before = evaluate(model, x4, y)
    train_local(model, x4, y, epochs=15, batch_size=16, learning_rate=0.1, seed=0)
    after = evaluate(model, x4, y)
    assert after["loss"] < before["loss"] - 0.1
    assert after["accuracy"] >= 0.8


@pytest.mark.parametrize(("dataset", "n_inputs"), [("digits", 4), ("breast-cancer", 4), ("tfim", 16)])
def test_the_classical_baseline_has_about_the_pqcs_parameter_count_and_learns(dataset, n_inputs):
    from qfl.common.config import RunConfig
    from qfl.task.build import build_dataset, build_model
    from qfl.task.classical import MLPClassifier, pqc_parameter_count

    cfg = RunConfig(dataset=dataset, model="mlp", tfim_samples=200, seed=3)
    data = build_dataset(cfg)
    mlp = build_model(cfg, data)
    assert isinstance(mlp, MLPClassifier) and mlp.hidden.in_features == n_inputs
    count = sum(p.numel() for p in mlp.parameters())
    per_unit = n_inputs + data.n_classes + 1  # what one hidden unit more or less changes
    assert abs(count - pqc_parameter_count(cfg.n_qubits, cfg.n_layers, data.n_classes)) <= per_unit / 2
    before = evaluate(mlp, data.x_train, data.y_train)["loss"]
    train_local(mlp, data.x_train, data.y_train, epochs=3, batch_size=32, learning_rate=0.05, seed=1)
    assert evaluate(mlp, data.x_train, data.y_train)["loss"] < before


def test_the_classical_baseline_refuses_a_noisy_device():
    from qfl.common.config import ConfigError, RunConfig, defaults

    with pytest.raises(ConfigError, match="'device-profiles': the classical baseline"):
        RunConfig.from_run_config({**defaults(), "model": "mlp", "device-profiles": "noisy-nisq"})
