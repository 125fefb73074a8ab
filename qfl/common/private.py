"""A directory only this user can open: where a node keeps its worker's socket and key
(:mod:`client.runtime`) and its secure-aggregation secrets (:mod:`transport.secagg_store`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

RUNTIME_DIR_ENV = "QFL_RUNTIME_DIR"  # where worker sockets, keys and a node's secagg secrets go
SHARED_TMP = Path("/tmp")  # the fallback's parent, shared by every user of the machine


class PrivateDirError(RuntimeError):
    """The private directory cannot be made, or someone else's could be: the message names it."""


def private_dir(shared_tmp: Path = SHARED_TMP) -> Path:
    """This user's directory for worker sockets and keys: ``$QFL_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/qfl``, else ``<shared_tmp>/qfl-<uid>`` (made if missing, mode 0700).

    Every ClientApp process of a node must find it, so the path is fixed; in a shared
    ``/tmp`` another user can make the last one first. A directory that is a link, not this
    user's, or open to others is refused with a :class:`PrivateDirError` that names it and
    says what to set: nothing is ever written into it.
    """
    if os.environ.get(RUNTIME_DIR_ENV):
        path = Path(os.environ[RUNTIME_DIR_ENV])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "qfl"
    else:
        path = shared_tmp / f"qfl-{os.getuid()}"
    fix = f"set {RUNTIME_DIR_ENV} (or XDG_RUNTIME_DIR) to a directory only this user can open (mode 0700)"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as err:
        raise PrivateDirError(f"cannot make the warm worker's directory {path}: {err}; {fix}") from err
    check_private(path, info, fix)
    return path


def check_private(path: Path, info: os.stat_result, fix: str, directory: bool = True) -> None:
    """Raise :class:`PrivateDirError` unless ``info`` (an ``lstat`` of ``path``) is this user's,
    not a link, a directory (or a regular file) and closed to group and others."""
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if stat.S_ISLNK(info.st_mode) or not kind_ok:
        what = "a directory" if directory else "a regular file"
        raise PrivateDirError(f"{path} is not {what} (a link, or another kind): someone may have made it first; {fix}")
    want = "0700" if directory else "0600"
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PrivateDirError(f"{path} is owned by uid {info.st_uid} with mode {oct(info.st_mode & 0o777)}, not this "
                              f"user's (uid {os.getuid()}) with mode {want}: someone may have made it first; {fix}")
