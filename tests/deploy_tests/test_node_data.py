"""Two sites, each with its own CSV file, in a real deployment (SuperLink + two SuperNodes on loopback);
and a node whose file is unusable refusing at the warm-up, named, while the others go on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import LAUNCH_TIMEOUT_S, launch_cmd, run_rows

pytestmark = pytest.mark.integration

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
FILE_RUN = ("--dataset", "file", "--set", 'data-label="species"', "--set", 'data-classes="setosa,versicolor,virginica"',
            "--set", "data-num-features=4", "--set", "fraction-evaluate=1.0")


def site_files(tmp_path) -> list:  # noqa: ANN001
    """Iris cut into two sites' CSV files, with the species by name."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    names = ("setosa", "versicolor", "virginica")
    order = np.random.default_rng(0).permutation(len(y))
    paths = []
    for i, rows in enumerate(np.array_split(order, 2)):
        path = tmp_path / f"site-{i}.csv"
        path.write_text(",".join((*FEATURES, "species")) + "\n"
                        + "".join(",".join(f"{v:g}" for v in x[j]) + f",{names[y[j]]}\n" for j in rows))
        paths.append(path)
    return paths


def test_two_sites_train_on_their_own_files_and_report_federated_evaluation(tmp_path) -> None:
    # Arrange
    a, b = site_files(tmp_path)
    cmd = launch_cmd(tmp_path, "sites", "--clients", "2", "--rounds", "3", *FILE_RUN,
                     "--node-data", str(a), "--node-data", str(b))
    # Act
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = run_rows(tmp_path / "sites")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["test_accuracy"] is None for r in rows)  # the server holds no test set
    evaluated = rows[1:]
    assert all(r["clients_ok"] == 2 and r["fed_eval_examples"] == 38 for r in evaluated)  # 19 + 19 held-out rows
    assert max(r["fed_eval_accuracy"] for r in evaluated) > 0.6  # 3 classes: chance is 1/3
    node_cmds = (tmp_path / "sites" / "logs" / "commands.json").read_text()
    assert str(a) in node_cmds and str(b) in node_cmds


def test_a_launch_with_an_unusable_node_file_stops_before_any_process_naming_file_and_column(tmp_path) -> None:
    a, b = site_files(tmp_path)
    b.write_text(b.read_text().replace("virginica", "iris-x", 1))
    done = subprocess.run(launch_cmd(tmp_path, "bad", "--clients", "2", "--rounds", "1", *FILE_RUN, "--node-data", str(a),
                                     "--node-data", str(b)), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "site-1.csv" in said and "'species'" in said and "not a declared class" in said
    assert "iris-x" not in said  # the row is named, its value never leaves the node
    assert not (tmp_path / "bad" / "logs").exists()  # nothing was started


def test_an_app_from_qfl_new_runs_its_own_model_on_two_sites_files(tmp_path) -> None:
    # Arrange: the app as `qfl new` writes it, run as its README says
    app = tmp_path / "my-app"
    assert subprocess.run([sys.executable, "-m", "qfl.launcher", "new", str(app)], timeout=120).returncode == 0
    cmd = launch_cmd(tmp_path, "new-app", "--app", str(app), "--dataset", "file", "--clients", "2", "--rounds", "2",
                     "--node-data", str(app / "data" / "site-a.csv"), "--node-data", str(app / "data" / "site-b.csv"))
    # Act
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = run_rows(tmp_path / "new-app")
    assert [r["round"] for r in rows] == [0, 1, 2] and all(r["clients_ok"] == 2 for r in rows[1:])
    assert rows[-1]["fed_eval_accuracy"] > 0.6  # two classes, 63 % benign: the model learns past the majority class
