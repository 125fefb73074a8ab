"""``qfl launch``: a real Flower federation on loopback, in one command.

It validates the whole configuration first (nothing starts on a bad value), takes the
run folder (one launch at a time; a folder holding a run is never reused for a new one),
starts ``flower-superlink`` and N ``flower-supernode`` processes on 127.0.0.1, each on
its own free port, with a run-local ``FLWR_HOME`` (and, for ``qkd``, the key manager and
every process's SAE certificate); submits the app with ``flwr run --stream``; shows the
run live; prints a final table; and stops every process it started, and their
descendants, on success, on error and on Ctrl-C.

With ``--simulation`` it starts ``flower-superlink --simulation`` instead and runs the
same app on Flower's simulation engine with N virtual SuperNodes.

By default the SuperLink runs ``--insecure`` and without SuperNode authentication: a
single-user host, since anyone on it can reach the loopback port. ``--secure`` (for a
shared host) makes a CA, the SuperLink's certificate and each SuperNode's key pair in
``<run>/certs`` (the same folder and the same ``pki.generate`` call as qkd's SAE
certificates), serves TLS, registers every node's public key before the nodes start and
refuses any other node. Flower 1.42's Control API has no authentication of its own, so
another local user can still submit runs to the loopback port.

Its parts (:mod:`qfl.launch`): configuration, run folders, commands, processes, console.

Examples
--------
::

    qfl launch --clients 4 --rounds 10 --dataset wine
    qfl launch --clients 3 --dataset tfim --partitioner h-range --n-qubits 6
    qfl launch --clients 50 --simulation --set fraction-train=0.2
    qfl launch --clients 2 --secure
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from qfl.common.config import KEY, ConfigError, RunConfig, describe, keys
from qfl.launch.commands import (
    flwr_env,
    key_manager_command,
    register_command,
    superlink_command,
    supernode_command,
    write_flower_config,
)
from qfl.launch.config import FLAGS, RAY_ADDRESS_ENV, add_ray_address, build_config, check_ray_address
from qfl.launch.console import TAG, LiveDisplay, format_table, read_rows, stream_run
from qfl.launch.processes import LaunchError, ProcessGroup, free_port, wait_for_port
from qfl.launch.runs import RunLock, point_latest, stage_app
from transport.secagg_identity import CERTS_ENV as SECAGG_CERTS_ENV

PROJECT_DIR = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 30.0
REGISTER_TIMEOUT_S = 120.0  # every node's `flwr supernode register` at once, each seconds of imports
ALREADY_REGISTERED = "already in use"  # the SuperLink's answer for a key it has (as scripts/compose/register.py)


def launch(args: argparse.Namespace) -> int:
    """Validate, take the run folder, start the federation, show it, clean up."""
    app_dir = Path(args.app).resolve()
    cfg, clients = build_config(args, app_dir)
    run_dir = Path(cfg.output_dir) / cfg.run_name
    if args.check:  # validated whole, as before every launch; nothing is started or written
        mode = "simulation" if args.simulation else "deployment" + (", secure" if args.secure else "")
        print(f"{TAG} check: the options are valid ({mode}, {clients} clients, {cfg.num_server_rounds} rounds, "
              f"strategy={cfg.strategy}, transport={cfg.transport}) -> {run_dir}", flush=True)
        return 0
    with RunLock(run_dir):
        point_latest(Path(cfg.output_dir), cfg.run_name)
        return _launch(args, app_dir, cfg, clients, run_dir)


def _launch(args: argparse.Namespace, app_dir: Path, cfg: RunConfig, clients: int, run_dir: Path) -> int:
    log_dir = run_dir / "logs"
    if log_dir.exists() and cfg.resume:  # keep the earlier part's logs
        log_dir.rename(_free_name(run_dir, "logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / "flwr-home"
    env = flwr_env(flwr_home, Path(cfg.output_dir) / ".cache")
    mode = "simulation" if args.simulation else "deployment" + (" (TLS, registered nodes only)" if args.secure else "")
    print(f"{TAG} {mode}: {clients} clients, {cfg.num_server_rounds} rounds, dataset={cfg.dataset} "
          f"partitioner={cfg.partitioner} strategy={cfg.strategy} qubits={cfg.n_qubits} layers={cfg.n_layers} -> {run_dir}"
          + (" (resumed)" if cfg.resume else ""), flush=True)
    staged = stage_app(app_dir, run_dir / "app")  # what flwr run bundles, without the venv's files to walk
    group = ProcessGroup(env, log_dir)
    env = group.env  # with the launch's token: the watchdog finds every process by it
    previous = _stop_on_signals()
    try:
        zygote = _start_zygote(group, run_dir) if not args.simulation and cfg.warm_runtime else {}
        certs = make_certs(run_dir / "certs", clients, secure=args.secure, saes=_made_saes(args, cfg, clients),
                           identities=list(sae_names(clients).values())[1:] if cfg.uses_transport("secagg") else [])
        cfg, credentials = _start_key_manager(args, cfg, clients, run_dir, group)
        if cfg.uses_transport("secagg"):  # each node's certified identity: secure aggregation has no unsigned keys
            # the superlink only on the simulation engine, whose nodes run under it
            for process in (*(["superlink"] if args.simulation else []), *(f"supernode-{i}" for i in range(clients))):
                credentials[process] = {**(credentials.get(process) or {}), SECAGG_CERTS_ENV: str(certs)}
        port = free_port()
        node_ports = [] if args.simulation else [free_port() for _ in range(clients)]
        cmds = federation_commands(port, node_ports, certs if args.secure else None, args.simulation, args.node_data)
        link = group.start("superlink", cmds["superlink"], cwd=run_dir,
                           env={**(credentials.get("superlink") or {}), **_ray_env(args)})
        wait_for_port(port, link, STARTUP_TIMEOUT_S, "flower-superlink", log_dir / "superlink.log")
        # before any node: `flwr supernode register` reads the connection from it
        write_flower_config(flwr_home, port, clients if args.simulation else None,
                            root_cert=str(certs / "ca.crt") if args.secure else None)
        register_nodes(group, {name: cmd for name, cmd in cmds.items() if name.startswith("register-")})
        nodes = []  # all start at once, then we wait for each: their start-ups overlap
        for pid, node_port in enumerate(node_ports):
            name = f"supernode-{pid}"
            nodes.append((pid, node_port, group.start(name, cmds[name], cwd=run_dir,
                                                      env={**(credentials.get(name) or {}), **zygote})))
        for pid, node_port, node in nodes:
            wait_for_port(node_port, node, STARTUP_TIMEOUT_S, f"flower-supernode {pid}", log_dir / f"supernode-{pid}.log")
        with LiveDisplay(run_dir, cfg.num_server_rounds):
            code = stream_run(staged, cfg, env, log_dir / "flwr-run.log", args.verbose, args.timeout, group=group)
    except KeyboardInterrupt:
        print(f"\n{TAG} interrupted: stopping the federation", flush=True)
        code = 130
    finally:
        group.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    rows = read_rows(run_dir)
    if rows:
        print(format_table(rows), flush=True)
    if code == 0 and (not rows or rows[-1]["round"] != cfg.num_server_rounds):
        print(f"{TAG} the run ended before round {cfg.num_server_rounds}; see {log_dir}", file=sys.stderr)
        code = 1
    print(f"{TAG} outputs: {run_dir} (logs in {log_dir})", flush=True)
    return code


def _start_zygote(group: ProcessGroup, run_dir: Path) -> dict[str, str]:
    """One process that imports torch and PennyLane now, while the federation starts, and forks
    each node's warm worker from itself (:mod:`client.zygote`); the SuperNodes' environment
    that points their ClientApps at it. ``{}`` (each worker imports for itself) where the
    workers' directory cannot be used."""
    import secrets as token

    from client.runtime import ZYGOTE_ENV, WorkerError, private_dir

    try:
        base = private_dir() / f"zygote-{token.token_hex(8)}"
    except WorkerError as err:
        print(f"{TAG} no worker zygote: {err}", file=sys.stderr, flush=True)
        return {}
    # in the run folder, as every process of the launch (and the workers it forks) is
    group.start("worker-zygote", [sys.executable, "-m", "client.zygote", "--files", str(base)], cwd=run_dir)
    return {ZYGOTE_ENV: str(base)}


def _ray_env(args: argparse.Namespace) -> dict[str, str]:
    """With ``--ray-address``: Ray's own ``RAY_ADDRESS`` for the SuperLink, whose simulation
    process (Flower's ``flwr-simulation``) then joins that cluster in ``ray.init()``."""
    return {RAY_ADDRESS_ENV: args.ray_address} if getattr(args, "ray_address", None) else {}


def _free_name(parent: Path, stem: str) -> Path:
    return next(p for p in (parent / f"{stem}-{i}" for i in range(1, 10_000)) if not p.exists())


def make_certs(certs: Path, clients: int, secure: bool, saes: list[str], identities: list[str] | None = None) -> Path:
    """The run's own certificates in ``certs``, made by one :func:`qfl.pki.generate` for
    everything that needs them: with ``secure``, the CA, the SuperLink's TLS certificate
    (``localhost``, ``127.0.0.1``) and ``node-<i>``/``node-<i>.pub`` for each client; the
    ``saes``' certificates for qkd; the ``identities`` (``node-<i>``) for secure aggregation
    (``secagg/node-<i>.pem``, ML-DSA-65). What exists is kept (a resumed run keeps its CA);
    private keys are 0600 and the folder 0700. Nothing is made when nothing needs it."""
    from qfl.pki import generate

    if secure or saes or identities:
        generate(certs, nodes=clients if secure else 0, saes=saes, **({"identities": identities} if identities else {}))
    return certs


def sae_names(clients: int) -> dict[str, str]:
    """The SAE each process is at the key manager: the ServerApp runs under the SuperLink
    as ``server``; SuperNode ``i`` as ``node-i``."""
    return {"superlink": "server", **{f"supernode-{i}": f"node-{i}" for i in range(clients)}}


def _made_saes(args: argparse.Namespace, cfg: RunConfig, clients: int) -> list[str]:
    """The SAE certificates this run makes: qkd's, unless ``--qkd-certs`` brings them."""
    return list(sae_names(clients).values()) if cfg.uses_transport("qkd") and args.qkd_certs is None else []


def federation_commands(port: int, node_ports: list[int], certs: Path | None, simulation: bool,
                        node_data: list[str] | None = None) -> dict[str, list[str]]:
    """Every Flower command of a launch by process name: ``superlink``, ``register-<i>`` and
    ``supernode-<i>`` (one per node port).

    With ``certs`` (``--secure``): TLS from ``server.pem``/``server.key``, SuperNode
    authentication, each node's public key registered and its private key used, the CA
    verified by every node; no ``--insecure`` anywhere. Without: plain HTTP on loopback.
    ``node_data`` (``--node-data``): node *i*'s own data file, its node config's ``data-path``.
    """
    tls = None if certs is None else str(certs)
    cmds = {"superlink": superlink_command(port, tls_dir=tls, node_auth=certs is not None, simulation=simulation)}
    for pid, node_port in enumerate(node_ports):
        keys = {} if certs is None else {"root_cert": str(certs / "ca.crt"), "auth_key": str(certs / f"node-{pid}")}
        if certs is not None:
            cmds[f"register-{pid}"] = register_command(certs / f"node-{pid}.pub")
        own = {KEY.data_path: str(Path(node_data[pid]).resolve())} if node_data else None
        cmds[f"supernode-{pid}"] = supernode_command(f"127.0.0.1:{port}", node_port, pid, len(node_ports), **keys,
                                                     node_config=own)
    return cmds


def register_nodes(group: ProcessGroup, cmds: dict[str, list[str]]) -> None:
    """Run every ``flwr supernode register`` before any node starts: node authentication
    refuses a node whose key is not registered yet. A key the SuperLink has counts as
    registered; any other failure stops the launch with Flower's own words."""
    for name, (code, words) in group.run_all(cmds, REGISTER_TIMEOUT_S).items():
        if code != 0 and ALREADY_REGISTERED not in words:
            key = cmds[name][3]
            raise LaunchError(f"flwr supernode register {key} failed (exit code {code}): {words.strip() or 'no output'}")


def _start_key_manager(args: argparse.Namespace, cfg: RunConfig, clients: int, run_dir: Path,
                       group: ProcessGroup) -> tuple[RunConfig, dict[str, dict[str, str]]]:
    """With ``qkd``: every process's SAE certificate (``--qkd-certs``, else those
    :func:`make_certs` made), and our key manager unless ``--external-kms``; fail before
    anything else starts if the key manager cannot serve the server."""
    if not cfg.uses_transport("qkd"):
        return cfg, {}
    certs = Path(args.qkd_certs).resolve() if args.qkd_certs else run_dir / "certs"
    credentials = qkd_credentials(certs, clients)
    if not args.external_kms:
        # the key manager is a service of its own, as a vendor's would be
        port = free_port()
        kms = group.start("key-manager", key_manager_command(certs, port, args.qkd_length_km, args.qkd_eve_fraction), cwd=run_dir)
        wait_for_port(port, kms, STARTUP_TIMEOUT_S, "QKD key manager", run_dir / "logs" / "key-manager.log")
        cfg = cfg.replace(kms_url=f"https://127.0.0.1:{port}")
    check_key_manager(cfg.kms_url, certs, "server", "node-0")
    return cfg, credentials


def qkd_credentials(certs: Path, clients: int) -> dict[str, dict[str, str]]:
    """Each process's SAE certificate (environment), from ``certs`` (:func:`sae_names`)."""
    from transport.qkd.identity import SaeCredentials

    out = {}
    for process, sae in sae_names(clients).items():
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


def _raise_keyboard_interrupt(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt


def _stop_on_signals() -> dict[int, object]:
    """SIGTERM and SIGHUP (the terminal closed) stop the federation as Ctrl-C does; the handlers
    they had before. A signal the launcher inherited as ignored (``nohup``) stays ignored."""
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _raise_keyboard_interrupt)
    return previous


# --- CLI ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qfl", description="Quantum federated learning on Flower.")
    sub = parser.add_subparsers(dest="command", required=True)
    options = "\n".join(f"  {key:<24} {describe(key)}" for key in keys())
    p = sub.add_parser(
        "launch", help="run a real federation on loopback (or the simulation engine)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"run-config keys (--set KEY=VALUE; defaults in pyproject.toml):\n{options}",
    )
    p.add_argument("--clients", type=int, default=4, help="number of SuperNodes / partitions (default 4)")
    for flag, key, text in FLAGS:  # shortcuts for run-config keys
        kind = type(RunConfig.model_fields[key.replace("-", "_")].default)
        p.add_argument(flag, dest=key, type=kind if kind in (int, float) else str, help=f"{key}: {text or describe(key)}")
    p.add_argument("--qkd-length-km", type=float, default=10.0, dest="qkd_length_km", help="fiber length of the simulated QKD links")
    p.add_argument("--qkd-eve-fraction", type=float, default=0.0, dest="qkd_eve_fraction", help="pulses an intercept-resend eavesdropper attacks")
    p.add_argument("--external-kms", action="store_true", dest="external_kms", help="use the key manager at kms-url instead of starting one")
    p.add_argument("--qkd-certs", dest="qkd_certs", metavar="DIR",
                   help="CA and SAE certificates (sae/server, sae/node-<i>) for qkd; default: made for the run")
    p.add_argument("--node-data", action="append", dest="node_data", metavar="FILE",
                   help="dataset file: node i's own data file (repeat once per client, in order; each node's data-path)")
    p.add_argument("--config", metavar="FILE", help="a TOML file of run-config values (before --set)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key (repeatable)")
    p.add_argument("--resume", nargs="?", const="", metavar="RUN",
                   help="continue RUN (default: the run <output-dir>/latest points at) from its newest intact checkpoint")
    p.add_argument("--simulation", action="store_true", help="use Flower's simulation engine")
    add_ray_address(p)
    p.add_argument("--secure", action="store_true",
                   help="for a shared host: TLS and SuperNode authentication with certificates and node keys made "
                        "for the run in <run>/certs; unregistered nodes are refused. Without it (single-user host) "
                        "the SuperLink runs --insecure and anyone on this host can reach its loopback port. Even with "
                        "it, another local user can still submit runs: Flower 1.42's Control API has no "
                        "authentication")
    p.add_argument("--verbose", action="store_true", help="show every log line of the run")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    p.add_argument("--app", default=str(PROJECT_DIR), help="the Flower app directory (pyproject.toml)")
    p.add_argument("--check", action="store_true", help="validate every option as a launch would, then exit: start nothing")
    n = sub.add_parser("new", help="write a Flower app of your own (task.py with your model, your data) that runs on qfl")
    n.add_argument("dir", help="the new app's folder (must not exist, or be empty)")
    e = sub.add_parser("experiment", help="run a named experiment over many seeds on the simulation engine (docs/experiments.md)")
    e.add_argument("name", help="an experiment's name, a factorial design's (every cell, then its verdict) or one of its "
                                "cells, or all (the experiments, not the designs)")
    e.add_argument("--seeds", metavar="N|A..B",
                   help="seeds 1..N, or A..B (default: the experiment's 1..10, on which its settings were chosen: "
                        "exploratory); seeds no search saw (e.g. 11..30) are confirmatory, and the summary says which")
    e.add_argument("--confirmatory", action="store_true",
                   help="refuse to start if any seed asked for was seen while the settings were chosen "
                        "(1..10, or a search's: docs/experiments.md)")
    e.add_argument("--rerun-stale", action="store_true",
                   help="run again (replacing the folder) every run made by other code or config, or with no record "
                        "of what made it; without it such runs stop the experiment, named")
    e.add_argument("--reuse-unknown", action="store_true",
                   help="reuse complete runs made before runs recorded their provenance; the summary names them")
    e.add_argument("--rounds", type=int, help="rounds per run (default: the experiment's)")
    e.add_argument("--out", default="experiments", help="where experiments/<name>/ go (default: experiments)")
    add_ray_address(e)
    e.add_argument("--tune", action="store_true",
                   help="run nothing of the experiment itself: tune every arm with the same budget (its grid declared in "
                        "the catalogue) on the tuning's seeds and a validation split of the training data, and freeze "
                        "each arm's choice in <out>/<name>/tuned.json, which later runs of the experiment then use "
                        "(docs/experiments.md, Tuning)")
    e.add_argument("--compare", action="append", metavar="ARM:OTHER",
                   help="run nothing: paired tests of ARM against OTHER in the finished experiment (repeatable; "
                        "sign-flip tests, Holm-adjusted over every test of those given; with --seeds, over those seeds)")
    return parser


def experiment(args: argparse.Namespace) -> int:
    """``qfl experiment NAME|all``: run (or resume) experiments and write their evidence."""
    from qfl.experiments.catalogue import FACTORIALS, find
    from qfl.experiments.engine import RunError
    from qfl.experiments.provenance import ProvenanceError
    from qfl.experiments.runner import command_line, files_tag, run_experiment, with_overrides

    names = _names(args.name)
    seeds = _seeds(args)
    if args.tune:
        return _tune(args, names)
    if (seeds is not None and len(seeds) < 2) or (args.rounds is not None and args.rounds < 1):
        raise LaunchError("--seeds needs at least 2 (a paired test needs pairs) and --rounds at least 1")
    if args.confirmatory:
        from qfl.experiments.seeds import classify

        for name in names:
            refusal = classify(name, seeds or list(range(1, find(name).seeds + 1))).refusal()
            if refusal:
                raise LaunchError(f"--confirmatory: {refusal} (choose seeds no search saw, e.g. --seeds 11..30)")
    if args.compare:
        return _compare(args, names, seeds)
    check_ray_address(args.ray_address)  # a cluster that is not there fails before any run
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from qfl.experiments.engine import SimulationSession

    from qfl.experiments.tuning import TuningError, frozen

    ran = []
    for name in names:
        try:  # the arms' frozen tuned choices, where tuned.json holds them (refused if made for something else)
            exp = frozen(with_overrides(find(name), None, args.rounds), Path(args.out))
        except TuningError as err:
            raise LaunchError(f"experiment {name}: {err}") from None
        try:
            out = run_experiment(exp, Path(args.out), command_line(), say=lambda line: print(line, flush=True),
                                 session_factory=lambda: SimulationSession(ray_address=args.ray_address), seeds=seeds,
                                 rerun_stale=args.rerun_stale, reuse_unknown=args.reuse_unknown)
        except (RunError, FileNotFoundError, ProvenanceError) as err:  # a run failed, left no metrics, or is stale
            print(f"qfl: error: experiment {name}: {err}", file=sys.stderr)
            return 1
        tag = files_tag(exp, seeds or list(range(1, exp.seeds + 1)))
        print(f"[qfl] {name}: {out / f'summary{tag}.md'}", flush=True)
        ran.append(exp)
    if args.name in FACTORIALS:  # every cell ran: the verdict across them
        from qfl.experiments.dose import write_summary

        path = write_summary(FACTORIALS[args.name], ran, Path(args.out), seeds or list(range(1, ran[0].seeds + 1)),
                             command_line())
        print(f"[qfl] {args.name}: {path}", flush=True)
    return 0


def _names(name: str) -> list[str]:
    """The experiments ``qfl experiment NAME`` runs: ``all`` the catalogue's experiments, a factorial
    design's name every cell of it, else the one experiment or cell named."""
    from qfl.experiments.catalogue import EXPERIMENTS, FACTORIALS, find

    if name == "all":
        return list(EXPERIMENTS)
    if name in FACTORIALS:
        return [cell.name for cell in FACTORIALS[name].cells]
    if find(name) is None:
        raise LaunchError(f"unknown experiment {name!r} (choose from {', '.join(EXPERIMENTS)}, all, or a factorial "
                          f"design, {', '.join(FACTORIALS)}, or one of its cells such as "
                          f"{next(iter(FACTORIALS.values())).cells[0].name})")
    return [name]


def _tune(args: argparse.Namespace, names: list[str]) -> int:
    """``qfl experiment NAME|all --tune``: tune the arms of each experiment that declares a tuning."""
    from qfl.experiments.catalogue import EXPERIMENTS, find
    from qfl.experiments.engine import RunError, SimulationSession
    from qfl.experiments.provenance import ProvenanceError
    from qfl.experiments.runner import command_line, with_overrides
    from qfl.experiments.tuning import TuningError, tune

    if args.seeds is not None or args.confirmatory or args.compare:
        raise LaunchError("--tune runs on the tuning's own seeds, declared in the catalogue: no --seeds, --confirmatory "
                          "or --compare with it")
    if args.rounds is not None and args.rounds < 1:
        raise LaunchError("--rounds needs at least 1")
    declared = [n for n in names if find(n).tuning is not None]
    if not declared:
        raise LaunchError(f"experiment {names[0]} declares no tuning (Experiment.tuning in qfl/experiments/catalogue.py; "
                          f"those that do: {', '.join(n for n, e in EXPERIMENTS.items() if e.tuning is not None)})")
    check_ray_address(args.ray_address)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    for name in declared:
        try:
            path = tune(with_overrides(find(name), None, args.rounds), Path(args.out), command_line(),
                        session_factory=lambda: SimulationSession(ray_address=args.ray_address),
                        say=lambda line: print(line, flush=True), rerun_stale=args.rerun_stale,
                        reuse_unknown=args.reuse_unknown)
        except (RunError, FileNotFoundError, ProvenanceError, TuningError) as err:
            print(f"qfl: error: experiment {name}: {err}", file=sys.stderr)
            return 1
        print(f"[qfl] {name}: frozen choices in {path}", flush=True)
    return 0


def _seeds(args: argparse.Namespace) -> list[int] | None:
    """``--seeds N`` (1..N) or ``A..B``; ``None``: the experiment's own."""
    from qfl.experiments.seeds import parse_seeds

    if args.seeds is None:
        return None
    try:
        return parse_seeds(args.seeds)
    except ValueError as err:
        raise LaunchError(str(err)) from None


def _compare(args: argparse.Namespace, names: list[str], seeds: list[int] | None) -> int:
    from qfl.experiments.catalogue import find
    from qfl.experiments.runner import compare, with_overrides

    if len(names) != 1:
        raise LaunchError("--compare needs one experiment's name, not all")
    pairs = [tuple(item.split(":")) for item in args.compare]
    bad = [item for item, pair in zip(args.compare, pairs) if len(pair) != 2 or not all(pair)]
    if bad:
        raise LaunchError(f"--compare {bad[0]!r}: give two arm names as ARM:OTHER")
    try:
        print(compare(with_overrides(find(names[0]), None, args.rounds), Path(args.out), pairs, seeds))
    except (ValueError, FileNotFoundError) as err:
        raise LaunchError(f"experiment {names[0]}: {err}") from err
    return 0


APP_PACKAGES = ("client", "server", "strategies", "transport")  # not a contract name: the design card's packages


def check_not_shadowed(packages: tuple[str, ...] = APP_PACKAGES) -> None:
    """Fail, naming the file, when one of the project's generically named packages resolves to
    a module of somebody else's (a ``client.py`` in the working directory, say)."""
    import importlib.util

    home = Path(__file__).resolve().parents[1]
    for name in packages:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is None or home not in origin.parents:
            raise LaunchError(f"`import {name}` finds {origin or 'nothing'}, not this project's package in {home / name}: "
                              f"a module of that name comes first on sys.path (rename it, or start qfl from another "
                              f"directory)")


def new_app(args: argparse.Namespace) -> int:
    from qfl.launch.new_app import write_app

    try:
        target = write_app(Path(args.dir))
    except FileExistsError as err:
        raise LaunchError(str(err)) from None
    print(f"{TAG} a new app in {target}: its model in task.py, two sites' data in data/; run it with\n"
          f"  qfl launch --app {args.dir} --clients 2 --node-data {args.dir}/data/site-a.csv "
          f"--node-data {args.dir}/data/site-b.csv", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from qfl.common.flower_internals import plain_console

    plain_console(colored=sys.stdout.isatty())  # Flower's own lines in this process: no escape codes in a pipe
    args = build_parser().parse_args(argv)
    try:
        check_not_shadowed()
        if args.command == "new":
            return new_app(args)
        return experiment(args) if args.command == "experiment" else launch(args)
    except (ConfigError, LaunchError) as err:
        print(f"qfl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
