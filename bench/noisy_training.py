"""Benchmark: one noisy local epoch, Pauli trajectories vs exact density matrices, and what
error mitigation and the client's own noise measurement cost on top.

Same circuit (routed to the profile's coupling map), same Pauli channels after every
gate, same optimiser: the baseline runs them as ``QubitChannel``s on ``default.mixed``
(exact, 4^n memory), ours samples one Pauli trajectory per sample on the broadcast
axis of ``default.qubit`` (an unbiased estimate, 2^n memory). Then, each against the
trajectories epoch of the same run:

- ZNE: global folding at scale factors 1, 3, 5 (9x the gates), Richardson extrapolation;
- PEC: one sampled circuit per sample with its sign, on the broadcast axis
  (:mod:`qfl.task.pec`); its time per epoch, and gamma^2, the factor by which it multiplies
  the samples needed for the same precision (Endo et al. 2018);
- the noise estimate: the local training (:func:`qfl.task.train.train_local`) with
  ``noise_replicas = 3`` (``update-noise-var``) against the same training with one replica.

Run: ``python bench/noisy_training.py [--qubits 4 6 8] [--profile noisy-nisq]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pennylane as qml
import torch
from client_training import epoch  # the same timed epoch as the noiseless benchmark

from qfl.task.model import PQCClassifier, make_circuit
from qfl.task.noise import coupling_edges, get_profile, pauli_channels, route
from qfl.task.train import NOISE_REPLICAS, train_local

REPEATS = 3  # the fastest of three runs of each fast variant (the mixed baseline runs once)


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


def _fastest(run, repeats: int = REPEATS) -> float:
    return min(run() for _ in range(repeats))


def _training_time(n, layers, profile, x, y, batch_size, replicas) -> float:
    """One epoch of the client's own training, ``replicas`` copies on the broadcast axis."""
    model = PQCClassifier(n, layers, 3, profile=profile, device="default.qubit")
    start = time.perf_counter()
    train_local(model, x.numpy(), y.numpy(), epochs=1, batch_size=batch_size, learning_rate=0.01, seed=0,
                noise_replicas=replicas)
    return time.perf_counter() - start


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
          f"{args.batch_size}, {args.layers} layers, one thread; mixed = exact density matrix (baseline of "
          f"speed-up); trajectories = the baseline of the zne, pec and estimate costs; pec_gamma2 = samples "
          f"PEC needs per sample of an unmitigated run, for the same precision")
    header = (f"{'qubits':>6} {'mixed_s':>9} {'trajectories_s':>15} {'speed-up':>9} {'traj+zne_s':>11} "
              f"{'zne_cost':>9} {'traj+pec_s':>11} {'pec_cost':>9} {'pec_gamma2':>11} "
              f"{'train_s':>8} {f'train_R{NOISE_REPLICAS}_s':>11} {'estimate_cost':>14}")
    print(header)
    print("-" * len(header))
    for n in args.qubits:
        x = torch.tensor(rng.uniform(0, np.pi, size=(args.samples, n)))
        y = torch.tensor(rng.integers(0, 3, size=args.samples))

        def noisy_epoch(mitigation: str) -> float:
            model = PQCClassifier(n, args.layers, 3, profile=profile, mitigation=mitigation, device="default.qubit")
            return epoch(model, x, y, args.batch_size, broadcast=True)

        t_mixed = epoch(MixedStateModel(n, args.layers, 3, profile), x, y, args.batch_size, broadcast=True)
        t_traj = _fastest(lambda: noisy_epoch("none"))
        t_zne = _fastest(lambda: noisy_epoch("zne"))
        t_pec = _fastest(lambda: noisy_epoch("pec"))
        gamma2 = PQCClassifier(n, args.layers, 3, profile=profile, mitigation="pec").pec_gamma2(x)
        t_train = _fastest(lambda: _training_time(n, args.layers, profile, x, y, args.batch_size, 1))
        t_est = _fastest(lambda: _training_time(n, args.layers, profile, x, y, args.batch_size, NOISE_REPLICAS))
        print(f"{n:>6} {t_mixed:>9.3f} {t_traj:>15.3f} {t_mixed / t_traj:>8.1f}x {t_zne:>11.3f} "
              f"{t_zne / t_traj:>8.1f}x {t_pec:>11.3f} {t_pec / t_traj:>8.2f}x {gamma2:>11.3g} "
              f"{t_train:>8.3f} {t_est:>11.3f} {t_est / t_train:>13.2f}x")


if __name__ == "__main__":
    main()
