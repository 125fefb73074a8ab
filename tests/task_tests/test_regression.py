"""Regression (task-kind = "regression"): a numeric label in the nodes' own files, mean squared error, RMSE and R^2."""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
import pytest
import torch

from qfl.common.config import ConfigError, RunConfig, defaults
from qfl.common.contract import ROUND_CLIENTS_OK, TRAIN_LOSS
from qfl.task.local_data import DataError, DataSpec, read_node_data
from qfl.task.train import evaluate, loss_of, r_squared, train_local

FACTORY = '''
import pennylane as qml
import torch


def regressor(run_config):
    """A TorchLayer whose one <Z> is the prediction (shape (B,)), scaled by a trainable factor."""
    n = int(run_config["n-qubits"])

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch")
    def qnode(inputs, weights):
        qml.AngleEmbedding(inputs, wires=range(n), rotation="Y")
        qml.StronglyEntanglingLayers(weights, wires=range(n))
        return qml.expval(qml.PauliZ(0))

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = qml.qnn.TorchLayer(qnode, {"weights": (2, n, 3)}, init_method=lambda t: torch.nn.init.normal_(t, 0, 0.1))
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            return self.scale * self.layer(x)

    return Scaled()
'''


def write_csv(path, rows: int = 120, seed: int = 0, label: object = None) -> str:  # noqa: ANN001
    """A seeded data set: three features and a smooth numeric target (``label`` replaces row 5's target)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] - 0.3 * x[:, 2]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "c", "target"])
        for i, (features, target) in enumerate(zip(x, y)):
            writer.writerow([*features, label if label is not None and i == 4 else target])
    return str(path)


def regression_config(path: str, **changes: object) -> dict:
    return {**defaults(), "dataset": "file", "task-kind": "regression", "data-path": path, "data-label": "target",
            "data-num-features": 3, "fraction-evaluate": 1.0, "n-qubits": 4, "n-layers": 2, "local-epochs": 2,
            "learning-rate": 0.1, "seed": 3, **changes}


@pytest.fixture
def user_regressor(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    (tmp_path / "my_regressor.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_regressor:regressor"
    sys.modules.pop("my_regressor", None)


@pytest.mark.parametrize("model", ["pqc", "user"])
def test_a_regression_federation_learns_a_numeric_target_and_reports_rmse(tmp_path, task_identity, user_regressor,  # noqa: ANN001
                                                                          model) -> None:  # noqa: ANN001
    from qfl.inprocess import InProcessFederation

    torch.set_num_threads(1)
    path = write_csv(tmp_path / "sites.csv")
    cfg = regression_config(path, model="pqc" if model == "pqc" else user_regressor)
    fed = InProcessFederation(cfg, clients=2).run(4)
    assert all(s[ROUND_CLIENTS_OK] == 2 for s in fed.stats)
    losses = [s[TRAIN_LOSS] for s in fed.stats]
    assert losses[-1] < 0.6 * losses[0]  # the mean squared error falls
    first, last = fed.evaluations[0], fed.evaluations[-1]
    assert last["fed_eval_examples"] == 30 and math.isnan(last["fed_eval_accuracy"])  # 2 x 15 held-out rows
    assert last["fed_eval_rmse"] == pytest.approx(math.sqrt(last["fed_eval_loss"]))
    assert last["fed_eval_rmse"] < first["fed_eval_rmse"] and last["fed_eval_r2"] > 0.2
    assert last["train_rmse"] == pytest.approx(math.sqrt(losses[-1]))


def test_the_loss_and_r2_are_the_mean_squared_error_and_its_share_of_the_variance() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN202
            return x[:, :1]

    x = torch.tensor([[1.0], [2.0], [4.0], [5.0]], dtype=torch.float64)
    y = np.array([1.5, 2.0, 3.0, 5.5])
    got = evaluate(Fixed(), x.numpy(), y, regression=True)
    mse = np.mean((x.numpy()[:, 0] - y) ** 2)
    assert got["loss"] == pytest.approx(mse) and got["accuracy"] == pytest.approx(1 - mse / np.var(y))
    assert r_squared(0.3, np.ones(4)) == 0.0  # a constant target: nothing to explain
    assert loss_of(x, torch.as_tensor(y), regression=True).item() == pytest.approx(mse)


def test_local_training_on_a_numeric_target_lowers_the_mean_squared_error() -> None:
    from qfl.task.model import PQCClassifier

    rng = np.random.default_rng(1)
    x = rng.uniform(0, np.pi, (48, 4))
    y = np.cos(x[:, 0]) - 0.5 * np.cos(x[:, 1])
    model = PQCClassifier(4, 2, 1, seed=2)  # one read-out: s <Z_0> + b
    before = evaluate(model, x, y, regression=True)["loss"]
    metrics = train_local(model, x, y, epochs=4, batch_size=16, learning_rate=0.1, seed=5, regression=True)
    after = evaluate(model, x, y, regression=True)
    assert after["loss"] < 0.5 * before and metrics["train-accuracy"] > 0  # R^2 of the last epoch
    assert after["accuracy"] == pytest.approx(1 - after["loss"] / np.var(y))


@pytest.mark.parametrize(("label", "words"), [
    ("high", "1 row(s) that are not numbers"),
    ("", "1 row(s) that are not numbers"),
    ("nan", "1 NaN or infinite value(s)"),
    ("inf", "1 NaN or infinite value(s)"),
])
def test_a_label_that_is_not_a_finite_number_is_refused_naming_file_column_and_row(tmp_path, label, words) -> None:  # noqa: ANN001
    path = write_csv(tmp_path / "site.csv", label=label)
    cfg = RunConfig.from_run_config(regression_config(path))
    with pytest.raises(DataError) as err:
        read_node_data(path, DataSpec.of(cfg))
    message = str(err.value)
    assert path in message and "label column 'target'" in message and words in message and "first at row 5" in message
    assert "high" not in message  # rows are named, never their values


def test_a_regression_file_reads_its_label_as_numbers(tmp_path) -> None:  # noqa: ANN001
    path = write_csv(tmp_path / "site.csv", rows=20)
    x, y = read_node_data(path, DataSpec.of(RunConfig.from_run_config(regression_config(path))))
    assert x.shape == (20, 3) and y.dtype == np.float64 and np.isfinite(y).all()


@pytest.mark.parametrize(("changes", "key"), [
    ({"dataset": "wine"}, "task-kind"),
    ({"data-classes": "low,high"}, "data-classes"),
    ({"partitioner": "dirichlet"}, "partitioner"),
    ({"partitioner": "flower:PathologicalPartitioner:num-classes-per-partition=2"}, "partitioner"),
    ({"architecture": "search", "strategy": "nested-fedavg"}, "architecture"),
])
def test_what_needs_classes_is_refused_with_regression_naming_the_key(tmp_path, changes, key) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config(regression_config(str(tmp_path / "x.csv"), **changes))
    assert err.value.key == key


def test_a_regression_run_declares_no_classes_and_its_model_one_output(tmp_path) -> None:  # noqa: ANN001
    from qfl.task.build import build_dataset, build_model

    cfg = RunConfig.from_run_config(regression_config(write_csv(tmp_path / "site.csv"), model="mlp"))
    data = build_dataset(cfg)
    assert data.n_classes == 1 and data.y_train.dtype == np.float64
    assert build_model(cfg, data)(torch.zeros(3, 4, dtype=torch.float64)).shape == (3, 1)
    with pytest.raises(ConfigError) as err:  # classification still needs its classes
        RunConfig.from_run_config(regression_config("x.csv", **{"task-kind": "classification"}))
    assert err.value.key == "data-classes"


def test_the_metrics_rows_of_a_regression_run(tmp_path) -> None:  # noqa: ANN001
    from server.recorder import COLUMNS, RunRecorder
    from server.rounds import regression_columns

    row = regression_columns({"train_loss": 0.25, "train_accuracy": 0.6, "fed_eval_loss": 0.16, "fed_eval_accuracy": 0.5})
    assert row["train_rmse"] == pytest.approx(0.5) and row["fed_eval_rmse"] == pytest.approx(0.4)
    assert row["train_r2"] == 0.6 and row["fed_eval_r2"] == 0.5
    assert math.isnan(row["train_accuracy"]) and math.isnan(row["fed_eval_accuracy"])
    assert math.isnan(regression_columns({"train_loss": float("nan")})["train_rmse"])
    recorder = RunRecorder(tmp_path / "run")
    base = {c: 0.0 for c in COLUMNS}
    recorder.add_row({**base, **row})
    recorder.close()
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_rmse", "train_r2", "fed_eval_rmse", "fed_eval_r2"} <= set(header)


def test_an_evaluation_error_reply_is_left_out_of_the_nodes_figures(task_identity) -> None:  # noqa: ANN001
    from flwr.app import Error, Message, MetricRecord, RecordDict

    from qfl.common.contract import EVAL_ACCURACY, EVAL_LOSS, METRICS, NUM_EXAMPLES
    from qfl.inprocess import stamp
    from server.instrumented import InstrumentedStrategy
    from strategies.registry import load_strategy

    def reply(node: int, content: RecordDict | Error) -> Message:
        request = Message(RecordDict(), dst_node_id=node, message_type="evaluate")
        stamp(request, message_id=f"m{node}")
        return Message(content, reply_to=request)

    guard = InstrumentedStrategy(load_strategy("fedavg", fraction_evaluate=1.0))
    ok = reply(1, RecordDict({METRICS: MetricRecord({EVAL_LOSS: 0.25, EVAL_ACCURACY: 0.5, NUM_EXAMPLES: 10})}))
    guard.aggregate_evaluate(1, [ok, reply(2, Error(4302, "client: data file refused"))])
    figures = guard.take_evaluation()
    assert figures["fed_eval_loss"] == 0.25 and figures["fed_eval_examples"] == 10


def test_regression_on_noisy_devices_with_the_noise_isolating_strategy(tmp_path, task_identity) -> None:  # noqa: ANN001
    from qfl.inprocess import InProcessFederation

    torch.set_num_threads(1)
    cfg = regression_config(write_csv(tmp_path / "sites.csv"), **{"device-profiles": "noisy-nisq;ideal",
                                                                  "strategy": "noise-isolating"})
    fed = InProcessFederation(cfg, clients=2).run(2)
    assert [s[ROUND_CLIENTS_OK] for s in fed.stats] == [2, 2]
    noisy = [r for r in fed.rows if r["profile"] == "noisy-nisq"]
    assert all(r["update_noise_var"] > 0 and 0 < r["noise_contraction"] < 1 for r in noisy)  # replicas on the broadcast axis
    assert math.isfinite(fed.evaluations[-1]["fed_eval_rmse"]) and math.isfinite(fed.evaluations[-1]["fed_eval_r2"])


def test_the_console_shows_a_regression_runs_rmse_and_r2() -> None:
    from qfl.launch.console import format_table, round_line

    row = {"round": 2, "test_accuracy": None, "test_loss": None, "train_loss": 0.25, "fed_eval_accuracy": None,
           "train_rmse": 0.5, "train_r2": 0.6, "fed_eval_rmse": 0.4, "fed_eval_r2": 0.5, "clients_ok": 2,
           "clients_failed": 0, "round_time_s": 1.0, "bytes_down": 10, "bytes_up": 10, "dp_epsilon": None}
    assert "held-out-rmse 0.4000  held-out-r2 0.500  train-rmse 0.5000" in round_line(row, 5)
    table = format_table([row])
    assert "held_rmse" in table and "0.4000" in table and "test_acc" not in table
