"""The PQC: gradients agree across methods; broadcasting equals a per-sample loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.model import PQCClassifier
from client.train import evaluate, train_local


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
