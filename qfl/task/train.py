"""Local training and evaluation of the PQC classifier (pure functions of model + data)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from qfl.common.contract import TRAIN_ACCURACY, TRAIN_LOSS
from qfl.task.model import PQCClassifier


def train_local(
    model: PQCClassifier,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    proximal_mu: float = 0.0,
    correction: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    r"""Train ``model`` in place with Adam on cross-entropy; mini-batches are broadcast.

    Two corrections of client drift, each off by default (the server turns them on through
    its message; :mod:`client.local`):

    - FedProx (Li et al., MLSys 2020): the loss gets
      :math:`\frac{\mu}{2}\lVert w - w^t\rVert^2`, :math:`w^t` the parameters at the start
      (the global model), so that local steps stay near it;
    - SCAFFOLD (Karimireddy et al., ICML 2020): every gradient gets ``correction``
      :math:`= c - c_i`, the server's control variate minus this client's, before the step
      (here an Adam step; the paper's analysis is for SGD).

    Returns
    -------
    dict
        ``train-loss`` (mean over the last epoch's batches, weighted by batch size, without
        the proximal term) and ``train-accuracy`` (on the last epoch's batches, before each step).
    """
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()} if proximal_mu > 0 else {}
    model.train()
    loss_sum, correct = 0.0, 0
    for _ in range(epochs):
        loss_sum, correct = 0.0, 0
        for idx in torch.randperm(len(yt), generator=gen).split(batch_size):
            logits = model(xt[idx])
            loss = F.cross_entropy(logits, yt[idx])
            objective = loss
            if anchor:
                objective = loss + 0.5 * proximal_mu * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
            opt.zero_grad()
            objective.backward()
            if correction is not None:
                for n, p in model.named_parameters():
                    p.grad += correction[n]
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(dim=1) == yt[idx]).sum())
    return {TRAIN_LOSS: loss_sum / len(yt), TRAIN_ACCURACY: correct / len(yt)}


def full_gradient(model: PQCClassifier, x: np.ndarray, y: np.ndarray) -> dict[str, torch.Tensor]:
    """The gradient of the mean cross-entropy over all of ``(x, y)`` at the model's parameters
    (SCAFFOLD's option I for a client's control variate)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@torch.no_grad()
def evaluate(
    model: PQCClassifier, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """Cross-entropy loss and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(yt), batch_size):
        logits = model(xt[start : start + batch_size])
        target = yt[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == target).sum())
    return {"loss": loss_sum / len(yt), "accuracy": correct / len(yt)}
