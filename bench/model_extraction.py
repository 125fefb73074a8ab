"""Study: how many queries of the served global model copy it (model extraction).

The served model is the global model of one in-process federation
(:class:`qfl.inprocess.InProcessFederation`: ``--clients`` clients, ``--rounds`` rounds on
``--dataset``, ideal devices). An outsider queries it at inputs drawn uniformly from
:math:`[0, \\pi]^n` and trains a circuit of the same architecture from a fresh
initialisation on the answers, with label-only or expectation-value access
(:mod:`qfl.audit.extraction`); agreement is measured on the data set's pool (training and test
splits, never queried). For each budget and access, the mean and range over ``--seeds``; the
query count for 90 % agreement is the smallest budget whose mean reaches it.

Writes ``bench/results/model-extraction.json`` and ``docs/img/model-extraction.png``.
Run: ``python bench/model_extraction.py [--budgets 8 16 32 64 128 256] [--seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # this folder first on sys.path would shadow the project's packages
OUT = ROOT / "bench" / "results" / "model-extraction.json"
FIGURE = ROOT / "docs" / "img" / "model-extraction.png"


def served_model(dataset: str, clients: int, rounds: int, seed: int):  # noqa: ANN201 (a PQCClassifier, its test accuracy)
    import logging

    from qfl.inprocess import InProcessFederation, task_identity
    from qfl.launch.config import app_defaults

    logging.getLogger("flwr").setLevel(logging.ERROR)
    config = {**app_defaults(ROOT), "dataset": dataset, "seed": seed, "local-epochs": 5, "learning-rate": 0.1}
    with task_identity():
        fed = InProcessFederation(config, clients).run(rounds)
    fed.model.load_state_dict(fed.arrays.to_torch_state_dict())
    return fed.model, fed.accuracy[-1], fed.data


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for access, points in curves.items():
        q = [p["queries"] for p in points]
        ax.plot(q, [p["mean"] for p in points], marker="o", label=access)
        ax.fill_between(q, [p["min"] for p in points], [p["max"] for p in points], alpha=0.2)
    ax.axhline(0.9, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("queries of the served model")
    ax.set_ylabel("agreement on held-out inputs")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="wine")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()

    import torch

    from qfl.audit.extraction import ACCESS, extraction_curve, queries_to_agree

    torch.set_num_threads(1)
    started = time.monotonic()
    target, accuracy, data = served_model(args.dataset, args.clients, args.rounds, 0)
    held_out = np.concatenate([data.x_train, data.x_test])
    runs = {a: [extraction_curve(target, args.budgets, held_out, a, seed, steps=args.steps) for seed in args.seeds]
            for a in ACCESS}
    curves = {}
    for access, per_seed in runs.items():
        table = np.array([[p.agreement for p in curve] for curve in per_seed])  # (seeds, budgets)
        curves[access] = [{"queries": q, "mean": float(table[:, j].mean()), "min": float(table[:, j].min()),
                           "max": float(table[:, j].max())} for j, q in enumerate(args.budgets)]
    to_90 = {a: next((c["queries"] for c in curves[a] if c["mean"] >= 0.9), None) for a in ACCESS}
    per_seed_90 = {a: [queries_to_agree(c) for c in runs[a]] for a in ACCESS}
    result = {"args": vars(args), "served_accuracy": accuracy, "curves": curves, "queries_to_90": to_90,
              "queries_to_90_per_seed": per_seed_90, "seconds": time.monotonic() - started, "command": " ".join(sys.argv)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    plot(curves, FIGURE, f"{args.dataset}, 4 qubits, served model test accuracy {accuracy:.2f}; "
                         f"mean and range over {len(args.seeds)} seeds")
    print(json.dumps({k: result[k] for k in ("served_accuracy", "queries_to_90", "queries_to_90_per_seed", "seconds")}))
    for access, points in curves.items():
        print(access, " ".join(f"{c['queries']}:{c['mean']:.3f}" for c in points))


if __name__ == "__main__":
    main()
