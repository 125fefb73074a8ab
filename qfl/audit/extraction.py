"""Model extraction: how many queries of the served global model copy it.

An outsider may query the served model (:class:`~qfl.task.model.PQCClassifier`, the global
model after the federation) on inputs of its choice and gets either

- ``"labels"``: the predicted class only, or
- ``"expectations"``: the :math:`C` Pauli-Z expectation values the model reads out, and the
  predicted class (the read-out's scale and bias are not revealed by the expectations alone).

It trains a circuit of the same architecture from a fresh initialisation on the answers
(the "shadow" or surrogate model of Tramèr et al., "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016, section 4; Papernot et al., AsiaCCS 2017) and is
judged by *agreement*: the share of held-out inputs, none of them queried, on which the copy
predicts what the served model predicts.

Queries are drawn uniformly from the input domain :math:`[0, \\pi]^n` (the attacker knows
the circuit takes angles, not the data). Label-only copies train with the clients' own
:func:`qfl.task.train.train_local` (cross-entropy, Adam); expectation-value copies minimise
the squared error of the expectations plus the cross-entropy of the labels. Every draw is
seeded: the same seed gives the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from qfl.task.model import PQCClassifier
from qfl.task.train import train_local

ACCESS = ("labels", "expectations")


@torch.no_grad()
def served_answers(model: PQCClassifier, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(expectations (B, C), labels (B,))`` of the served model on queries ``x``."""
    model.eval()
    xt = torch.as_tensor(x)
    expvals = model.expvals(xt)
    labels = (expvals * model.scale + model.bias).argmax(dim=1)
    return expvals.numpy(), labels.numpy()


def fresh_copy(target: PQCClassifier, seed: int) -> PQCClassifier:
    """A circuit of ``target``'s architecture, initialised from ``seed`` (on an ideal simulator)."""
    return PQCClassifier(target.n_qubits, target.n_layers, target.n_classes, kind=target.kind, seed=seed,
                         embedding=target.embedding_kind)


def _train_on_expectations(model: PQCClassifier, x: np.ndarray, expvals: np.ndarray, labels: np.ndarray, steps: int,
                           batch_size: int, learning_rate: float, seed: int) -> None:
    """Adam on :math:`\\lVert E - \\hat E\\rVert^2 + \\mathrm{CE}(\\text{logits}, \\text{label})`, ``steps`` seeded mini-batches."""
    xt, et, yt = torch.as_tensor(x), torch.as_tensor(expvals), torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    done = 0
    while done < steps:
        for idx in torch.randperm(len(yt), generator=gen).split(batch_size):
            e = model.expvals(xt[idx])
            loss = F.mse_loss(e, et[idx]) + F.cross_entropy(e * model.scale + model.bias, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break


@torch.no_grad()
def agreement(a: PQCClassifier, b: PQCClassifier, x: np.ndarray) -> float:
    """Share of inputs ``x`` on which ``a`` and ``b`` predict the same class."""
    return float((served_answers(a, x)[1] == served_answers(b, x)[1]).mean())


@dataclass(frozen=True)
class ExtractionPoint:
    access: str
    queries: int
    agreement: float


def extraction_curve(target: PQCClassifier, budgets: list[int], held_out: np.ndarray, access: str, seed: int,
                     steps: int = 300, batch_size: int = 32, learning_rate: float = 0.05) -> list[ExtractionPoint]:
    """Agreement of a copy trained on the first ``q`` queries, for each ``q`` in ``budgets``.

    Parameters
    ----------
    target : PQCClassifier
        The served model.
    budgets : list of int
        Query counts, increasing; the queries of a smaller budget are the first of a larger one.
    held_out : np.ndarray
        ``(H, n)`` inputs the agreement is measured on (never queried).
    access : str
        ``"labels"`` or ``"expectations"``.
    seed : int
        Seeds the queries, the copy's initialisation and its mini-batches.
    steps : int
        About this many Adam steps for every budget (label-only: whole epochs of
        :func:`~qfl.task.train.train_local`, as many as make ``steps``).
    """
    if access not in ACCESS:
        raise ValueError(f"access must be one of {ACCESS}, got {access!r}")
    if not budgets or any(b < 1 for b in budgets) or list(budgets) != sorted(budgets):
        raise ValueError(f"budgets must be positive and increasing, got {budgets!r}")
    rng = np.random.default_rng([seed, 0xE7])
    queries = rng.uniform(0.0, np.pi, (max(budgets), target.n_qubits))
    expvals, labels = served_answers(target, queries)
    out = []
    for q in budgets:
        copy = fresh_copy(target, seed + 1)
        if access == "labels":
            epochs = max(1, round(steps / math.ceil(q / batch_size)))
            train_local(copy, queries[:q], labels[:q], epochs, batch_size, learning_rate, seed + 2)
        else:
            _train_on_expectations(copy, queries[:q], expvals[:q], labels[:q], steps, batch_size, learning_rate, seed + 2)
        out.append(ExtractionPoint(access, int(q), agreement(target, copy, held_out)))
    return out


def queries_to_agree(curve: list[ExtractionPoint], level: float = 0.9) -> int | None:
    """The smallest budget whose copy agrees on at least ``level`` of the held-out inputs
    (``None``: none of the budgets tried)."""
    return next((p.queries for p in curve if p.agreement >= level), None)
