"""A user's own circuit on a device profile: its QNodes rebuilt with the profile's noise (qfl.task.user_noise)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from qfl.common.config import ConfigError, RunConfig, defaults
from qfl.common.contract import ROUND_CLIENTS_OK
from qfl.task.profiles import _compose_1q, _compose_2q, get_profile
from qfl.task.user_model import build_user_model
from qfl.task.user_noise import UserDeviceError, pauli_factors

N = 4  # qubits of the circuits below
CALIBRATED = importlib.util.find_spec("qiskit_ibm_runtime") is not None
PROFILES = ["noisy-nisq", "ibm-cusco",  # hand-typed: a line (routing adds SWAPs); a read-out that leans toward |0>
            pytest.param("ibm:torino", marks=pytest.mark.skipif(not CALIBRATED, reason="the calibrated extra")),
            "google:weber"]  # a grid (no extra needed)

MODULE = '''
import pennylane as qml
import torch
from qfl.task.model import make_circuit


def builtin(run_config):
    """The built-in circuit (2 layers, 3 read-outs), written as a user's TorchLayer, in float64."""
    n = int(run_config["n-qubits"])
    circuit = make_circuit(n, 2, 3, "angles")

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch")
    def qnode(inputs, weights):
        return circuit(inputs, weights)

    layer = qml.qnn.TorchLayer(qnode, {"weights": (2, n, 3)}, init_method=torch.nn.init.normal_)
    return layer.double()


def templates(run_config):
    """Templates on more than two wires, one <Z> (a regression head)."""
    n = int(run_config["n-qubits"])

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch")
    def qnode(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n), rotation="Y")
        qml.StronglyEntanglingLayers(weights, wires=range(n))
        return qml.expval(qml.PauliZ(0))

    return qml.qnn.TorchLayer(qnode, {"weights": (2, n, 3)}).double()


def classifier(run_config):
    n = int(run_config["n-qubits"])

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch")
    def qnode(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n), rotation="Y")
        qml.BasicEntanglerLayers(weights, wires=range(n))
        return [qml.expval(qml.PauliZ(w)) for w in range(n)]

    return torch.nn.Sequential(qml.qnn.TorchLayer(qnode, {"weights": (2, n)}), torch.nn.Linear(n, 3))


def no_qnode(run_config):
    return torch.nn.Linear(int(run_config["n-qubits"]), 3)


def purity_out(run_config):
    n = int(run_config["n-qubits"])

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch")
    def qnode(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n), rotation="Y")
        qml.BasicEntanglerLayers(weights, wires=range(n))
        return [qml.purity(wires=[0]), qml.expval(qml.PauliZ(1)), qml.expval(qml.PauliZ(2))]

    return qml.qnn.TorchLayer(qnode, {"weights": (1, n)})
'''


@pytest.fixture
def user_circuits(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    (tmp_path / "user_circuits.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.set_num_threads(1)
    yield "user_circuits"
    sys.modules.pop("user_circuits", None)


def run_config(**changes: object) -> dict:
    return {**defaults(), "n-qubits": N, **changes}


def user(module: str, factory: str, profile: str | None, mitigation: str = "none", outputs: int = 3,
         regression: bool = False):  # noqa: ANN201
    return build_user_model(f"{module}:{factory}", run_config(), N, outputs, seed=7,
                            profile=None if profile is None else get_profile(profile, N), mitigation=mitigation,
                            regression=regression)


def inputs(rows: int = 6) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(11).uniform(0, np.pi, (rows, N)))


def _single(index: int, q: float, size: int) -> np.ndarray:
    out = np.zeros(size)
    out[0], out[index] = 1 - q, q
    return out


@pytest.mark.parametrize("spec", ["noisy-nisq", "ibm-eagle", "google-sycamore", "ionq-aria", "ibmq-melbourne"])
def test_the_pennylane_pauli_errors_compose_to_the_builtin_circuits_channel_per_gate(spec) -> None:  # noqa: ANN001
    profile = get_profile(spec)
    letters = "IZXY"
    for probs, compose, size in ((profile.pauli_probs_1q(), _compose_1q, 4), (profile.pauli_probs_2q(), _compose_2q, 16)):
        factors = pauli_factors(probs)
        assert factors and all(0 < q < 0.5 for _, q in factors)
        channel = np.eye(size)[0]
        for word, q in factors:
            index = letters.index(word) if size == 4 else 4 * letters.index(word[0]) + letters.index(word[1])
            channel = compose(channel, _single(index, q, size))
        np.testing.assert_allclose(channel, probs, rtol=0, atol=1e-15)


def test_a_pauli_channel_that_is_no_product_of_pauli_errors_is_refused() -> None:
    with pytest.raises(ValueError, match="eigenvalue"):
        pauli_factors(np.array([0.0, 0.0, 1.0, 0.0]))  # always X: eigenvalue -1 on Z


@pytest.mark.parametrize("spec", PROFILES)
def test_the_builtin_circuit_as_a_users_torchlayer_gives_the_builtin_circuits_noisy_values(user_circuits, spec) -> None:  # noqa: ANN001
    from qfl.task.model import PQCClassifier, make_circuit
    from qfl.task.noise import coupling_edges, pauli_channels, route
    from qfl.task.qml import qml

    model = user(user_circuits, "builtin", spec)
    profile, x = model.profile, inputs()
    weights = model.module.weights.detach()
    with torch.no_grad():
        noisy = model(x)
        with model.device.ideal():
            ideal = model(x)
    assert (noisy - ideal).abs().max() > 0.05  # the device's noise shows
    # the built-in circuit's exact-channel twin: routed, the same Pauli channels as Kraus operators on
    # default.mixed, and its read-out (1 - 2 p_ro) <Z> + (p(0|1) - p(1|0))
    reference = qml.QNode(make_circuit(N, 2, 3, "angles"), qml.device("default.mixed", wires=N), interface="torch")
    reference = pauli_channels(route(reference, coupling_map=coupling_edges(profile.coupling, N)), profile=profile)
    with torch.no_grad():
        exact = torch.stack(list(reference(x, weights)), dim=-1) * (1 - 2 * profile.readout_error) + profile.readout_asymmetry
    torch.testing.assert_close(noisy, exact, rtol=0, atol=1e-10)
    # and the built-in circuit's own trajectories on the same device, averaged over 4,000 draws per input
    builtin = PQCClassifier(N, 2, 3, seed=7, profile=profile)
    with torch.no_grad():
        builtin.weights.copy_(weights)
        draws = 4000
        sampled = builtin.expvals(x.repeat(draws, 1)).reshape(draws, len(x), 3)
    error = sampled.std(dim=0) / draws**0.5
    assert ((sampled.mean(dim=0) - noisy).abs() <= 4.5 * error + 1e-12).all()


def test_zero_noise_extrapolation_moves_the_users_noisy_values_toward_the_ideal_ones(user_circuits) -> None:  # noqa: ANN001
    x = inputs(8)
    plain = user(user_circuits, "templates", "noisy-nisq", outputs=1, regression=True)
    mitigated = user(user_circuits, "templates", "noisy-nisq", "zne", outputs=1, regression=True)
    with torch.no_grad():
        noisy, zne = plain(x), mitigated(x)
        with plain.device.ideal():
            ideal = plain(x)
    assert noisy.shape == (8, 1) and mitigated.zne and plain.is_noisy
    gap, left = (noisy - ideal).abs().mean(), (zne - ideal).abs().mean()
    assert gap > 0.05 and left < 0.8 * gap  # toward the ideal values (here 0.111 -> 0.071)
    # folding scales the gates' noise, not the read-out's (as on the built-in circuit): against the ideal values
    # as the device reads them out, ZNE removes part of the gates' share (here 0.094 -> 0.055: at 5x folding this
    # device's noise is strong enough that Richardson's extrapolation falls short)
    read_out = ideal * (1 - 2 * plain.profile.readout_error)
    assert (zne - read_out).abs().mean() < 0.7 * (noisy - read_out).abs().mean()


def test_a_noiseless_profile_leaves_the_users_circuit_as_it_is(user_circuits) -> None:  # noqa: ANN001
    ideal, on_ideal = user(user_circuits, "builtin", None), user(user_circuits, "builtin", "ideal")
    assert on_ideal.device is None and not on_ideal.is_noisy
    with torch.no_grad():
        assert torch.equal(ideal(inputs()), on_ideal(inputs()))


@pytest.mark.parametrize(("factory", "spec", "mitigation", "key", "words"), [
    ("builtin", "noisy-nisq:n_qubits=3", "none", "device-profiles", "has 3 qubits"),
    ("builtin", "noisy-nisq:shots=128", "none", "device-profiles", "shots"),
    ("no_qnode", "noisy-nisq", "none", "device-profiles", "holds no PennyLane QNode"),
    ("purity_out", "noisy-nisq", "none", "device-profiles", "returns PurityMP"),
    ("builtin", "noisy-nisq", "pec", "mitigation", "pec"),
])
def test_what_cannot_apply_to_the_users_circuit_is_refused_naming_the_key(user_circuits, factory, spec, mitigation, key,  # noqa: ANN001
                                                                          words) -> None:  # noqa: ANN001
    with pytest.raises(UserDeviceError) as err:
        build_user_model(f"{user_circuits}:{factory}", run_config(), N, 3, seed=7,
                         profile=get_profile(spec), mitigation=mitigation)
    assert err.value.key == key and words in str(err.value)


def test_the_launch_check_builds_the_users_circuit_on_each_profile(user_circuits) -> None:  # noqa: ANN001
    from server.checks import check_run

    base = {**defaults(), "dataset": "iris", "n-qubits": N, "model": f"{user_circuits}:classifier"}
    check_run(RunConfig.from_run_config({**base, "device-profiles": "noisy-nisq;ideal", "mitigation": "zne"}))
    with pytest.raises(ConfigError) as err:
        check_run(RunConfig.from_run_config({**base, "device-profiles": "ideal;noisy-nisq:shots=64"}))
    assert err.value.key == "device-profiles" and "shots" in str(err.value)


def test_clients_on_noisy_devices_claim_their_users_circuits_noise(user_circuits, task_identity) -> None:  # noqa: ANN001
    from qfl.inprocess import InProcessFederation

    cfg = {**defaults(), "dataset": "iris", "n-qubits": N, "model": f"{user_circuits}:classifier", "seed": 5,
           "device-profiles": "noisy-nisq;ideal", "local-epochs": 1}
    fed = InProcessFederation(cfg, clients=2).run(1)
    rows = {r["profile"]: r for r in fed.rows}
    noisy, ideal = rows["noisy-nisq"], rows["ideal"]
    assert fed.stats[0][ROUND_CLIENTS_OK] == 2
    assert 0.0 < noisy["noise_contraction"] < 0.5 and ideal["noise_contraction"] == 1.0  # here 0.15
    assert noisy["update_noise_var"] == 0.0  # exact channels: the noise is a bias, the update deterministic
    assert noisy["swaps"] > 0 and noisy["two_qubit_gates"] > ideal["two_qubit_gates"] == 0  # routed to a line
    assert noisy["circuit_depth"] > 0 and ideal["noise_gap"] == 0.0


@pytest.mark.parametrize(("wires", "mitigation", "key"), [(7, "none", "device-profiles"), (6, "zne", "mitigation")])
def test_a_circuit_too_wide_for_a_density_matrix_is_refused(user_circuits, wires, mitigation, key) -> None:  # noqa: ANN001
    with pytest.raises(UserDeviceError) as err:
        build_user_model(f"{user_circuits}:templates", run_config(**{"n-qubits": wires}), wires, 1, seed=7,
                         profile=get_profile("noisy-nisq"), mitigation=mitigation, regression=True)
    assert err.value.key == key and f"{wires} wires" in str(err.value).replace(f"uses {wires}", f"{wires} wires")
