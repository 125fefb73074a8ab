"""Local training and evaluation of the PQC classifier (pure functions of model + data)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from client.model import PQCClassifier
from transport.contract import TRAIN_ACCURACY, TRAIN_LOSS


def train_local(
    model: PQCClassifier,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> dict[str, float]:
    """Train ``model`` in place with Adam on cross-entropy; mini-batches are broadcast.

    Returns
    -------
    dict
        ``train-loss`` (mean over the last epoch's batches, weighted by batch size)
        and ``train-accuracy`` (on the last epoch's batches, before each step).
    """
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    loss_sum, correct = 0.0, 0
    for _ in range(epochs):
        loss_sum, correct = 0.0, 0
        for idx in torch.randperm(len(yt), generator=gen).split(batch_size):
            logits = model(xt[idx])
            loss = F.cross_entropy(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(dim=1) == yt[idx]).sum())
    return {TRAIN_LOSS: loss_sum / len(yt), TRAIN_ACCURACY: correct / len(yt)}


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
