"""What the client and the server agree on: how a run config becomes data and a model."""

from __future__ import annotations

from client.config import RunConfig
from client.data import Dataset, load_dataset
from client.model import PQCClassifier


def build_dataset(cfg: RunConfig) -> Dataset:
    """The split data set a run config names (same on every node)."""
    return load_dataset(cfg.dataset, cfg.n_qubits, cfg.seed, cfg.test_fraction, cfg.tfim_samples)


def build_model(cfg: RunConfig, data: Dataset) -> PQCClassifier:
    """The PQC a run config names, for a data set's shape; initialised from the seed."""
    return PQCClassifier(
        n_qubits=cfg.n_qubits,
        n_layers=cfg.n_layers,
        n_classes=data.n_classes,
        kind=data.kind,
        device=cfg.device,
        diff_method=cfg.diff_method,
        seed=cfg.seed,
    )
