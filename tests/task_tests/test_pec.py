"""Probabilistic error cancellation: the quasi-probabilities invert each profile's channels,
the estimate is the noiseless value within its own statistical error (where the unmitigated
one is not), its gradient is the noiseless gradient's, and it agrees with mitiq's
``execute_with_pec`` (and mitiq's depolarizing representations) on the same circuit."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pennylane as qml
import pytest
import torch

from qfl.task.model import PQCClassifier
from qfl.task.noise import PROFILES, _kraus, get_profile
from qfl.task.pec import circuit_gamma, pauli_inverse, representation
from qfl.task.profiles import _compose_1q, _compose_2q

IDEAL = PROFILES["ideal"]


def _superoperator(kraus: list[np.ndarray]) -> np.ndarray:
    """Column-stacking superoperator sum_k K (x) conj(K)."""
    return sum(np.kron(k, k.conj()) for k in kraus)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_quasi_probabilities_invert_every_profiles_channels(name):
    prof = PROFILES[name]
    rep = representation(prof)
    p2 = prof.pauli_probs_2q()
    for probs, quasi, compose in ((prof.pauli_probs_1q(), rep.q1, _compose_1q), (p2, rep.q2, _compose_2q),
                                  (_compose_2q(_compose_2q(p2, p2), p2), rep.q_swap, _compose_2q)):
        identity = np.eye(len(probs))[0]
        np.testing.assert_allclose(compose(probs, quasi), identity, atol=1e-12)
        assert quasi.sum() == pytest.approx(1.0, abs=1e-12)  # trace preserving
        gamma = np.abs(quasi).sum()
        assert gamma >= 1.0 and (gamma == pytest.approx(1.0, abs=1e-12)) == (probs[0] == 1.0)


def test_the_inverse_is_the_inverse_as_a_superoperator():
    """Independent of the XOR composition: Kraus superoperators, multiplied out."""
    prof = PROFILES["ibm-eagle"]  # depolarizing and relaxation: a Pauli channel that is not symmetric
    for probs in (prof.pauli_probs_1q(), prof.pauli_probs_2q()):
        quasi = pauli_inverse(probs)
        channel = _superoperator(_kraus(probs))
        # the quasi-map sum_a q_a P_a . P_a: Kraus-like terms sqrt|q_a| P_a with signs
        paulis = _kraus(np.ones(len(probs)))  # every P_a with weight 1
        inverse = sum(q * np.kron(p, p.conj()) for q, p in zip(quasi, paulis))
        np.testing.assert_allclose(inverse @ channel, np.eye(len(channel)), atol=1e-12)


def test_a_channel_that_cannot_be_inverted_is_refused():
    with pytest.raises(ValueError, match="not invertible"):
        pauli_inverse(np.array([0.25, 0.25, 0.25, 0.25]))  # fully depolarizing
    with pytest.raises(ValueError, match="shape"):
        pauli_inverse(np.ones(8) / 8)


def _estimate(model: PQCClassifier, x: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over ``n`` broadcast device evaluations of one input."""
    with torch.no_grad():
        values = model.expvals(x.expand(n, -1)).numpy()
    return values.mean(axis=0), values.std(axis=0, ddof=1) / math.sqrt(n)


def test_pec_estimates_the_noiseless_value_within_its_statistical_error():
    # depolarizing, twirled relaxation, read-out error, and SWAPs from routing on a line
    prof = get_profile("ibm-eagle:coupling=line")
    x = torch.tensor([[0.3, 1.1, 2.0]], dtype=torch.float64)
    ideal = PQCClassifier(3, 2, 3, seed=7).expvals(x).detach().numpy()[0]
    pec = PQCClassifier(3, 2, 3, seed=7, profile=prof, mitigation="pec")
    assert pec.routed_metrics(x)["swaps"] > 0
    assert 1.0 < pec.pec_gamma2(x) < 4.0
    mean, err = _estimate(pec, x, 24_000)
    assert np.all(np.abs(mean - ideal) < 4 * err), (mean, ideal, err)
    assert np.all(err < 0.02)  # the test has the power to see the bias below
    noisy_mean, noisy_err = _estimate(PQCClassifier(3, 2, 3, seed=7, profile=prof), x, 24_000)
    assert np.any(np.abs(noisy_mean - ideal) > 4 * np.hypot(err, noisy_err))  # unmitigated: biased
    # Endo et al.: PEC's per-sample variance is at most gamma^2 (|<Z>| <= 1 per sample)
    with torch.no_grad():
        values = pec.expvals(x.expand(4000, -1))
    assert float(values.pow(2).mean(0).max()) <= pec.pec_gamma2(x) * (1 + 1e-12)


def test_pec_undoes_a_biased_read_out():
    """The published ibmq-melbourne read-out (p(0|1) 7.0 %, p(1|0) 1.9 %) adds an offset to every
    value; PEC subtracts it before rescaling, so its estimate stays the noiseless value."""
    prof = get_profile("ibmq-melbourne:p1=0,p2=0,t1_us=1e9,t2_us=1e9")  # read-out only: a tight test
    x = torch.tensor([[0.3, 1.1, 2.0]], dtype=torch.float64)
    ideal = PQCClassifier(3, 2, 3, seed=7).expvals(x).detach().numpy()[0]
    mean, _ = _estimate(PQCClassifier(3, 2, 3, seed=7, profile=prof, mitigation="pec"), x, 2000)
    np.testing.assert_allclose(mean, ideal, atol=1e-6)  # the read-out is undone exactly in every sample
    biased, _ = _estimate(PQCClassifier(3, 2, 3, seed=7, profile=prof), x, 2000)
    np.testing.assert_allclose(biased, (1 - 2 * prof.readout_error) * ideal + prof.readout_asymmetry, atol=1e-6)


def test_pec_gradient_estimates_the_noiseless_gradient():
    """The PEC estimate is linear in circuit values, so its gradient is unbiased; each sample's
    gradient of <Z> with respect to a rotation angle lies in [-1, 1], so its standard error is at
    most gamma / sqrt(n)."""
    x = torch.tensor([[0.4, 1.3]], dtype=torch.float64)
    ideal = PQCClassifier(2, 2, 2, seed=3)
    ideal.expvals(x)[0, 0].backward()
    pec = PQCClassifier(2, 2, 2, seed=3, profile=get_profile("noisy-nisq"), mitigation="pec")
    n = 20_000
    pec.expvals(x.expand(n, -1))[:, 0].mean().backward()
    gamma = math.sqrt(pec.pec_gamma2(x))
    assert gamma > 1.2  # noisy enough for a bias to show without PEC
    np.testing.assert_allclose(pec.weights.grad.numpy(), ideal.weights.grad.numpy(), atol=5 * gamma / math.sqrt(n))


def test_pec_runs_the_batch_as_one_broadcast_execution():
    model = PQCClassifier(3, 2, 3, seed=1, profile=get_profile("noisy-nisq"), mitigation="pec")
    x = torch.rand(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with qml.Tracker(model.ideal_qnode.device) as tracker:
        model(x).sum().backward()
    # one simulation of one broadcast tape carries the 16 sampled circuits, backward pass included
    assert tracker.totals["simulations"] == 1 and tracker.totals["batches"] == 1
    assert tracker.totals["executions"] == 16


def test_circuit_gamma_is_the_product_of_the_gates_and_the_read_out():
    prof = replace(IDEAL, p1=0.01, p2=0.05, readout_error=0.02)
    model = PQCClassifier(2, 1, 2, seed=0, profile=prof, mitigation="pec")
    tape = model.routed_tape(torch.zeros(1, 2, dtype=torch.float64))
    ones = sum(len(op.wires) == 1 for op in tape.operations)
    twos = sum(len(op.wires) == 2 for op in tape.operations)
    rep = representation(prof)
    expected = rep.gamma_1q**ones * rep.gamma_2q**twos / (1 - 2 * 0.02)
    assert circuit_gamma(tape, prof) == pytest.approx(expected, rel=1e-12)
    # 1-qubit depolarizing: gamma = (3 / (1 - 4p/3) - 1) / 2 (Temme et al.)
    assert rep.gamma_1q == pytest.approx((3 / (1 - 4 * 0.01 / 3) - 1) / 2, rel=1e-12)
    assert PQCClassifier(2, 1, 2, profile=prof).pec_gamma2(torch.zeros(1, 2)) == 1.0  # without PEC


# --- mitiq, the reference (the `mitiq` extra, which `test` includes) ---------------------------


def _to_cirq(tape, cirq):
    """The tape's gates as cirq operations (one cirq operation per PennyLane gate)."""
    qubits = cirq.LineQubit.range(len(tape.wires))
    ops = []
    for op in tape.operations:
        wires = [qubits[w] for w in op.wires]
        if op.name == "CNOT":
            ops.append(cirq.CNOT(*wires))
        else:  # RY, Rot: the gate's own matrix, one noisy operation as in our model
            matrix = qml.math.toarray(qml.math.unwrap(qml.matrix(op))).reshape(2, 2)  # (batch 1, 2, 2) -> (2, 2)
            ops.append(cirq.MatrixGate(matrix).on(*wires))
    return cirq.Circuit(ops), qubits


def test_pec_agrees_with_mitiqs_execute_with_pec_on_the_same_circuit():
    import cirq
    from mitiq.pec import execute_with_pec
    from mitiq.pec.representations.depolarizing import represent_operation_with_global_depolarizing_noise

    p1, p2 = 0.02, 0.06  # depolarizing only: mitiq's global-depolarizing representation is exact
    prof = replace(IDEAL, p1=p1, p2=p2)
    x = torch.tensor([[0.5, 2.2]], dtype=torch.float64)
    model = PQCClassifier(2, 2, 2, seed=11, profile=prof, mitigation="pec")
    tape = model.routed_tape(x)
    circuit, qubits = _to_cirq(tape, cirq)

    # the same quasi-probabilities as mitiq's
    for op in (circuit[0].operations[0], next(op for op in circuit.all_operations() if len(op.qubits) == 2)):
        level = p1 if len(op.qubits) == 1 else p2
        mitiq_rep = represent_operation_with_global_depolarizing_noise(cirq.Circuit(op), level)
        ours = representation(prof).q1 if len(op.qubits) == 1 else representation(prof).q2
        assert mitiq_rep.coeffs[0] == pytest.approx(ours[0], rel=1e-12)  # the identity
        np.testing.assert_allclose(mitiq_rep.coeffs[1:], np.delete(ours, 0), rtol=1e-12)  # each Pauli
        assert mitiq_rep.norm == pytest.approx(np.abs(ours).sum(), rel=1e-12)

    def executor(sampled):  # no annotations: mitiq reads them, and this module's are strings
        """Exact density matrix, the profile's channel after every gate (not after PEC's Paulis)."""
        noisy = []
        for op in sampled.all_operations():
            noisy.append(op)
            if not isinstance(op.gate, cirq.Pauli):  # X, Y, Z: what PEC appends
                n = len(op.qubits)
                noisy.append(cirq.depolarize(p1 if n == 1 else p2, n_qubits=n).on(*op.qubits))
        sim = cirq.DensityMatrixSimulator(dtype=np.complex128)
        rho = sim.simulate(cirq.Circuit(noisy), qubit_order=qubits).final_density_matrix
        return float(np.real(np.trace(rho @ np.kron(np.diag([1.0, -1.0]), np.eye(2)))))  # <Z_0>, qubit 0 first

    reps = [represent_operation_with_global_depolarizing_noise(cirq.Circuit(op), p1 if len(op.qubits) == 1 else p2)
            for op in circuit.all_operations()]
    mitiq_value, data = execute_with_pec(circuit, executor, representations=reps, num_samples=3000,
                                         random_state=5, full_output=True, force_run_all=False)
    mitiq_err = data["pec_error"]

    ideal = float(PQCClassifier(2, 2, 2, seed=11).expvals(x).detach()[0, 0])
    noisy_exact = executor(circuit)
    ours, ours_err = (v[0] for v in _estimate(model, x, 40_000))
    assert abs(ours - mitiq_value) < 4 * math.hypot(ours_err, mitiq_err), (ours, mitiq_value, ours_err, mitiq_err)
    assert abs(ours - ideal) < 4 * ours_err and abs(mitiq_value - ideal) < 4 * mitiq_err
    assert abs(noisy_exact - ideal) > 4 * math.hypot(ours_err, mitiq_err)  # there is a bias to cancel
