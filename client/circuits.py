"""A node's own circuit: which member of the family it runs, and what it reports of it.

``architecture`` (run config) decides: ``fixed``, the run's ``n-layers`` circuit; ``by-device``,
the deepest of the nested family that its device's predicted fidelity allows
(:func:`qfl.task.qas.depth_for_device`); ``search``, its own hardware-aware search over
``qas-space`` (:func:`qfl.task.qas.search`), kept in the node's state directory
(``$QFL_STATE_DIR/qas``, :func:`transport.dp.state_dir`) keyed by its device profile and its data,
so that it reruns when either changes. A node on a shallower circuit than the global model
takes the first layers of what it receives and returns only its own
(:mod:`strategies.nested_fedavg`).
"""

from __future__ import annotations

import logging

import numpy as np

from qfl.common.config import RunConfig
from qfl.common.contract import CIRCUIT_LAYERS, EFFECTIVE_DIMENSION, PREDICTED_FIDELITY, QAS_SCORE
from qfl.task.architecture import CircuitSpec, parse_space

NOT_MEASURED = -1.0  # effective-dimension where neither QNG nor a per-client circuit asks for it
logger = logging.getLogger(__name__)


def choose_circuit(cfg: RunConfig, profile_spec: str, x: np.ndarray, y: np.ndarray, n_classes: int,
                   kind: str) -> tuple[CircuitSpec | None, float]:
    """``(circuit, qas-score)`` of this node: ``None`` for the run's own circuit (``fixed``, or
    a model that is not the built-in PQC), and the search's objective, or -1 without a search."""
    from qfl.task.qas import NOT_SEARCHED

    if cfg.model != "pqc" or cfg.architecture == "fixed":
        return None, NOT_SEARCHED
    from qfl.task.profiles import get_profile
    from qfl.task.qas import depth_for_device

    profile = get_profile(profile_spec, cfg.n_qubits)
    if cfg.architecture == "by-device":
        return depth_for_device(CircuitSpec(cfg.n_layers), cfg.n_qubits, n_classes, kind, profile,
                                cfg.min_fidelity), NOT_SEARCHED
    result = _search(cfg, profile, x, y, n_classes, kind)
    return result.spec, result.score


def _search(cfg: RunConfig, profile, x: np.ndarray, y: np.ndarray, n_classes: int, kind: str):  # noqa: ANN001, ANN202
    from qfl.task.qas import cached_search, search, split_validation
    from transport.dp import state_dir

    space = parse_space(cfg.qas_space, cfg.n_layers)
    settings = {"space": space.as_dict(), "trials": cfg.qas_trials, "epochs": cfg.qas_epochs, "random_seed": cfg.seed,
                "batch": cfg.batch_size, "lr": cfg.learning_rate, "classes": n_classes, "kind": kind,
                "embed": cfg.embedding}

    def run():  # noqa: ANN202
        return search(space, split_validation(x, y, cfg.seed), n_classes, kind, profile, cfg.qas_trials, cfg.seed,
                      cfg.qas_epochs, cfg.batch_size, cfg.learning_rate, cfg.embedding)

    result, cached = cached_search(state_dir() / "qas", profile, x, y, settings, run)
    logger.info("circuit search on %s: %s (J = %.4g, %s)", profile.name, result.spec.label(), result.score,
                "kept from an earlier search" if cached else f"{cfg.qas_trials} trials")
    return result


def fit_to_circuit(state: dict, model) -> dict:  # noqa: ANN001
    """The received parameters cut to this model's layers: an array with a layer axis that holds
    more layers than the model keeps its first ones.

    Raises
    ------
    ValueError
        The server sent fewer layers than this circuit has.
    """
    own = model.state_dict()
    out = {}
    for name, value in state.items():
        mine = own.get(name)
        if mine is not None and value.dim() >= 2 and value.shape[1:] == mine.shape[1:] and value.shape[0] != mine.shape[0]:
            if value.shape[0] < mine.shape[0]:
                raise ValueError(f"'{name}': the server sent {value.shape[0]} layers, this node's circuit has {mine.shape[0]}")
            value = value[: mine.shape[0]]
        out[name] = value
    return out


def circuit_metrics(cfg: RunConfig, model, x, qas_score: float) -> dict[str, float]:  # noqa: ANN001
    """Layers, predicted fidelity and (with QNG or a per-client circuit) the QFI's effective
    dimension at the parameters the node received, on probe inputs independent of its data
    (:func:`qfl.task.qng.effective_dimension`); the search's score. The classical model: no circuit."""
    from qfl.task.model import PQCClassifier

    if not isinstance(model, PQCClassifier):
        return {CIRCUIT_LAYERS: 0.0, PREDICTED_FIDELITY: 1.0, EFFECTIVE_DIMENSION: NOT_MEASURED, QAS_SCORE: qas_score}
    from qfl.task.qas import estimated_success

    fidelity = estimated_success(model.routed_tape(x), model.profile, model.n_classes)
    measured = cfg.optimizer == "qng" or cfg.architecture != "fixed"
    if measured:
        from qfl.task.qng import effective_dimension

        dimension = effective_dimension(model, seed=cfg.seed)
    return {CIRCUIT_LAYERS: float(model.n_layers), PREDICTED_FIDELITY: fidelity,
            EFFECTIVE_DIMENSION: dimension if measured else NOT_MEASURED, QAS_SCORE: qas_score}
