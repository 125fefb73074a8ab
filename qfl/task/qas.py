r"""Each client's circuit, chosen for its own device and data: a hardware-aware search.

A client scores a circuit of the family (:class:`~qfl.task.architecture.CircuitSpec`: depth,
entangler, rotation set, re-uploading) by

- what its device makes of it: the circuit routed to the device's coupling map (the project's
  :func:`~qfl.task.noise.route`, PennyLane's ``transpile``), its depth and two-qubit gate count,
  and the fidelity the device's profile predicts for it, the estimated success probability
  (ESP: the product of every gate's and every read-out's success probability; Nishio et al.,
  "Extracting success from IBM's 20-qubit machines using error-aware compilation", ACM JETC
  16, 2020), :func:`estimated_success`;
- what its data make of it: the validation loss after a short noiseless training on its own
  rows (:func:`validation_loss`);

combined as :math:`J = L_{val} - \lambda \ln \hat F` (:func:`objective`): one expected gate
error costs :math:`\lambda` nats of validation loss. A circuit the device cannot run is never
chosen: a register larger than the device is refused outright, and a circuit whose routed depth
exceeds the declared limit is pruned before it is trained.

:func:`search` runs Optuna's TPE sampler (Bergstra et al., NeurIPS 2011), seeded, for
``n_trials`` trials; :func:`cached_search` keeps the choice in a directory of the node's own,
keyed by the device profile, the data and the search's settings, so that it reruns when the
device changes and not otherwise. :func:`depth_for_device` is the search-free rule: the
deepest member of the nested family whose predicted fidelity is at least a floor.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from qfl.common.files import atomic_write
from qfl.task.architecture import CircuitSpec, SearchSpace
from qfl.task.noise import _is_state_prep
from qfl.task.profiles import DeviceProfile

NOT_SEARCHED = -1.0  # the qas-score of a circuit no search chose
VALIDATION_SHARE = 0.25  # of a client's rows, held out to score a circuit


@dataclass(frozen=True)
class Scores:
    """How a circuit fares on a device: routed depth, two-qubit gates (SWAPs included), SWAPs
    and the estimated success probability."""

    depth: int
    two_qubit_gates: int
    swaps: int
    fidelity: float


@dataclass(frozen=True)
class SearchResult:
    """The chosen circuit, its scores, and every trial (``label``, objective or ``None`` if pruned)."""

    spec: CircuitSpec
    score: float
    validation_loss: float
    scores: Scores
    trials: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"circuit": self.spec.label(), "score": self.score, "validation_loss": self.validation_loss,
                           "scores": asdict(self.scores), "trials": self.trials}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SearchResult:
        raw = json.loads(text)
        return cls(CircuitSpec.from_label(raw["circuit"]), float(raw["score"]), float(raw["validation_loss"]),
                   Scores(**raw["scores"]), list(raw["trials"]))


def estimated_success(tape, profile: DeviceProfile | None, measured: int) -> float:  # noqa: ANN001
    r"""ESP of a routed tape on ``profile``: :math:`\prod_g p_I(g) \cdot (1 - r)^{m}`, with
    :math:`p_I` the probability that the profile's Pauli channel after gate ``g`` is the identity
    (depolarising and relaxation together, :meth:`DeviceProfile.pauli_probs_1q` and ``_2q``; a
    SWAP counts as three two-qubit gates), ``r`` the read-out error and ``m`` the qubits read out.
    1.0 on an ideal device. State preparations are data loading, not gates."""
    if profile is None:
        return 1.0
    one, two = float(profile.pauli_probs_1q()[0]), float(profile.pauli_probs_2q()[0])
    log_f = measured * math.log1p(-profile.readout_error)
    for op in tape.operations:
        if _is_state_prep(op):
            continue
        width = len(op.wires)
        log_f += math.log(one) if width == 1 else 3 * math.log(two) if op.name == "SWAP" else math.log(two)
    return math.exp(log_f)


def circuit_scores(spec: CircuitSpec, n_qubits: int, n_classes: int, kind: str, profile: DeviceProfile | None) -> Scores:
    """:class:`Scores` of ``spec`` routed to ``profile``'s coupling map (one tape construction,
    no execution)."""
    from qfl.task.model import PQCClassifier

    model = PQCClassifier(n_qubits, spec.layers, n_classes, kind=kind, device="default.qubit", profile=profile,
                          circuit=spec)
    width = n_qubits if kind == "angles" else 2**n_qubits
    probe = torch.zeros(1, width, dtype=torch.float64)
    if kind == "states":
        probe[0, 0] = 1.0
    tape = model.routed_tape(probe)
    metrics = model.routed_metrics(probe)
    from qfl.common.contract import CIRCUIT_DEPTH, SWAPS, TWO_QUBIT_GATES

    return Scores(metrics[CIRCUIT_DEPTH], metrics[TWO_QUBIT_GATES], metrics[SWAPS],
                  estimated_success(tape, profile, n_classes))


def check_device(n_qubits: int, profile: DeviceProfile | None) -> None:
    """Refuse a register the device does not have: no circuit of the family can run on it."""
    if profile is not None and n_qubits > profile.n_qubits:
        raise ValueError(f"device profile {profile.name!r} has {profile.n_qubits} qubits; every circuit of the "
                         f"family needs {n_qubits}: no circuit to choose")


def depth_for_device(base: CircuitSpec, n_qubits: int, n_classes: int, kind: str, profile: DeviceProfile | None,
                     min_fidelity: float) -> CircuitSpec:
    """The deepest member of ``base``'s nested family (depths ``1..base.layers``) whose predicted
    fidelity on ``profile`` is at least ``min_fidelity``; depth 1 if none is."""
    check_device(n_qubits, profile)
    for layers in range(base.layers, 0, -1):
        spec = base.with_layers(layers)
        if layers == 1 or circuit_scores(spec, n_qubits, n_classes, kind, profile).fidelity >= min_fidelity:
            return spec
    raise AssertionError("unreachable")


def objective(validation_loss: float, fidelity: float, weight: float) -> float:
    """:math:`J = L_{val} - \\lambda \\ln \\hat F` (smaller is better)."""
    return float(validation_loss - weight * math.log(max(fidelity, 1e-300)))


def split_validation(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded split of a client's rows: ``(x_train, y_train, x_val, y_val)``, at least one row each."""
    order = np.random.default_rng([seed, 0x0A5]).permutation(len(y))
    cut = min(max(1, int(round(len(y) * VALIDATION_SHARE))), len(y) - 1)
    val, train = order[:cut], order[cut:]
    return x[train], y[train], x[val], y[val]


def validation_loss(spec: CircuitSpec, data: tuple[np.ndarray, ...], n_classes: int, kind: str, seed: int,
                    epochs: int, batch_size: int, learning_rate: float, embedding: str = "fixed") -> float:
    """Cross-entropy on the held-out rows after ``epochs`` of noiseless Adam training from the
    run's initial parameters (``seed``)."""
    from qfl.task.model import PQCClassifier
    from qfl.task.train import evaluate, train_local

    x_train, y_train, x_val, y_val = data
    n_qubits = x_train.shape[1] if kind == "angles" else int(round(math.log2(x_train.shape[1])))
    model = PQCClassifier(n_qubits, spec.layers, n_classes, kind=kind, device="default.qubit", seed=seed,
                          embedding=embedding, circuit=spec)
    train_local(model, x_train, y_train, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    return evaluate(model, x_val, y_val)["loss"]


def search(space: SearchSpace, data: tuple[np.ndarray, ...], n_classes: int, kind: str, profile: DeviceProfile | None,
           n_trials: int, seed: int, epochs: int = 1, batch_size: int = 32, learning_rate: float = 0.05,
           embedding: str = "fixed", train: Callable[..., float] = validation_loss) -> SearchResult:
    """Choose a circuit from ``space`` for ``profile`` and ``data`` (:func:`split_validation`'s
    four arrays) with Optuna's TPE sampler seeded by ``seed``, in exactly ``n_trials`` trials.

    A trial whose routed depth exceeds ``space.max_depth`` is pruned before training (it is
    never chosen); ``train`` (for tests) scores the rest.

    Raises
    ------
    ValueError
        The register exceeds the device, or every trial was over the depth limit.
    """
    try:
        import optuna
    except ImportError as err:
        raise ImportError("the circuit search (architecture = \"search\") needs Optuna: pip install 'qfl[qas]'") from err

    x_train = data[0]
    n_qubits = x_train.shape[1] if kind == "angles" else int(round(math.log2(x_train.shape[1])))
    check_device(n_qubits, profile)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    seen: dict[CircuitSpec, tuple[float, float, Scores] | None] = {}  # this search's own: TPE may propose a circuit twice

    def evaluate_spec(spec: CircuitSpec) -> tuple[float, float, Scores] | None:
        if spec not in seen:
            scores = circuit_scores(spec, n_qubits, n_classes, kind, profile)
            if space.max_depth and scores.depth > space.max_depth:
                seen[spec] = None
            else:
                loss = train(spec, data, n_classes, kind, seed, epochs, batch_size, learning_rate, embedding)
                seen[spec] = (objective(loss, scores.fidelity, space.fidelity_weight), loss, scores)
        return seen[spec]

    def run_trial(trial: optuna.Trial) -> float:
        spec = CircuitSpec(trial.suggest_int("layers", space.min_layers, space.max_layers),
                           trial.suggest_categorical("entangler", list(space.entanglers)),
                           trial.suggest_categorical("rotations", list(space.rotations)),
                           trial.suggest_categorical("reupload", list(space.reuploads)) if kind == "angles" else True)
        trial.set_user_attr("label", spec.label())
        found = evaluate_spec(spec)
        if found is None:
            raise optuna.TrialPruned(f"routed depth over {space.max_depth}")
        return found[0]

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(run_trial, n_trials=n_trials)
    finally:
        optuna.logging.set_verbosity(verbosity)
    trials = [{"label": t.user_attrs.get("label", ""), "objective": t.value} for t in study.trials]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ValueError(f"every circuit tried is deeper than max-depth {space.max_depth} once routed to "
                         f"{profile.name if profile else 'the device'}: raise it, or allow shallower circuits")
    best = CircuitSpec.from_label(study.best_trial.user_attrs["label"])
    score, loss, scores = seen[best]
    return SearchResult(best, score, loss, scores, trials)


def cache_key(profile: DeviceProfile | None, x: np.ndarray, y: np.ndarray, settings: dict[str, object]) -> str:
    """SHA-256 over the device profile (every field), the data (bytes) and the search's settings."""
    digest = hashlib.sha256()
    digest.update(repr(profile).encode())
    for arr in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        digest.update(f"{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cached_search(directory: Path, profile: DeviceProfile | None, x: np.ndarray, y: np.ndarray,
                  settings: dict[str, object], run: Callable[[], SearchResult]) -> tuple[SearchResult, bool]:
    """``(result, cached)``: the search kept in ``directory`` under :func:`cache_key`, or ``run()``'s
    result, then kept. An unreadable file is searched again and replaced."""
    path = Path(directory) / f"qas-{cache_key(profile, x, y, settings)[:32]}.json"
    if path.exists():
        try:
            return SearchResult.from_json(path.read_text()), True
        except (ValueError, KeyError, TypeError):
            pass
    result = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, result.to_json().encode())
    return result, False
