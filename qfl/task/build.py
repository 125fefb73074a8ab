"""What the client and the server agree on: how a run config becomes data and a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qfl.common.config import MITIGATIONS, RunConfig
from qfl.task.data import Dataset, load_dataset

if TYPE_CHECKING:
    from qfl.task.classical import MLPClassifier
    from qfl.task.model import PQCClassifier


def build_dataset(cfg: RunConfig) -> Dataset:
    """The split data set a run config names (same on every node)."""
    return load_dataset(cfg.dataset, cfg.n_qubits, cfg.seed, cfg.test_fraction, cfg.tfim_samples)


def build_model(
    cfg: RunConfig, data: Dataset, profile_spec: str | None = None, mitigation: str = MITIGATIONS[0],
    seed: int | None = None,
) -> PQCClassifier | MLPClassifier:
    """The model a run config names, for a data set's shape: the PQC, or with
    ``model = "mlp"`` its classical twin of about the same parameter count.

    Parameters are initialised from ``cfg.seed`` (the same global model everywhere);
    ``profile_spec`` puts the PQC on a simulated device whose noise draws use ``seed``, with its
    error ``mitigation`` (one of :data:`~qfl.common.config.MITIGATIONS`).
    """
    if cfg.model == "mlp":
        from qfl.task.classical import MLPClassifier, matched_hidden_width, pqc_parameter_count

        if mitigation != MITIGATIONS[0] or profile_spec not in (None, "ideal"):
            raise ValueError(f"the classical baseline runs noiselessly: device profile {profile_spec!r} "
                             f"and mitigation {mitigation!r} do not apply to model 'mlp'")
        n_inputs = data.x_train.shape[1]
        target = pqc_parameter_count(cfg.n_qubits, cfg.n_layers, data.n_classes)
        return MLPClassifier(n_inputs, data.n_classes, matched_hidden_width(n_inputs, data.n_classes, target), cfg.seed)
    from qfl.task.model import PQCClassifier  # torch and PennyLane: only where a model is built
    from qfl.task.profiles import get_profile

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
        mitigation=mitigation,
        embedding=cfg.embedding,
    )
    if seed is not None and profile is not None:
        model.reseed_noise(seed)
    return model
