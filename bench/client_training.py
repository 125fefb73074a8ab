"""Benchmark: one local epoch of the PQC, batched (parameter broadcasting) vs per-sample.

Both variants compute the same mini-batch loss and gradient (checked below): the
broadcast one executes each batch as one circuit with a batch axis on
``default.qubit``; the baseline loops over the batch, one circuit per sample.

Run: ``python bench/client_training.py [--samples 64] [--batch-size 32] [--layers 4]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from qfl.task.model import PQCClassifier


def epoch(model: PQCClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int, broadcast: bool) -> float:
    """One epoch of Adam steps; returns the wall time in seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for idx in torch.arange(len(y)).split(batch_size):
        if broadcast:
            logits = model(x[idx])
        else:
            logits = torch.cat([model(x[i : i + 1]) for i in idx.tolist()])
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="best of N epochs per variant")
    args = parser.parse_args()
    torch.set_num_threads(1)  # like a ClientApp sharing a small machine; fair to both
    rng = np.random.default_rng(0)
    print(f"one local epoch: {args.samples} samples, batch {args.batch_size}, {args.layers} layers, "
          f"default.qubit + backprop, best of {args.repeats}")
    header = f"{'qubits':>6} {'broadcast_s':>12} {'per_sample_s':>13} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for n in args.qubits:
        x = torch.tensor(rng.uniform(0, np.pi, size=(args.samples, n)))
        y = torch.tensor(rng.integers(0, 3, size=args.samples))
        # same loss and gradient either way
        m = PQCClassifier(n, args.layers, 3, seed=0)
        a = m(x[:4])
        b = torch.cat([m(x[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(a, b)
        times = {}
        for broadcast in (True, False):
            runs = []
            for _ in range(args.repeats):
                model = PQCClassifier(n, args.layers, 3, seed=0)
                runs.append(epoch(model, x, y, args.batch_size, broadcast))
            times[broadcast] = min(runs)
        print(f"{n:>6} {times[True]:>12.3f} {times[False]:>13.3f} {times[False] / times[True]:>8.1f}x")


if __name__ == "__main__":
    main()
