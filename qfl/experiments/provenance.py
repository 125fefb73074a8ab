"""What made a run: the code, the packages and the full run config, and a hash of them.

Each run folder of an experiment gets ``provenance.json`` (:data:`FILE`): the git commit and
whether the tree was dirty (``git status --porcelain``), a SHA-256 of the code the run
imported (:func:`code_identity`: every file git tracks or would track under
:data:`CODE_PATHS`, as it is on disk, so uncommitted edits count and a commit that changes
only docs does not), the versions of :data:`PACKAGES`, the full run config (every key, the
defaults included; the output folder left out, so a moved experiment is the same) with the
number of clients and the ClientApp, and a SHA-256 of each part and of the whole.

``qfl experiment`` reuses a run only when its record's hash equals the one the same arm and
seed would get now (:func:`mismatch` names what differs); a folder made before these records
is *unknown*. Neither is reused silently (``qfl.experiments.runner``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qfl.common.config import KEY, defaults

FILE = "provenance.json"  # not a contract name: a run folder's file
PROJECT_DIR = Path(__file__).resolve().parents[2]
CODE_PATHS = ("qfl", "client", "server", "strategies", "transport", "pyproject.toml")  # not a contract name: what a run imports
PACKAGES = ("flwr", "pennylane", "torch", "numpy", "scipy", "ray")
UNHASHED = (KEY.output_dir,)  # where a run was written is not what made it


class ProvenanceError(RuntimeError):
    """A run folder was made by other code or config, or by no known code: not reused."""


def _sha256(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


@dataclass(frozen=True)
class Code:
    """The code a run imported: commit, dirty tree, content hash, package versions."""

    commit: str | None  # None: not a git checkout
    dirty: bool | None
    status: tuple[str, ...]  # `git status --porcelain` (the whole tree)
    sha256: str  # of every code file's path and bytes
    packages: dict[str, str | None]

    @property
    def identity(self) -> dict[str, object]:
        """What must match for a run to be reused: the code's content and the packages (the
        commit and status are for the reader: the same content under another commit is the same code)."""
        return {"code_sha256": self.sha256, "packages": self.packages}

    def describe(self) -> str:
        commit = (self.commit or "no git")[:12]
        return f"{commit}{' (dirty)' if self.dirty else ''}, code {self.sha256[:12]}"


def code_files(root: Path = PROJECT_DIR) -> list[Path]:
    """The files whose content is the code: git's tracked and untracked-not-ignored files under
    :data:`CODE_PATHS` (outside git: every ``.py`` there and ``pyproject.toml``)."""
    listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *CODE_PATHS)
    if listed is None:
        found = [p for name in CODE_PATHS for p in ([root / name] if (root / name).is_file() else
                                                      sorted((root / name).rglob("*.py")))]
    else:
        found = [root / name for name in sorted(set(filter(None, listed.split("\0"))))]
    return [p for p in found if p.is_file()]  # a tracked file deleted in the tree is not code


def code_identity(root: Path = PROJECT_DIR) -> Code:
    """The code as it is now under ``root`` (computed once per experiment, before its runs)."""
    from importlib import metadata

    digest = hashlib.sha256()
    for path in code_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain")
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return Code(commit.strip() if commit else None, None if status is None else bool(status.strip()),
                tuple(status.splitlines()) if status else (), digest.hexdigest(), packages)


def record(code: Code, run_config: dict[str, object], clients: int, client_app: str | None) -> dict[str, object]:
    """A run's provenance: the code, the full config (defaults included) and their hashes."""
    config = {k: v for k, v in {**defaults(), **run_config}.items() if k not in UNHASHED}
    simulation = {"clients": clients, "client-app": client_app}
    made = {"code": code.identity, "config": config, "simulation": simulation}  # not a contract name: a provenance.json field
    return {
        "sha256": _sha256(made),
        "code_sha256": code.sha256,
        "config_sha256": _sha256({"config": config, "simulation": simulation}),  # not a contract name: a provenance.json field
        "commit": code.commit,
        "dirty": code.dirty,
        "git_status": list(code.status),
        "packages": code.packages,
        "config": config,  # not a contract name: a provenance.json field
        "simulation": simulation,
        "complete": False,  # set once the run has every round
    }


def read(run_dir: Path) -> dict | None:
    path = Path(run_dir) / FILE
    return json.loads(path.read_text()) if path.exists() else None


def write(run_dir: Path, rec: dict[str, object], complete: bool) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / FILE).write_text(json.dumps({**rec, "complete": complete}, indent=1, sort_keys=True, default=str))


def mismatch(found: dict | None, expected: dict) -> str | None:
    """What differs between a run's record and the one it would get now (``None``: nothing)."""
    if found is None:
        return "made before runs recorded their provenance (code and config unknown)"
    if found.get("sha256") == expected["sha256"]:
        return None
    parts = []
    if found.get("code_sha256") != expected["code_sha256"]:
        parts.append(f"other code (commit {str(found.get('commit'))[:12]}{' dirty' if found.get('dirty') else ''}, "
                     f"code {str(found.get('code_sha256'))[:12]}; now {str(expected['commit'])[:12]}"
                     f"{' dirty' if expected['dirty'] else ''}, code {expected['code_sha256'][:12]})")
    if found.get("packages") != expected["packages"]:
        old, new = found.get("packages") or {}, expected["packages"]
        moved = [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        parts.append("other packages (" + ", ".join(moved) + ")")
    old_cfg = {**(found.get("config") or {}), **{f"[{k}]": v for k, v in (found.get("simulation") or {}).items()}}  # not a contract name: a provenance.json field
    new_cfg = {**expected["config"], **{f"[{k}]": v for k, v in expected["simulation"].items()}}  # not a contract name: a provenance.json field
    changed = [f"{k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in sorted(set(old_cfg) | set(new_cfg))
               if old_cfg.get(k) != new_cfg.get(k)]
    if changed:
        more = f"; {len(changed) - 6} more" if len(changed) > 6 else ""
        parts.append("other config (" + "; ".join(changed[:6]) + more + ")")
    return "; ".join(parts) or "another record (its hash differs)"


def commits_line(records: list[dict | None]) -> str:
    """Which code the runs came from, for a summary: each commit and code hash with its count."""
    counts: dict[str, int] = {}
    for rec in records:
        key = ("unknown (made before provenance was recorded)" if rec is None else
               f"commit {str(rec.get('commit'))[:12]}{' (dirty tree)' if rec.get('dirty') else ''}, code sha256 "
               f"{str(rec.get('code_sha256'))[:12]}")
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} run{'s' if n > 1 else ''} from {key}" for key, n in counts.items())
