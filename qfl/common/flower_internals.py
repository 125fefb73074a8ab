"""The one seam to Flower's internals: every private name of ``flwr`` the package uses.

The project is written against Flower's public API (``flwr.app``, ``flwr.clientapp``,
``flwr.serverapp``, ``flwr.serverapp.strategy``, ``flwr.common``'s top-level names and
``flwr.supercore.log``, the logger Flower's own strategies use). What that API does not
offer, this module reaches for, each with a comment naming the public API it stands in
for; ``tests/test_layering.py`` fails when a private ``flwr`` name is imported anywhere
else. A Flower upgrade that moves one of these breaks here, in one place; the
experiment smoke test and the suites that use each one fail loudly. Pinned: flwr 1.42.

Imports are lazy where the name lives in an optional extra (Ray, for the simulation engine)
or costs time to import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

from flwr.app import Message, RecordDict

# --- wire bytes of a RecordDict ---------------------------------------------------------
# Flower has no public (de)serialiser of a RecordDict; the protobuf it sends is the
# message's wire form, so its size is what the metering counts and its bytes are what
# the QKD transport encrypts and the warm worker receives.


def record_bytes(content: RecordDict) -> bytes:
    """``content`` as the protobuf bytes Flower puts on the wire."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).SerializeToString()


def record_nbytes(content: RecordDict) -> int:
    """The serialised size of ``content`` (what travels in the message's protobuf)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).ByteSize()


def record_from_bytes(data: bytes) -> RecordDict:
    """The RecordDict of :func:`record_bytes`'s output; raises on bytes that are not one."""
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return recorddict_from_proto(proto)


# --- the process's task identity ---------------------------------------------------------
# Flower's runtime sets it before it calls an app; messages built outside a Flower process
# (the in-process federation of the tests and bench/attacks.py, the experiment engine)
# need it too. No public setter exists.


@contextlib.contextmanager
def task_identity(task_id: int = 1, run_id: int = 1, node_id: int = 0) -> Iterator[None]:
    """Flower's task identity set as its runtime would (restored after the block)."""
    from flwr.supercore.task_identity import TaskIdentity

    attrs = {"_task_id": task_id, "_run_id": run_id, "_node_id": node_id}
    saved = {attr: getattr(TaskIdentity, attr, None) for attr in attrs}
    try:
        for attr, value in attrs.items():
            setattr(TaskIdentity, attr, value)
        yield
    finally:
        for attr, value in saved.items():
            setattr(TaskIdentity, attr, value)


def set_task_identity(task_id: int, run_id: int, node_id: int) -> None:
    """Set the task identity for the rest of the process (the experiment engine's runs)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, node_id


def stamp(msg: Message, *, message_id: str | None = None, src_node_id: int | None = None,
          reply_to_message_id: str | None = None) -> Message:
    """Set what Flower's runtime writes into a message's metadata when it pushes one or
    delivers a reply (read-only in the public API), for messages that travel no wire: the
    in-process federation and the tests. Returns ``msg``."""
    fields = {"_message_id": message_id, "_src_node_id": src_node_id, "_reply_to_message_id": reply_to_message_id}
    for name, value in fields.items():
        if value is not None:
            msg.metadata.__dict__[name] = value
    return msg


# --- the launcher's console and FAB ------------------------------------------------------


def plain_console(colored: bool) -> None:
    """Flower's console handler with or without colour codes (no public switch)."""
    from flwr.supercore.logger import update_console_handler

    update_console_handler(colored=colored)


def fab_include_patterns() -> tuple[str, ...]:
    """The file patterns ``flwr build`` puts into a FAB (its own constant; no public API),
    so that the launcher's staged copy of the app bundles to the same FAB."""
    from flwr.common.constant import FAB_INCLUDE_PATTERNS

    return tuple(FAB_INCLUDE_PATTERNS)


# --- the simulation engine in this process -----------------------------------------------
# ``flwr.simulation.run_simulation`` (public) starts and stops Ray for every run; the
# experiment engine keeps one Ray and one pool of actors for many runs through the entry
# point ``flwr-simulation`` itself uses. Upstream has no public API for either.


def simulation_internals() -> SimpleNamespace:
    """What :mod:`qfl.experiments.engine` needs of the simulation runtime (imports Ray)."""
    from flwr.common.config import get_fused_config_from_dir, get_project_config
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.telemetry import EventType

    return SimpleNamespace(
        get_fused_config_from_dir=get_fused_config_from_dir, get_project_config=get_project_config,
        SUPERLINK_NODE_ID=SUPERLINK_NODE_ID, raybackend=raybackend, RayBackend=raybackend.RayBackend,
        generate_rand_int_from_bytes=generate_rand_int_from_bytes, run_simulation=_run_simulation,
        NOOP_FEDERATION_ID=NOOP_FEDERATION_ID, Run=Run, leave_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
    )


# CPython 3.11's AST constructor keeps its recursion depth in state that every thread shares
# (python/cpython#106905): two threads in ``ast.parse`` at once can fail one of them with
# "SystemError: AST constructor recursion depth mismatch". In a simulation the ServerApp's
# thread and the engine's both validate the app (``flwr.supercore.object_ref.validate``, an
# ``ast.parse`` of its module) as a run starts: one run in 96 of an experiment ended so on
# this machine. ``serialized_ast_parse`` makes ``ast.parse`` take a lock, for the process.


def serialized_ast_parse() -> None:
    """``ast.parse`` one thread at a time in this process (idempotent)."""
    import ast
    import threading

    if getattr(ast.parse, "_qfl_serialized", False):
        return
    parse, lock = ast.parse, threading.Lock()

    def locked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (ast.parse's signature)
        with lock:
            return parse(*args, **kwargs)

    locked._qfl_serialized = True  # type: ignore[attr-defined]
    ast.parse = locked


# --- the simulation engine at thousands of nodes --------------------------------------------
# Flower 1.42's simulation runtime hands messages to its actors from one thread
# (``vce_api.add_messages_to_queue``) that, every 0.1 s, calls ``get_message_ins(node, limit=1)``
# for every registered node, and each call walks every stored instruction: a sweep costs
# nodes x stored messages (2.1 s of one core at 10,000 nodes and a round's 100 messages,
# minutes with a roll call's 10,000), again and again for the whole run. The
# replacement below walks the store once a sweep and takes, like Flower's, the first
# undelivered message of each node, checked (expiry, federation) and marked delivered as
# ``get_message_ins`` does. Messages, replies and their order per node are Flower's; no
# public API chooses the extractor. The node map is what ``vce_api._register_nodes`` made:
# node ID -> partition, the node config every simulated node gets; publishing it lets the
# ServerApp list the nodes by partition without asking each one (``server/app.py``, WarmUp).


def _first_undelivered(state, nodes: frozenset[int]) -> list[Message]:  # noqa: ANN001 (InMemoryLinkState)
    """One pass over ``state``'s stored instructions: the first undelivered one for each of
    ``nodes``, checked and marked delivered (``InMemoryLinkState.get_message_ins``'s steps)."""
    from flwr.supercore.date import now

    with state.lock:
        first: dict[int, str] = {}
        for message_id, message in state.message_ins_store.items():
            dst = message.metadata.dst_node_id
            if message.metadata.delivered_at == "" and dst in nodes and dst not in first:
                first[dst] = message_id
        state._check_stored_messages(set(first.values()))  # noqa: SLF001 (drops expired ones, as Flower's does)
        out = [state.message_ins_store[i] for i in first.values() if i in state.message_ins_store]
        delivered_at = now().isoformat()
        for message in out:
            message.metadata.delivered_at = delivered_at
    return out


@contextlib.contextmanager
def linear_message_extractor() -> Iterator[None]:
    """Within the block, the simulation runtime takes messages from its link state in one
    pass a sweep (see above) instead of one pass per node."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import InMemoryLinkState

    original = vce_api.add_messages_to_queue

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:  # noqa: ANN001 (Flower's signature)
        if not isinstance(state, InMemoryLinkState):  # another state keeps Flower's own loop
            original(state, queue, nodes_mapping, f_stop)
            return
        nodes = frozenset(nodes_mapping)
        while not f_stop.is_set():
            for message in _first_undelivered(state, nodes):
                queue.put(message)
            f_stop.wait(0.1)  # Flower's interval

    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = original


def simulated_link_state(nodes: int) -> SimpleNamespace:
    """Flower's in-memory link state with a run and ``nodes`` nodes registered as the simulation
    runtime registers them, and a Grid on it (the process's task identity set for that run):
    what the runtime's extractor sweeps, for ``bench/scale.py`` and the tests. ``state``,
    ``nodes`` (node ID -> partition), ``grid``."""
    from flwr.proto.task_pb2 import Task  # the run's primary task, as the runtime registers it
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    run_id, task_id = 7, 9
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=run_id)
    run.federation_id, run.primary_task_id = NOOP_FEDERATION_ID, task_id
    state.run_ids[run_id] = RunRecord(run=run)
    state.task_store[task_id] = Task(task_id=task_id, run_id=run_id)
    mapping = vce_api._register_nodes(nodes, factory)  # noqa: SLF001
    set_task_identity(task_id, run_id, 1)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return SimpleNamespace(state=state, nodes=mapping, grid=grid)


@contextlib.contextmanager
def published_node_partitions(state: RecordDict, name: str) -> Iterator[None]:
    """Within the block, each node map the simulation runtime registers is put into ``state``
    (the ServerApp's context state) as the ConfigRecord ``name``: node ID (as text) -> partition."""
    from flwr.app import ConfigRecord
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api._register_nodes  # noqa: SLF001

    def register_nodes(num_nodes: int, state_factory):  # noqa: ANN001, ANN202 (Flower's signature)
        mapping = original(num_nodes, state_factory)
        state[name] = ConfigRecord({str(node): int(partition) for node, partition in mapping.items()})
        return mapping

    vce_api._register_nodes = register_nodes  # noqa: SLF001
    try:
        yield
    finally:
        vce_api._register_nodes = original  # noqa: SLF001


# --- SecAgg+ primitives ---------------------------------------------------------------------
# Flower's Shamir sharing and share encryption (Fernet) live in
# ``flwr.common.secure_aggregation``, which its legacy SecAgg+ workflow and mod use; they are
# not in the public API (a Message-API SecAgg+ is an open request upstream).


def secagg_primitives() -> SimpleNamespace:
    """Flower's ``create_shares`` / ``combine_shares`` (Shamir) and ``encrypt`` / ``decrypt``
    (the share encryption, Fernet under a urlsafe-base64 32-byte key)."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt

    return SimpleNamespace(create_shares=create_shares, combine_shares=combine_shares, encrypt=encrypt, decrypt=decrypt)


# --- the SuperNode's polling -----------------------------------------------------------------
# Flower 1.42's SuperNode loop sleeps 3 s whenever a pull finds no message, and 0.5 s between
# looks for a ClientApp's reply or an object of it (``flwr.supernode.start_client_internal``,
# all literals; no option or environment variable sets them). Every exchange with an idle node
# waits out part of those sleeps: about 2.4 s for the last of four nodes. The first is a pull
# from the SuperLink, over the network, capped at the poll interval; the others look at the
# node's own in-memory state, which costs nothing worth saving, so they are capped at
# ``LOCAL_WAIT_S``: a reply goes on within 20 ms of its ClientApp's end, not 0.1 s on average
# later. The public API it stands in for is the ``flower-supernode`` command itself, which
# this runs unchanged but for the sleeps.

NETWORK_POLL_S = 3  # Flower's literal for the pull loop's sleep; its local waits are 0.5 s
LOCAL_WAIT_S = 0.02


class _CappedSleep:
    """The ``time`` module as the SuperNode loop sees it: its network poll's ``sleep`` at most
    ``cap`` s, any other at most :data:`LOCAL_WAIT_S` (or ``cap``, if shorter)."""

    def __init__(self, cap: float) -> None:
        import time

        self._time, self.cap = time, cap

    def sleep(self, seconds: float) -> None:
        self._time.sleep(min(seconds, self.cap if seconds >= NETWORK_POLL_S else min(self.cap, LOCAL_WAIT_S)))

    def __getattr__(self, name: str):  # noqa: ANN204 (time.time, time.monotonic, ...)
        return getattr(self._time, name)


def supernode_main(poll_interval: float, fork_clientapps: bool = True):  # noqa: ANN201 (Flower's CLI entry point)
    """Flower's ``flower-supernode`` entry point, its loop's sleeps capped at ``poll_interval`` s;
    with ``fork_clientapps`` its SuperExec forks the ClientApp processes (:func:`superexec_main`)."""
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    start_client_internal.time = _CappedSleep(poll_interval)
    quick_object_pulls()
    if fork_clientapps:
        import subprocess

        start_client_internal.subprocess = _Subprocess(
            SUPEREXEC_COMMAND, lambda command: subprocess.Popen(supernode_superexec(command)))
    return flower_supernode


# --- the SuperExec's ClientApp processes -----------------------------------------------------
# In ``subprocess`` isolation Flower 1.42's SuperNode starts ``flower-superexec``
# (``start_client_internal``: ``subprocess.Popen(["flower-superexec", ...])``), and the
# SuperExec starts every ClientApp as a fresh ``flwr-clientapp`` process, one per message
# (``superexec/executor/subprocess_executor.py``: ``subprocess.Popen(args)``), each importing
# flwr again before it pulls its message. The two stand-ins below keep Flower's commands and
# arguments as Flower builds them and change only how the ClientApp's process comes to be: it
# is forked from a server process that imported flwr once (``multiprocessing``'s forkserver,
# single-threaded, so that forking it is safe) and then runs ``flwr-clientapp``'s own entry
# point with those arguments. The public API they stand in for is the two commands, which
# run unchanged otherwise.

SUPEREXEC_COMMAND = "flower-superexec"
CLIENTAPP_COMMAND = "flwr-clientapp"
# imported once by the fork server: what every ClientApp process imports before its app
# (httpx and httpcore, which httpx imports only when it makes its transport: the ClientApp's
# client of the SuperNode's runtime API, 0.2 s of CPU a message otherwise; cryptography.x509:
# the node's certificates)
CLIENTAPP_PRELOAD = ("flwr.supernode.cli.flwr_clientapp", "flwr.clientapp", "flwr.app", "numpy", "pydantic",
                     "cryptography.hazmat.primitives.ciphers.aead", "cryptography.x509", "httpx", "httpcore")


class _Subprocess:
    """The ``subprocess`` module as a Flower launcher sees it: ``Popen(args)`` of one command,
    called with nothing but the argument list, goes to ``replace(args)``; all else is the module's."""

    def __init__(self, command: str, replace) -> None:  # noqa: ANN001 (list[str] -> object)
        import subprocess

        self._subprocess, self.command, self.replace = subprocess, command, replace

    def Popen(self, args, **kwargs):  # noqa: ANN001, ANN201, N802 (subprocess.Popen's name and signature)
        if not kwargs and isinstance(args, list) and args and args[0] == self.command:
            return self.replace(list(args))
        return self._subprocess.Popen(args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204 (subprocess.DEVNULL, ...)
        return getattr(self._subprocess, name)


def _run_clientapp(argv: list[str]) -> None:
    """A forked ClientApp process: ``flwr-clientapp``'s entry point with Flower's arguments."""
    import sys

    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    quick_object_pulls()
    installed_fabs_reused()
    forget_project_modules()
    sys.argv = argv  # flwr_exit reads argv[0]
    flwr_clientapp()


PROJECT_PACKAGES = ("client", "qfl", "server", "strategies", "transport")  # not a contract name: the packages (client.zygote.PROJECT)


def forget_project_modules() -> None:
    """Drop the project's modules this process imported (the fork server imported this module,
    hence ``qfl``), so that the ClientApp imports all of them from the run's FAB, as Flower
    loads an app, and not ``qfl`` from the installed copy beside ``client`` from the FAB."""
    import sys

    for name in [m for m in sys.modules if m.split(".")[0] in PROJECT_PACKAGES]:
        del sys.modules[name]


class ForkedClientApps:
    """Starts ``flwr-clientapp`` processes by forking them from a fork server that imported
    :data:`CLIENTAPP_PRELOAD`, started now, while the node waits for its first message (it
    ends when this process does)."""

    def __init__(self) -> None:
        import multiprocessing
        from multiprocessing import forkserver

        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(CLIENTAPP_PRELOAD))
        self._active_children = multiprocessing.active_children
        forkserver.ensure_running()

    def __call__(self, argv: list[str]) -> object:
        self._active_children()  # joins the ClientApps that ended (their sentinels close)
        process = self._context.Process(target=_run_clientapp, args=(argv,), name=CLIENTAPP_COMMAND)
        process.start()
        return process


def superexec_main():  # noqa: ANN201 (Flower's CLI entry point)
    """Flower's ``flower-superexec`` entry point, its ClientApp processes forked (:class:`ForkedClientApps`)."""
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.superexec.executor import subprocess_executor

    subprocess_executor.subprocess = _Subprocess(CLIENTAPP_COMMAND, ForkedClientApps())
    return flower_superexec


def supernode_superexec(command: list[str]) -> list[str]:
    """The SuperExec the SuperNode starts, as ``qfl-supernode`` starts it: Flower's arguments,
    run by :mod:`qfl.launch.superexec` with this interpreter."""
    import sys

    return [sys.executable, "-m", "qfl.launch.superexec", *command[1:]]


# --- pulling a message's objects -------------------------------------------------------------
# Flower 1.42 lists a message as soon as its sender pushed it, while its arrays (objects of
# their own) may still be on the way; a receiver that asks first is told the object is not
# there yet and waits ``PULL_INITIAL_BACKOFF`` = 1 s before it asks again, doubling up to 10 s
# (``supercore/inflatable/inflatable_utils.py``: ``pull_objects`` and
# ``pull_and_inflate_object_from_tree``, the defaults of their keyword arguments; no option
# or environment variable sets them). On loopback the objects follow within milliseconds, so
# nearly every reply the ServerApp pulls early, and every message a SuperNode or ClientApp
# pulls early, costs a whole second. ``quick_object_pulls`` makes the first retry 20 ms,
# doubling up to 0.1 s, with a hundred times the tries, so that a receiver still waits as long
# (about 80 min) before it gives up on an object that never comes. The cap bounds how long a
# receiver sleeps past an object's arrival. The ServerApp pushes a round's objects (some forty
# for four nodes) one HTTP request each, two at a time, in no fixed order, and the model's
# arrays, one object shared by every node's message, reached the nodes 0.3-0.7 s after their
# message here (logged in every forked ClientApp of a 4-client run); with a 1 s cap the tries
# fell about 0, 0.02, 0.06, 0.14, 0.3, 0.62 and 1.26 s after the first, so an object that came
# at 0.35 s was found at 0.62 s, and one at 0.65 s at 1.26 s. One try is one small request to
# the node's own SuperNode (or, for a SuperNode, to the SuperLink). An object whose sender died
# is asked for ten times a second only until the SuperLink ends the run (every pull from it
# checks the run's status, and a ServerApp that stops sending heartbeats fails its run within
# about two 30 s intervals); a SuperNode that gives up on a message drops its objects, and its
# ClientApp's next pull fails.

QUICK_PULL = {"initial_backoff": 0.02, "backoff_cap": 0.1, "max_tries_per_object": 48000}


def quick_object_pulls() -> None:
    """Flower's object pulls in this process retry after 20 ms, not 1 s (see above)."""
    from flwr.supercore.inflatable import inflatable_utils

    for pull in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        pull.__kwdefaults__ = {**pull.__kwdefaults__, **QUICK_PULL}


# --- installing the run's FAB ----------------------------------------------------------------
# Every ClientApp process of Flower 1.42 installs the run's FAB before it loads the app
# (``supernode/runtime/run_clientapp.py``: ``install_from_fab(fab.content, skip_prompt=True)``):
# it extracts the whole archive into a temporary folder, hashes every file against the FAB's
# manifest, and only then finds the app installed already and returns (``flwr/cli/install.py``,
# ``validate_and_install``). For this project's FAB (about 1.9 MB) that is 0.3-0.5 s of CPU a
# message on each node, a third of an exchange without training. ``install_fab_once`` skips the
# extraction when this FAB, by its full SHA-256, was installed and verified by Flower's own
# ``install_from_fab`` before (the stamp below is written only after that returned); any other
# FAB, or a folder without the stamp, goes through Flower's install unchanged. After that first
# install it compiles the app's packages once: each ClientApp imports the app afresh from that
# folder, and where nothing wrote bytecode there (``PYTHONDONTWRITEBYTECODE``, a read-only
# folder) every message compiled the modules it imports again (0.1-0.2 s of CPU). The public
# API it stands in for is ``flwr install``, which a node cannot call per message.

FAB_STAMP = ".qfl-fab-sha256"  # in the installed app's folder: the full hash of the FAB verified into it


def _fab_install_path(fab: bytes, digest: str):  # noqa: ANN202 (Path | None)
    """Where Flower installs this FAB (``validate_and_install``'s path), from its pyproject.toml alone."""
    import io
    import tomllib
    import zipfile

    from flwr.common.config import get_metadata_from_config
    from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION
    from flwr.supercore.utils import get_flwr_home

    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            config = tomllib.loads(archive.read("pyproject.toml").decode())
        fab_id, version = get_metadata_from_config(config)
        publisher, project_name = fab_id.split("/")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError, ValueError):
        return None  # Flower's install names what is wrong with it
    return get_flwr_home() / APP_DIR / f"{publisher}.{project_name}.{version}.{digest[:FAB_HASH_TRUNCATION]}"


def _compile_packages(app):  # noqa: ANN001 (Path)
    """Bytecode for the app's top-level packages (folders with an ``__init__.py``), beside their sources."""
    import compileall

    for package in sorted(app.iterdir()):
        if (package / "__init__.py").is_file():
            compileall.compile_dir(package, quiet=2)


def install_fab_once(fab_file, install_dir=None, skip_prompt: bool = False):  # noqa: ANN001, ANN201 (Flower's signature)
    """Flower's ``install_from_fab``, skipped for a FAB this node installed and verified before."""
    import hashlib
    import os

    from flwr.cli.install import install_from_fab

    if not (isinstance(fab_file, bytes) and install_dir is None and skip_prompt):
        return install_from_fab(fab_file, install_dir, skip_prompt)
    digest = hashlib.sha256(fab_file).hexdigest()
    path = _fab_install_path(fab_file, digest)
    stamp = None if path is None else path / FAB_STAMP
    try:
        if stamp is not None and stamp.read_text() == digest:
            return path
    except OSError:
        pass  # not installed by this node yet
    installed = install_from_fab(fab_file, install_dir, skip_prompt)
    if installed == path:
        _compile_packages(path)
        fresh = path / f"{FAB_STAMP}.{os.getpid()}"
        fresh.write_text(digest)
        os.replace(fresh, stamp)  # whole or absent, whichever ClientApp of the node wrote it
    return installed


def installed_fabs_reused() -> None:
    """This ClientApp process installs the run's FAB with :func:`install_fab_once`."""
    from flwr.supernode.runtime import run_clientapp

    run_clientapp.install_from_fab = install_fab_once
