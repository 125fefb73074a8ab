"""A node's secure-aggregation secrets, kept out of Flower's reach.

Flower hands a ClientApp its node state (``context.state``) with each task and takes it
back with the reply; in subprocess isolation any local process that reaches the
SuperNode's loopback ClientAppIo port can pull a task, and with it that state. So nothing
of secure aggregation is kept there: the node's X25519 and ML-KEM-768 key pairs, its pair
keys (hybrid and QKD), the neighbours it verified, the round in flight and the last round it
answered live in one file per (run, node), ``<private dir>/secagg/run-<run>-node-<node>.json``
(:func:`qfl.common.private.private_dir`, the warm worker's directory: this user's, mode
0700), written whole with mode 0600 from its first byte and replaced atomically, read only
if it is this user's regular file with mode 0600 in a 0700 directory (else refused, named:
:class:`StoreError`), under an exclusive lock, so two ClientApps of one node never
interleave. Nothing is encrypted at rest: the file is as private as the worker's key beside it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qfl.common.private import PrivateDirError, check_private, private_dir

STORE_DIR = "secagg"
FIX = "the store must be this user's, mode 0600 in a 0700 directory (remove it: the node makes a new one)"


class StoreError(RuntimeError):
    """The store cannot be used (another user's, open to others, a link); the message names it."""


class NodeStore:
    """The secure-aggregation store of one node in one run: a JSON object, bytes as hex."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, run_id: int, node_id: int, base: Path | None = None) -> NodeStore:
        """The store of ``node_id`` in ``run_id`` under ``base`` (default: the private directory)."""
        try:
            base = private_dir() if base is None else base
            folder = base / STORE_DIR
            folder.mkdir(mode=0o700, exist_ok=True)
            check_private(folder, folder.lstat(), FIX)
        except (PrivateDirError, OSError) as err:
            raise StoreError(f"secagg: this node's secret store is unusable: {err}") from err
        return cls(folder / f"run-{int(run_id)}-node-{int(node_id)}.json")

    def _read(self) -> dict:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise StoreError(f"secagg: this node's secret store {self.path} cannot be opened: {err}; {FIX}") from err
        with os.fdopen(fd, "rb") as f:
            try:
                check_private(self.path, os.fstat(f.fileno()), FIX, directory=False)
            except PrivateDirError as err:
                raise StoreError(f"secagg: refused this node's secret store: {err}") from err
            try:
                data = json.loads(f.read())
            except ValueError as err:
                raise StoreError(f"secagg: this node's secret store {self.path} is not JSON") from err
        if not isinstance(data, dict):
            raise StoreError(f"secagg: this node's secret store {self.path} holds no object")
        return data

    def _write(self, data: dict) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    @contextmanager
    def open(self) -> Iterator[dict]:
        """The store's contents under an exclusive lock; what the block leaves in the dict is
        written back when it ends without an exception."""
        lock = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)
        finally:
            os.close(lock)  # releases the lock


def hex_of(value: bytes) -> str:
    return bytes(value).hex()


def bytes_of(value: str) -> bytes:
    return bytes.fromhex(value)
