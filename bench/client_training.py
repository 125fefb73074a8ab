"""Benchmark: the PQC's local training, three tables, each against a baseline of the same run.

1. One local epoch, batched (parameter broadcasting) vs per-sample: both compute the same
   mini-batch loss and gradient (checked below); the broadcast one executes each batch as one
   circuit with a batch axis on ``default.qubit``, the baseline loops over the batch.
2. Large circuits: one training step (forward, backward, Adam) on a fixed batch, with
   ``default.qubit`` + backprop on the broadcast axis (the baseline) vs ``lightning.qubit`` +
   adjoint, on angle data, TFIM ground states and a noisy device (Pauli trajectories); the
   same loss and gradient on both (checked to 1e-6), the peak memory of each, and what
   ``device = "auto"`` picks (:mod:`qfl.task.simulators`). Each variant runs in a fresh
   process, so that its peak resident memory is its own.
3. TFIM ground states: the dense solver (``scipy.linalg.eigh``, the baseline) vs the sparse one
   (``scipy.sparse.linalg.eigsh``) per state, where the dense matrix still fits.

One thread each (torch and OpenMP), like a ClientApp sharing a small machine; fair to both.

Run: ``python bench/client_training.py [--samples 64] [--batch-size 32] [--layers 4]
[--large-qubits 12 13 14 16] [--noisy-qubits 8 10 12] [--tfim-spins 10 12 14 16]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # lightning.qubit's OpenMP, read when it loads

import argparse
import multiprocessing
import time

import numpy as np
import torch
from torch.nn import functional as F

from qfl.task import tfim
from qfl.task.model import PQCClassifier
from qfl.task.profiles import get_profile
from qfl.task.simulators import DEFAULT_QUBIT, LIGHTNING_QUBIT, choose_simulator, runs_noise_gates

SAME_TO = 1e-6  # loss and gradient of the two simulators agree to this (absolute)


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


def _peak_rss_gib() -> float:
    """This process's peak resident memory (``VmHWM``), GiB."""
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def _batch(n: int, kind: str, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A fixed, seeded batch: ``(x, y, n_classes)``; TFIM ground states on ``n`` spins for states."""
    rng = np.random.default_rng([seed, n])
    if kind == "states":
        states, _, labels = tfim.tfim_dataset(n, size, rng)
        return torch.tensor(states), torch.tensor(labels), 2
    return torch.tensor(rng.uniform(0, np.pi, size=(size, n))), torch.tensor(rng.integers(0, 3, size=size)), 3


def _training_steps(n: int, kind: str, device: str, profile: str | None, batch: int, layers: int, repeats: int,
                    out) -> None:
    """In a child process: one warm-up and ``repeats`` timed training steps; sends (best step s,
    first loss, first gradient, peak memory GiB) to ``out``."""
    torch.set_num_threads(1)
    x, y, classes = _batch(n, kind, batch, seed=0)
    model = PQCClassifier(n, layers, classes, kind=kind, device=device, seed=0,
                          profile=None if profile is None else get_profile(profile))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    times, first = [], None
    for _ in range(1 + repeats):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if first is None:  # before any step: the same parameters on both simulators
            first = (loss.item(), model.weights.grad.numpy().copy())
        opt.step()
        times.append(time.perf_counter() - start)
    out.send((min(times[1:]), *first, _peak_rss_gib()))
    out.close()


def _in_child(*args) -> tuple[float, float, np.ndarray, float]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: its own peak memory, no forked threads
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_training_steps, args=(*args, send))
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:  # the child died before it sent: killed for memory, most likely
        child.join()
        raise RuntimeError(f"training step {args[:4]} died with exit code {child.exitcode}") from None
    child.join()
    return result


def large_circuits(qubits: list[int], kind: str, profile: str | None, batch: int, layers: int, repeats: int) -> None:
    """Table 2: default.qubit + backprop vs lightning.qubit + adjoint, one training step."""
    where = f"on {profile}" if profile else "ideal"
    print(f"\none training step, {'TFIM ground states' if kind == 'states' else 'angle data'}, {where}: "
          f"batch {batch}, {layers} layers, best of {repeats} after one warm-up; speed-up = default_s / lightning_s")
    header = (f"{'qubits':>6} {'default_s':>10} {'lightning_s':>12} {'speed-up':>9} {'default_GiB':>12} "
              f"{'lightning_GiB':>14} {'faster':>16} {'auto picks':>16}")
    print(header)
    print("-" * len(header))
    for n in qubits:
        runs = {dev: _in_child(n, kind, dev, profile, batch, layers, repeats) for dev in (DEFAULT_QUBIT, LIGHTNING_QUBIT)}
        (t_def, loss_def, grad_def, mem_def), (t_lit, loss_lit, grad_lit, mem_lit) = runs[DEFAULT_QUBIT], runs[LIGHTNING_QUBIT]
        assert abs(loss_def - loss_lit) < SAME_TO and np.abs(grad_def - grad_lit).max() < SAME_TO, (n, kind, profile)
        noise_gates = runs_noise_gates(None if profile is None else get_profile(profile), "none")
        auto, _ = choose_simulator("auto", "best", n, noise_gates)
        faster = DEFAULT_QUBIT if t_def < t_lit else LIGHTNING_QUBIT
        print(f"{n:>6} {t_def:>10.3f} {t_lit:>12.3f} {t_def / t_lit:>8.2f}x {mem_def:>12.2f} {mem_lit:>14.2f} "
              f"{faster:>16} {auto:>16}")


def tfim_solvers(spins: list[int], fields: int, dense_up_to: int) -> None:
    """Table 3: seconds per TFIM ground state, dense vs sparse, and their agreement."""
    print(f"\nTFIM ground states, mean of {fields} fields drawn as the data set draws them; dense up to {dense_up_to} spins")
    header = f"{'spins':>6} {'dense_s':>9} {'sparse_s':>9} {'speed-up':>9} {'1-fidelity':>11} {'energy_diff':>12}"
    print(header)
    print("-" * len(header))
    for n in spins:
        hs = tfim.sample_fields(fields, np.random.default_rng([0, n]))
        start = time.perf_counter()
        sparse_states = [tfim.ground_state(n, float(h), method="sparse") for h in hs]
        t_sparse = (time.perf_counter() - start) / fields
        if n > dense_up_to:
            print(f"{n:>6} {'-':>9} {t_sparse:>9.3f} {'-':>9} {'-':>11} {'-':>12}")
            continue
        start = time.perf_counter()
        dense_states = [tfim.ground_state(n, float(h), method="dense") for h in hs]
        t_dense = (time.perf_counter() - start) / fields
        infidelity = max(1 - abs(a @ b) for a, b in zip(dense_states, sparse_states, strict=True))
        energy = max(abs(a @ (ham := tfim.tfim_hamiltonian_sparse(n, float(h))) @ a - b @ ham @ b)
                     for a, b, h in zip(dense_states, sparse_states, hs, strict=True))
        print(f"{n:>6} {t_dense:>9.3f} {t_sparse:>9.3f} {t_dense / t_sparse:>8.1f}x {infidelity:>11.1e} {energy:>12.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="best of N epochs (table 1) or steps (table 2) per variant")
    parser.add_argument("--large-qubits", type=int, nargs="*", default=[12, 13, 14, 16],
                        help="table 2, ideal: angle data at these sizes")
    parser.add_argument("--states-qubits", type=int, nargs="*", default=[12, 16],
                        help="table 2, ideal: TFIM ground states at these sizes")
    parser.add_argument("--noisy-qubits", type=int, nargs="*", default=[8, 10, 12],
                        help="table 2 on --noisy-profile (default.qubit needs ~9 GiB at 12 qubits, more than 24 at 14)")
    parser.add_argument("--noisy-profile", default="noisy-nisq")
    parser.add_argument("--tfim-spins", type=int, nargs="*", default=[10, 12, 14, 16])
    parser.add_argument("--tfim-fields", type=int, default=4)
    parser.add_argument("--tfim-dense-up-to", type=int, default=12, help="the dense matrix is 8 * 4**n bytes")
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
        m = PQCClassifier(n, args.layers, 3, device=DEFAULT_QUBIT, seed=0)
        a = m(x[:4])
        b = torch.cat([m(x[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(a, b)
        times = {}
        for broadcast in (True, False):
            runs = []
            for _ in range(args.repeats):
                model = PQCClassifier(n, args.layers, 3, device=DEFAULT_QUBIT, seed=0)
                runs.append(epoch(model, x, y, args.batch_size, broadcast))
            times[broadcast] = min(runs)
        print(f"{n:>6} {times[True]:>12.3f} {times[False]:>13.3f} {times[False] / times[True]:>8.1f}x")
    for qubits, kind, profile in ((args.large_qubits, "angles", None), (args.states_qubits, "states", None),
                                  (args.noisy_qubits, "angles", args.noisy_profile)):
        if qubits:
            large_circuits(qubits, kind, profile, args.batch_size, args.layers, args.repeats)
    if args.tfim_spins:
        tfim_solvers(args.tfim_spins, args.tfim_fields, args.tfim_dense_up_to)


if __name__ == "__main__":
    main()
