"""Run folders: a new run never lands in an old one's folder, and one launch uses a folder at a time.

A new run without a name gets its start time (``20261127-153938``); ``<output-dir>/latest``
points at the newest; ``--resume RUN`` (or a bare ``--resume``, for ``latest``) continues a
run. A folder that holds results is never reused by a new run, and :class:`RunLock` refuses
a second launch of a folder in use.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from qfl.common.config import ConfigError
from qfl.launch.processes import LaunchError
from server.recorder import holds_run

LATEST = "latest"  # <output-dir>/latest -> the newest run folder


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


def stage_app(app_dir: Path, dest: Path) -> Path:
    """A copy of the app's own files in ``dest``, for ``flwr run`` to bundle.

    ``flwr run`` builds the FAB by walking *every* file under the app directory and only
    then dropping what ``.gitignore`` and its own rules exclude: here that walk crosses the
    virtual environment (~50,000 files) and took 8 s of every launch. This walk prunes the
    ignored directories first and copies only the kinds of file a FAB may hold; Flower's
    rules then run on the copy as they would on the original, so the FAB (and its hash)
    is the same (``tests/tooling_tests/test_launcher.py`` checks it).
    """
    import shutil

    import pathspec

    from qfl.common.flower_internals import fab_include_patterns

    app_dir = app_dir.resolve()
    gitignore = app_dir / ".gitignore"
    ignored = pathspec.PathSpec.from_lines("gitignore", gitignore.read_text().splitlines() if gitignore.exists() else [])
    wanted = pathspec.PathSpec.from_lines("gitignore", [*fab_include_patterns(), "/.gitignore", "/pyproject.toml"])
    if dest.exists():
        shutil.rmtree(dest)
    for dirpath, dirnames, filenames in os.walk(app_dir, followlinks=False):
        rel_dir = Path(dirpath).relative_to(app_dir)
        dirnames[:] = [d for d in dirnames if d != ".git" and not (Path(dirpath) / d).is_symlink()
                       and not ignored.match_file(f"{(rel_dir / d).as_posix()}/")]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            src = Path(dirpath) / name
            if src.is_symlink() or not wanted.match_file(rel) or ignored.match_file(rel):
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest
