"""A node's own data file (dataset = "file"): reading, every refusal named, the reduction to angles."""

from __future__ import annotations

import numpy as np
import pytest

from qfl.common.config import ConfigError, NodeConfig, RunConfig, defaults
from qfl.task.local_data import DataError, DataSpec, held_out, node_dataset, read_node_data, to_angles

SPEC = DataSpec(label="diagnosis", features=(), classes=("benign", "malignant"), num_features=3, min_samples=4)


def write_csv(path, rows, header=("a", "b", "c", "diagnosis")):  # noqa: ANN001, ANN201
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def write_text(path, text: str):  # noqa: ANN001, ANN201
    path.write_text(text)
    return path


def sample_rows(n: int = 12, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [(*np.round(rng.normal(size=3), 4), "benign" if i % 2 else "malignant") for i in range(n)]


def file_config(**changes: object) -> RunConfig:
    values = {**defaults(), "dataset": "file", "data-label": "diagnosis", "data-classes": "benign,malignant",
              "data-num-features": 3, "data-min-samples": 4, "fraction-evaluate": 1.0, "n-qubits": 2}
    return RunConfig.from_run_config({**values, **changes})


def test_a_csv_is_read_with_its_labels_as_class_indices(tmp_path) -> None:
    rows = sample_rows()
    x, y = read_node_data(write_csv(tmp_path / "site.csv", rows), SPEC)
    assert x.shape == (12, 3) and x.dtype == np.float64
    np.testing.assert_allclose(x[0], rows[0][:3])
    assert y.tolist() == [1 if r[3] == "malignant" else 0 for r in rows]


def test_named_feature_columns_are_taken_in_their_order(tmp_path) -> None:
    path = write_csv(tmp_path / "site.csv", sample_rows())
    x, _ = read_node_data(path, DataSpec("diagnosis", ("c", "a"), SPEC.classes, 2, 4))
    full, _ = read_node_data(path, SPEC)
    np.testing.assert_array_equal(x, full[:, [2, 0]])


@pytest.mark.parametrize(("make", "words"), [
    (lambda d: d / "absent.csv", ["absent.csv", "does not exist"]),
    (lambda d: write_csv(d / "x.csv", sample_rows(), header=("a", "b", "c", "label")), ["no label column 'diagnosis'"]),
    (lambda d: write_csv(d / "x.csv", [(1, 2, 3, "benign")] * 2 + [(1, 2, "oops", "benign")] * 4),
     ["column 'c' is not numeric", "first at row 3"]),
    (lambda d: write_csv(d / "x.csv", [(1, 2, 3, "benign")] * 5 + [(1, "nan", 3, "benign")]),
     ["column 'b'", "NaN or infinite", "row 6"]),
    (lambda d: write_csv(d / "x.csv", [(1, 2, "inf", "benign")] * 6), ["column 'c'", "NaN or infinite"]),
    (lambda d: write_csv(d / "x.csv", [(1, 2, 3, "benign")] * 5 + [(1, 2, 3, "unsure")]),
     ["label column 'diagnosis'", "1 row(s) whose label is not a declared class", "first at row 6"]),
    (lambda d: write_csv(d / "x.csv", [(1, 2, 3, 4, "benign")] * 6, header=("a", "b", "c", "d", "diagnosis")),
     ["4 feature column(s)", "data-num-features = 3"]),
    (lambda d: write_csv(d / "x.csv", [(1, 2, 3, "benign")] * 3), ["3 row(s)", "data-min-samples = 4"]),
    (lambda d: write_text(d / "x.json", "{}"), ["is not one of .csv, .parquet, .npz"]),
    (lambda d: write_text(d / "x.csv", "a,b,c,diagnosis\n1,2\n"), ["line 2 has 2 field(s)"]),
])
def test_every_unusable_file_is_refused_naming_file_column_and_reason(tmp_path, make, words) -> None:  # noqa: ANN001
    path = make(tmp_path)
    with pytest.raises(DataError) as err:
        read_node_data(path, SPEC)
    assert str(path.name) in str(err.value)
    for word in words:
        assert word in str(err.value)
    assert "oops" not in str(err.value) and "unsure" not in str(err.value)  # rows are named, their values never sent


def test_a_missing_named_feature_column_is_named(tmp_path) -> None:
    path = write_csv(tmp_path / "site.csv", sample_rows())
    with pytest.raises(DataError, match="no feature column 'age'"):
        read_node_data(path, DataSpec("diagnosis", ("a", "age", "c"), SPEC.classes, 3, 4))


def test_npz_feature_matrix_and_numeric_labels(tmp_path) -> None:
    x = np.arange(30, dtype=float).reshape(10, 3)
    np.savez(tmp_path / "site.npz", x=x, y=np.array([0.0, 1.0] * 5))
    got_x, got_y = read_node_data(tmp_path / "site.npz", DataSpec("y", (), ("0", "1"), 3, 4))
    np.testing.assert_array_equal(got_x, x)
    assert got_y.tolist() == [0, 1] * 5


def test_parquet_and_a_saved_dataset_folder(tmp_path) -> None:
    datasets = pytest.importorskip("datasets", reason="the data extra: pip install 'qfl[data]'")
    rows = sample_rows()
    table = {"a": [r[0] for r in rows], "b": [r[1] for r in rows], "c": [r[2] for r in rows], "diagnosis": [r[3] for r in rows]}
    ds = datasets.Dataset.from_dict(table)
    ds.to_parquet(str(tmp_path / "site.parquet"))
    ds.save_to_disk(str(tmp_path / "site-saved"))
    want_x, want_y = read_node_data(write_csv(tmp_path / "site.csv", rows), SPEC)
    for path in (tmp_path / "site.parquet", tmp_path / "site-saved"):
        x, y = read_node_data(path, SPEC)
        np.testing.assert_allclose(x, want_x)
        np.testing.assert_array_equal(y, want_y)


def test_angles_use_only_the_nodes_own_rows_and_a_map_from_the_seed() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 3.0, size=(40, 6))
    a = to_angles(x, 4, seed=7, reduction="projection")
    assert a.shape == (40, 4) and (a > 0).all() and (a < np.pi).all()
    # the map is data-independent: an affine change of a node's features (its own units) gives the same angles
    np.testing.assert_allclose(to_angles(10 * x - 3, 4, seed=7, reduction="projection"), a, atol=1e-9)
    assert not np.allclose(to_angles(x, 4, seed=8, reduction="projection"), a)  # another run seed, another projection
    np.testing.assert_array_equal(to_angles(x[:, :4], 4, seed=7, reduction="none"), x[:, :4])


def test_held_out_rows_are_disjoint_seeded_and_never_empty() -> None:
    train, test = held_out(20, 0.25, seed=5)
    assert len(test) == 5 and not set(train) & set(test) and len(train) + len(test) == 20
    np.testing.assert_array_equal(held_out(20, 0.25, seed=5)[1], test)
    assert len(held_out(2, 0.01, seed=1)[1]) == 1 and len(held_out(2, 0.99, seed=1)[0]) == 1


def test_a_node_with_its_own_file_trains_on_all_of_it_and_evaluates_on_its_held_out_rows(tmp_path) -> None:
    path = write_csv(tmp_path / "site.csv", sample_rows(20))
    cfg = file_config()
    node = NodeConfig.from_node_config({"partition-id": 1, "num-partitions": 3, "data-path": str(path)})
    data = node_dataset(cfg, node)
    assert len(data.y_train) + len(data.y_test) == 20 and len(data.y_test) == 5
    assert data.x_train.shape[1] == 2 and data.n_classes == 2


def test_virtual_nodes_split_the_runs_file_by_partition(tmp_path) -> None:
    path = write_csv(tmp_path / "all.csv", sample_rows(40))
    cfg = file_config(**{"data-path": str(path)})
    sizes = [len(d.y_train) + len(d.y_test) for d in
             (node_dataset(cfg, NodeConfig.from_node_config({"partition-id": i, "num-partitions": 4})) for i in range(4))]
    assert sizes == [10, 10, 10, 10]


@pytest.mark.parametrize(("changes", "key"), [
    ({"data-classes": "benign"}, "data-classes"),
    ({"data-classes": "a,a"}, "data-classes"),
    ({"data-num-features": 0}, "data-num-features"),
    ({"data-features": "a,b"}, "data-features"),
    ({"fraction-evaluate": 0.0}, "fraction-evaluate"),
])
def test_a_file_run_that_misdeclares_its_data_is_refused_by_key(changes, key) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        file_config(**changes)
    assert err.value.key == key
