"""Helpers shared by the benchmarks that launch federations (``noise_isolation.py``, ``qcn.py``,
``transport_cost.py``, ``secagg_cost.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch_rows(name: str, out: Path, args: list[str], simulation: bool = False) -> list[dict]:
    """Run ``qfl launch [--simulation] --run-name NAME`` with ``args`` into ``out``; its rounds."""
    cmd = [sys.executable, "-m", "qfl.launcher", "launch", *(["--simulation"] if simulation else []),
           "--run-name", name, "--set", f'output-dir="{out}"', *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((out / name / "metrics.json").read_text())["rounds"]


def launch_accuracy(name: str, out: Path, args: list[str]) -> list[float]:
    """Run ``qfl launch --simulation --run-name NAME`` with ``args``; central test accuracy per round."""
    return [r["test_accuracy"] for r in launch_rows(name, out, args, simulation=True)]


def rounds_to(acc: list[float], target: float) -> int | None:
    """First round (after round 0) whose accuracy reaches ``target``."""
    return next((r for r, a in enumerate(acc) if r > 0 and a >= target - 1e-12), None)


def print_accuracy_table(results: dict[str, list[float]], rounds: int) -> None:
    print("round " + " ".join(f"{n:>24}" for n in results))
    for r in range(rounds + 1):
        print(f"{r:>5} " + " ".join(f"{acc[r]:>24.3f}" for acc in results.values()))


def plot_accuracy(results: dict[str, list[float]], title: str, path: Path) -> None:
    """Accuracy per round, controls dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, acc in results.items():
        ax.plot(range(len(acc)), acc, "--" if name.startswith("control") else "-", marker="o", ms=3, label=name)
    ax.set(xlabel="round", ylabel="central test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
