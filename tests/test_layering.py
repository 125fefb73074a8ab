"""Data flows one way: each part of the project imports only the parts below it.

From the bottom: ``qfl.common`` (configuration, contract, record helpers; nothing of the
project), ``qfl.task`` (data, model, training), then ``transport`` and ``strategies``
(neither sees torch or PennyLane), then the two apps, ``client`` and ``server``, which never
import each other; on top the tooling (the ``qfl`` command, experiments, certificates, the
in-process federation), which nothing below imports. No module imports another that imports
it back, not even lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("client", "server", "strategies", "transport", "qfl")
TOOLING = "qfl (tooling)"
# each part, and the parts (and third-party packages) it may not import
MAY_IMPORT = {
    "qfl.common": set(),
    "qfl.task": {"qfl.common"},
    "transport": {"qfl.common"},
    "strategies": {"qfl.common"},
    "client": {"qfl.common", "qfl.task", "transport"},
    "server": {"qfl.common", "qfl.task", "transport", "strategies"},
    TOOLING: {"qfl.common", "qfl.task", "transport", "strategies", "client", "server"},
}
NO_QUANTUM_STACK = {"qfl.common", "transport", "strategies"}  # thin: no torch, no PennyLane


def _part(module: str) -> str:
    """The part a dotted module name belongs to."""
    top = module.split(".")[0]
    if top != "qfl":
        return top
    sub = module.split(".")[1] if "." in module else ""
    return f"qfl.{sub}" if sub in ("common", "task") else TOOLING


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            # `from qfl.task import tfim` imports the module qfl.task.tfim
            modules.update(f"{node.module}.{a.name}" for a in node.names
                           if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists())
    return modules


def _tracked(top: str) -> list[Path]:
    """The ``.py`` files under ``top``, outputs left out (``bench/results/`` holds copies of
    the app that the benchmarks' runs staged)."""
    return sorted(p for p in (ROOT / top).rglob("*.py") if "results" not in p.relative_to(ROOT).parts)


def _sources() -> list[Path]:
    return [p for top in PROJECT for p in _tracked(top)]


@pytest.mark.parametrize("part", sorted(MAY_IMPORT))
def test_part_imports_only_the_parts_below_it(part):
    offenders = {}
    for path in _sources():
        if _part(_module(path)) != part:
            continue
        bad = sorted({m for m in _imports(path) if m.split(".")[0] in PROJECT
                      and _part(m) not in MAY_IMPORT[part] | {part}})
        if part in NO_QUANTUM_STACK:
            bad += sorted(m for m in _imports(path) if m.split(".")[0] in ("torch", "pennylane"))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
    assert any(_part(_module(p)) == part for p in _sources()), f"no module belongs to {part}: the table is stale"


def test_no_module_imports_one_that_imports_it_back():
    known = {_module(p) for p in _sources()}
    graph = {_module(p): {m for m in _imports(p) if m in known} for p in _sources()}
    cycles = []

    def visit(node, stack, on_stack, done):  # noqa: ANN001, ANN202 (a depth-first search)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        on_stack.discard(stack.pop())
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [], set(), done)
    assert cycles == []


# Flower's public API; anything else of flwr is private and goes through the one seam
FLWR_PUBLIC = {"flwr.app", "flwr.clientapp", "flwr.clientapp.mod", "flwr.serverapp", "flwr.serverapp.strategy",
               "flwr.common", "flwr.simulation"}
FLWR_PUBLIC_NAMES = {"flwr.supercore": {"log"}}  # the logger Flower's own strategies import
SEAM = ROOT / "qfl" / "common" / "flower_internals.py"


def _flwr_private(path: Path) -> list[str]:
    """The private ``flwr`` modules (or names) ``path`` imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("flwr.") and a.name not in FLWR_PUBLIC]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flwr"):
            names = {a.name for a in node.names}
            if node.module in FLWR_PUBLIC or names <= FLWR_PUBLIC_NAMES.get(node.module, set()):
                continue
            found.append(node.module)
    return found


def test_flowers_internals_are_reached_through_one_seam():
    """Every private name of flwr the package uses is in qfl/common/flower_internals.py; a new
    one anywhere else fails here (add it to the seam, with the public API it stands in for)."""
    offenders = {
        str(p.relative_to(ROOT)): _flwr_private(p)
        for package in (*PROJECT, "bench")
        for p in _tracked(package)
        if p != SEAM and _flwr_private(p)
    }
    assert offenders == {}
    assert _flwr_private(SEAM), "the seam imports no private name: remove it, or this test is wrong"
    # nor does anything but the seam write into a message's private metadata
    writers = [str(p.relative_to(ROOT)) for package in (*PROJECT, "bench", "tests")
               for p in _tracked(package)
               if p not in (SEAM, Path(__file__).resolve()) and "metadata.__dict__" in p.read_text()]
    assert writers == []
