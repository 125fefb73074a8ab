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
