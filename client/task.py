"""What the client and the server agree on: how a run config becomes data and a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from client.data import Dataset, load_dataset
from transport.config import RunConfig

if TYPE_CHECKING:
    from client.model import PQCClassifier


def build_dataset(cfg: RunConfig) -> Dataset:
    """The split data set a run config names (same on every node)."""
    return load_dataset(cfg.dataset, cfg.n_qubits, cfg.seed, cfg.test_fraction, cfg.tfim_samples)


def build_model(
    cfg: RunConfig, data: Dataset, profile_spec: str | None = None, zne: bool = False, seed: int | None = None
) -> PQCClassifier:
    """The PQC a run config names, for a data set's shape.

    Parameters are initialised from ``cfg.seed`` (the same global model everywhere);
    ``profile_spec`` puts it on a simulated device whose noise draws use ``seed``.
    """
    from client.model import PQCClassifier  # torch and PennyLane: only where a model is built
    from client.profiles import get_profile

    profile = None if profile_spec is None else get_profile(profile_spec)
    model = PQCClassifier(
        n_qubits=cfg.n_qubits,
        n_layers=cfg.n_layers,
        n_classes=data.n_classes,
        kind=data.kind,
        device=cfg.device,
        diff_method=cfg.diff_method,
        seed=cfg.seed,
        profile=profile,
        zne=zne,
    )
    if seed is not None and profile is not None:
        model.reseed_noise(seed)
    return model
