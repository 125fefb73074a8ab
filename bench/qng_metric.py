"""Benchmark: the block-diagonal metric of one QNG step, listed layer by layer, against the same
transform on the circuit as the model writes it.

Baseline: PennyLane's ``qml.metric_tensor(approx="block-diag")`` on the model's own tape (one
``Rot`` per wire, so the transform's greedy layering cuts a layer into up to 3 n blocks), run
through the autograd interface and averaged over the batch, which is what
:class:`qfl.task.qng.CircuitMetric` did before it listed the gates layer by layer. Ours:
:meth:`~qfl.task.qng.CircuitMetric.block_diag` (3 blocks a layer, NumPy throughout). Both on
``default.qubit``, one broadcast execution of the metric circuits for the whole batch, the
per-sample post-processing PennyLane's. Also printed: the metric circuits each runs, and each
metric's Frobenius distance to the exact one (``adjoint_metric_tensor``, averaged over the batch).

Run: ``python bench/qng_metric.py [--qubits 4] [--layers 3 6] [--batch 14 32] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from qfl.task.model import PQCClassifier
from qfl.task.qml import qml
from qfl.task.qng import CircuitMetric


def model_order(metric: CircuitMetric, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, int]:
    """The baseline: the transform on the model's own tape (its greedy blocks), autograd interface."""
    tape = metric._tape(x, weights)
    tapes, post = qml.metric_tensor(tape, approx="block-diag")
    results = qml.execute(tapes, metric.qnode.device)
    mean = sum(np.asarray(post([r[b] for r in results])) for b in range(len(x))) / len(x)
    return metric._embed(mean), len(tapes)


def timed(fns, repeat: int) -> list[float]:  # noqa: ANN001
    """Median seconds of each of ``fns``, called in turn ``repeat`` times (interleaved, so that a
    change in the machine's load falls on every one)."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qubits", type=int, default=4)
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--batch", type=int, nargs="+", default=[14, 32])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for layers in args.layers:
        model = PQCClassifier(n_qubits=args.qubits, n_layers=layers, n_classes=min(3, args.qubits), seed=1)
        with torch.no_grad():
            model.weights.normal_(0.0, 0.8, generator=torch.Generator().manual_seed(1))
        metric = CircuitMetric(model)
        weights = model.weights.detach().numpy()
        for batch in args.batch:
            x = np.random.default_rng(batch).uniform(0.0, np.pi, size=(batch, args.qubits))
            baseline, baseline_circuits = model_order(metric, x, weights)
            ours = metric.block_diag(x, weights)
            our_circuits = len(qml.metric_tensor(metric.layered_tape(x, weights), approx="block-diag")[0])
            exact = sum(metric.full(row, weights) for row in x) / len(x)
            t_base, t_ours = timed([lambda: model_order(metric, x, weights), lambda: metric.block_diag(x, weights)],
                                   args.repeat)
            print(f"{args.qubits} qubits, {layers} layers, batch {batch}: model's order {t_base:.3f} s "
                  f"({baseline_circuits} circuits, distance to exact {np.linalg.norm(baseline - exact):.3f}); "
                  f"layer by layer {t_ours:.3f} s ({our_circuits} circuits, {np.linalg.norm(ours - exact):.3f}); "
                  f"{t_base / t_ours:.2f}x; |exact| {np.linalg.norm(exact):.3f}", flush=True)

if __name__ == "__main__":
    main()
