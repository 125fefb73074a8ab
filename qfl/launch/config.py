"""The run configuration of a launch: ``pyproject.toml``'s defaults, then ``--config FILE``,
then ``--set KEY=VALUE``, then the named flags; validated whole before anything starts."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tomllib
from pathlib import Path

from qfl.common.config import KEY, ConfigError, RunConfig
from qfl.launch.runs import run_name_for

# the launcher's flags for run-config keys: (flag, key, help); each flag's argparse dest is its key
FLAGS = (
    ("--rounds", KEY.num_server_rounds, None),
    ("--dataset", KEY.dataset, None),
    ("--partitioner", KEY.partitioner, None),
    ("--n-qubits", KEY.n_qubits, None),
    ("--n-layers", KEY.n_layers, None),
    ("--device", KEY.device, None),
    ("--strategy", KEY.strategy, None),
    ("--transport", KEY.transport, None),
    ("--run-name", KEY.run_name, "outputs go to <output-dir>/<run-name> (default: a timestamp)"),
    ("--seed", KEY.seed, None),
    ("--log-to", KEY.log_to, None),
)


RAY_ADDRESS_FLAG = "--ray-address"
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own: the cluster ray.init() joins when given no address
RAY_ADDRESS_HELP = ("run the simulation on the running Ray cluster whose head's GCS is at HOST:PORT (`ray start --head "
                    "--port PORT` there; `auto`: the cluster this machine is part of). It sets Ray's own RAY_ADDRESS "
                    "for the process that starts Ray (Flower's RayBackend, or the experiment engine); default: "
                    "$RAY_ADDRESS if set, else a Ray started on this machine for the run. See docs/deploy.md")
RAY_CONNECT_TIMEOUT_S = 5.0


def add_ray_address(parser: argparse.ArgumentParser) -> None:
    """``--ray-address`` on a command that runs Flower's simulation engine (``launch``, ``experiment``)."""
    parser.add_argument(RAY_ADDRESS_FLAG, dest="ray_address", metavar="HOST:PORT", help=RAY_ADDRESS_HELP)


def check_ray_address(address: str | None) -> str | None:
    """The cluster address to use, checked before anything starts: ``auto`` or ``HOST:PORT``
    where something accepts a TCP connection (the head's GCS). Raises :class:`ConfigError`
    naming ``--ray-address``."""
    import socket

    if address is None or address == "auto":
        return address
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(RAY_ADDRESS_FLAG, f"expected HOST:PORT of a Ray head's GCS (or auto), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), RAY_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(RAY_ADDRESS_FLAG, f"nothing accepts connections at {address} ({err}): start the cluster's "
                                            f"head there first (ray start --head --port {port})") from err
    return address


def app_defaults(app_dir: Path) -> dict[str, object]:
    """The run-config defaults declared in ``pyproject.toml``."""
    with open(app_dir / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])  # not a contract name: the TOML table


def parse_overrides(items: list[str], defaults: dict[str, object]) -> dict[str, object]:
    """Parse ``KEY=VALUE`` strings (TOML values; bare words are strings)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(key or item, "expected KEY=VALUE")
        if key not in defaults:
            raise ConfigError(key, "unknown key (see [tool.flwr.app.config] in pyproject.toml)")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word such as wine or default.qubit
        out[key] = value
    return out


def load_config_file(path: Path, defaults: dict[str, object]) -> dict[str, object]:
    """Run-config values from a TOML file (flat keys, as ``flwr run --run-config FILE``)."""
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError("--config", f"cannot read {path}: {err}") from err
    for key in values:
        if key not in defaults:
            raise ConfigError(key, f"unknown key in {path} (see [tool.flwr.app.config] in pyproject.toml)")
    return values


def _check_node_data(args: argparse.Namespace, cfg: RunConfig) -> None:
    """``--node-data``: one file per client, each checked as its node will check it (before any process starts)."""
    from qfl.task.local_data import DataError, DataSpec, read_node_data

    files = getattr(args, "node_data", None) or []
    if not files:
        if cfg.dataset == "file" and not cfg.data_path:
            raise ConfigError(KEY.data_path, "dataset file: name the data, one file split among the clients (data-path) "
                                             "or each client's own (--node-data, once per client)")
        return
    if cfg.dataset != "file":
        raise ConfigError("--node-data", f"gives the nodes their own files, which dataset = \"file\" reads; dataset is "
                                         f"'{cfg.dataset}'")
    if args.simulation:
        raise ConfigError("--node-data", "the simulation engine's virtual nodes have no files of their own: split one file "
                                         "among them with data-path")
    if len(files) != args.clients:
        raise ConfigError("--node-data", f"names {len(files)} file(s) for {args.clients} clients: one per client, in order")
    for i, path in enumerate(files):
        try:
            read_node_data(path, DataSpec.of(cfg))
        except DataError as err:
            raise ConfigError("--node-data", f"client {i}: {err}") from err


def build_config(args: argparse.Namespace, app_dir: Path) -> tuple[RunConfig, int]:
    """Merge defaults, ``--config``, ``--set`` and the named flags; validate everything.

    Returns the run config and the number of clients. Raises :class:`ConfigError`
    (naming the key or flag) before any process is started.
    """
    from server.checks import check_run
    from server.sinks import check_sinks

    defaults = app_defaults(app_dir)
    values = dict(defaults)
    if args.config:
        values.update(load_config_file(Path(args.config), defaults))
    values.update(parse_overrides(args.set or [], defaults))
    values.update({key: getattr(args, key) for _, key, _ in FLAGS if getattr(args, key, None) is not None})
    output_dir = Path(str(values[KEY.output_dir])).expanduser().resolve()
    values[KEY.output_dir] = str(output_dir)
    values[KEY.run_name], values[KEY.resume] = run_name_for(output_dir, str(values[KEY.run_name]), args.resume,
                                                            bool(values[KEY.resume]))
    if args.clients < 1:
        raise ConfigError("--clients", f"must be a positive integer, got {args.clients}")
    values[KEY.min_nodes] = args.clients  # the server starts round 1 once every launched node is connected
    cfg = RunConfig.from_run_config(values)
    if args.simulation and importlib.util.find_spec("ray") is None:
        raise ConfigError("--simulation", "Flower's simulation engine needs Ray: pip install 'qfl[simulation]'")
    if args.simulation and args.secure:  # nothing to protect: no Fleet traffic, no node to admit
        raise ConfigError("--secure", "cannot go with --simulation: --secure gives the Fleet API between the SuperLink "
                                      "and its SuperNodes TLS and admits registered nodes only, and the simulation "
                                      "engine has no SuperNode (its virtual nodes run in one process tree)")
    if getattr(args, "ray_address", None) is not None:  # before anything starts, naming the flag
        if not args.simulation:
            raise ConfigError(RAY_ADDRESS_FLAG, "goes with --simulation only: a deployment's SuperNodes are processes "
                                                "of their own, on the machines that hold their data (docs/deploy.md)")
        check_ray_address(args.ray_address)
    if args.simulation and cfg.uses_transport("qkd"):
        raise ConfigError(KEY.transport, "qkd needs each client in its own SuperNode, with its own SAE certificate; "
                                         "the simulation engine runs every client in one process tree")
    if str(app_dir) not in sys.path:  # the app's own modules (its task.py: a model factory) load as Flower loads them
        sys.path.insert(0, str(app_dir))
    check_run(cfg, args.clients)
    _check_node_data(args, cfg)
    check_sinks(cfg)
    return cfg, args.clients


def run_config_arg(cfg: RunConfig) -> str:
    """``--run-config`` value for ``flwr run``: every key, as TOML values.

    Flower splits the value on ``key=value`` pairs whose strings are quoted with ``"`` or
    ``'`` and contain no quote of that kind: each string gets the quote it does not hold.
    """
    parts = []
    for key, value in cfg.to_run_config().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            if '"' not in value and "\\" not in value:
                text = f'"{value}"'
            elif "'" not in value:
                text = f"'{value}'"  # a TOML literal string: no escapes, no single quote
            else:
                raise ConfigError(key, "a value cannot hold both ' and \" (Flower's --run-config cannot carry it)")
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)
