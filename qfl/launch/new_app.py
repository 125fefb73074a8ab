"""``qfl new DIR``: a Flower app of the user's own that runs on this project.

It writes Flower's quickstart layout: ``pyproject.toml`` (the components are this project's
ServerApp and ClientApp, so the strategies, the guard, the transports, DP and secure
aggregation apply unchanged; ``[tool.flwr.app.config]`` declares every key, set for the
user's data and model), ``task.py`` (the model factory, a PennyLane ``TorchLayer`` to edit),
two sites' example CSV files under ``data/`` and a ``README.md`` with the commands. ``flwr run
DIR`` and ``qfl launch --app DIR`` both run it. An existing non-empty folder is never written into.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qfl.common.config import KEY, defaults, toml_value

EXAMPLE_SITES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "sites"
FEATURES = 30  # the example sites' columns: scikit-learn's breast-cancer features

TASK = '''"""Your task: the model every node trains (and, under dataset = "file", each node's own data file).

`make_model(run_config)` returns a torch.nn.Module mapping (B, n-qubits) angles to (B, n-classes)
logits; qfl seeds its parameters with the run's seed, so every node starts from the same model.
The data: each node's node config names its file (data-path); the run config declares its
columns (data-label, data-classes, data-num-features), see README.md.
"""

from __future__ import annotations

import pennylane as qml
import torch


def make_model(run_config: dict) -> torch.nn.Module:
    """A re-uploading circuit on n-qubits wires, its expectations mapped to class logits."""
    n_qubits, n_layers = int(run_config["n-qubits"]), int(run_config["n-layers"])
    n_classes = len([c for c in str(run_config["data-classes"]).split(",") if c.strip()])
    device = qml.device("default.qubit", wires=n_qubits)

    @qml.qnode(device, interface="torch", diff_method="backprop")
    def circuit(inputs, weights):
        for layer in range(n_layers):
            qml.AngleEmbedding(inputs, wires=range(n_qubits), rotation="Y")
            qml.StronglyEntanglingLayers(weights[layer : layer + 1], wires=range(n_qubits))
        return [qml.expval(qml.PauliZ(w)) for w in range(n_qubits)]

    shapes = {"weights": (n_layers, n_qubits, 3)}
    return torch.nn.Sequential(qml.qnn.TorchLayer(circuit, shapes), torch.nn.Linear(n_qubits, n_classes))
'''

README = '''# {name}: a quantum federated learning app on qfl

Made by `qfl new`. `task.py` holds the model (edit it); `data/` two sites' example files
(scikit-learn's breast-cancer set cut in two hospitals of unequal case mix).

```bash
# both sites on this machine, each SuperNode with its own file
qfl launch --app {name} --clients 2 --rounds 5 --node-data {name}/data/site-a.csv --node-data {name}/data/site-b.csv
```

On separate machines each site starts its SuperNode with its own file in its node config,
`--node-config 'partition-id=0 num-partitions=2 data-path="/data/site-a.csv"'`, and the operator
runs `flwr run {name} <federation>`: qfl's docs/deploy.md has the commands, the certificates
and the firewall ports.

Your own data: replace the CSV files (a header row; the label column `data-label`, the feature
columns `data-features` or all others) and set `data-classes` and `data-num-features` in
`pyproject.toml`. Every node checks its file before round 1 and refuses, naming the file and
the column, if it does not fit. The strategies, the guard, the transports (QKD, DP, secure
aggregation) and the options are qfl's: `qfl launch --help`.
'''


def write_app(target: Path) -> Path:
    """Write the app into ``target`` (made; refused if it exists and is not empty). Returns it."""
    target = target.resolve()
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty: qfl new writes only into a new folder")
    (target / "data").mkdir(parents=True, exist_ok=True)
    for site in ("site-a.csv", "site-b.csv"):
        shutil.copyfile(EXAMPLE_SITES / site, target / "data" / site)
    config = {**defaults(), KEY.dataset: "file", KEY.model: "task:make_model", KEY.data_label: "diagnosis",
              KEY.data_classes: "benign,malignant", KEY.data_num_features: FEATURES, KEY.fraction_evaluate: 1.0,
              KEY.n_layers: 2, KEY.learning_rate: 0.05, KEY.num_server_rounds: 5}
    name = target.name
    lines = ["[build-system]", 'requires = ["setuptools>=68"]', 'build-backend = "setuptools.build_meta"', "",
             "[project]", f"name = {json.dumps(name)}", 'version = "0.1.0"', 'dependencies = ["qfl"]', "",
             "[tool.setuptools]", 'py-modules = ["task"]', "",
             "[tool.flwr.app]", f"publisher = {json.dumps(name)}", "",
             "[tool.flwr.app.components]", 'serverapp = "server.app:app"', 'clientapp = "client.app:app"', "",
             "[tool.flwr.app.config]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in config.items()]
    lines += ["", "[tool.flwr.federations]", 'default = "local"', "", "[tool.flwr.federations.local]",
              'address = "127.0.0.1:9093"', "insecure = true", ""]
    (target / "pyproject.toml").write_text("\n".join(lines))
    (target / "task.py").write_text(TASK)
    (target / "README.md").write_text(README.format(name=name))
    return target

