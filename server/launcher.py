"""``qfl launch``: a real Flower federation on loopback, in one command.

It validates the whole configuration first (nothing starts on a bad value), then
starts ``flower-superlink`` and N ``flower-supernode`` processes on 127.0.0.1, each
on its own free port, with a project-local ``FLWR_HOME``; submits the app with
``flwr run --stream``; shows one progress line per round; prints a final table; and
stops every process it started, on success, on error and on Ctrl-C.

With ``--simulation`` it starts ``flower-superlink --simulation`` instead and runs the
same app on Flower's simulation engine with N virtual SuperNodes.

Examples
--------
::

    qfl launch --clients 4 --rounds 10 --dataset wine
    qfl launch --clients 3 --dataset tfim --partitioner h-range --n-qubits 6
    qfl launch --clients 50 --simulation --set fraction-train=0.2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import replace
from pathlib import Path

from client.config import (
    N_QUBITS,
    ConfigError,
    RunConfig,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "qfl-local"
PROGRESS_TAG = "[qfl]"
STARTUP_TIMEOUT_S = 30.0
# How often the SuperExec checks for a ClientApp/ServerApp to start (Flower: 1.0 s).
SUPEREXEC_POLL_S = "0.05"


class LaunchError(RuntimeError):
    """The federation could not be launched or did not finish."""


# --- configuration ------------------------------------------------------------------


def app_defaults(app_dir: Path) -> dict[str, object]:
    """The run-config defaults declared in ``pyproject.toml``."""
    with open(app_dir / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


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


def build_config(args: argparse.Namespace, app_dir: Path) -> tuple[RunConfig, int]:
    """Merge defaults, ``--set`` and the named flags; validate everything.

    Returns the run config and the number of clients. Raises :class:`ConfigError`
    (naming the key or flag) before any process is started.
    """
    defaults = app_defaults(app_dir)
    values = dict(defaults)
    if args.config:
        values.update(load_config_file(Path(args.config), defaults))
    values.update(parse_overrides(args.set or [], defaults))
    flags = {
        "num-server-rounds": args.rounds,
        "dataset": args.dataset,
        "partitioner": args.partitioner,
        "n-qubits": args.n_qubits,
        "n-layers": args.n_layers,
        "device": args.device,
        "strategy": args.strategy,
        "transport": args.transport,
        "run-name": args.run_name,
        "seed": args.seed,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    values["output-dir"] = str(Path(str(values["output-dir"])).expanduser().resolve())
    values["run-name"], values["resume"] = run_name_for(Path(str(values["output-dir"])), str(values["run-name"]),
                                                        args.resume, bool(values["resume"]))
    if args.clients < 1:
        raise ConfigError("--clients", f"must be a positive integer, got {args.clients}")
    # The server starts round 1 once every launched node is connected.
    values["min-nodes"] = args.clients
    cfg = RunConfig.from_run_config(values)
    if args.simulation and cfg.uses_transport("qkd"):
        raise ConfigError("transport", "qkd needs each client in its own SuperNode, with its own SAE certificate; "
                                       "the simulation engine runs every client in one process tree")
    check_feasible(cfg, args.clients)
    return cfg, args.clients


LATEST = "latest"  # <output-dir>/latest -> the newest run folder
RESULTS = ("metrics.json", "checkpoints")  # what makes a folder a run's


def run_name_for(output_dir: Path, name: str, resume_flag: str | None, resume: bool) -> tuple[str, bool]:
    """``(run-name, resume)``: a new run gets a fresh timestamped name unless one is given;
    ``--resume RUN`` continues RUN, a bare ``--resume`` the run ``latest`` points at.

    Raises :class:`ConfigError` when a new run would write into an existing run's folder,
    or the run to resume does not exist.
    """
    if resume_flag is not None:
        name = resume_flag or name
        if not name:
            link = output_dir / LATEST
            if not link.is_symlink():
                raise ConfigError("--resume", f"no run to continue: {link} does not exist (name the run: --resume RUN)")
            name = os.readlink(link)
        if not holds_run(output_dir / name):
            raise ConfigError("--resume", f"{output_dir / name} holds no run to continue")
        return name, True
    if not name:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = next(n for n in (stamp, *(f"{stamp}-{i}" for i in range(2, 1000))) if not (output_dir / n).exists())
    elif not resume and holds_run(output_dir / name):
        raise ConfigError("--run-name", f"{output_dir / name} holds a run already: --resume {name} continues it, "
                                        "another --run-name (or none, for a timestamped one) starts a new one")
    return name, resume


def holds_run(run_dir: Path) -> bool:
    """Whether a folder holds a run's results (metrics or checkpoints)."""
    return any((run_dir / name).exists() for name in RESULTS)


class RunLock:
    """An exclusive lock on a run folder for as long as one launcher uses it.

    A second launch of the same run is refused at once, before it touches anything.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".qfl.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LaunchError(f"{self.path.parent} is in use by qfl launch (pid {holder}); wait for it or choose another --run-name") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def point_latest(output_dir: Path, run_name: str) -> None:
    """``<output-dir>/latest`` -> ``run_name`` (relative, replaced atomically)."""
    tmp = output_dir / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_name, tmp)
    os.replace(tmp, output_dir / LATEST)


def check_feasible(cfg: RunConfig, clients: int) -> None:
    """Checks that need the data or the strategy: classes vs qubits, clients vs samples."""
    from client.data import num_classes, partition_indices
    from client.task import build_dataset
    from strategies import resolve_strategy

    n_classes = num_classes(cfg.dataset)
    if n_classes > cfg.n_qubits:
        raise ConfigError(N_QUBITS, f"dataset '{cfg.dataset}' has {n_classes} classes: needs >= {n_classes} qubits")
    try:
        resolve_strategy(cfg.strategy)
    except ValueError as err:
        raise ConfigError("strategy", str(err)) from err
    from server.app import build_strategy

    try:
        build_strategy(cfg)  # the options must suit the strategy's constructor
    except (ValueError, TypeError) as err:
        raise ConfigError("strategy-options", str(err)) from err
    from transport.registry import transport_parts

    try:
        transport_parts(cfg.transport)
    except ValueError as err:
        raise ConfigError("transport", str(err)) from err
    data = build_dataset(cfg)  # also fills the cache the ClientApps read
    n_train = len(data.y_train)
    if clients > n_train:
        raise ConfigError(
            "--clients",
            f"{clients} clients but dataset '{cfg.dataset}' has only {n_train} training samples",
        )
    try:
        partition_indices(data.y_train, clients, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha, data.h_train)
    except ValueError as err:
        raise ConfigError("partitioner", str(err)) from err


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


# --- commands (shared with docker-compose.yml and docs/deploy.md; tests compare them) -----


def superlink_command(
    port: int,
    *,
    host: str = "127.0.0.1",
    tls_dir: str | None = None,
    node_auth: bool = False,
    simulation: bool = False,
) -> list[str]:
    """``flower-superlink`` serving Fleet, Control and Runtime APIs on ``host:port``.

    With ``tls_dir``, TLS with ``ca.crt``, ``server.pem`` and ``server.key`` from it
    (``scripts/gen_certs.py``); ``node_auth`` admits registered SuperNodes only.
    """
    cmd = ["flower-superlink"]
    if tls_dir is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", f"{tls_dir}/ca.crt", "--ssl-certfile", f"{tls_dir}/server.pem",
                "--ssl-keyfile", f"{tls_dir}/server.key"]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    # never `uv sync` the app's dependencies at run time (they are installed)
    cmd += ["--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if simulation:
        cmd.append("--simulation")
    return cmd


def supernode_command(
    superlink: str,
    port: int,
    partition_id: int,
    num_partitions: int,
    *,
    root_cert: str | None = None,
    auth_key: str | None = None,
    node_config: dict[str, object] | None = None,
) -> list[str]:
    """``flower-supernode`` for one partition, dialling ``superlink`` (host:port).

    ``root_cert`` (the CA) turns TLS on; ``auth_key`` is the node's private key;
    ``node_config`` adds keys such as ``device-profile`` or ``qcn-path``.
    """
    cmd = ["flower-supernode"]
    cmd += ["--insecure"] if root_cert is None else ["--root-certificates", root_cert]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", auth_key]
    config = f"partition-id={partition_id} num-partitions={num_partitions}"
    for key, value in (node_config or {}).items():
        config += f" {key}={json.dumps(value) if isinstance(value, str) else value}"
    return cmd + ["--superlink", superlink, "--port", str(port), "--node-config", config]


def key_manager_command(certs: Path | str, port: int, length_km: float = 10.0, eve_fraction: float = 0.0,
                        host: str = "127.0.0.1", python: str = sys.executable) -> list[str]:
    """The QKD key manager (HTTPS, client certificates from ``certs``), as compose runs it too."""
    return [python, "-m", "transport.qkd.key_manager", "--certs", str(certs), "--host", host, "--port", str(port),
            "--length-km", str(length_km), "--eve-fraction", str(eve_fraction)]


def qkd_credentials(certs: Path, clients: int, make: bool) -> dict[str, dict[str, str]]:
    """Each process's SAE certificate (environment), made under ``certs`` if ``make``.

    The ServerApp runs under the SuperLink as SAE ``server``; SuperNode ``i`` as ``node-i``.
    """
    from server.pki import generate
    from transport.qkd.identity import SaeCredentials

    names = {"superlink": "server", **{f"supernode-{i}": f"node-{i}" for i in range(clients)}}
    if make:
        generate(certs, nodes=0, saes=list(names.values()))
    out = {}
    for process, sae in names.items():
        creds = SaeCredentials.in_dir(certs, sae)
        if not creds.cert.is_file() or not creds.key.is_file():
            raise ConfigError("--qkd-certs", f"{creds.cert} or its key is missing (scripts/gen_certs.py --sae {sae})")
        out[process] = creds.env()
    return out


def check_key_manager(url: str, certs: Path, sae_id: str, peer: str) -> None:
    """Fail before anything else starts if the key manager cannot be reached as ``sae_id``
    (address, TLS, certificate, registration): a run would otherwise have no client."""
    from transport.base import TransportError
    from transport.qkd.client import KeyManagerClient
    from transport.qkd.identity import SaeCredentials

    client = KeyManagerClient(url, SaeCredentials.in_dir(certs, sae_id), timeout=10.0)
    try:
        client.status(peer)
    except TransportError as err:
        raise LaunchError(f"the QKD key manager at {url} does not serve SAE {sae_id!r}: {err}") from err
    finally:
        client.close()


# --- processes ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    """Wait until ``port`` accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"{what} exited with code {proc.returncode}; see {log}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise LaunchError(f"{what} did not open port {port} within {timeout:.0f} s; see {log}")


class ProcessGroup:
    """Every process the launcher starts; :meth:`stop` ends them and their children."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``cmd`` with the group's environment plus ``env``; its output to ``<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            cmd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # its own process group: we can end its children too
        )
        log_file.close()
        self.procs.append((name, proc))
        # which process is which, for users (and tests) who want to inspect or kill one
        pids = {n: p.pid for n, p in self.procs}
        (self.log_dir / "pids.json").write_text(json.dumps(pids, indent=1))
        return proc

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every process we started and all their descendants, then SIGKILL
        what is left after ``grace_s``.

        Descendants are collected first: Flower's SuperExec starts ServerApp and
        ClientApp processes that may leave our process groups.
        """
        family = descendants([p.pid for _, p in self.procs])
        for _, proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        _signal_pids(family, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while family and time.monotonic() < deadline and _alive(family):
            time.sleep(0.1)
        for _, proc in self.procs:
            # the group may outlive its leader (ClientApp processes): kill it whole
            _signal_group(proc, signal.SIGKILL)
        _signal_pids(family, signal.SIGKILL)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


def descendants(roots: list[int]) -> set[int]:
    """PIDs of all live descendants of ``roots`` (from ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return set()
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                # the command name (field 2) may hold spaces: parse after its ')'
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _signal_pids(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pids: set[int]) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":  # zombies are gone
                    return True
        except (OSError, IndexError):
            continue
    return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def flwr_env(flwr_home: Path, cache_dir: Path) -> dict[str, str]:
    """Environment for Flower's processes: project-local FLWR_HOME, the venv's bin first."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = SUPEREXEC_POLL_S
    env["QFL_CACHE_DIR"] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def flower_config(address: str, *, root_cert: str | None = None, num_supernodes: int | None = None,
                  name: str = CONNECTION) -> str:
    """Text of a ``$FLWR_HOME/config.toml`` with one (default) connection ``name``."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append("insecure = true" if root_cert is None else f'root-certificates = "{root_cert}"')
    if num_supernodes is not None:
        lines.append(f"options.num-supernodes = {num_supernodes}")
    return "\n".join(lines) + "\n"


def write_flower_config(flwr_home: Path, port: int, num_supernodes: int | None) -> None:
    """``$FLWR_HOME/config.toml`` with one connection, :data:`CONNECTION`, on loopback."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(flower_config(f"127.0.0.1:{port}", num_supernodes=num_supernodes))


# --- the launch ---------------------------------------------------------------------


def launch(args: argparse.Namespace) -> int:
    """Validate, lock the run folder, start the federation, stream progress, clean up."""
    app_dir = Path(args.app).resolve()
    cfg, clients = build_config(args, app_dir)
    run_dir = Path(cfg.output_dir) / cfg.run_name
    with RunLock(run_dir):
        point_latest(Path(cfg.output_dir), cfg.run_name)
        return _launch(args, app_dir, cfg, clients, run_dir)


def _launch(args: argparse.Namespace, app_dir: Path, cfg: RunConfig, clients: int, run_dir: Path) -> int:
    log_dir = run_dir / "logs"
    if log_dir.exists() and cfg.resume:  # keep the earlier part's logs
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(log_dir.stat().st_mtime))
        log_dir.rename(run_dir / f"logs-{stamp}")
    log_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / "flwr-home"
    env = flwr_env(flwr_home, Path(cfg.output_dir) / ".cache")
    mode = "simulation" if args.simulation else "deployment"
    print(
        f"{PROGRESS_TAG} {mode}: {clients} clients, {cfg.num_server_rounds} rounds, "
        f"dataset={cfg.dataset} partitioner={cfg.partitioner} strategy={cfg.strategy} "
        f"qubits={cfg.n_qubits} layers={cfg.n_layers} -> {run_dir}"
        + (" (resumed)" if cfg.resume else ""),
        flush=True,
    )
    group = ProcessGroup(env, log_dir)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        port = free_port()
        superlink_cmd = superlink_command(port, simulation=args.simulation)
        credentials: dict[str, dict[str, str]] = {}  # process name -> its SAE certificate's env
        if cfg.uses_transport("qkd"):
            certs = Path(args.qkd_certs).resolve() if args.qkd_certs else run_dir / "certs"
            credentials = qkd_credentials(certs, clients, make=args.qkd_certs is None)
            if not args.external_kms:
                # the key manager is a service of its own, as a vendor's would be
                kms_port = free_port()
                kms = group.start("key-manager", key_manager_command(certs, kms_port, args.qkd_length_km, args.qkd_eve_fraction),
                                  cwd=run_dir)
                wait_for_port(kms_port, kms, STARTUP_TIMEOUT_S, "QKD key manager", log_dir / "key-manager.log")
                cfg = replace(cfg, kms_url=f"https://127.0.0.1:{kms_port}")
            check_key_manager(cfg.kms_url, certs, "server", "node-0")
        link = group.start("superlink", superlink_cmd, cwd=run_dir, env=credentials.get("superlink"))
        wait_for_port(port, link, STARTUP_TIMEOUT_S, "flower-superlink", log_dir / "superlink.log")
        if not args.simulation:
            for pid in range(clients):
                node_port = free_port()
                node = group.start(
                    f"supernode-{pid}",
                    supernode_command(f"127.0.0.1:{port}", node_port, pid, clients),
                    cwd=run_dir,
                    env=credentials.get(f"supernode-{pid}"),
                )
                wait_for_port(node_port, node, STARTUP_TIMEOUT_S, f"flower-supernode {pid}", log_dir / f"supernode-{pid}.log")
        write_flower_config(flwr_home, port, clients if args.simulation else None)
        code = stream_run(app_dir, cfg, env, log_dir / "flwr-run.log", args.verbose, args.timeout)
    except KeyboardInterrupt:
        print(f"\n{PROGRESS_TAG} interrupted: stopping the federation", flush=True)
        code = 130
    finally:
        group.stop()
        signal.signal(signal.SIGTERM, previous)
    rows = read_rows(run_dir)
    if rows:
        print(format_table(rows), flush=True)
    if code == 0 and (not rows or rows[-1]["round"] != cfg.num_server_rounds):
        print(f"{PROGRESS_TAG} the run ended before round {cfg.num_server_rounds}; see {log_dir}", file=sys.stderr)
        code = 1
    print(f"{PROGRESS_TAG} outputs: {run_dir} (logs in {log_dir})", flush=True)
    return code


def _raise_keyboard_interrupt(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt


def stream_run(
    app_dir: Path,
    cfg: RunConfig,
    env: dict[str, str],
    log_path: Path,
    verbose: bool,
    timeout: float,
    prefix: tuple[str, ...] = (),
    connection: str = CONNECTION,
) -> int:
    """``flwr run --stream``; echo progress lines (all lines with ``verbose``).

    ``prefix`` runs it through another command (e.g. ``ip netns exec NS``).
    """
    cmd = [*prefix, "flwr", "run", str(app_dir), connection, "--stream", "--run-config", run_config_arg(cfg)]
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=app_dir,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            _signal_group(proc, signal.SIGKILL)

        watchdog = threading.Timer(timeout, on_timeout)
        watchdog.start()
        try:
            assert proc.stdout is not None
            in_traceback = False
            for line in proc.stdout:
                log.write(line)
                log.flush()
                # a traceback's last line (not indented) says what went wrong: show it
                cause = in_traceback and line[:1] not in (" ", "\t", "\n")
                in_traceback = (in_traceback and not cause) or "Traceback (most recent call last)" in line
                if verbose or cause or PROGRESS_TAG in line or "ERROR" in line:
                    print(_strip_ansi(line).rstrip(), flush=True)
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
    if timed_out.is_set():
        print(f"{PROGRESS_TAG} timed out after {timeout:.0f} s", file=sys.stderr)
        return 124
    if proc.returncode != 0 and not verbose:
        tail = log_path.read_text().splitlines()[-15:]
        print("\n".join(_strip_ansi(t) for t in tail), file=sys.stderr)
    return proc.returncode


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["rounds"]


def format_table(rows: list[dict]) -> str:
    """The final per-round table."""
    dp = any(r.get("dp_epsilon") is not None for r in rows)
    head = f"{'round':>5} {'test_acc':>8} {'test_loss':>9} {'train_loss':>10} {'clients':>7} {'time_s':>7} {'bytes':>9}"
    head += f" {'epsilon':>8}" if dp else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        tl = "-" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        clients = f"{r['clients_ok']}/{r['clients_ok'] + r['clients_failed']}"
        lines.append(
            f"{r['round']:>5} {r['test_accuracy']:>8.3f} {r['test_loss']:>9.4f} {tl:>10} "
            f"{clients:>7} {r['round_time_s']:>7.1f} {r['bytes_down'] + r['bytes_up']:>9}"
            + (f" {r['dp_epsilon']:>8.3f}" if dp else "")
        )
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qfl", description="Quantum federated learning on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("launch", help="run a real federation on loopback (or the simulation engine)")
    p.add_argument("--clients", type=int, default=4, help="number of SuperNodes / partitions (default 4)")
    p.add_argument("--rounds", type=int, help="num-server-rounds")
    p.add_argument("--dataset", help="iris | wine | breast-cancer | tfim")
    p.add_argument("--partitioner", help="iid | dirichlet | h-range")
    p.add_argument("--n-qubits", type=int, dest="n_qubits")
    p.add_argument("--n-layers", type=int, dest="n_layers")
    p.add_argument("--device", help="default.qubit | lightning.qubit")
    p.add_argument("--strategy", help="fedavg | noise-isolating | fedmedian | fedtrimmedavg | package.module:Class")
    p.add_argument("--run-name", dest="run_name", help="outputs go to <output-dir>/<run-name> (default: a timestamp)")
    p.add_argument("--seed", type=int)
    p.add_argument("--transport", help="plain | qkd | dp | qcn | package.module:Class (compose with +, e.g. qkd+qcn)")
    p.add_argument("--qkd-length-km", type=float, default=10.0, dest="qkd_length_km", help="fiber length of the simulated QKD links")
    p.add_argument("--qkd-eve-fraction", type=float, default=0.0, dest="qkd_eve_fraction", help="pulses an intercept-resend eavesdropper attacks")
    p.add_argument("--external-kms", action="store_true", dest="external_kms", help="use the key manager at kms-url instead of starting one")
    p.add_argument("--qkd-certs", dest="qkd_certs", metavar="DIR",
                   help="CA and SAE certificates (sae/server, sae/node-<i>) for qkd; default: made for the run")
    p.add_argument("--config", metavar="FILE", help="a TOML file of run-config values (before --set)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key (repeatable)")
    p.add_argument("--resume", nargs="?", const="", metavar="RUN",
                   help="continue RUN (default: the run <output-dir>/latest points at) from its newest intact checkpoint")
    p.add_argument("--simulation", action="store_true", help="use Flower's simulation engine")
    p.add_argument("--verbose", action="store_true", help="show every log line of the run")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.add_argument("--app", default=str(PROJECT_DIR), help="the Flower app directory (pyproject.toml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return launch(args)
    except (ConfigError, LaunchError) as err:
        print(f"qfl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
