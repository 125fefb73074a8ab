"""What the client and the server agree on: how a run config becomes data and a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qfl.common.config import MITIGATIONS, MODELS, REGRESSION, RunConfig
from qfl.task.data import Dataset, load_dataset, with_validation
from qfl.task.local_data import DataSpec

if TYPE_CHECKING:
    from qfl.task.architecture import CircuitSpec
    from qfl.task.classical import MLPClassifier
    from qfl.task.model import PQCClassifier


def build_dataset(cfg: RunConfig) -> Dataset:
    """The split data set a run config names (same on every node). With ``dataset = "file"``
    the data are the nodes' own: what the run declares of them (its classes and the register
    the features are reduced to) and no rows (:func:`qfl.task.local_data.node_dataset` reads
    a node's). A regression run's ``n_classes`` is 1: the model's one output per row."""
    if cfg.dataset == "file":
        import numpy as np

        empty = np.empty((0, cfg.n_qubits))
        no_labels = np.empty(0, dtype=np.float64 if cfg.task_kind == REGRESSION else np.int64)
        return Dataset(name="file", kind="angles", n_classes=DataSpec.of(cfg).n_outputs,
                       x_train=empty, y_train=no_labels, x_test=empty, y_test=no_labels)
    # a tuning run (validation-fraction > 0): validation rows of the training split stand in for the test split
    return with_validation(load_dataset(cfg.dataset, cfg.n_qubits, cfg.seed, cfg.test_fraction, cfg.tfim_samples),
                           cfg.validation_fraction, cfg.seed)


def build_model(
    cfg: RunConfig, data: Dataset, profile_spec: str | None = None, mitigation: str = MITIGATIONS[0],
    seed: int | None = None, circuit: CircuitSpec | None = None,
) -> PQCClassifier | MLPClassifier:
    """The model a run config names, for a data set's shape: the PQC, or with
    ``model = "mlp"`` its classical twin of about the same parameter count.

    Parameters are initialised from ``cfg.seed`` (the same global model everywhere);
    ``profile_spec`` puts the PQC on a simulated device whose noise draws use ``seed``, with its
    error ``mitigation`` (one of :data:`~qfl.common.config.MITIGATIONS`). ``circuit`` gives this
    client its own member of the circuit family (:mod:`qfl.task.architecture`; its depth instead
    of ``n-layers``); ``None`` is the run's circuit, the global model's.
    """
    if cfg.model not in MODELS:  # the user's own: package.module:factory
        from qfl.task.user_model import build_user_model

        if data.kind != "angles":
            raise ValueError(f"a model of your own takes angles; data set {data.name!r} is loaded as states")
        profile = None
        if profile_spec is not None:
            from qfl.task.profiles import get_profile

            profile = get_profile(profile_spec, cfg.n_qubits)
        # its QNodes rebuilt on the profile's noisy device, with the mitigation (qfl.task.user_noise)
        return build_user_model(cfg.model, cfg.to_run_config(), data.x_train.shape[1], data.n_classes, cfg.seed,
                                profile=profile, mitigation=mitigation, regression=cfg.task_kind == REGRESSION)
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

    profile = None if profile_spec is None else get_profile(profile_spec, cfg.n_qubits)
    model = PQCClassifier(
        n_qubits=cfg.n_qubits,
        n_layers=cfg.n_layers if circuit is None else circuit.layers,
        n_classes=data.n_classes,
        kind=data.kind,
        device=cfg.device,
        diff_method=cfg.diff_method,
        seed=cfg.seed,
        profile=profile,
        mitigation=mitigation,
        embedding=cfg.embedding,
        circuit=circuit,
    )
    if seed is not None and profile is not None:
        model.reseed_noise(seed)
    return model
