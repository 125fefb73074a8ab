"""The quantum-DP figures: Zhou & Ying's formula, its reduction from the project's noise model,
by hand for two cases and against the exact channel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qfl.audit.quantum_dp import depolarizing_epsilon, one_qubit_layers, quantum_dp
from qfl.task.profiles import PROFILES, get_profile


def test_zhou_ying_is_tight_for_orthogonal_inputs_measured_in_their_basis():
    # Arrange: (1 - q) rho + q I/2 on |0> and |1>, outcome 0
    q = 0.2
    p_given_0, p_given_1 = 1 - q / 2, q / 2
    # Act
    eps = depolarizing_epsilon(q, dim=2)
    # Assert
    assert eps == pytest.approx(math.log(p_given_0 / p_given_1))
    assert depolarizing_epsilon(0.5, 2) == pytest.approx(math.log(3))
    assert depolarizing_epsilon(1.0, 8) == 0.0  # everything depolarized: nothing leaks
    assert depolarizing_epsilon(0.0, 8) == math.inf


def test_gate_noise_by_hand():
    # Arrange: 2 qubits, 1 layer of angle data: an RY layer and a Rot layer, each 1-qubit gate
    # depolarizing with p1 = 0.03 (p1/3 per Pauli), no relaxation, no read-out error
    profile = get_profile("ideal:p1=0.03")
    q1 = 4 * 0.03 / 3  # 0.04: the fully depolarizing part of one qubit's channel
    q_layer = q1 ** 2  # both qubits at once: 0.0016
    q = 1 - (1 - q_layer) ** 2  # two layers: 0.00319744
    # Act
    got = quantum_dp(profile, n_qubits=2, n_layers=1, n_classes=2, rounds=1, epochs=1)
    # Assert
    assert got.q_gates == pytest.approx(0.00319744)
    assert got.epsilon_shot == pytest.approx(math.log(1 + (1 - q) * 4 / q))  # 2^C = 4 outcomes
    assert got.epsilon_shot == pytest.approx(7.1293, abs=1e-4)


def test_readout_and_shots_by_hand():
    # Arrange: read-out error 0.1 on each of 2 measured bits; no gate noise; 100 shots
    profile = get_profile("ideal:readout_error=0.1,shots=100")
    # each bit: 0.8 id + 0.2 uniform; both bits: uniform with weight 0.2^2 = 0.04
    eps_shot = math.log(1 + 0.96 * 4 / 0.04)  # ln 97
    # one round, one epoch, P = 3 n L = 6 Rot angles: 2P + 1 = 13 runs of 100 shots on the example
    # Act
    got = quantum_dp(profile, n_qubits=2, n_layers=1, n_classes=2, rounds=1, epochs=1)
    # Assert
    assert got.epsilon_shot == pytest.approx(math.log(97))
    assert got.shots_per_example == 1300
    assert got.epsilon_training == pytest.approx(1300 * eps_shot)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_exact_expectations_leave_no_quantum_privacy(name):
    got = quantum_dp(PROFILES[name], n_qubits=4, n_layers=3, n_classes=3, rounds=10, epochs=2)
    assert got.epsilon_training == math.inf  # shots = 0: the outcome distribution itself is released
    assert got.epsilon_shot > 5 or math.isinf(got.epsilon_shot)  # and one shot is not private either


def test_the_fully_depolarized_part_bounds_the_exact_channel():
    """|<Z_c>| <= 1 - q for the exact noisy channel (default.mixed), for any input and parameters:
    the derivation's step 3, with 2-qubit noise and relaxation present but not counted."""
    import pennylane as qml
    import torch

    from qfl.task.model import make_circuit
    from qfl.task.noise import coupling_edges, pauli_channels, route

    # Arrange
    n, layers = 2, 2
    profile = get_profile("ideal:p1=0.3,p2=0.1,t1_us=20,t2_us=15,gate_ns_1q=50,gate_ns_2q=300,coupling=line")
    q = quantum_dp(profile, n, layers, n_classes=1, rounds=1, epochs=1).q_gates
    rng = np.random.default_rng(0)
    mixed = qml.QNode(make_circuit(n, layers, n, "angles"), qml.device("default.mixed", wires=n), interface="torch")
    mixed = pauli_channels(route(mixed, coupling_map=coupling_edges(profile.coupling, n)), profile=profile)
    # Act
    worst = 0.0
    for _ in range(20):
        x = torch.tensor(rng.uniform(0, np.pi, (1, n)))
        w = torch.tensor(rng.normal(0, 2, (layers, n, 3)))
        worst = max(worst, float(torch.stack(list(mixed(x, w))).abs().max()))
    # Assert
    assert 0.3 < q < 1 and one_qubit_layers(layers) == 4
    assert worst <= 1 - q
