"""One contract: every name that crosses a package boundary is written once.

Record names, metric names and the keys strategies and transports share live in
``qfl/common/contract.py``; run-config keys are the fields of ``qfl/common/config.py``'s model.
Anywhere else in the packages, such a name is imported, never written as a string.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qfl.common.contract as contract
from qfl.common.config import keys

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("client", "server", "strategies", "transport", "qfl")
HOMES = {ROOT / "qfl" / "common" / "contract.py", ROOT / "qfl" / "common" / "config.py"}
NAMES = {v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str)} | set(keys())


EXEMPT = "# not a contract name"  # a line that says why the same word means something else


def _literals(path: Path) -> list[tuple[int, str]]:
    """String constants in code (docstrings, f-string pieces and exempt lines left out)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    in_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and id(node) not in in_fstrings and EXEMPT not in lines[node.lineno - 1]]


def test_no_contract_name_is_written_outside_its_home():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in HOMES
        for line, value in _literals(path)
        if value in NAMES
    ]
    assert found == []
    assert all((ROOT / package).is_dir() for package in PACKAGES) and all(home.is_file() for home in HOMES)


def test_the_contract_names_are_unique_where_they_must_be():
    records = [contract.ARRAYS, contract.METRICS, contract.CONFIG, contract.DEVICE, contract.MASK]
    assert len(set(records)) == len(records)
    metrics = [*contract.TRAIN_METRICS, *contract.QCN_METRICS]
    assert len(set(metrics)) == len(metrics)
