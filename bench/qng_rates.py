"""Pilot: the range of learning rates over which QNG and Adam learn, before a tuning grid is declared.

The quantum natural gradient's step is the gradient through the inverse Fubini-Study metric
(:mod:`qfl.task.qng`), on another scale than Adam's unit-scaled step, so one grid of learning
rates for both would tune one and handicap the other. This pilot picks the *range* of each
grid (``HETERO_QNG_RATES`` in ``qfl/experiments/catalogue.py``); the tuning picks the rate.
It runs on a seed no experiment reports (101) and scores on validation rows carved from the
training split, never the test split: one noiseless client holding an eighth of the
training rows, the catalogue's circuit, ``--rounds`` x 2 local epochs, validation accuracy
after each round.

Run: ``python bench/qng_rates.py [--seed 101] [--layers 6] [--rounds 10]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from qfl.task.data import load_dataset, validation_rows
from qfl.task.model import PQCClassifier
from qfl.task.train import train_local

RATES = {"adam": (0.025, 0.05, 0.1, 0.2), "qng": (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--dataset", default="iris")
    parser.add_argument("--qubits", type=int, default=4)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8, help="the client holds 1/clients of the training rows")
    args = parser.parse_args()

    data = load_dataset(args.dataset, args.qubits, seed=args.seed)
    held = np.zeros(len(data.y_train), dtype=bool)
    held[validation_rows(data.y_train, 0.2, args.seed)] = True
    x_fit, y_fit = data.x_train[~held], data.y_train[~held]
    x_val, y_val = torch.as_tensor(data.x_train[held]), data.y_train[held]
    share = np.random.default_rng(args.seed).choice(len(y_fit), max(1, len(data.y_train) // args.clients),
                                                    replace=False)
    print(f"{args.dataset}, seed {args.seed}: {len(share)} training rows, {len(y_val)} validation rows, "
          f"{args.layers} layers, {args.rounds} x 2 epochs")
    for optimizer, rates in RATES.items():
        for rate in rates:
            torch.manual_seed(args.seed)
            model = PQCClassifier(n_qubits=args.qubits, n_layers=args.layers, n_classes=data.n_classes,
                                  kind=data.kind, seed=args.seed)
            accuracy, start = [], time.perf_counter()
            for r in range(args.rounds):
                train_local(model, x_fit[share], y_fit[share], epochs=2, batch_size=32, learning_rate=rate, seed=r,
                            optimizer=optimizer)
                with torch.no_grad():
                    accuracy.append(float((model(x_val).argmax(1).numpy() == y_val).mean()))
            print(f"{optimizer:4s} {rate:<6g} validation accuracy by round "
                  f"{' '.join(f'{a:.2f}' for a in accuracy)}  ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
