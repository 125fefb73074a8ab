"""A model of your own, for docs/usage.md's examples (``PYTHONPATH=docs/examples``, ``model = "my_circuit:..."``).

Both are a ``qml.qnn.TorchLayer`` (angle embedding, two strongly entangling layers, one ``<Z>`` per
wire) and a linear read-out: ``classifier`` gives one logit per class (3: Iris, Wine), ``regressor``
one prediction per row (``task-kind = "regression"``). On a device profile their QNode runs with the
profile's noise (qfl/task/user_noise.py).
"""

import pennylane as qml
import torch


def _layer(n: int) -> qml.qnn.TorchLayer:
    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch")
    def circuit(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n), rotation="Y")
        qml.StronglyEntanglingLayers(weights, wires=range(n))
        return [qml.expval(qml.PauliZ(w)) for w in range(n)]

    return qml.qnn.TorchLayer(circuit, {"weights": (2, n, 3)})


def classifier(run_config: dict) -> torch.nn.Module:
    n = int(run_config["n-qubits"])
    return torch.nn.Sequential(_layer(n), torch.nn.Linear(n, 3))


def regressor(run_config: dict) -> torch.nn.Module:
    n = int(run_config["n-qubits"])
    return torch.nn.Sequential(_layer(n), torch.nn.Linear(n, 1))
