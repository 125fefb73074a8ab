"""Simulated NISQ devices: channels are valid, noise shrinks expectations by the
expected factors, and routing to a coupling map keeps the noiseless function."""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import numpy as np
import pennylane as qml
import pytest
import torch

from qfl.task.model import PQCClassifier
from qfl.task.noise import (
    COUPLINGS,
    PROFILES,
    circuit_metrics,
    coupling_edges,
    get_profile,
    pauli_trajectories,
    route,
)

IDEAL = PROFILES["ideal"]
N_TRAJ = 40_000  # broadcast trajectories; standard error <= 1/sqrt(N) = 0.005


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_is_a_valid_pauli_channel(name):
    prof = PROFILES[name]
    for probs in (prof.pauli_probs_1q(), prof.pauli_probs_2q()):
        assert np.all(probs >= 0) and probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert (prof.pauli_probs_1q()[0] == 1.0) == (prof.p1 == 0 and math.isinf(prof.t1_us))


def _one_qubit(theta_gate, profile, rng):
    dev = qml.device("default.qubit", wires=2)

    @qml.qnode(dev)
    def circuit(theta):
        theta_gate(theta)
        return qml.expval(qml.PauliZ(0)), qml.expval(qml.PauliX(0))

    return pauli_trajectories(circuit, profile=profile, rng=rng)


def test_depolarizing_shrinks_expectation_by_one_minus_four_thirds_p():
    p = 0.15
    noisy = _one_qubit(lambda t: qml.RY(t, wires=0), replace(IDEAL, p1=p), np.random.default_rng(0))
    z, _ = noisy(np.full(N_TRAJ, 0.3))
    assert float(np.mean(z)) == pytest.approx((1 - 4 * p / 3) * math.cos(0.3), abs=0.015)


def test_two_qubit_depolarizing_factor():
    p = 0.2
    dev = qml.device("default.qubit", wires=2)

    @qml.qnode(dev)
    def circuit(theta):
        qml.RY(theta, wires=1)  # broadcast carrier; noiseless (p1 = 0)
        qml.CNOT(wires=[0, 1])
        return qml.expval(qml.PauliZ(0))

    noisy = pauli_trajectories(circuit, profile=replace(IDEAL, p2=p), rng=np.random.default_rng(1))
    # Z0 flips under the 8 of 15 two-qubit Paulis with X or Y on qubit 0
    assert float(np.mean(noisy(np.zeros(N_TRAJ)))) == pytest.approx(1 - 16 * p / 15, abs=0.015)


def test_dephasing_decays_coherence_as_exp_minus_t_over_t2():
    t2_us, gate_ns = 2.0, 1000.0  # one gate lasts half of T2
    prof = replace(IDEAL, t1_us=1e9, t2_us=t2_us, gate_ns_1q=gate_ns)
    noisy = _one_qubit(lambda t: qml.RY(t, wires=0), prof, np.random.default_rng(2))
    _, x = noisy(np.full(N_TRAJ, math.pi / 2))
    assert float(np.mean(x)) == pytest.approx(math.exp(-gate_ns * 1e-3 / t2_us), abs=0.015)


def test_readout_error_and_shots_in_the_model():
    x = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ideal = PQCClassifier(4, 2, 3, seed=1)
    flipped = PQCClassifier(4, 2, 3, seed=1, profile=replace(IDEAL, readout_error=0.1))
    torch.testing.assert_close(flipped.expvals(x), 0.8 * ideal.expvals(x))
    shots = PQCClassifier(4, 2, 3, seed=1, profile=replace(IDEAL, shots=400))
    err = (shots.expvals(x) - ideal.expvals(x)).detach()
    assert 0 < err.abs().max() < 5 * math.sqrt(1 / 400)  # finite-shot noise of the right size


def test_a_biased_read_out_shifts_every_expectation_toward_zero_state():
    """p(0|1) = 0.12, p(1|0) = 0.02: <Z> -> (1 - p(0|1) - p(1|0)) <Z> + p(0|1) - p(1|0)."""
    x = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ideal = PQCClassifier(4, 2, 3, seed=1)
    biased = PQCClassifier(4, 2, 3, seed=1, profile=replace(IDEAL, readout_error=0.07, readout_asymmetry=0.10))
    torch.testing.assert_close(biased.expvals(x), 0.86 * ideal.expvals(x) + 0.10)
    shots = PQCClassifier(4, 2, 3, seed=1, profile=replace(IDEAL, readout_error=0.07, readout_asymmetry=0.10,
                                                                shots=20_000))
    err = (shots.expvals(x) - (0.86 * ideal.expvals(x) + 0.10)).detach()
    assert err.abs().max() < 5 * math.sqrt(1 / 20_000)  # sampled around the biased value
    assert get_profile("ibmq-melbourne").readout_asymmetry > 0  # a published biased read-out
    with pytest.raises(ValueError, match="readout_asymmetry"):  # p(1|0) would be negative
        replace(IDEAL, readout_error=0.02, readout_asymmetry=0.05)
    with pytest.raises(ValueError, match="readout_asymmetry"):
        get_profile("ideal:readout_asymmetry=0.01")


@pytest.mark.parametrize("coupling", COUPLINGS)
@pytest.mark.parametrize("kind", ["angles", "states"])
def test_routed_circuit_computes_the_same_function(coupling, kind):
    n = 5
    rng = np.random.default_rng(3)
    if kind == "angles":
        x = torch.tensor(rng.uniform(0, np.pi, size=(4, n)))
    else:
        psi = rng.normal(size=(4, 2**n))
        x = torch.tensor(psi / np.linalg.norm(psi, axis=1, keepdims=True))
    ideal = PQCClassifier(n, 2, 3, kind=kind, seed=2)
    routed = PQCClassifier(n, 2, 3, kind=kind, seed=2, profile=replace(IDEAL, coupling=coupling))
    torch.testing.assert_close(routed(x), ideal(x))


@pytest.mark.parametrize("coupling", COUPLINGS[1:])
@pytest.mark.parametrize("n", [2, 5, 8])
def test_coupling_maps_are_connected(coupling, n):
    graph = nx.Graph(coupling_edges(coupling, n))
    assert sorted(graph.nodes) == list(range(n)) and nx.is_connected(graph)


def test_routing_adds_swaps_only_when_needed():
    x = torch.rand(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    counts = {}
    for coupling in ("all-to-all", "ring", "line"):
        model = PQCClassifier(6, 2, 3, profile=replace(IDEAL, coupling=coupling))
        tape = qml.workflow.construct_batch(model.routed_qnode, level="user")(x, model.weights)[0][0]
        counts[coupling] = circuit_metrics(tape)
    assert counts["all-to-all"]["swaps"] == 0 and counts["ring"]["swaps"] == 0
    assert counts["line"]["swaps"] > 0  # the ring's closing CNOT needs routing on a line
    assert counts["line"]["circuit-depth"] > counts["ring"]["circuit-depth"]


def test_noisy_device_lowers_read_out_contrast():
    # one input, many trajectories: the mean noisy expectation shrinks toward 0
    x = torch.full((4000, 4), 0.7, dtype=torch.float64)
    ideal = PQCClassifier(4, 3, 3, seed=4).expvals(x[:1]).detach()[0]
    noisy = PQCClassifier(4, 3, 3, seed=4, profile=PROFILES["noisy-nisq"]).expvals(x).detach().mean(0)
    c = int(ideal.abs().argmax())
    # ~30 CNOT-equivalents at 5 % after routing to a line, 5 % read-out: about 0.1
    assert 0.02 < float(noisy[c] / ideal[c]) < 0.5


def test_profile_specs_and_errors():
    prof = get_profile("noisy-nisq:shots=1024,coupling=ring")
    assert prof.shots == 1024 and prof.coupling == "ring" and prof.p2 == PROFILES["noisy-nisq"].p2
    with pytest.raises(ValueError, match="unknown device profile 'nope'"):
        get_profile("nope")
    with pytest.raises(ValueError, match="bad override"):
        get_profile("ideal:colour=red")
    with pytest.raises(ValueError, match="p2 must be in"):
        get_profile("ideal:p2=0.7")
    with pytest.raises(ValueError, match="t2_us must be <= 2"):
        get_profile("ideal:t1_us=10,t2_us=30")
    with pytest.raises(ValueError, match="has 16 qubits"):
        PQCClassifier(20, 1, 2, profile=PROFILES["noisy-nisq"])


def test_route_keeps_state_preparation_in_front():
    dev = qml.device("default.qubit", wires=3)

    @qml.qnode(dev)
    def circuit(state):
        qml.StatePrep(state, wires=range(3))
        qml.CNOT(wires=[0, 2])
        return qml.expval(qml.PauliZ(2))

    state = np.zeros(8)
    state[4] = 1.0  # |100>: the CNOT flips qubit 2
    routed = route(circuit, coupling_map=[(0, 1), (1, 2)])
    assert float(routed(state)) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "spec", ["noisy-nisq", "ideal:p1=0.02,p2=0.08,t1_us=20,t2_us=15,gate_ns_1q=50,gate_ns_2q=300,coupling=ring"]
)
def test_trajectories_estimate_the_exact_density_matrix_result(spec):
    from qfl.task.model import make_circuit
    from qfl.task.noise import pauli_channels

    prof, n = get_profile(spec), 4
    w = torch.tensor(np.random.default_rng(0).normal(size=(2, n, 3)))
    x = np.full((1, n), 0.7)
    edges = coupling_edges(prof.coupling, n)
    mixed = qml.QNode(make_circuit(n, 2, 3, "angles"), qml.device("default.mixed", wires=n), interface="torch")
    mixed = pauli_channels(route(mixed, coupling_map=edges), profile=prof)
    exact = torch.stack(list(mixed(torch.tensor(x), w)), -1)[0]
    pure = qml.QNode(make_circuit(n, 2, 3, "angles"), qml.device("default.qubit", wires=n), interface="torch")
    pure = pauli_trajectories(route(pure, coupling_map=edges), profile=prof, rng=np.random.default_rng(1))
    est = torch.stack(list(pure(torch.tensor(np.repeat(x, 10_000, 0)), w)), -1).mean(0)
    torch.testing.assert_close(est, exact, atol=0.03, rtol=0)  # 3 standard errors
    ideal_qnode = qml.QNode(make_circuit(n, 2, 3, "angles"), qml.device("default.qubit", wires=n), interface="torch")
    ideal = torch.stack(list(ideal_qnode(torch.tensor(x), w)), -1)[0]
    assert (ideal - exact).abs().max() > 0.1  # the noise matters here: the test can fail
