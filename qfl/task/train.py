r"""Local training and evaluation of the PQC (pure functions of model + data).

A classifier (the default) trains on cross-entropy and reports accuracy; with ``regression``
(run config ``task-kind = "regression"``) the model's one output per row is the prediction, the
loss is the mean squared error, and the "accuracy" a reply carries is the coefficient of
determination :math:`R^2 = 1 - \mathrm{MSE}/\mathrm{Var}(y)` (:func:`r_squared`; the contract's
``TRAIN_R2``/``EVAL_R2`` are the same keys as the accuracies, so every transport and the guard
treat them alike).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from qfl.common.contract import TRAIN_ACCURACY, TRAIN_LOSS, UPDATE_NOISE_VAR
from qfl.task.model import PQCClassifier
from qfl.task.noise_estimate import update_noise_variance

NOISE_REPLICAS = 3  # replicas of a noisy client's local training that measure its update's device noise
OPTIMIZERS = ("adam", "sgd", "qng")  # local optimisers by name (run config `optimizer`)


def loss_of(outputs: torch.Tensor, target: torch.Tensor, regression: bool = False,
            reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class logits ``(B, C)``, or with ``regression`` the squared error of the
    one output ``(B, 1)`` against the target ``(B,)``."""
    if regression:
        return F.mse_loss(outputs[..., 0], target.to(outputs.dtype), reduction=reduction)
    return F.cross_entropy(outputs, target, reduction=reduction)


def r_squared(mse: float, target: np.ndarray | torch.Tensor) -> float:
    r""":math:`1 - \mathrm{MSE}/\mathrm{Var}(y)`, the variance about the rows' own mean (the
    coefficient of determination); 0.0 where every target is the same (nothing to explain)."""
    var = float(torch.as_tensor(target, dtype=torch.float64).var(unbiased=False)) if len(target) else 0.0
    return 1.0 - mse / var if var > 0 else 0.0


def make_optimizer(name: str, params: dict[str, torch.Tensor], model: torch.nn.Module, learning_rate: float,
                   qng_lam: float = 0.0, replicated: bool = False):  # noqa: ANN201 - an optimiser with step(batch)
    """The local optimiser ``name`` over ``params``, as an object with ``zero_grad()`` and
    ``step(batch)``: Adam (the default), plain SGD, or the quantum natural gradient
    (:class:`qfl.task.qng.QNGOptimizer`, which measures the circuit's metric on the batch)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if name == "qng":
        from qfl.task.qng import QNGOptimizer

        if not isinstance(model, PQCClassifier):
            raise ValueError(f"optimizer 'qng' needs the built-in circuit's metric tensor; {type(model).__name__} has none")
        return QNGOptimizer(params, model, learning_rate, qng_lam, replicated)
    opt = (torch.optim.Adam if name == "adam" else torch.optim.SGD)(params.values(), lr=learning_rate)
    return _TorchStep(opt)


class _TorchStep:
    """A torch optimiser with the QNG optimiser's ``step(batch)`` (the batch is not needed)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    def step(self, batch: torch.Tensor) -> None:  # noqa: ARG002
        self.opt.step()


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
    noise_replicas: int = 1,
    optimizer: str = "adam",
    qng_lam: float = 0.0,
    regression: bool = False,
) -> dict[str, float]:
    r"""Train ``model`` in place with Adam on cross-entropy (``regression``: the mean squared
    error of its one output, :func:`loss_of`); mini-batches are broadcast.

    ``optimizer`` picks the local optimiser instead (:func:`make_optimizer`): ``"sgd"``, or
    ``"qng"``, the quantum natural gradient with metric regularisation ``qng_lam``
    (:mod:`qfl.task.qng`); Adam stays the default.

    Two corrections of client drift, each off by default (the server turns them on through
    its message; :mod:`client.local`):

    - FedProx (Li et al., MLSys 2020): the loss gets
      :math:`\frac{\mu}{2}\lVert w - w^t\rVert^2`, :math:`w^t` the parameters at the start
      (the global model), so that local steps stay near it;
    - SCAFFOLD (Karimireddy et al., ICML 2020): every gradient gets ``correction``
      :math:`= c - c_i`, the server's control variate minus this client's, before the step
      (here an Adam step; the paper's analysis is for SGD).

    With ``noise_replicas = R >= 2`` (a PQC), ``R`` replicas of this training (same data order,
    same start, independent shots and noise draws) run together on the broadcast axis
    (:meth:`~qfl.task.model.PQCClassifier.replica_logits`; Adam acts coordinate-wise, so one
    optimiser over the stacked replicas is ``R`` independent ones). The model keeps replica 0,
    an ordinary run; the spread of the replicas' updates is ``update-noise-var``
    (:func:`qfl.task.noise_estimate.update_noise_variance`). Cost: ``R B`` circuits per step
    instead of ``B``, in one execution (about 1.3x the time at ``R = 3``,
    ``bench/noisy_training.py``). On a noiseless device the update is deterministic: the
    caller runs one replica and knows the variance is 0.

    Returns
    -------
    dict
        ``train-loss`` (mean over the last epoch's batches, weighted by batch size, without
        the proximal term), ``train-accuracy`` (on the last epoch's batches, before each step;
        regression: :math:`R^2` of that loss against the variance of the targets), both of
        replica 0, and ``update-noise-var`` when ``noise_replicas`` is at least 2.
    """
    if isinstance(noise_replicas, bool) or not isinstance(noise_replicas, int) or noise_replicas < 1:
        raise ValueError(f"noise_replicas must be an integer >= 1, got {noise_replicas!r}")
    replicated = noise_replicas > 1
    if replicated and not hasattr(model, "replica_logits"):
        raise ValueError(f"noise_replicas={noise_replicas}: {type(model).__name__} has no device to measure; use 1")
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    if replicated:
        # every parameter with a leading replica axis, each replica starting where the model is
        params = {n: p.detach().unsqueeze(0).repeat(noise_replicas, *([1] * p.dim())).requires_grad_(True)
                  for n, p in model.named_parameters()}

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return model.replica_logits(batch, **params)  # (R, B, C)
    else:
        params = dict(model.named_parameters())

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return model(batch)[None]  # (1, B, C)

    opt = make_optimizer(optimizer, params, model, learning_rate, qng_lam, replicated)
    model.train()
    loss_sum, correct = 0.0, 0
    for _ in range(epochs):
        loss_sum, correct = 0.0, 0
        for idx in torch.randperm(len(yt), generator=gen).split(batch_size):
            logits = forward(xt[idx])
            losses = [loss_of(replica, yt[idx], regression) for replica in logits]
            objective = sum(losses)  # the replicas' parameters are disjoint: each gets its own gradient
            if proximal_mu > 0:
                objective = objective + 0.5 * proximal_mu * sum(((p - start[n]) ** 2).sum() for n, p in params.items())
            opt.zero_grad()
            objective.backward()
            if correction is not None:
                for n, p in params.items():
                    p.grad += correction[n]
            opt.step(xt[idx])
            loss_sum += losses[0].item() * len(idx)
            if not regression:
                correct += int((logits[0].argmax(dim=1) == yt[idx]).sum())
    mean_loss = loss_sum / len(yt)
    metrics = {TRAIN_LOSS: mean_loss, TRAIN_ACCURACY: r_squared(mean_loss, yt) if regression else correct / len(yt)}
    if replicated:
        metrics[UPDATE_NOISE_VAR] = update_noise_variance(start, params)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n][0])
    return metrics


def full_gradient(model: PQCClassifier, x: np.ndarray, y: np.ndarray, regression: bool = False) -> dict[str, torch.Tensor]:
    """The gradient of the mean loss (:func:`loss_of`) over all of ``(x, y)`` at the model's
    parameters (SCAFFOLD's option I for a client's control variate)."""
    model.zero_grad(set_to_none=True)
    loss_of(model(torch.as_tensor(x)), torch.as_tensor(y), regression).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@torch.no_grad()
def evaluate(
    model: PQCClassifier, x: np.ndarray, y: np.ndarray, batch_size: int = 256, regression: bool = False
) -> dict[str, float]:
    """Cross-entropy loss and accuracy of ``model`` on ``(x, y)``; with ``regression`` the mean
    squared error as ``loss`` and :math:`R^2` (:func:`r_squared`) as ``accuracy``."""
    model.eval()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(yt), batch_size):
        logits = model(xt[start : start + batch_size])
        target = yt[start : start + batch_size]
        loss_sum += loss_of(logits, target, regression, reduction="sum").item()
        if not regression:
            correct += int((logits.argmax(dim=1) == target).sum())
    if regression:
        return {"loss": loss_sum / len(yt), "accuracy": r_squared(loss_sum / len(yt), yt)}
    return {"loss": loss_sum / len(yt), "accuracy": correct / len(yt)}
