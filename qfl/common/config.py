"""The run configuration: every option, declared once (type, default, bounds, help).

:class:`RunConfig` is the whole app's configuration, the keys of ``[tool.flwr.app.config]``
(dashes in the file, underscores here); :class:`NodeConfig` is what a SuperNode says of
itself (``--node-config``). Both are pydantic models: types are strict (no ``true`` for a
number, no ``1.0`` for a count), bounds and choices are declared on the fields, and a bad
value is a :class:`ConfigError` naming its key. ``pyproject.toml``'s table, docs/usage.md's
options table and ``qfl launch --help`` are written from these models
(``scripts/sync_config.py``; ``tests/common_tests/test_config.py`` checks that they agree).

Checks that need another package's knowledge (a device profile's name, a strategy's class,
a data set's size) are made where that knowledge lives, before the run starts
(``server.checks``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qfl.common.contract import NODE_NUM_PARTITIONS, NODE_PARTITION_ID

DATASETS = ("iris", "wine", "breast-cancer", "digits", "digits10", "tfim", "cluster-ising", "file")
MODELS = ("pqc", "mlp")
PARTITIONERS = ("iid", "dirichlet", "h-range")
DEVICES = ("auto", "default.qubit", "lightning.qubit")
# Which differentiation methods each device supports (PennyLane 0.45); "auto" takes
# default.qubit for backprop, the only device that has it (qfl.task.simulators).
DEVICE_DIFF_METHODS = {
    "auto": ("best", "backprop", "adjoint", "parameter-shift"),
    "default.qubit": ("best", "backprop", "adjoint", "parameter-shift"),
    "lightning.qubit": ("best", "adjoint", "parameter-shift"),
}
# any other PennyLane device a plugin provides (qiskit.aer, default.mixed, a hardware plugin's):
# "best" lets PennyLane choose, parameter-shift runs wherever the gates do
PLUGIN_DIFF_METHODS = ("best", "parameter-shift")
PENNYLANE_DEVICES_GROUP = "pennylane.plugins"  # the entry points PennyLane's plugins register devices under


@functools.lru_cache(maxsize=1)  # a node checks its config on every message; what is installed does not change
def installed_devices() -> tuple[str, ...]:
    """The PennyLane devices installed here (entry points, read without importing PennyLane)."""
    from importlib.metadata import entry_points

    return tuple(sorted({e.name for e in entry_points(group=PENNYLANE_DEVICES_GROUP)}))


def check_device(name: str) -> str:
    """``name`` if it is ``auto`` or an installed PennyLane device, else a ValueError listing them."""
    if name == "auto" or name in installed_devices():
        return name
    raise ValueError(f"no PennyLane device {name!r} is installed here (installed: {', '.join(installed_devices())}; "
                     "a plugin's device needs its package, e.g. pip install pennylane-qiskit for qiskit.aer)")
# device = "auto": lightning.qubit (adjoint) from this many qubits, default.qubit (backprop)
# below; the crossovers of one training step, bench/client_training.py (docs/benchmarks.md)
LIGHTNING_FROM_QUBITS = 14  # an ideal device
LIGHTNING_FROM_QUBITS_NOISY = 12  # sampled noise gates: a profile with gate errors, or mitigation
SINKS = ("tensorboard", "mlflow")
MITIGATIONS = ("none", "zne", "pec")  # the clients' error mitigation (qfl.task.model, qfl.task.pec)
TASK_KINDS = ("classification", "regression")  # what the model learns (qfl.task.train)
CLASSIFICATION, REGRESSION = TASK_KINDS
MAX_QUBITS = 16  # the largest register simulated as a state vector per sample (2^16 amplitudes)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key, and whose it is: the run's
    (``run config``, what the server submits), this node's (``node config``, ``--node-config``)
    or a command's (``option``, a key that starts with ``--``)."""

    def __init__(self, key: str, message: str, where: str | None = None) -> None:
        where = where or ("option" if key.startswith("--") else "run config")
        super().__init__(f"{where} '{key}': {message}")
        self.key = key
        self.where = where


def _dashed(name: str) -> str:
    return name.replace("_", "-")


NODE_CONFIG = "node config"  # ConfigError's ``where`` for a SuperNode's own keys


class _Strict(BaseModel):
    # keys it does not declare are ignored: they may be a plug-in's (the launcher refuses
    # unknown keys in --set against pyproject.toml, as Flower does for --run-config)
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", alias_generator=_dashed,
                              populate_by_name=True, allow_inf_nan=False)


class RunConfig(_Strict):
    """Typed, validated view of ``[tool.flwr.app.config]``; attribute names are the keys
    with dashes turned into underscores."""

    # --- the federation
    num_server_rounds: int = Field(10, ge=1, description="federated rounds")
    min_nodes: int = Field(2, ge=1, description="nodes to wait for before round 1 (the launcher sets it to --clients)")
    fraction_train: float = Field(1.0, gt=0, le=1, description="share of connected nodes sampled to train each round")
    fraction_evaluate: float = Field(0.0, ge=0, le=1, description="share sampled for client-side evaluation (0: central evaluation only)")
    round_timeout: float = Field(120.0, gt=0, description="seconds to wait for a round's replies, counted once the nodes answered their warm-up; a node that does not answer is left out of that round")
    warm_up_timeout: float = Field(600.0, gt=0, description="seconds to wait before round 1 for every node to answer its warm-up (worker started, task built)")
    seed: int = Field(42, ge=0, description="seeds the split, partitions, initial parameters, shuffles, node sampling (never keys or DP noise)")
    # --- data
    dataset: Literal["iris", "wine", "breast-cancer", "digits", "digits10", "tfim", "cluster-ising", "file"] = Field(
        "wine", description="iris, wine, breast-cancer, digits (0-3), digits10 (0-9, n-qubits >= 10), tfim, cluster-ising (n-qubits >= 8), or file: each node's own data (data-* keys, docs/usage.md)")
    task_kind: Literal["classification", "regression"] = Field(
        "classification", description="classification (cross-entropy; accuracy) or regression (dataset file with a numeric "
                                      "label: mean squared error; RMSE and R^2 reported; docs/usage.md)")
    partitioner: str = Field(
        "iid", description="iid, dirichlet (label skew), h-range (tfim and cluster-ising: each client its own field range), or Flower "
                           "Datasets' partitioners: flower:Class[:option=value,...], e.g. flower:PathologicalPartitioner:"
                           "num-classes-per-partition=2 (needs the data extra)")
    dirichlet_alpha: float = Field(0.5, gt=0, description="concentration of the Dirichlet split; smaller is more skewed")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="held-out share for the server's central evaluation (dataset file: of each node's rows, for federated evaluation)")
    validation_fraction: float = Field(
        0.0, ge=0, le=0.5, description="tuning only (qfl experiment NAME --tune): a seeded share of the training split, "
                                       "stratified by class, held out as the validation set; the run's test figures (central "
                                       "and the nodes' evaluation) are then on it and the test split is never used "
                                       "(dataset file: of each node's training rows). 0: off")
    data_path: str = Field(
        "", description="dataset file: a CSV, Parquet or NPZ file or a saved datasets folder; on the simulation engine one file the "
                        "partitioner splits among the virtual clients; a node's data-path names its own file instead")
    data_label: str = Field("label", min_length=1, description="dataset file: the label column")
    data_features: str = Field("", description="dataset file: the feature columns, comma-separated ('': every column but the label)")
    data_classes: str = Field("", description="dataset file: the class names in order, comma-separated; a label is a class by its text")
    data_num_features: int = Field(0, ge=0, description="dataset file: how many feature columns every node's file has")
    data_min_samples: int = Field(10, ge=2, description="dataset file: the fewest rows a node may train on")
    data_reduction: Literal["projection", "none"] = Field(
        "projection", description="dataset file: projection (each node standardises its own rows, then a seeded data-independent "
                                  "random projection to n-qubits and the normal CDF to angles) or none (the features are the angles)")
    tfim_samples: int = Field(240, ge=8, description="size of the TFIM and cluster-ising data sets")
    # --- the model and its devices
    model: str = Field(
        "pqc", description="pqc, mlp (the classical baseline, a tanh MLP with about the PQC's parameter count, noiseless), "
                           "or package.module:factory, a function of the run config returning your torch.nn.Module (docs/usage.md)")
    n_qubits: int = Field(4, ge=1, le=MAX_QUBITS, description="register size; at least the number of classes")
    n_layers: int = Field(3, ge=1, description="re-uploading + trainable layers")
    embedding: Literal["fixed", "trainable"] = Field(
        "fixed", description="data embedding: fixed angles/states, or trainable (per-layer input scale and shift; a Rot layer after a state)")
    device: str = Field(
        "auto", description=f"auto: default.qubit (backprop, broadcast) below {LIGHTNING_FROM_QUBITS} qubits, lightning.qubit "
                            f"(adjoint) from {LIGHTNING_FROM_QUBITS} (the faster), from {LIGHTNING_FROM_QUBITS_NOISY} on a "
                            "device profile with gate noise or with mitigation (default.qubit's memory); docs/benchmarks.md. "
                            "Or either by name, or any PennyLane device installed (a plugin's: qiskit.aer, default.mixed, ...; "
                            "diff-method best or parameter-shift); a node's device overrides it")
    diff_method: Literal["best", "backprop", "adjoint", "parameter-shift"] = Field(
        "best", description="best, backprop, adjoint, parameter-shift")
    architecture: Literal["fixed", "by-device", "search"] = Field(
        "fixed", description="each client's circuit: fixed (n-layers everywhere), by-device (the deepest of 1..n-layers whose "
                             "predicted fidelity on its device is at least min-fidelity), or search (its own search over "
                             "qas-space, qas-trials trials, cached on the node); not fixed needs strategy nested-fedavg")
    min_fidelity: float = Field(0.5, gt=0, le=1, description="architecture by-device: the lowest predicted fidelity (estimated success probability) a client's circuit may have")
    qas_space: str = Field(
        "{}", description="architecture search: what a client may choose, a TOML inline table of min-layers, entanglers "
                          "(ring, line, none), rotations (rot, ryrz, ry), reuploads, max-depth (routed depth limit, 0: none), "
                          "fidelity-weight ({}: everything up to n-layers)")
    qas_trials: int = Field(12, ge=1, description="architecture search: circuits each client scores (Optuna's TPE, seeded)")
    qas_epochs: int = Field(1, ge=1, description="architecture search: epochs of the short training that scores a circuit")
    device_profiles: str = Field(
        "ideal", min_length=1,
        description="simulated device per partition: ;-separated specs, cycled (docs/noise.md); a node's device-profile overrides")
    mitigation: Literal["none", "zne", "pec"] = Field(
        "none", description="error mitigation on every client: none, zne (zero-noise extrapolation), pec (probabilistic "
                            "error cancellation, unbiased at gamma^2 times the variance; docs/noise.md); a node's mitigation overrides")
    zne: bool = Field(False, description="true: the same as mitigation = \"zne\" (the older switch, kept for existing configs)")
    # --- local training
    local_epochs: int = Field(2, ge=1, description="epochs per round on each client")
    batch_size: int = Field(32, ge=1, description="mini-batch, evaluated as one broadcast circuit")
    learning_rate: float = Field(0.05, gt=0, description="Adam step size")
    optimizer: Literal["adam", "sgd", "qng"] = Field(
        "adam", description="local optimiser: adam, sgd, or qng (quantum natural gradient: the circuit's block-diagonal "
                            "metric tensor, averaged over the batch; the read-out takes plain gradient steps; docs/strategies.md)")
    qng_lam: float = Field(0.01, ge=0, description="optimizer qng: lambda added to the metric tensor's diagonal before its pseudo-inverse")
    warm_runtime: bool = Field(True, description="keep torch, PennyLane, the data and the model in a worker per node between messages (false: a cold start each message, the reference)")
    worker_idle_timeout: float = Field(600.0, gt=0, description="a warm worker exits after this many seconds without a message")
    # --- transport
    transport: str = Field(
        "plain", min_length=1,
        description="plain, qkd, dp, qcn, secagg, compositions such as qkd+qcn+dp (first nearest the wire), or package.module:Class")
    kms_url: str = Field("https://127.0.0.1:8470", pattern=r"^https://",
                         description="ETSI GS QKD 014 key manager, HTTPS with client certificates")
    qkd_server_sae: str = Field("server", pattern=NAME_RE.pattern, description="the server's SAE ID: nodes take the server's keys only from it")
    dp_mode: Literal["local", "central"] = Field(
        "local", description="local (nodes clip + noise) or central (the server clips, averages uniformly, noises; with secagg: distributed, each node adds its share of the noise)")
    dp_clip: float = Field(1.0, gt=0, description="L2 clipping norm C of a whole update")
    dp_noise_multiplier: float = Field(1.0, gt=0, description="sigma: noise std is sigma * C")
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="delta of the reported (epsilon, delta)")
    dp_accountant: Literal["rdp", "pld"] = Field("rdp", description="rdp or pld (tighter; central DP only with fraction-train = 1)")
    secagg_neighbours: int = Field(
        0, ge=0, description="secagg: how many others each client masks with and shares its secrets among (0: every other client up to 8 clients, else the even number nearest 2 log2 n)")
    secagg_threshold: float = Field(
        0.5, gt=0, lt=1, description="secagg: the share of a client's neighbours whose shares rebuild its self-mask seed, and of a round's participants whose sum may be unmasked (at least 2 each); fewer survivors fail the round")
    secagg_clip: float = Field(
        1.0, gt=0, description="secagg: each coordinate of a client's weighted update is clipped to [-secagg-clip, secagg-clip] before quantisation")
    dp_count_granularity: int = Field(
        10, ge=1, description="local DP: a reply's example count is rounded down to a multiple of this (at least one multiple); its other data-dependent metrics are not sent")
    qcn_paths: str = Field(
        "metro", min_length=1,
        description="quantum-network path per partition (transport qcn): ;-separated specs, cycled; a node's qcn-path overrides")
    qcn_copies: int = Field(100, ge=0, description="teleported copies per value (0: exact expectations)")
    qcn_channels: int = Field(16, ge=1, description="parallel channels per path (divides the latency)")
    qcn_topology: str = Field(
        "", description="a shared quantum network instead of qcn-paths: metro-ring, star-overloaded (name:clients=N,...) "
                        "or a networkx node-link JSON file; the server then associates and schedules every round ('': off)")
    qcn_association: Literal["deferred-acceptance", "hungarian", "greedy"] = Field(
        "deferred-acceptance", description="qcn-topology: how clients are matched to repeaters' memory slots")
    qcn_schedule: Literal["joint", "fixed"] = Field(
        "joint", description="qcn-topology: joint (cutoff, distillation or skip per client and round, optimised) or fixed (qcn-cutoff, qcn-distillation for all)")
    qcn_cutoff: float = Field(0.5, gt=0, description="qcn-schedule fixed: memory cutoff as a multiple of the route's coherence time")
    qcn_distillation: int = Field(0, ge=0, le=2, description="qcn-schedule fixed: rounds of DEJMPS distillation")
    qcn_pair_price: float = Field(
        0.0, ge=0, description="qcn-schedule joint: aggregate quality given up per 1,000 Bell pairs (0: pairs cost nothing within the budgets)")
    qcn_loss_cost: float = Field(
        0.1, ge=0, description="qcn-topology: what a lost or late coordinate costs beyond its missing information, per unit of the strategy's weight")
    qcn_topk: float = Field(1.0, gt=0, le=1, description="share of an update's coordinates sent (top-k with error feedback; 1: all)")
    qcn_bits: int = Field(0, ge=0, le=16, description="quantise sent values to this many bits, each bit teleported qcn-bit-copies times (0: analog)")
    qcn_bit_copies: int = Field(3, ge=1, description="carriers per bit when qcn-bits > 0 (read by majority)")
    round_deadline: float = Field(0.0, ge=0, description="deadline on the simulated network clock, s (0: none)")
    straggler_policy: Literal["drop", "stale"] = Field("drop", description="drop late updates, or stale: fold them into the round they arrive in")
    staleness_discount: float = Field(0.5, gt=0, le=1, description="weight factor per round late (policy stale)")
    # --- the server
    strategy: str = Field(
        "fedavg", min_length=1,
        description="fedavg, noise-isolating, noise-isolating-median, fidelity-weighted, fedmedian, fedtrimmedavg, krum, multikrum, fedprox, "
                    "scaffold, fedavgm, fedadam, fedyogi, fedadagrad, nested-fedavg, inverse-variance, oracle-drop-noisy "
                    "(experiments' references), or package.module:Class")
    strategy_options: str = Field("{}", description="constructor options as a TOML inline table, e.g. { trim-threshold = 4.0 }")
    robust_norm_factor: float = Field(
        4.0, ge=0, description="the guard rejects an update farther from the global model than this many times the round's median distance (0: off)")
    robust_examples_factor: float = Field(
        4.0, ge=0, description="the guard caps a claimed num-examples at this many times the round's median claim (0: off)")
    robust_direction: bool = Field(
        True, description="the guard rejects an update pointing against the round's coordinate-wise median update, cuts the others' norms to twice their median and bounds their weights by how far they go across it (false: off)")
    simulated_attack: Literal["", "sign-flip", "colluders", "absent", "sideways", "alie", "ipm", "min-max", "min-sum"] = Field(
        "", description="only for qfl experiment attacks (its own ClientApp): partition 0 (sign-flip) or 0 and 1 (colluders) send the global model minus 3 x their update, partitions 0 and 1 the crafted update of sideways, alie, ipm, min-max or min-sum (qfl/experiments/attacks.py), or answer with errors (absent); the real ClientApp refuses to run with it set")
    # --- outputs
    output_dir: str = Field("runs", min_length=1, description="where run folders go")
    log_to: str = Field("", description="also log every round to: tensorboard, mlflow, or both (comma-separated; the package must be installed)")
    run_name: str = Field("", description="the run folder's name ('': the start time); a folder holding a run is never reused unless resume")
    resume: bool = Field(False, description="continue the run run-name from its newest intact checkpoint")

    @field_validator("robust_norm_factor", "robust_examples_factor")
    @classmethod
    def _off_or_above_one(cls, value: float) -> float:
        if value != 0 and not value > 1:
            raise ValueError(f"must be 0 (off) or > 1, got {value}")
        return value

    @field_validator("log_to")
    @classmethod
    def _log_to(cls, value: str) -> str:
        unknown = set(cls.sinks_of(value)) - set(SINKS)
        if unknown:
            raise ValueError(f"unknown {sorted(unknown)} (choose from {', '.join(SINKS)})")
        return value

    @staticmethod
    def sinks_of(value: str) -> list[str]:
        return [s.strip() for s in value.split(",") if s.strip()]

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        if value and not NAME_RE.match(value) or value == "latest":
            raise ValueError(f"{value!r} must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit, "
                             "and not be 'latest' ('' names a new run by its start time)")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if value not in MODELS and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", value):
            raise ValueError(f"{value!r} is not one of {', '.join(MODELS)} nor package.module:factory")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("partitioner")
    @classmethod
    def _partitioner(cls, value: str) -> str:
        if value not in PARTITIONERS and not (value.startswith("flower:") and len(value) > len("flower:")):
            raise ValueError(f"{value!r} is not one of {', '.join(PARTITIONERS)} nor flower:<a Flower Datasets partitioner>")
        return value

    @field_validator("device_profiles", "qcn_paths")
    @classmethod
    def _specs(cls, value: str) -> str:
        if not [s for s in value.split(";") if s.strip()]:
            raise ValueError("must name at least one entry")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.dataset == "file":
            self._check_file_data()
        if self.partitioner == "h-range" and self.dataset not in ("tfim", "cluster-ising"):
            raise _Conflict("partitioner", f"'h-range' splits a generated set by its field (tfim: h; cluster-ising: h1); "
                                           f"it does not apply to dataset '{self.dataset}'")
        methods = DEVICE_DIFF_METHODS.get(self.device, PLUGIN_DIFF_METHODS)
        if self.diff_method not in methods:
            raise _Conflict("diff-method", f"'{self.diff_method}' is not supported on device '{self.device}' "
                            f"(choose from {', '.join(methods)})")
        if self.zne and self.mitigation not in ("none", "zne"):
            raise _Conflict("zne", f"zne = true asks for zero-noise extrapolation, mitigation = \"{self.mitigation}\" for "
                            "another: set mitigation alone (zne = true is the older spelling of mitigation = \"zne\")")
        mitigating = "zne" if self.zne else "mitigation"  # the key that asks for it
        if self.model == "mlp" and (self.device_profiles.strip() != "ideal" or self.mitigation_method != "none"
                                    or self.embedding != "fixed"):
            key = mitigating if self.mitigation_method != "none" else "embedding" if self.embedding != "fixed" else "device-profiles"
            raise _Conflict(key, "the classical baseline (model = \"mlp\") runs noiselessly with no embedding: "
                            "keep device-profiles = \"ideal\", mitigation = \"none\", embedding = \"fixed\"")
        if self.model not in MODELS and self.mitigation_method == "pec":
            raise _Conflict(mitigating, f"pec samples the built-in circuit's noise trajectories; a model of your own "
                            f"(model = \"{self.model}\") runs its circuit's exact noisy channels (docs/usage.md): use "
                            "mitigation = \"zne\" or \"none\"")
        if self.model not in MODELS and self.embedding != "fixed":
            raise _Conflict("embedding", f"the trainable embedding is the built-in circuit's; a model of your own "
                            f"(model = \"{self.model}\") embeds its inputs itself: keep embedding = \"fixed\"")
        if self.task_kind == REGRESSION:
            self._check_regression()
        if self.mitigation_method == "zne" and self.dataset == "tfim":
            raise _Conflict(mitigating, "zero-noise extrapolation needs angle data; the tfim set is loaded as states")
        if self.uses_transport("dp") and self.dp_mode == "central" and self.dp_accountant == "pld" and self.fraction_train < 1:
            raise _Conflict("dp-accountant", "the PLD accountant cannot amplify Flower's fixed-size sampling: use \"rdp\" or fraction-train = 1.0")
        if self.uses_transport("secagg"):
            self._check_secagg()
        self._check_qcn()
        self._check_circuits()
        if self.resume and not self.run_name:
            raise _Conflict("resume", "names no run: set run-name to the run to continue")
        return self

    def _check_regression(self) -> None:
        """A numeric target: the nodes' own files, no classes, nothing that splits or scores by class."""
        if self.dataset != "file":
            raise _Conflict("task-kind", f"regression learns a numeric label, which only the nodes' own files hold "
                                         f"(dataset = \"file\"); dataset '{self.dataset}' is a classification set")
        if self.data_classes.strip():
            raise _Conflict("data-classes", "regression has no classes: leave data-classes empty (the label column is the "
                                            "numeric target)")
        if self.partitioner != "iid":
            raise _Conflict("partitioner", f"'{self.partitioner}' splits a data set by class label; a regression label is "
                                           "a number: use \"iid\"")
        if self.architecture == "search":
            raise _Conflict("architecture", "search scores circuits by their validation cross-entropy over classes; "
                                            "regression has none: use \"fixed\" or \"by-device\"")

    def _check_file_data(self) -> None:
        """What a run on the nodes' own files must declare: the server holds none of the data."""
        classes = [c.strip() for c in self.data_classes.split(",") if c.strip()]
        if self.task_kind == CLASSIFICATION and (len(classes) < 2 or len(set(classes)) != len(classes)):
            raise _Conflict("data-classes", "dataset file: name at least two distinct classes, comma-separated, in order")
        if self.data_num_features < 1:
            raise _Conflict("data-num-features", "dataset file: declare how many feature columns every node's file has")
        if self.data_features and len([f for f in self.data_features.split(",") if f.strip()]) != self.data_num_features:
            raise _Conflict("data-features", f"names {len([f for f in self.data_features.split(',') if f.strip()])} "
                                             f"column(s), data-num-features says {self.data_num_features}")
        if self.fraction_evaluate == 0:
            raise _Conflict("fraction-evaluate", "dataset file: the server holds no test set, so the nodes evaluate on their "
                                                 "own held-out rows: set fraction-evaluate > 0")

    def _check_qcn(self) -> None:
        """The shared network and compression act on the qcn transport's channel only."""
        if not self.uses_transport("qcn"):
            for key, value, off in (("qcn-topology", self.qcn_topology, ""), ("qcn-topk", self.qcn_topk, 1.0),
                                    ("qcn-bits", self.qcn_bits, 0)):
                if value != off:
                    raise _Conflict(key, f"acts on the qcn transport's channel; transport is '{self.transport}'")

    def _check_circuits(self) -> None:
        """Clients on different circuits need the nested aggregation and the built-in circuit."""
        if self.optimizer == "qng" and self.model != "pqc":
            raise _Conflict("optimizer", f"qng preconditions by the built-in circuit's metric tensor; model is '{self.model}'")
        if self.architecture == "fixed":
            return
        if self.model != "pqc":
            raise _Conflict("architecture", f"'{self.architecture}' chooses among the built-in circuits; model is '{self.model}'")
        if self.strategy != NESTED_STRATEGY:
            raise _Conflict("strategy", f"architecture '{self.architecture}' gives clients different circuits, whose replies "
                                        f"only '{NESTED_STRATEGY}' can average; strategy is '{self.strategy}'")
        for name in ("secagg", "dp", "qcn"):
            if self.uses_transport(name):
                raise _Conflict("transport", f"'{name}' encodes a reply against the arrays it was sent, of one shape; clients "
                                             f"on different circuit depths (architecture '{self.architecture}') return "
                                             "fewer layers than round 1 sends them")

    def _check_secagg(self) -> None:
        """Secure aggregation hides each client's update: what needs one is refused, named."""
        if self.uses_transport("qcn"):
            raise _Conflict("transport", "secagg with qcn: the simulated channel loses coordinates, and a masked sum "
                                         "with a lost coordinate cannot be unmasked")
        if self.uses_transport("dp") and self.dp_mode == "local":
            raise _Conflict("dp-mode", "secagg with local DP: each client's full noise would add m times the noise the "
                                       "sum needs; use dp-mode = \"central\", which under secagg is distributed DP "
                                       "(each client adds its share of the noise, the server never sees one update)")
        if self.strategy not in SECAGG_STRATEGIES:
            raise _Conflict("strategy", f"'{self.strategy}' needs each client's update, which secure aggregation hides "
                            f"from the server; with secagg use one of {', '.join(SECAGG_STRATEGIES)}")

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> RunConfig:
        """Parse and validate a flat run-config mapping (Flower's ``context.run_config``).

        Raises
        ------
        ConfigError
            A key missing, unknown, of the wrong type or out of range; the message names it.
        """
        missing = [k for k in keys() if k not in run_config]
        if missing:
            raise ConfigError(missing[0], "missing (declare it in pyproject.toml)")
        return _validate(cls, run_config)

    def to_run_config(self) -> dict[str, object]:
        """The flat mapping Flower uses (dash-separated keys)."""
        return self.model_dump(by_alias=True)

    def replace(self, **changes: object) -> RunConfig:
        """A copy with ``changes`` (underscore names), validated again."""
        return _validate(type(self), {**self.to_run_config(), **{_dashed(k): v for k, v in changes.items()}})

    # --- derived views ----------------------------------------------------------------
    @property
    def mitigation_method(self) -> str:
        """The clients' error mitigation, one of :data:`MITIGATIONS`: ``mitigation``, or
        ``"zne"`` where the older ``zne = true`` asks for it."""
        return "zne" if self.zne else self.mitigation

    def uses_transport(self, name: str) -> bool:
        """Whether ``name`` is one of the composed transports."""
        return name in (p.strip() for p in self.transport.split("+"))

    def path_specs(self) -> list[str]:
        """The ``qcn-paths`` entries, in order."""
        return [s.strip() for s in self.qcn_paths.split(";") if s.strip()]

    def profile_specs(self) -> list[str]:
        """The ``device-profiles`` entries, in order."""
        return [s.strip() for s in self.device_profiles.split(";") if s.strip()]


class NodeConfig(_Strict):
    """What a SuperNode says of itself (``--node-config``; the simulation engine sets the
    first two). Attribute names are the keys with dashes turned into underscores."""

    partition_id: int = Field(ge=0, description="this node's share of the data: partition I of N (required)")
    num_partitions: int = Field(ge=1, description="how many partitions the split has (required)")
    device_profile: str | None = Field(None, min_length=1, description="this node's simulated device, instead of entry I of device-profiles")
    mitigation: Literal["none", "zne", "pec"] | None = Field(
        None, description="this node's error mitigation (none, zne, pec), instead of the run's mitigation")
    zne: bool | None = Field(None, description="the older switch: true is mitigation = \"zne\" on this node, false \"none\"")
    qcn_path: str | None = Field(None, min_length=1, description="this node's quantum-network path, instead of entry I of qcn-paths")
    device: str | None = Field(None, description="this node's PennyLane device (any installed here: qiskit.aer, default.mixed, "
                                                 "lightning.qubit, ...), instead of the run's device")
    data_path: str | None = Field(
        None, min_length=1, description="dataset file: this node's own data file (the whole file is its data), instead of the run's data-path")
    dp_min_noise_multiplier: float | None = Field(
        None, gt=0, description="the node's privacy floor: it trains only under local DP with at least this sigma")
    dp_max_epsilon: float | None = Field(
        None, gt=0, description="the node's budget: it stops training once its own ledger would pass this epsilon")
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="delta of the node's own epsilon")
    dp_ledger: str | None = Field(
        None, min_length=1, description="the node's privacy ledger (JSON, kept across runs; default: its state directory)")
    warm_worker: bool = Field(False, description="a SuperNode in subprocess isolation: its ClientApps hand their work to a "
                                                "warm worker that exits with the node (the launcher and compose set it)")

    @model_validator(mode="after")
    def _in_range(self) -> NodeConfig:
        if self.partition_id >= self.num_partitions:
            raise _Conflict(NODE_PARTITION_ID, f"must be in [0, {self.num_partitions}), got {self.partition_id}")
        if self.zne is not None and self.mitigation is not None and ("zne" if self.zne else "none") != self.mitigation:
            raise _Conflict("zne", f"zne = {str(self.zne).lower()} contradicts mitigation = \"{self.mitigation}\": "
                            "set mitigation alone")
        if self.device is not None and self.device != "auto":
            try:
                check_device(self.device)
            except ValueError as err:
                raise _Conflict("device", str(err)) from err
        return self

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodeConfig:
        for key in (NODE_PARTITION_ID, NODE_NUM_PARTITIONS):
            if key not in node_config:
                raise ConfigError(key, "missing (--node-config)", NODE_CONFIG)
        return _validate(cls, node_config)

    def device_for(self, run: RunConfig) -> tuple[str, str]:
        """``(profile spec, mitigation)`` of this node: its own settings first, then the run's."""
        specs = run.profile_specs()
        spec = self.device_profile if self.device_profile is not None else specs[self.partition_id % len(specs)]
        if self.mitigation is not None:
            return spec, self.mitigation
        if self.zne is not None:
            return spec, "zne" if self.zne else "none"
        return spec, run.mitigation_method

    def simulator_for(self, run: RunConfig) -> str:
        """The PennyLane device this node runs the circuit on: its own, then the run's.

        Raises
        ------
        ConfigError
            The node's device cannot differentiate as the run's ``diff-method`` asks, naming both.
        """
        if self.device is None:
            return run.device
        methods = DEVICE_DIFF_METHODS.get(self.device, PLUGIN_DIFF_METHODS)
        if run.diff_method not in methods:
            raise ConfigError("device", f"this node's device {self.device!r} does not support the run's diff-method "
                                        f"'{run.diff_method}' (it supports {', '.join(methods)})", NODE_CONFIG)
        return self.device

    def path_for(self, run: RunConfig) -> str:
        """This node's quantum-network path spec."""
        specs = run.path_specs()
        return self.qcn_path if self.qcn_path is not None else specs[self.partition_id % len(specs)]


# strategies that need only the weighted average of the updates, which is what the server
# learns under secure aggregation (median, Krum, trimming, noise isolation, fidelity
# weighting and SCAFFOLD need each client's update or a per-client number)
SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
# averages each layer over the clients that hold it: per-client shapes, never under secagg
NESTED_STRATEGY = "nested-fedavg"


class _Conflict(ValueError):
    """A cross-field rule, naming the key to change."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _validate(model: type[_Strict], values: Mapping[str, object]):  # noqa: ANN202
    where = NODE_CONFIG if model is NodeConfig else "run config"
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        first = err.errors()[0]
        ctx_error = first.get("ctx", {}).get("error")
        if isinstance(ctx_error, _Conflict):
            raise ConfigError(ctx_error.key, str(ctx_error), where) from None
        key = str(first["loc"][0]) if first["loc"] else model.__name__
        value = values.get(key, None)
        if first["type"] == "value_error":  # a field validator's own words
            message = str(ctx_error)
        elif isinstance(value, float) and not math.isfinite(value):
            message = f"must be finite, got {value!r}"
        else:
            message = f"{first['msg'][0].lower()}{first['msg'][1:]}, got {value!r}"
        raise ConfigError(key, message, where) from None


def toml_value(value: object) -> str:
    """A run-config value as TOML writes it (pyproject.toml's table, an app ``qfl new`` writes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def keys() -> list[str]:
    """Every run-config key, in declaration order."""
    return [field.alias or _dashed(name) for name, field in RunConfig.model_fields.items()]


def defaults() -> dict[str, object]:
    """Every key's default (what ``pyproject.toml`` must declare)."""
    return {field.alias or _dashed(name): field.default for name, field in RunConfig.model_fields.items()}


def describe(key: str) -> str:
    """A key's help text."""
    return RunConfig.model_fields[key.replace("-", "_")].description or ""


class _Keys:
    """``KEY.dp_clip == "dp-clip"``: a run-config key by its attribute name, so that code
    names keys without writing them (a typo is an AttributeError, not a silent miss)."""

    def __getattr__(self, name: str) -> str:
        field = RunConfig.model_fields.get(name)
        if field is None:
            raise AttributeError(f"RunConfig has no option {name!r}")
        return field.alias or _dashed(name)


KEY = _Keys()
