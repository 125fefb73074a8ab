"""A node's own data: a CSV, Parquet or NPZ file, or a Hugging Face ``datasets`` folder saved to disk.

With ``dataset = "file"`` each node reads the file its node config names (``data-path``; on
the simulation engine, where virtual nodes have no files, the run config's ``data-path`` is
one file that the run's partitioner splits among them). The run config declares what every
node's file must hold: the label column (``data-label``), the feature columns
(``data-features``, or every column but the label), the classes (``data-classes``, their
names in order: a label is a class by its text) and the feature count (``data-num-features``).

:func:`read_node_data` checks a file against them before the first round and raises
:class:`DataError` naming the file, the column and the reason: the file exists and parses;
the columns exist; every label is a declared class (with ``task-kind = "regression"``: a finite
number, and there are no classes); the feature count is the run's; no value is NaN or infinite;
at least ``data-min-samples`` rows.

Nothing of the file leaves the node but what training sends. A refusal names rows, never their values: its message reaches the server.

The reduction to the register
(:func:`to_angles`) pools nothing: each node standardises its features with its own mean
and standard deviation, projects them to ``n-qubits`` dimensions with a map drawn from the
run's seed alone (the same on every node, independent of any data) and squashes the result
to rotation angles in (0, pi) with the normal CDF. ``docs/usage.md`` says what this reveals.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = (".csv", ".parquet", ".npz")  # and a folder written by datasets' save_to_disk


class DataError(ValueError):
    """A node's data file is unusable; the message names the file, the column and why."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"data file {str(path)!r}: {message}")
        self.path = str(path)


@dataclass(frozen=True)
class DataSpec:
    """What a run declares of every node's data (run config ``data-*`` keys)."""

    label: str
    features: tuple[str, ...]  # empty: every column but the label
    classes: tuple[str, ...]
    num_features: int
    min_samples: int
    regression: bool = False  # task-kind regression: the label is a number, not a class

    @classmethod
    def of(cls, cfg) -> DataSpec:  # noqa: ANN001 (a RunConfig)
        from qfl.common.config import REGRESSION

        return cls(label=cfg.data_label, features=split_names(cfg.data_features), classes=split_names(cfg.data_classes),
                   num_features=cfg.data_num_features, min_samples=cfg.data_min_samples,
                   regression=cfg.task_kind == REGRESSION)

    @property
    def n_outputs(self) -> int:
        """What the model outputs per row: one logit per class, or the one regression value."""
        return 1 if self.regression else len(self.classes)


def split_names(value: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``."""
    return tuple(s.strip() for s in value.split(",") if s.strip())


def read_node_data(path: str | Path, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a node's file: ``(N, F)`` float64 features, ``(N,)`` class indices (or, with
    ``spec.regression``, the float64 targets).

    Raises
    ------
    DataError
        The file is missing or does not parse, a column is missing or not numeric, a label is
        not a declared class (regression: not a finite number), the feature count is not the
        run's, a value is NaN or infinite, or there are fewer than ``spec.min_samples`` rows.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "does not exist")
    columns = _read_columns(path)
    if spec.label not in columns:
        raise DataError(path, f"has no label column {spec.label!r} (columns: {', '.join(columns) or 'none'})")
    names = spec.features or tuple(c for c in columns if c != spec.label)
    for name in names:
        if name not in columns:
            raise DataError(path, f"has no feature column {name!r} (data-features)")
    x = np.column_stack([_numeric(path, name, columns[name]) for name in names]) if names else np.empty((0, 0))
    if x.shape[1] != spec.num_features:
        raise DataError(path, f"has {x.shape[1]} feature column(s), the run declares data-num-features = "
                              f"{spec.num_features}")
    y = _targets(path, spec, columns[spec.label]) if spec.regression else _class_indices(path, spec, columns[spec.label])
    if len(y) < spec.min_samples:
        raise DataError(path, f"has {len(y)} row(s), fewer than data-min-samples = {spec.min_samples}")
    return x, y


def _read_columns(path: Path) -> dict[str, np.ndarray]:
    """Every column of the file by name, as a 1-D array (a 2-D NPZ array gives columns ``name[j]``)."""
    try:
        if path.is_dir():
            return _read_saved_dataset(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return _read_csv(path)
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix == ".npz":
            return _read_npz(path)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 (any parser's failure is the file's)
        raise DataError(path, f"does not parse: {type(err).__name__}: {err}") from None
    raise DataError(path, f"is not one of {', '.join(FORMATS)} nor a folder saved by datasets' save_to_disk")


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(path, "is empty (no header row)")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if len(set(header)) != len(header):
        raise DataError(path, "names a column twice in its header")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(path, f"line {i} has {len(row)} field(s), the header {len(header)}")
    return {name: np.array([row[j].strip() for row in body], dtype=object) for j, name in enumerate(header)}


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(path, "Parquet needs pyarrow: pip install 'qfl[data]'") from None
    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as f:
        for name in f.files:
            a = f[name]
            if a.ndim == 1:
                out[name] = a
            elif a.ndim == 2:  # a feature matrix: its columns, each named name[j]
                out.update({f"{name}[{j}]": a[:, j] for j in range(a.shape[1])})
            else:
                raise DataError(path, f"array {name!r} has {a.ndim} dimensions; columns are 1-D, a feature matrix 2-D")
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise DataError(path, f"its arrays have different lengths {sorted(lengths)}")
    return out


def _read_saved_dataset(path: Path) -> dict[str, np.ndarray]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(path, "a saved Hugging Face dataset needs datasets: pip install 'qfl[data]'") from None
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict: one split is a node's data
        raise DataError(path, f"holds several splits ({', '.join(ds.keys())}): save the one split this node trains on")
    return {name: np.asarray(ds[name]) for name in ds.column_names}


def _numeric(path: Path, name: str, column: np.ndarray) -> np.ndarray:
    try:
        values = column.astype(np.float64)
    except (TypeError, ValueError):
        bad = next((i for i, v in enumerate(column) if not _is_number(v)), 0)
        raise DataError(path, f"column {name!r} is not numeric (first at row {bad + 1})") from None
    if values.ndim != 1:
        raise DataError(path, f"column {name!r} is not a column of numbers")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(path, f"column {name!r} holds {len(bad)} NaN or infinite value(s) (first at row {bad[0] + 1})")
    return values


def _is_number(value: object) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _class_indices(path: Path, spec: DataSpec, column: np.ndarray) -> np.ndarray:
    index = {name: i for i, name in enumerate(spec.classes)}
    labels = [_label_text(v) for v in column]
    unknown = [i for i, v in enumerate(labels) if v not in index]
    if unknown:
        raise DataError(path, f"label column {spec.label!r} holds {len(unknown)} row(s) whose label is not a declared "
                              f"class (data-classes = {', '.join(spec.classes)}; first at row {unknown[0] + 1})")
    return np.array([index[v] for v in labels], dtype=np.int64)


def _targets(path: Path, spec: DataSpec, column: np.ndarray) -> np.ndarray:
    """A regression label column as float64, every value a finite number (rows named, never values)."""
    texts = [v.decode() if isinstance(v, bytes) else v for v in column]
    bad = [i for i, v in enumerate(texts) if not _is_number(v)]
    if bad:
        raise DataError(path, f"label column {spec.label!r} holds {len(bad)} row(s) that are not numbers (task-kind = "
                              f"regression needs a numeric target; first at row {bad[0] + 1})")
    values = np.array([float(v) for v in texts], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(path, f"label column {spec.label!r} holds {len(bad)} NaN or infinite value(s) (task-kind = "
                              f"regression needs a finite target; first at row {bad[0] + 1})")
    return values


def _label_text(value: object) -> str:
    """A label as the text ``data-classes`` names it by: ``1``, ``1.0`` and ``"1"`` are all ``"1"``."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


# --- what a node trains and evaluates on --------------------------------------------


def held_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` row indices of a node's ``n`` rows: a seeded ``fraction`` held out
    for federated evaluation (at least one row each side)."""
    order = np.random.default_rng([seed, n, 0xE7A1]).permutation(n)
    k = min(max(1, int(round(fraction * n))), n - 1)
    return np.sort(order[k:]), np.sort(order[:k])


def to_angles(x: np.ndarray, n_qubits: int, seed: int, reduction: str, fit: np.ndarray | None = None) -> np.ndarray:
    r"""Features -> ``(N, n_qubits)`` rotation angles, with nothing but this node's rows.

    ``reduction = "projection"``: standardise with the mean and standard deviation of this
    node's rows ``fit`` (its training rows; default ``x``), map to ``n_qubits`` dimensions with
    :math:`R \in \mathbb{R}^{F \times n}` of i.i.d. :math:`N(0, 1/F)` entries drawn from the
    run's seed (data-independent, the same on every node; with :math:`F \le n` the standardised
    features are repeated cyclically instead), standardise again (statistics of ``fit`` again)
    and take :math:`\pi\,\Phi(z)`, :math:`\Phi` the normal CDF, so that each angle lies in
    :math:`(0, \pi)`. ``reduction = "none"``: the features are the angles, as the user prepared
    them (repeated cyclically over the wires when fewer).
    """
    from scipy.special import ndtr

    if reduction == "none":
        return np.resize(x.T, (n_qubits, len(x))).T.copy()
    fit = x if fit is None else fit
    features = x.shape[1]
    if features > n_qubits:
        rng = np.random.default_rng([seed, features, n_qubits, 0x9F0E])
        projection = rng.normal(0.0, 1.0 / math.sqrt(features), (features, n_qubits))
        z = _standardise(_standardise(x, fit) @ projection, _standardise(fit, fit) @ projection)
    else:
        z = np.resize(_standardise(x, fit).T, (n_qubits, len(x))).T
    return np.pi * ndtr(z)


def _standardise(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    sd = fit.std(axis=0)
    return (x - fit.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def node_dataset(cfg, node):  # noqa: ANN001, ANN201 (RunConfig, NodeConfig) -> qfl.task.data.Dataset
    """A node's data under ``dataset = "file"``, checked (:func:`read_node_data`), split into
    training rows and the held-out rows of federated evaluation (``test-fraction``), and reduced
    to angles fitted on the training rows (:func:`to_angles`).

    A node whose node config names ``data-path`` trains on the whole of its file; one that does
    not (the simulation engine's virtual nodes) on its partition of the run's ``data-path``, cut
    by the run's partitioner from the seed.
    """
    from qfl.task.data import Dataset, partition_indices, with_validation

    own = node.data_path is not None
    path = node.data_path if own else cfg.data_path
    if not path:
        raise DataError("", "no data file: set data-path in this node's node config (or, on the simulation "
                            "engine, in the run config)")
    spec = DataSpec.of(cfg)
    x, y = read_node_data(path, spec)
    if not own:
        try:
            rows = partition_indices(y, node.num_partitions, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha)[node.partition_id]
        except ValueError as err:
            raise DataError(path, f"cannot be split into {node.num_partitions} partitions: {err}") from None
        x, y = x[rows], y[rows]
        if len(y) < cfg.data_min_samples:
            raise DataError(path, f"partition {node.partition_id} of {node.num_partitions} has {len(y)} row(s), fewer "
                                  f"than data-min-samples = {cfg.data_min_samples}")
    train, test = held_out(len(y), cfg.test_fraction, cfg.seed * 1_000_003 + node.partition_id)
    angles = to_angles(x, cfg.n_qubits, cfg.seed, cfg.data_reduction, fit=x[train])
    data = Dataset(name="file", kind="angles", n_classes=spec.n_outputs,
                   x_train=angles[train], y_train=y[train], x_test=angles[test], y_test=y[test])
    # a tuning run (validation-fraction > 0): validation rows of its training rows stand in for its held-out rows
    return with_validation(data, cfg.validation_fraction, cfg.seed * 1_000_003 + node.partition_id)
