"""The one seam to Flower's internals: every private name of ``flwr`` the package uses.

The project is written against Flower's public API (``flwr.app``, ``flwr.clientapp``,
``flwr.serverapp``, ``flwr.serverapp.strategy``, ``flwr.common``'s top-level names and
``flwr.supercore.log``, the logger Flower's own strategies use). What that API does not
offer, this module reaches for, each with a comment naming the public API it stands in
for; ``tests/test_layering.py`` fails when a private ``flwr`` name is imported anywhere
else. A Flower upgrade that moves one of these breaks here, in one place; the
experiment smoke test and the suites that use each one fail loudly. Pinned: flwr 1.41.

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
