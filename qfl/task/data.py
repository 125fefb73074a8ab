"""Data sets and partitions, all made or shipped locally (no hub downloads).

Classical sets (scikit-learn's bundled copies): ``iris``, ``wine``, ``breast-cancer``,
``digits`` (the 8x8 hand-written digits 0-3: 720 images, 4 classes), ``digits10`` (all ten
digits: 1,797 images, 10 classes; ``n_qubits >= 10``).
Each is split train/test (stratified, seeded), standardised, reduced by PCA to at most
``n_qubits`` components and rescaled to rotation angles in ``[0, pi]``, all fitted on
the training split only. If the set has fewer components than qubits, the angles are
repeated cyclically over the wires.

Quantum sets: ``tfim``, ground states of the transverse-field Ising chain on
``n_qubits`` spins (see :mod:`qfl.task.tfim`), labelled by phase and fed to the circuit
as states; ``cluster-ising``, the same for the cluster-Ising chain of the QCNN paper over
the (h1, h2) plane, three phases (:mod:`qfl.task.cluster_ising`; ``n_qubits >= 8``). Both
are ``tfim_samples`` states.

Every node rebuilds the same split from the seed alone. Prepared arrays are cached
as ``.npz`` in ``$QFL_CACHE_DIR`` (default ``~/.cache/qfl``) because every Flower
message starts a fresh ClientApp process, and importing scikit-learn costs ~1.5 s.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qfl.common.config import DATASETS, PARTITIONERS
from qfl.task import cluster_ising, tfim
from qfl.task.partitioners import flower_partitions, is_flower

CACHE_VERSION = 1
from qfl.common.contract import CACHE_DIR_ENV
from qfl.common.files import atomic_write

# n_samples, n_features, n_classes of scikit-learn's bundled copies
CLASSICAL_SHAPES = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast-cancer": (569, 30, 2), "digits": (720, 64, 4),
                    "digits10": (1797, 64, 10)}  # all ten digits: needs n-qubits >= 10
DIGITS_CLASSES = 4  # digits 0-3: as many classes as the default register has qubits
QUANTUM_SETS = ("tfim", "cluster-ising")  # generated, tfim_samples states each, fed as states


@dataclass(frozen=True)
class Dataset:
    """A prepared, split data set.

    Attributes
    ----------
    x_train, x_test : np.ndarray
        ``(N, n_qubits)`` angles in radians (``kind == "angles"``) or ``(N, 2**n_qubits)``
        normalised real amplitudes (``kind == "states"``).
    y_train, y_test : np.ndarray
        ``(N,)`` integer labels in ``[0, n_classes)``.
    h_train : np.ndarray | None
        Field strength of each training state (TFIM; h1 for cluster-ising), for the ``h-range`` split.
    """

    name: str
    kind: str
    n_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    h_train: np.ndarray | None = None


def num_classes(name: str) -> int:
    """Number of classes of a data set, without loading it."""
    if name == "tfim":
        return 2
    if name == "cluster-ising":
        return cluster_ising.NUM_CLASSES
    if name not in CLASSICAL_SHAPES:
        raise ValueError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    return CLASSICAL_SHAPES[name][2]


def num_train_samples(name: str, test_fraction: float, tfim_samples: int) -> int:
    """Size of the training split, without loading the data (matches the split)."""
    total = tfim_samples if name in QUANTUM_SETS else CLASSICAL_SHAPES[name][0]
    n_test = int(np.ceil(total * test_fraction))
    return total - n_test


def load_dataset(
    name: str,
    n_qubits: int,
    seed: int,
    test_fraction: float = 0.25,
    tfim_samples: int = 240,
    cache: bool = True,
) -> Dataset:
    """Load (from the cache if present) and prepare a data set."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    key = f"{name}-q{n_qubits}-s{seed}-t{test_fraction:g}"
    if name in QUANTUM_SETS:
        key += f"-n{tfim_samples}"
    path = _cache_dir() / f"{key}-v{CACHE_VERSION}.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    else:
        if name == "tfim":
            arrays = _prepare_tfim(n_qubits, seed, test_fraction, tfim_samples)
        elif name == "cluster-ising":
            arrays = _prepare_cluster_ising(n_qubits, seed, test_fraction, tfim_samples)
        else:
            arrays = _prepare_classical(name, n_qubits, seed, test_fraction)
        if cache:
            _atomic_save(path, arrays)
    return Dataset(
        name=name,
        kind="states" if name in QUANTUM_SETS else "angles",
        n_classes=num_classes(name),
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        h_train=arrays.get("h_train"),
    )


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    method: str,
    seed: int,
    alpha: float = 0.5,
    fields: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``num_partitions`` disjoint, covering parts.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer labels.
    num_partitions : int
        Number of clients.
    method : str
        ``"iid"``: a seeded shuffle cut into near-equal parts.
        ``"dirichlet"``: label skew; for each class ``c`` the proportions
        :math:`p_c \\sim \\mathrm{Dir}(\\alpha \\mathbf{1}_K)` decide how its samples are
        shared among the ``K`` clients (smaller ``alpha``, stronger skew). Redrawn
        (seeded) until every client holds at least one sample.
        ``"h-range"``: TFIM only; samples sorted by field strength ``h`` and cut into
        contiguous ranges, so each client sees its own region of the phase diagram.
    seed : int
        Seed; the same arguments always give the same partition.
    alpha : float
        Dirichlet concentration (``method="dirichlet"``).
    fields : np.ndarray, optional
        ``(N,)`` field strengths (``method="h-range"``).

    Returns
    -------
    list[np.ndarray]
        Sorted index arrays, one per partition.
    """
    n = len(labels)
    if is_flower(method):  # Flower Datasets' partitioners, by name (qfl.task.partitioners)
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        return flower_partitions(labels, num_partitions, method, seed)
    if method not in PARTITIONERS:
        raise ValueError(f"unknown partitioner {method!r} (choose from {', '.join(PARTITIONERS)})")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_partitions > n:
        raise ValueError(
            f"num_partitions={num_partitions} exceeds the {n} training samples: "
            "every client needs at least one"
        )
    rng = np.random.default_rng([seed, num_partitions, 0x9A27])
    if method == "iid":
        parts = np.array_split(rng.permutation(n), num_partitions)
    elif method == "h-range":
        if fields is None:
            raise ValueError("the 'h-range' partitioner needs field strengths (TFIM only)")
        parts = np.array_split(np.argsort(fields, kind="stable"), num_partitions)
    else:
        if not alpha > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
        parts = _dirichlet_split(labels, num_partitions, alpha, rng)
    return [np.sort(p) for p in parts]


def load_partition(
    data: Dataset, partition_id: int, num_partitions: int, method: str, seed: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """The training samples of one client: ``(x, y)``."""
    idx = partition_indices(
        data.y_train, num_partitions, method, seed, alpha, fields=data.h_train
    )[partition_id]
    return data.x_train[idx], data.y_train[idx]


# --- the validation split of a tuning run ----------------------------------------------


def validation_rows(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The rows of a training split held out as a tuning run's validation set (``validation-fraction``):
    sorted indices into ``labels``, a seeded share ``fraction``.

    Stratified where the labels are classes: each class gives ``round(fraction x its rows)``, and
    keeps at least one row for training; a numeric (regression) label, a seeded share of all rows.
    At least one row is held out and never every row.
    """
    n = len(labels)
    if not 0 < fraction < 1:
        raise ValueError(f"a validation fraction lies in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"a validation split needs at least 2 training rows, got {n}")
    rng = np.random.default_rng([seed, n, 0x5A11D])
    if np.issubdtype(np.asarray(labels).dtype, np.integer):
        classes, counts = np.unique(labels, return_counts=True)
        rows = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:min(int(round(fraction * k)), k - 1)]
                               for c, k in zip(classes, counts)])
    else:
        rows = rng.permutation(n)[:min(int(round(fraction * n)), n - 1)]
    if len(rows) == 0:  # every class too small to give a row: one row of all
        rows = rng.permutation(n)[:1]
    return np.sort(rows).astype(np.int64)


def with_validation(data: Dataset, fraction: float, seed: int) -> Dataset:
    """``data`` as a tuning run sees it: with ``fraction > 0`` the test split is gone, replaced by
    the validation rows (:func:`validation_rows`) carved from the training split, which keeps the
    rest; so everything that evaluates the "test" split (the server's central evaluation, the
    nodes' federated evaluation) evaluates on validation rows, and no test row is reachable.
    ``fraction == 0``: ``data`` itself."""
    if fraction <= 0:
        return data
    from dataclasses import replace

    held = validation_rows(data.y_train, fraction, seed)
    keep = np.setdiff1d(np.arange(len(data.y_train)), held)
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep], x_test=data.x_train[held],
                   y_test=data.y_train[held], h_train=None if data.h_train is None else data.h_train[keep])


# --- preparation ----------------------------------------------------------------------


def _prepare_classical(name: str, n_qubits: int, seed: int, test_fraction: float) -> dict:
    # Imported here: scikit-learn is slow to import and only needed on a cache miss.
    from sklearn import datasets
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    loader = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast-cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "digits10": datasets.load_digits,
    }[name]
    x, y = loader(return_X_y=True)
    if name == "digits":
        keep = y < DIGITS_CLASSES
        x, y = x[keep], y[keep]
    n_test = int(np.ceil(len(y) * test_fraction))
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=n_test, stratify=y, random_state=seed
    )
    scaler = StandardScaler().fit(x_tr)
    n_comp = min(n_qubits, x.shape[1])
    pca = PCA(n_components=n_comp, random_state=seed).fit(scaler.transform(x_tr))
    z_tr = pca.transform(scaler.transform(x_tr))
    z_te = pca.transform(scaler.transform(x_te))
    lo, hi = z_tr.min(axis=0), z_tr.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)

    def to_angles(z: np.ndarray) -> np.ndarray:
        a = np.pi * (z - lo) / span
        return np.resize(a.T, (n_qubits, len(z))).T  # repeat components cyclically

    return {
        "x_train": to_angles(z_tr),
        "y_train": y_tr.astype(np.int64),
        "x_test": to_angles(z_te),
        "y_test": y_te.astype(np.int64),
    }


def _prepare_tfim(n_qubits: int, seed: int, test_fraction: float, num: int) -> dict:
    if n_qubits < 2:
        raise ValueError("the tfim data set needs n-qubits >= 2")
    rng = np.random.default_rng([seed, 0x7F1A])
    states, fields, labels = tfim.tfim_dataset(n_qubits, num, rng)
    n_test = int(np.ceil(num * test_fraction))
    # stratified split by phase, seeded
    test_idx = []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        k = int(round(n_test * len(idx) / num))
        test_idx.append(rng.choice(idx, size=k, replace=False))
    test = np.zeros(num, dtype=bool)
    test[np.concatenate(test_idx)] = True
    # top up / trim so the test split has exactly n_test samples
    diff = n_test - int(test.sum())
    if diff > 0:
        test[rng.choice(np.flatnonzero(~test), size=diff, replace=False)] = True
    elif diff < 0:
        test[rng.choice(np.flatnonzero(test), size=-diff, replace=False)] = False
    return {
        "x_train": states[~test],
        "y_train": labels[~test],
        "h_train": fields[~test],
        "x_test": states[test],
        "y_test": labels[test],
    }


def _prepare_cluster_ising(n_qubits: int, seed: int, test_fraction: float, num: int) -> dict:
    if n_qubits < cluster_ising.MIN_SPINS:
        raise ValueError(f"the cluster-ising data set needs n-qubits >= {cluster_ising.MIN_SPINS}, got {n_qubits}")
    rng = np.random.default_rng([seed, 0xC1A5])
    states, fields, labels = cluster_ising.cluster_ising_dataset(n_qubits, num, rng)
    test = _stratified_test_mask(labels, int(np.ceil(num * test_fraction)), rng)
    return {
        "x_train": states[~test],
        "y_train": labels[~test],
        "h_train": fields[~test, 0],  # h1: an h-range split gives each client a band of the plane
        "x_test": states[test],
        "y_test": labels[test],
    }


def _stratified_test_mask(labels: np.ndarray, n_test: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of exactly ``n_test`` test samples, each class in its share (seeded)."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=int(round(n_test * len(idx) / len(labels))), replace=False)] = True
    diff = n_test - int(test.sum())  # rounding: top up or trim to exactly n_test
    if diff > 0:
        test[rng.choice(np.flatnonzero(~test), size=diff, replace=False)] = True
    elif diff < 0:
        test[rng.choice(np.flatnonzero(test), size=-diff, replace=False)] = False
    return test


def _dirichlet_split(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator, max_tries: int = 1000
) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= 1:
            return [np.asarray(p, dtype=np.int64) for p in parts]
    raise ValueError(
        f"could not draw a Dirichlet(alpha={alpha}) split of {len(labels)} samples over "
        f"{k} clients with every client non-empty in {max_tries} tries: "
        "raise dirichlet-alpha or use fewer clients"
    )


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "qfl")


def _atomic_save(path: Path, arrays: dict) -> None:
    # Several ClientApp processes may miss the cache at once: write then rename.
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())
