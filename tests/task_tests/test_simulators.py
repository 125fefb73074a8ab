"""device = "auto": the documented simulator for a size and a device; lightning.qubit and
default.qubit give the same expectation values and gradients, noise and mitigation included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qfl.common.config import LIGHTNING_FROM_QUBITS, LIGHTNING_FROM_QUBITS_NOISY, RunConfig
from qfl.task.model import PQCClassifier
from qfl.task.profiles import get_profile
from qfl.task.simulators import choose_simulator, runs_noise_gates

DQ, LQ = "default.qubit", "lightning.qubit"


@pytest.mark.parametrize(
    ("n", "noise_gates", "diff_method", "expected"),
    [
        (4, False, "best", (DQ, "backprop")),  # today's default path, unchanged
        (4, True, "best", (DQ, "backprop")),
        (4, False, "adjoint", (DQ, "adjoint")),
        (LIGHTNING_FROM_QUBITS - 1, False, "best", (DQ, "backprop")),
        (LIGHTNING_FROM_QUBITS, False, "best", (LQ, "adjoint")),
        (16, False, "best", (LQ, "adjoint")),
        (LIGHTNING_FROM_QUBITS_NOISY - 1, True, "best", (DQ, "backprop")),
        (LIGHTNING_FROM_QUBITS_NOISY, True, "best", (LQ, "adjoint")),
        (16, False, "backprop", (DQ, "backprop")),  # only default.qubit has backprop
        (16, False, "parameter-shift", (LQ, "parameter-shift")),
    ],
)
def test_auto_picks_the_documented_simulator(n, noise_gates, diff_method, expected):
    assert choose_simulator("auto", diff_method, n, noise_gates) == expected


def test_a_named_device_is_kept_at_every_size():
    assert choose_simulator(DQ, "best", 16, True) == (DQ, "backprop")
    assert choose_simulator(LQ, "best", 2, False) == (LQ, "adjoint")


def test_the_crossovers_are_the_options_documented_ones():
    assert LIGHTNING_FROM_QUBITS_NOISY <= LIGHTNING_FROM_QUBITS  # noise gates only add to backprop's states
    help_text = RunConfig.model_fields["device"].description
    assert f"below {LIGHTNING_FROM_QUBITS} qubits" in help_text and f"from {LIGHTNING_FROM_QUBITS_NOISY} on" in help_text
    assert RunConfig().device == "auto"


@pytest.mark.parametrize(
    ("spec", "mitigation", "expected"),
    [(None, "none", False), ("ideal", "none", False), ("ideal:readout_error=0.05,shots=100", "none", False),
     ("ideal", "zne", True), ("noisy-nisq", "none", True), ("ibm-heron", "pec", True)],
)
def test_noise_gates_are_gate_errors_or_mitigation(spec, mitigation, expected):
    assert runs_noise_gates(None if spec is None else get_profile(spec), mitigation) is expected


@pytest.mark.parametrize(
    ("n", "spec", "expected"),
    [(4, "ideal", DQ), (4, "noisy-nisq", DQ), (LIGHTNING_FROM_QUBITS_NOISY, "ideal", DQ),
     (LIGHTNING_FROM_QUBITS_NOISY, "noisy-nisq", LQ), (LIGHTNING_FROM_QUBITS, "ideal", LQ)],
)
def test_the_model_a_run_config_builds_takes_autos_simulator(n, spec, expected):
    from qfl.task.build import build_model
    from qfl.task.data import Dataset

    cfg = RunConfig(n_qubits=n, n_layers=1)  # device = "auto", diff-method = "best"
    shape = np.zeros((1, n))
    data = Dataset("wine", "angles", 3, shape, np.zeros(1, dtype=np.int64), shape, np.zeros(1, dtype=np.int64))
    model = build_model(cfg, data, profile_spec=spec)
    assert (model.device_name, model.diff_method) == (expected, "backprop" if expected == DQ else "adjoint")


def test_auto_at_small_sizes_is_bit_for_bit_the_former_default():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.uniform(0, np.pi, size=(6, 4)))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    profile = get_profile("noisy-nisq")
    results = []
    for device in ("auto", DQ):
        model = PQCClassifier(4, 2, 3, device=device, seed=3, profile=profile)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.item(), model.weights.grad.clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def _values_and_grads(model: PQCClassifier, x: torch.Tensor, y: torch.Tensor):
    values = model.expvals(x)
    torch.nn.functional.cross_entropy(values * model.scale + model.bias, y).backward()
    return values.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("kind", "spec", "mitigation", "embedding"),
    [("angles", None, "none", "fixed"), ("states", None, "none", "trainable"), ("angles", "noisy-nisq", "none", "fixed"),
     ("angles", "noisy-nisq", "zne", "trainable"), ("angles", "ibm-heron", "pec", "fixed"),
     ("states", "noisy-nisq", "none", "fixed")],
)
def test_lightning_and_default_qubit_agree(kind, spec, mitigation, embedding):
    """Same seed, same noise draws: the two simulators give the same numbers, to rounding (which
    also catches expectation values that reach torch in single precision, ~1e-8 off)."""
    rng = np.random.default_rng(11)
    n = 4
    if kind == "angles":
        x = torch.tensor(rng.uniform(0, np.pi, size=(5, n)))
    else:
        psi = rng.normal(size=(5, 2**n))
        x = torch.tensor(psi / np.linalg.norm(psi, axis=1, keepdims=True))
    y = torch.tensor([0, 1, 1, 0, 1])
    profile = None if spec is None else get_profile(spec)
    runs = []
    for device in (DQ, LQ):
        model = PQCClassifier(n, 2, 2, kind=kind, device=device, seed=7, profile=profile, mitigation=mitigation,
                              embedding=embedding)
        runs.append(_values_and_grads(model, x, y))
    (values_dq, grads_dq), (values_lq, grads_lq) = runs
    assert values_lq.dtype == torch.float64
    assert values_dq.abs().max() > 0.05 and grads_dq["weights"].abs().max() > 1e-3  # not trivially equal
    torch.testing.assert_close(values_lq, values_dq, atol=1e-10, rtol=0)
    assert grads_lq.keys() == grads_dq.keys()
    for name, grad in grads_dq.items():
        torch.testing.assert_close(grads_lq[name], grad, atol=1e-10, rtol=0, msg=name)


def test_auto_trains_a_noisy_circuit_at_the_noisy_crossover():
    """At the crossover auto runs the noisy, routed circuit on lightning.qubit, and a step of
    training moves every parameter."""
    n = LIGHTNING_FROM_QUBITS_NOISY
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.uniform(0, np.pi, size=(2, n)))
    model = PQCClassifier(n, 1, 2, seed=1, profile=get_profile("noisy-nisq"))
    assert model.device_name == LQ
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all() and not torch.equal(p.detach(), before[name]), name


@pytest.mark.parametrize("spec", [None, "noisy-nisq"])
def test_another_pennylane_device_by_name_gives_default_qubits_numbers(spec):
    """A device no code here names (default.mixed, as a plugin's would be), with parameter-shift
    gradients: the same values and gradients as default.qubit's backprop, noise draws included."""
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.uniform(0, np.pi, size=(3, 3)))
    y = torch.tensor([0, 1, 1])
    profile = None if spec is None else get_profile(spec)
    (values_dq, grads_dq), (values_dm, grads_dm) = (
        _values_and_grads(PQCClassifier(3, 2, 2, device=device, diff_method=diff, seed=7, profile=profile), x, y)
        for device, diff in ((DQ, "best"), ("default.mixed", "parameter-shift")))
    assert values_dq.abs().max() > 0.05 and grads_dq["weights"].abs().max() > 1e-3
    torch.testing.assert_close(values_dm, values_dq, atol=1e-8, rtol=0)
    for name, grad in grads_dq.items():
        torch.testing.assert_close(grads_dm[name], grad, atol=1e-8, rtol=0, msg=name)


def test_a_device_is_checked_before_the_run_and_a_nodes_own_device_overrides_the_runs():
    from pathlib import Path

    from qfl.common.config import ConfigError, NodeConfig
    from qfl.launch.config import app_defaults

    base = app_defaults(Path(__file__).resolve().parents[2])
    run = RunConfig.from_run_config(base)
    node = {"partition-id": 0, "num-partitions": 2}
    with pytest.raises(ConfigError, match=r"run config 'device': no PennyLane device 'qiskit.aerx' is installed "
                                          r"here \(installed: .*default.mixed.*\)"):
        RunConfig.from_run_config({**base, "device": "qiskit.aerx"})
    with pytest.raises(ConfigError, match=r"'diff-method': 'adjoint' is not supported on device 'default.mixed' "
                                          r"\(choose from best, parameter-shift\)"):
        RunConfig.from_run_config({**base, "device": "default.mixed", "diff-method": "adjoint"})
    with pytest.raises(ConfigError, match=r"^node config 'device': no PennyLane device 'nope.qubit'"):
        NodeConfig.from_node_config({**node, "device": "nope.qubit"})
    with pytest.raises(ConfigError, match=r"^node config 'num-partitions': missing \(--node-config\)"):
        NodeConfig.from_node_config({"partition-id": 0})
    assert NodeConfig.from_node_config(node).simulator_for(run) == run.device == "auto"
    assert NodeConfig.from_node_config({**node, "device": "default.mixed"}).simulator_for(run) == "default.mixed"
    backprop = RunConfig.from_run_config({**base, "diff-method": "backprop"})
    with pytest.raises(ConfigError, match=r"^node config 'device': this node's device 'default.mixed' does not support the run's "
                                          r"diff-method 'backprop'"):
        NodeConfig.from_node_config({**node, "device": "default.mixed"}).simulator_for(backprop)


def test_a_node_trains_on_its_own_device():
    from pathlib import Path

    from client.local import LocalTask
    from qfl.common.config import NodeConfig
    from qfl.launch.config import app_defaults

    base = {**app_defaults(Path(__file__).resolve().parents[2]), "dataset": "iris", "n-qubits": 3, "n-layers": 1}
    cfg = RunConfig.from_run_config(base)
    node = {"partition-id": 0, "num-partitions": 2}
    own, runs = (LocalTask(cfg, NodeConfig.from_node_config(n)) for n in ({**node, "device": "default.mixed"}, node))

    assert own.model.device_name == "default.mixed" and runs.model.device_name == DQ
    x = torch.as_tensor(own.x[:4])
    with torch.no_grad():
        torch.testing.assert_close(own.model(x), runs.model(x), atol=1e-8, rtol=0)
