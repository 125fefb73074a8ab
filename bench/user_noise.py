"""Benchmark: one training step of a user's own circuit on a device profile (qfl.task.user_noise).

A ``qml.qnn.TorchLayer`` (``AngleEmbedding`` then two ``StronglyEntanglingLayers``, one ``<Z>`` per
wire) put on the profile's device: decomposed, routed to its coupling map, the profile's Pauli
channels after every gate and its read-out, on ``default.mixed`` with backprop; with ZNE, folded
at scale factors 1, 3, 5 first. Against the same layer on its own ideal ``default.qubit``. Each
setting runs in a fresh process (its peak resident memory is its own): the fastest of three
steps (forward and backward of a batch), after one warm-up step, one torch thread.

Run: ``python bench/user_noise.py [--qubits 2 4 6] [--profile noisy-nisq] [--batch 32]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

REPEATS = 3


def step_time(qubits: int, profile: str, mitigation: str, batch: int) -> dict:
    import pennylane as qml
    import torch

    from qfl.task.profiles import get_profile
    from qfl.task.user_model import UserModel

    torch.set_num_threads(1)
    torch.manual_seed(0)

    @qml.qnode(qml.device("default.qubit", wires=qubits), interface="torch")
    def qnode(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(qubits), rotation="Y")
        qml.StronglyEntanglingLayers(weights, wires=range(qubits))
        return [qml.expval(qml.PauliZ(w)) for w in range(qubits)]

    layer = qml.qnn.TorchLayer(qnode, {"weights": (2, qubits, 3)}).double()
    model = UserModel(layer, None if profile == "ideal" else get_profile(profile, qubits), mitigation)
    x = torch.rand(batch, qubits, dtype=torch.float64) * 3
    best = float("inf")
    for k in range(REPEATS + 1):
        start = time.perf_counter()
        model(x).sum().backward()
        if k:
            best = min(best, time.perf_counter() - start)
    return {"qubits": qubits, "profile": profile, "mitigation": mitigation, "step_s": best,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--profile", default="noisy-nisq")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # qubits profile mitigation: a child's run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(step_time(int(args.one[0]), args.one[1], args.one[2], args.batch)))
        return
    print(f"| qubits | device | step (batch {args.batch}), s | peak RSS, MiB |")
    print("|---|---|---|---|")
    for qubits in args.qubits:
        for profile, mitigation in (("ideal", "none"), (args.profile, "none"), (args.profile, "zne")):
            done = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--one", str(qubits), profile,
                                   mitigation], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            device = "ideal (default.qubit)" if profile == "ideal" else f"{profile}{' + zne' if mitigation == 'zne' else ''}"
            print(f"| {qubits} | {device} | {row['step_s']:.3f} | {row['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
