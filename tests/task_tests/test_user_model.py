"""A model of the user's own (model = "package.module:factory") and `qfl new`'s app."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qfl.common.config import ConfigError, RunConfig, defaults
from qfl.task.build import build_dataset, build_model
from qfl.task.user_model import UserModel, UserModelError

FACTORY = '''
import pennylane as qml
import torch

def make(run_config):
    n = int(run_config["n-qubits"])
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, interface="torch")
    def circuit(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n), rotation="Y")
        qml.BasicEntanglerLayers(weights, wires=range(n))
        return [qml.expval(qml.PauliZ(w)) for w in range(n)]

    return torch.nn.Sequential(qml.qnn.TorchLayer(circuit, {"weights": (2, n)}), torch.nn.Linear(n, 3))

def wrong_shape(run_config):
    return torch.nn.Linear(int(run_config["n-qubits"]), 7)

def not_a_module(run_config):
    return 42
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    (tmp_path / "my_circuits.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_circuits"
    sys.modules.pop("my_circuits", None)


def config(**changes: object) -> RunConfig:
    return RunConfig.from_run_config({**defaults(), "dataset": "iris", **changes})


def test_the_users_torchlayer_is_built_seeded_and_trained_by_the_clients_code(user_module) -> None:  # noqa: ANN001
    from qfl.task.train import train_local

    cfg = config(model=f"{user_module}:make")
    data = build_dataset(cfg)
    first, again = build_model(cfg, data), build_model(cfg, data)
    assert isinstance(first, UserModel)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))  # the run's seed
    before = {k: v.clone() for k, v in first.state_dict().items()}
    metrics = train_local(first, data.x_train[:32], data.y_train[:32], epochs=1, batch_size=16, learning_rate=0.1, seed=1)
    assert metrics["train-loss"] > 0 and any(not torch.equal(before[k], v) for k, v in first.state_dict().items())


@pytest.mark.parametrize(("factory", "words"), [
    ("wrong_shape", ["shape (2, 7)", "(2, 3) class logits"]),
    ("not_a_module", ["returned int, not a torch.nn.Module"]),
    ("absent", ["has no callable 'absent'"]),
])
def test_a_factory_that_does_not_fit_the_run_is_refused_by_name(user_module, factory, words) -> None:  # noqa: ANN001
    cfg = config(model=f"{user_module}:{factory}")
    with pytest.raises(UserModelError) as err:
        build_model(cfg, build_dataset(cfg))
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(("changes", "key"), [
    ({"mitigation": "pec"}, "mitigation"),
    ({"zne": True, "mitigation": "pec"}, "zne"),
    ({"embedding": "trainable"}, "embedding"),
    ({"model": "not a path"}, "model"),
])
def test_what_acts_on_the_built_in_circuit_only_is_refused_for_a_users_model(changes, key) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        config(**{"model": "my_circuits:make", **changes})
    assert err.value.key == key


def test_a_users_model_may_name_device_profiles_and_zne() -> None:
    cfg = config(**{"model": "my_circuits:make", "device-profiles": "ibm-heron;noisy-nisq", "mitigation": "zne"})
    assert cfg.profile_specs() == ["ibm-heron", "noisy-nisq"] and cfg.mitigation_method == "zne"


def test_qfl_new_writes_an_app_whose_config_and_model_check(tmp_path) -> None:
    app = tmp_path / "my-app"
    done = subprocess.run([sys.executable, "-m", "qfl.launcher", "new", str(app)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in app.iterdir()} == {"pyproject.toml", "task.py", "README.md", "data"}
    check = subprocess.run([sys.executable, "-m", "qfl.launcher", "launch", "--app", str(app), "--clients", "2",
                            "--node-data", str(app / "data" / "site-a.csv"), "--node-data", str(app / "data" / "site-b.csv"),
                            "--set", f'output-dir="{tmp_path / "runs"}"', "--check"], capture_output=True, text=True, timeout=180)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "check: the options are valid" in check.stdout
    again = subprocess.run([sys.executable, "-m", "qfl.launcher", "new", str(app)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr  # never written into
