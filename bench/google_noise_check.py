"""Check: a ``google:<device>`` profile against cirq-google's own noise model of the same snapshot.

The model's circuit (RY embedding, Rot layers, a CNOT ring routed to the chosen qubits) on a
Google device's best qubits: this project's exact expectations <Z_c> (its Pauli channels as
Kraus operators on ``default.mixed``, read-out by the model) against cirq's density-matrix
simulator with ``NoiseModelFromGoogleNoiseProperties(noise_properties_from_calibration(...))``
of the same calibration file, the circuit compiled to the device's gates (``CZTargetGateset``
on Willow, ``SqrtIswapTargetGateset`` on Rainbow and Weber) on the same physical qubits, its
read-out flips applied per qubit. cirq-google cannot be installed beside this project (see
``scripts/extract_google_calibrations.py``), so it runs in an interpreter of its own:

    python3 -m venv /tmp/cirqenv && /tmp/cirqenv/bin/pip install cirq-core==1.7.0 cirq-google==1.7.0
    python bench/google_noise_check.py --cirq-python /tmp/cirqenv/bin/python [--devices willow rainbow]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)

# Runs under the cirq interpreter: reads the circuit (JSON on stdin), prints <Z_c> (JSON).
CIRQ_SIDE = r"""
import dataclasses, json, sys
import numpy as np
import cirq, cirq_google
from cirq_google.engine import calibration_to_noise_properties as c2n

job = json.load(sys.stdin)
files = {"rainbow": "rainbow", "weber": "weber", "willow": "willow_pink"}
calibration = cirq_google.engine.load_median_device_calibration(files[job["device"]])
properties = c2n.noise_properties_from_calibration(calibration, gate_times_ns="legacy")
noise = cirq_google.NoiseModelFromGoogleNoiseProperties(properties)
qubits = [cirq.GridQubit(*map(int, name.split("_"))) for name in job["qubits"]]
ops = []
for name, wires, angles in job["ops"]:
    q = [qubits[w] for w in wires]
    if name == "RY":
        ops.append(cirq.ry(angles[0]).on(q[0]))
    elif name == "Rot":  # Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)
        ops += [cirq.rz(angles[0]).on(q[0]), cirq.ry(angles[1]).on(q[0]), cirq.rz(angles[2]).on(q[0])]
    elif name == "CNOT":
        ops.append(cirq.CNOT(*q))
    elif name == "SWAP":
        ops.append(cirq.SWAP(*q))
    else:
        raise SystemExit(f"no cirq twin for {name}")
gateset = cirq.CZTargetGateset() if job["device"] == "willow" else cirq.SqrtIswapTargetGateset()
circuit = cirq.optimize_for_target_gateset(cirq.Circuit(ops), gateset=gateset)
counts = {}
for op in circuit.all_operations():
    counts[type(op.gate).__name__] = counts.get(type(op.gate).__name__, 0) + 1
def expectations(noise):
    rho = cirq.DensityMatrixSimulator(noise=noise).simulate(circuit, qubit_order=qubits).final_density_matrix
    probs = np.real(np.diag(rho)).reshape([2] * len(qubits))
    z = []
    for c in job["measured"]:
        p0 = probs.take(0, axis=c).sum()
        p10, p01 = properties.readout_errors[qubits[c]]  # cirq's [p00 error, p11 error]: p(1|0), p(0|1)
        z.append(float((2 * p0 - 1) * (1 - p10 - p01) + (p01 - p10)))
    return z
incoherent = dataclasses.replace(properties, fsim_errors={})  # without the coherent entangler angle errors
print(json.dumps({"z": expectations(noise), "z_pauli": expectations(cirq_google.NoiseModelFromGoogleNoiseProperties(incoherent)),
                  "gates": counts}))
"""


def ours(device: str, n_qubits: int, n_layers: int, seed: int) -> dict:
    """The project's exact <Z_c> on ``google:<device>`` and the routed circuit, as JSON for cirq."""
    import pennylane as qml
    import torch

    from qfl.task.model import PQCClassifier, make_circuit
    from qfl.task.noise import pauli_channels, route
    from qfl.task.profiles import coupling_edges, get_profile

    profile = get_profile(f"google:{device}", n_qubits)
    model = PQCClassifier(n_qubits, n_layers, n_qubits, seed=seed, profile=profile, device="default.qubit")
    with torch.no_grad():
        model.weights.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))  # far from the identity
    mixed = qml.QNode(make_circuit(n_qubits, n_layers, n_qubits, "angles"),
                      qml.device("default.mixed", wires=n_qubits), interface="torch")
    model.qnode = pauli_channels(route(mixed, coupling_map=coupling_edges(profile.coupling, n_qubits)), profile=profile)
    x = torch.tensor(np.random.default_rng(2).uniform(0, np.pi, size=(1, n_qubits)))
    tape = model.routed_tape(x)
    with torch.no_grad():
        z, ideal = model.expvals(x)[0].numpy(), model.ideal_expvals(x)[0].numpy()
    ops = [[op.name, [int(w) for w in op.wires],
            [float(qml.math.toarray(qml.math.detach(p)).reshape(-1)[0]) for p in op.parameters]]
           for op in tape.operations]
    return {"device": device, "profile": profile.name, "qubits": profile.name.split("@")[1].split(","),
            "ops": ops, "measured": [int(m.wires[0]) for m in tape.measurements], "z": z.tolist(),
            "ideal": ideal.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cirq-python", required=True, help="an interpreter with cirq-core and cirq-google 1.7")
    parser.add_argument("--devices", nargs="+", default=["willow", "rainbow", "weber"])
    parser.add_argument("--qubits", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    print(f"{'profile':<30} {'c':>2} {'ideal':>8} {'ours':>8} {'cirq':>8} {'diff':>8} {'cirq*':>8} {'diff*':>8}"
          "   cirq's gates (*: without cirq's coherent angle errors)")
    for device in args.devices:
        job = ours(device, args.qubits, args.layers, seed=3)
        done = subprocess.run([args.cirq_python, "-c", CIRQ_SIDE], input=json.dumps(job), capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"cirq side failed on {device}:\n{done.stderr[-3000:]}")
        theirs = json.loads(done.stdout)
        rows = zip(job["ideal"], job["z"], theirs["z"], theirs["z_pauli"], strict=True)
        for c, (ideal, z, zc, zp) in enumerate(rows):
            print(f"{job['profile']:<30} {c:>2} {ideal:>8.4f} {z:>8.4f} {zc:>8.4f} {z - zc:>8.1e} {zp:>8.4f} {z - zp:>8.1e}"
                  + (f"   {theirs['gates']}" if c == 0 else ""))


if __name__ == "__main__":
    main()
