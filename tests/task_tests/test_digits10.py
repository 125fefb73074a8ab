"""digits10: all ten digits of scikit-learn's bundled set, at ten qubits or more."""

from __future__ import annotations

import numpy as np
import pytest

from qfl.common.config import KEY, ConfigError, RunConfig
from qfl.task.data import load_dataset, load_partition, num_classes, num_train_samples


def test_digits10_has_ten_classes_and_the_right_split():
    data = load_dataset("digits10", n_qubits=10, seed=5)
    assert (data.kind, data.n_classes, num_classes("digits10")) == ("angles", 10, 10)
    n_test = int(np.ceil(1797 * 0.25))  # 450
    assert (len(data.y_train), len(data.y_test)) == (1797 - n_test, n_test) == (1347, 450)
    assert num_train_samples("digits10", 0.25, 240) == 1347
    assert data.x_train.shape == (1347, 10)  # ten PCA components, one angle per qubit
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= np.pi + 1e-12
    counts = np.bincount(data.y_test, minlength=10)
    assert set(np.unique(data.y_train)) == set(range(10)) and counts.min() >= 43  # stratified: 44-46 each
    fresh = load_dataset("digits10", n_qubits=10, seed=5, cache=False)
    np.testing.assert_array_equal(data.x_test, fresh.x_test)


def test_ten_non_iid_clients():
    data = load_dataset("digits10", n_qubits=10, seed=2)
    parts = [load_partition(data, i, 10, "dirichlet", seed=2, alpha=0.3)[1] for i in range(10)]
    assert sum(len(p) for p in parts) == len(data.y_train)
    # label skew: some client misses a digit or holds a few of one
    assert min(np.bincount(p, minlength=10).min() for p in parts) <= 3


@pytest.mark.parametrize("n_qubits", [4, 9])
def test_fewer_qubits_than_ten_classes_is_refused_naming_the_key(n_qubits):
    from server.checks import check_run

    with pytest.raises(ConfigError, match="needs >= 10 qubits") as err:
        check_run(RunConfig(dataset="digits10", n_qubits=n_qubits))
    assert err.value.key == KEY.n_qubits
