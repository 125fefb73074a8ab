"""Benchmark: one noisy local epoch, Pauli trajectories vs exact density matrices.

Same circuit (routed to the profile's coupling map), same Pauli channels after every
gate, same optimiser: the baseline runs them as ``QubitChannel``s on ``default.mixed``
(exact, 4^n memory), ours samples one Pauli trajectory per sample on the broadcast
axis of ``default.qubit`` (an unbiased estimate, 2^n memory). A ZNE row shows what
zero-noise extrapolation costs on top of the trajectories.

Run: ``python bench/noisy_training.py [--qubits 4 6 8] [--profile noisy-nisq]``
"""

from __future__ import annotations

import argparse

import numpy as np
import pennylane as qml
import torch
from client_training import epoch  # the same timed epoch as the noiseless benchmark

from qfl.task.model import PQCClassifier, make_circuit
from qfl.task.noise import coupling_edges, get_profile, pauli_channels, route


class MixedStateModel(PQCClassifier):
    """The same classifier, run with exact channels on ``default.mixed``."""

    def __init__(self, n_qubits, n_layers, n_classes, profile, seed=0):
        super().__init__(n_qubits, n_layers, n_classes, seed=seed)
        qnode = qml.QNode(
            make_circuit(n_qubits, n_layers, n_classes, "angles"),
            qml.device("default.mixed", wires=n_qubits),
            interface="torch",
            diff_method="backprop",
        )
        edges = coupling_edges(profile.coupling, n_qubits)
        if edges is not None:
            qnode = route(qnode, coupling_map=edges)
        self.qnode = pauli_channels(qnode, profile=profile)
        self.readout = 1.0 - 2.0 * profile.readout_error

    def expvals(self, x):
        return torch.stack(list(self.qnode(x, self.weights)), dim=-1) * self.readout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--profile", default="noisy-nisq")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = get_profile(args.profile)
    rng = np.random.default_rng(0)
    print(f"one noisy epoch on '{profile.name}' ({profile.coupling}): {args.samples} samples, batch "
          f"{args.batch_size}, {args.layers} layers, one thread; mixed = exact density matrix (baseline)")
    header = f"{'qubits':>6} {'mixed_s':>9} {'trajectories_s':>15} {'speed-up':>9} {'traj+zne_s':>11} {'zne_cost':>9}"
    print(header)
    print("-" * len(header))
    for n in args.qubits:
        x = torch.tensor(rng.uniform(0, np.pi, size=(args.samples, n)))
        y = torch.tensor(rng.integers(0, 3, size=args.samples))
        t_mixed = epoch(MixedStateModel(n, args.layers, 3, profile), x, y, args.batch_size, broadcast=True)
        t_traj = min(epoch(PQCClassifier(n, args.layers, 3, profile=profile), x, y, args.batch_size, broadcast=True) for _ in range(3))
        t_zne = epoch(PQCClassifier(n, args.layers, 3, profile=profile, zne=True), x, y, args.batch_size, broadcast=True)
        print(f"{n:>6} {t_mixed:>9.3f} {t_traj:>15.3f} {t_mixed / t_traj:>8.1f}x {t_zne:>11.3f} {t_zne / t_traj:>8.1f}x")


if __name__ == "__main__":
    main()
