"""Checks a run needs before it starts, that the configuration model alone cannot make.

They need another package's knowledge: the data set (classes, size, partitions), the
device profiles (``qfl.task.noise``), the quantum-network paths (``transport.qcn``), the
strategy and its options, the transports. The launcher runs them before any process
starts; the ServerApp runs them too, for runs started with plain ``flwr run``.
"""

from __future__ import annotations

from qfl.common.config import KEY, MITIGATIONS, MODELS, ConfigError, RunConfig


def check_run(cfg: RunConfig, clients: int | None = None) -> None:
    """Raise :class:`ConfigError` (naming the key) if ``cfg`` cannot run with ``clients`` nodes."""
    from qfl.task.build import build_dataset
    from qfl.task import cluster_ising
    from qfl.task.data import num_classes, partition_indices
    from qfl.task.local_data import DataError, DataSpec, read_node_data
    from qfl.task.profiles import check_profile
    from server.chain import build_strategy
    from transport.qcn import get_path
    from transport.registry import transport_parts

    n_classes = DataSpec.of(cfg).n_outputs if cfg.dataset == "file" else num_classes(cfg.dataset)
    if cfg.dataset == "cluster-ising" and cfg.n_qubits < cluster_ising.MIN_SPINS:
        raise ConfigError(KEY.n_qubits, f"dataset 'cluster-ising' is a chain of at least {cluster_ising.MIN_SPINS} spins: "
                                        f"needs >= {cluster_ising.MIN_SPINS} qubits")
    if n_classes > cfg.n_qubits:
        raise ConfigError(KEY.n_qubits, f"dataset '{cfg.dataset}' has {n_classes} classes: needs >= {n_classes} qubits")
    if cfg.model not in MODELS:  # the user's own: its factory must load (the model is built, and checked, at start)
        from qfl.task.user_model import UserModelError, load_factory

        try:
            load_factory(cfg.model)
        except UserModelError as err:
            raise ConfigError(KEY.model, str(err)) from err
    for spec in cfg.profile_specs():
        check_profile(KEY.device_profiles, spec, cfg.n_qubits)
    if cfg.model not in MODELS:
        check_user_devices(cfg)
    for spec in cfg.path_specs():
        try:
            get_path(spec)
        except ValueError as err:
            raise ConfigError(KEY.qcn_paths, str(err)) from err
    if cfg.qcn_topology:
        from transport.qcn_schedule import check_topology

        try:
            check_topology(cfg)
        except ValueError as err:
            raise ConfigError(KEY.qcn_topology, str(err)) from err
    try:
        build_strategy(cfg)  # the class must exist and the options must suit its constructor
    except (ValueError, TypeError) as err:
        key = KEY.strategy if "unknown strategy" in str(err) or "cannot import" in str(err) else KEY.strategy_options
        raise ConfigError(key, str(err)) from err
    try:
        transport_parts(cfg.transport)
    except ValueError as err:
        raise ConfigError(KEY.transport, str(err)) from err
    if clients is None:
        return
    if cfg.dataset == "file":  # the launcher's host: the run's own file, when it names one, checked before any process starts
        if cfg.data_path:
            try:
                _, labels = read_node_data(cfg.data_path, DataSpec.of(cfg))
                partition_indices(labels, clients, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha)
            except DataError as err:
                raise ConfigError(KEY.data_path, str(err)) from err
            except ValueError as err:
                raise ConfigError(KEY.partitioner, str(err)) from err
        return
    data = build_dataset(cfg)  # also fills the cache the ClientApps read
    n_train = len(data.y_train)
    if clients > n_train:
        raise ConfigError("--clients", f"{clients} clients but dataset '{cfg.dataset}' has only {n_train} training samples")
    try:
        partition_indices(data.y_train, clients, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha, data.h_train)
    except ValueError as err:
        raise ConfigError(KEY.partitioner, str(err)) from err


def check_user_devices(cfg: RunConfig) -> None:
    """A model of the user's own on each of the run's device profiles (with the run's mitigation): its
    circuit is put on the device and run on two inputs (:mod:`qfl.task.user_noise`), and what cannot
    apply is a :class:`ConfigError` naming the key. Nothing to do on noiseless profiles without
    mitigation. A node's own ``device-profile`` is checked where it is built, at the node's warm-up."""
    from qfl.task.build import build_dataset, build_model
    from qfl.task.profiles import get_profile
    from qfl.task.user_model import UserModelError
    from qfl.task.user_noise import UserDeviceError

    mitigation = cfg.mitigation_method
    specs = [s for s in dict.fromkeys(cfg.profile_specs())
             if mitigation != MITIGATIONS[0] or not get_profile(s, cfg.n_qubits).is_noiseless]
    if not specs:
        return
    data = build_dataset(cfg)
    for spec in specs:
        try:
            build_model(cfg, data, spec, mitigation)
        except UserDeviceError as err:
            raise ConfigError(err.key, str(err)) from err
        except UserModelError as err:
            raise ConfigError(KEY.model, str(err)) from err
