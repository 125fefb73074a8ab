"""Data flows one way: the packages import only what their layer allows.

``transport.contract`` (names only, no imports) is the ground floor every package may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "client": {"server", "strategies"},
    "strategies": {"client", "server", "transport", "torch", "pennylane"},
    "transport": {"client", "server", "strategies", "torch", "pennylane"},
}


# names, and the two helpers strategies share with transports: flat vectors, no project imports
GROUND_FLOOR = {"transport.contract", "transport.records"}


def _imports(path: Path) -> set[str]:
    """Top-level packages ``path`` imports, the ground floor left out."""
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return {m.split(".")[0] for m in modules - GROUND_FLOOR}


def test_the_ground_floor_imports_nothing_of_the_project():
    for module in GROUND_FLOOR:
        path = ROOT / (module.replace(".", "/") + ".py")
        assert _imports(path) & {"client", "server", "strategies", "transport"} == set(), module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_its_layer(package):
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
        if _imports(p) & FORBIDDEN[package]
    }
    assert offenders == {}


# Flower's public API; anything else of flwr is private and goes through the one seam
FLWR_PUBLIC = {"flwr.app", "flwr.clientapp", "flwr.clientapp.mod", "flwr.serverapp", "flwr.serverapp.strategy",
               "flwr.common", "flwr.simulation"}
FLWR_PUBLIC_NAMES = {"flwr.supercore": {"log"}}  # the logger Flower's own strategies import
SEAM = ROOT / "transport" / "flower_internals.py"


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
    """Every private name of flwr the package uses is in transport/flower_internals.py; a new
    one anywhere else fails here (add it to the seam, with the public API it stands in for)."""
    offenders = {
        str(p.relative_to(ROOT)): _flwr_private(p)
        for package in ("client", "server", "strategies", "transport", "bench")
        for p in (ROOT / package).rglob("*.py")
        if p != SEAM and _flwr_private(p)
    }
    assert offenders == {}
    assert _flwr_private(SEAM), "the seam imports no private name: remove it, or this test is wrong"
    # nor does anything but the seam write into a message's private metadata
    writers = [str(p.relative_to(ROOT)) for package in ("client", "server", "strategies", "transport", "bench", "tests")
               for p in (ROOT / package).rglob("*.py")
               if p not in (SEAM, Path(__file__).resolve()) and "metadata.__dict__" in p.read_text()]
    assert writers == []
