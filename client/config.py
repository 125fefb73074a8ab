"""The run configuration shared by the ServerApp, the ClientApp and the launcher.

Every option is declared once, in ``pyproject.toml`` under ``[tool.flwr.app.config]``,
with its default. This module names each key as a constant and turns the flat
``context.run_config`` mapping into a validated, typed :class:`RunConfig`.

Keys are read with ``run_config[key]``, never ``.get(key, default)``: a typo or a key
missing from ``pyproject.toml`` is an error naming the key, not a silent fallback.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

# --- keys (as in pyproject.toml) ---------------------------------------------------
NUM_SERVER_ROUNDS = "num-server-rounds"
DATASET = "dataset"
PARTITIONER = "partitioner"
DIRICHLET_ALPHA = "dirichlet-alpha"
TEST_FRACTION = "test-fraction"
TFIM_SAMPLES = "tfim-samples"
SEED = "seed"
N_QUBITS = "n-qubits"
N_LAYERS = "n-layers"
DEVICE = "device"
DIFF_METHOD = "diff-method"
DEVICE_PROFILES = "device-profiles"
ZNE = "zne"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LEARNING_RATE = "learning-rate"
STRATEGY = "strategy"
TRANSPORT = "transport"
KMS_URL = "kms-url"
QKD_SERVER_SAE = "qkd-server-sae"
DP_MODE = "dp-mode"
DP_CLIP = "dp-clip"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_DELTA = "dp-delta"
DP_ACCOUNTANT = "dp-accountant"
QCN_PATHS = "qcn-paths"
QCN_COPIES = "qcn-copies"
QCN_CHANNELS = "qcn-channels"
ROUND_DEADLINE = "round-deadline"
STRAGGLER_POLICY = "straggler-policy"
STALENESS_DISCOUNT = "staleness-discount"
STRATEGY_OPTIONS = "strategy-options"
ROBUST_NORM_FACTOR = "robust-norm-factor"
ROBUST_EXAMPLES_FACTOR = "robust-examples-factor"
FRACTION_TRAIN = "fraction-train"
FRACTION_EVALUATE = "fraction-evaluate"
MIN_NODES = "min-nodes"
ROUND_TIMEOUT = "round-timeout"
OUTPUT_DIR = "output-dir"
RUN_NAME = "run-name"
RESUME = "resume"

# Node-config keys (set per SuperNode with --node-config, or by the simulation engine)
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
NODE_DEVICE_PROFILE = "device-profile"
NODE_ZNE = "zne"
NODE_QCN_PATH = "qcn-path"

DATASETS = ("iris", "wine", "breast-cancer", "tfim")
PARTITIONERS = ("iid", "dirichlet", "h-range")
STRAGGLER_POLICIES = ("drop", "stale")
DEVICES = ("default.qubit", "lightning.qubit")
DIFF_METHODS = ("best", "backprop", "adjoint", "parameter-shift")
# Which differentiation methods each device supports (PennyLane 0.45).
DEVICE_DIFF_METHODS = {
    "default.qubit": ("best", "backprop", "adjoint", "parameter-shift"),
    "lightning.qubit": ("best", "adjoint", "parameter-shift"),
}
# Largest register we simulate as a state vector per sample (2^16 amplitudes).
MAX_QUBITS = 16

_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    """A run-configuration value is invalid. The message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"run config '{key}': {message}")
        self.key = key


@dataclass(frozen=True)
class RunConfig:
    """Typed, validated view of ``[tool.flwr.app.config]``.

    Attribute names are the keys with dashes turned into underscores.
    """

    num_server_rounds: int
    dataset: str
    partitioner: str
    dirichlet_alpha: float
    test_fraction: float
    tfim_samples: int
    seed: int
    n_qubits: int
    n_layers: int
    device: str
    diff_method: str
    device_profiles: str
    zne: bool
    local_epochs: int
    batch_size: int
    learning_rate: float
    transport: str
    kms_url: str
    qkd_server_sae: str
    dp_mode: str
    dp_clip: float
    dp_noise_multiplier: float
    dp_delta: float
    dp_accountant: str
    qcn_paths: str
    qcn_copies: int
    qcn_channels: int
    round_deadline: float
    straggler_policy: str
    staleness_discount: float
    strategy: str
    strategy_options: str
    robust_norm_factor: float
    robust_examples_factor: float
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    round_timeout: float
    output_dir: str
    run_name: str
    resume: bool

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> RunConfig:
        """Parse and validate a flat run-config mapping.

        Raises
        ------
        ConfigError
            If a key is missing, has the wrong type or is out of range. Unknown keys
            are ignored here (Flower rejects them when overriding).
        """
        values: dict[str, object] = {}
        for field in fields(cls):
            key = field.name.replace("_", "-")
            if key not in run_config:
                raise ConfigError(key, "missing (declare it in pyproject.toml)")
            values[field.name] = run_config[key]
        cfg = cls(**_coerce(values))  # type: ignore[arg-type]
        cfg.validate()
        return cfg

    def to_run_config(self) -> dict[str, object]:
        """The flat mapping Flower uses (dash-separated keys)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def validate(self) -> None:
        """Check every value's range; raise :class:`ConfigError` naming the key."""
        _positive_int(NUM_SERVER_ROUNDS, self.num_server_rounds)
        _choice(DATASET, self.dataset, DATASETS)
        _choice(PARTITIONER, self.partitioner, PARTITIONERS)
        if self.partitioner == "h-range" and self.dataset != "tfim":
            raise ConfigError(
                PARTITIONER,
                "'h-range' splits the TFIM set by field strength; "
                f"it does not apply to dataset '{self.dataset}'",
            )
        _positive_float(DIRICHLET_ALPHA, self.dirichlet_alpha)
        _open_unit(TEST_FRACTION, self.test_fraction)
        _positive_int(TFIM_SAMPLES, self.tfim_samples)
        if self.tfim_samples < 8:
            raise ConfigError(TFIM_SAMPLES, f"must be >= 8, got {self.tfim_samples}")
        _nonneg_int(SEED, self.seed)
        _positive_int(N_QUBITS, self.n_qubits)
        if self.n_qubits > MAX_QUBITS:
            raise ConfigError(N_QUBITS, f"must be <= {MAX_QUBITS}, got {self.n_qubits}")
        _positive_int(N_LAYERS, self.n_layers)
        _choice(DEVICE, self.device, DEVICES)
        _choice(DIFF_METHOD, self.diff_method, DIFF_METHODS)
        if self.diff_method not in DEVICE_DIFF_METHODS[self.device]:
            raise ConfigError(
                DIFF_METHOD,
                f"'{self.diff_method}' is not supported on device '{self.device}' "
                f"(choose from {', '.join(DEVICE_DIFF_METHODS[self.device])})",
            )
        specs = self.profile_specs()
        if not specs:
            raise ConfigError(DEVICE_PROFILES, "must name at least one device profile")
        for spec in specs:
            _check_profile(DEVICE_PROFILES, spec, self.n_qubits)
        if self.zne and self.dataset == "tfim":
            raise ConfigError(ZNE, "zero-noise extrapolation needs angle data; the tfim set is loaded as states")
        _positive_int(LOCAL_EPOCHS, self.local_epochs)
        _positive_int(BATCH_SIZE, self.batch_size)
        _positive_float(LEARNING_RATE, self.learning_rate)
        if not self.transport.strip():
            raise ConfigError(TRANSPORT, "must name a transport ('plain' for none)")
        if not self.kms_url.startswith("https://"):
            raise ConfigError(KMS_URL, f"must be an https:// URL (the key manager requires mutual TLS), got {self.kms_url!r}")
        if not _RUN_NAME_RE.match(self.qkd_server_sae):
            raise ConfigError(QKD_SERVER_SAE, f"{self.qkd_server_sae!r} is not an SAE ID (letters, digits, '.', '_', '-')")
        _choice(DP_MODE, self.dp_mode, ("local", "central"))
        _positive_float(DP_CLIP, self.dp_clip)
        _positive_float(DP_NOISE_MULTIPLIER, self.dp_noise_multiplier)
        _open_unit(DP_DELTA, self.dp_delta)
        _choice(DP_ACCOUNTANT, self.dp_accountant, ("rdp", "pld"))
        if self.uses_transport("dp") and self.dp_mode == "central" and self.dp_accountant == "pld" and self.fraction_train < 1:
            raise ConfigError(DP_ACCOUNTANT, "the PLD accountant cannot amplify Flower's fixed-size sampling: "
                              "use \"rdp\" or fraction-train = 1.0")
        if not self.path_specs():
            raise ConfigError(QCN_PATHS, "must name at least one QCN path")
        for spec in self.path_specs():
            _check_path(QCN_PATHS, spec)
        _nonneg_int(QCN_COPIES, self.qcn_copies)
        _positive_int(QCN_CHANNELS, self.qcn_channels)
        if self.round_deadline < 0:
            raise ConfigError(ROUND_DEADLINE, f"must be >= 0 (0: no deadline), got {self.round_deadline}")
        _choice(STRAGGLER_POLICY, self.straggler_policy, STRAGGLER_POLICIES)
        if not 0.0 < self.staleness_discount <= 1.0:
            raise ConfigError(STALENESS_DISCOUNT, f"must be in (0, 1], got {self.staleness_discount}")
        if not self.strategy.strip():
            raise ConfigError(STRATEGY, "must name a strategy")
        for key, factor in ((ROBUST_NORM_FACTOR, self.robust_norm_factor), (ROBUST_EXAMPLES_FACTOR, self.robust_examples_factor)):
            if factor != 0 and not factor > 1:
                raise ConfigError(key, f"must be 0 (off) or > 1, got {factor}")
        _unit_interval(FRACTION_TRAIN, self.fraction_train)
        if self.fraction_train == 0.0:
            raise ConfigError(FRACTION_TRAIN, "must be > 0: nothing would train")
        _unit_interval(FRACTION_EVALUATE, self.fraction_evaluate)
        _positive_int(MIN_NODES, self.min_nodes)
        _positive_float(ROUND_TIMEOUT, self.round_timeout)
        if not self.output_dir:
            raise ConfigError(OUTPUT_DIR, "must be a directory path")
        if self.run_name and not _RUN_NAME_RE.match(self.run_name) or self.run_name == "latest":
            raise ConfigError(
                RUN_NAME,
                f"{self.run_name!r} must be 1-64 letters, digits, '.', '_' or '-', start with a letter or "
                "digit, and not be 'latest' ('' names a new run by its start time)",
            )
        if self.resume and not self.run_name:
            raise ConfigError(RESUME, "names no run: set run-name to the run to continue")


    def uses_transport(self, name: str) -> bool:
        """Whether ``name`` is one of the composed transports."""
        return name in (p.strip() for p in self.transport.split("+"))

    def path_specs(self) -> list[str]:
        """The ``qcn-paths`` entries, in order."""
        return [s.strip() for s in self.qcn_paths.split(";") if s.strip()]

    def profile_specs(self) -> list[str]:
        """The ``device-profiles`` entries, in order."""
        return [s.strip() for s in self.device_profiles.split(";") if s.strip()]

    def device_for(self, partition_id: int, node_config: Mapping[str, object]) -> tuple[str, bool]:
        """``(profile spec, zne)`` of a partition: node config first, then the run config."""
        spec = node_config.get(NODE_DEVICE_PROFILE)  # optional per node, by design
        if spec is None:
            specs = self.profile_specs()
            spec = specs[partition_id % len(specs)]
        elif not isinstance(spec, str):
            raise ConfigError(NODE_DEVICE_PROFILE, f"must be a string, got {spec!r}")
        zne = node_config.get(NODE_ZNE, self.zne)
        if not isinstance(zne, bool):
            raise ConfigError(NODE_ZNE, f"must be true or false, got {zne!r}")
        _check_profile(NODE_DEVICE_PROFILE, spec, self.n_qubits)
        return spec, zne


def _check_path(key: str, spec: str) -> None:
    from transport.qcn import get_path

    try:
        get_path(spec)
    except ValueError as err:
        raise ConfigError(key, str(err)) from err


def check_node_path(node_config: Mapping[str, object]) -> None:
    """A node's optional ``qcn-path`` must name a valid path."""
    spec = node_config.get(NODE_QCN_PATH)  # optional per node, by design
    if spec is not None:
        if not isinstance(spec, str):
            raise ConfigError(NODE_QCN_PATH, f"must be a string, got {spec!r}")
        _check_path(NODE_QCN_PATH, spec)


def _check_profile(key: str, spec: str, n_qubits: int) -> None:
    from client.noise import get_profile  # imported here: pulls in PennyLane

    try:
        profile = get_profile(spec)
    except ValueError as err:
        raise ConfigError(key, str(err)) from err
    if n_qubits > profile.n_qubits:
        raise ConfigError(key, f"profile {spec!r} has {profile.n_qubits} qubits, n-qubits is {n_qubits}")


def node_partition(node_config: Mapping[str, object]) -> tuple[int, int]:
    """Read ``(partition-id, num-partitions)`` from a SuperNode's node config."""
    for key in (PARTITION_ID, NUM_PARTITIONS):
        if key not in node_config:
            raise ConfigError(key, "missing from the node config (--node-config)")
    pid, num = node_config[PARTITION_ID], node_config[NUM_PARTITIONS]
    if not _is_int(pid) or not _is_int(num):
        raise ConfigError(PARTITION_ID, f"partition-id={pid!r}, num-partitions={num!r} must be integers")
    if num < 1:  # type: ignore[operator]
        raise ConfigError(NUM_PARTITIONS, f"must be >= 1, got {num}")
    if not 0 <= pid < num:  # type: ignore[operator]
        raise ConfigError(PARTITION_ID, f"must be in [0, {num}), got {pid}")
    return int(pid), int(num)  # type: ignore[call-overload]


# --- helpers -------------------------------------------------------------------------


def _coerce(values: dict[str, object]) -> dict[str, object]:
    """Coerce TOML values to the dataclass's types, naming the key on failure."""
    out: dict[str, object] = {}
    types = {f.name: f.type for f in fields(RunConfig)}
    for name, value in values.items():
        key = name.replace("_", "-")
        kind = types[name]
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(key, f"must be true or false, got {value!r}")
            out[name] = value
        elif kind == "int":
            if not _is_int(value):
                raise ConfigError(key, f"must be an integer, got {value!r}")
            out[name] = int(value)  # type: ignore[call-overload]
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(key, f"must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(key, f"must be finite, got {value!r}")
            out[name] = float(value)
        else:
            if not isinstance(value, str):
                raise ConfigError(key, f"must be a string, got {value!r}")
            out[name] = value
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(key, f"must be a positive integer, got {value}")


def _nonneg_int(key: str, value: int) -> None:
    if value < 0:
        raise ConfigError(key, f"must be >= 0, got {value}")


def _positive_float(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value}")


def _open_unit(key: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(key, f"must be in (0, 1), got {value}")


def _unit_interval(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(key, f"must be in [0, 1], got {value}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"unknown value {value!r} (choose from {', '.join(choices)})")
