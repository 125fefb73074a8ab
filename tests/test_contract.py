"""One contract: every name that crosses a package boundary is written once.

Record names, metric names and the keys strategies and transports share live in
``transport/contract.py``; run-config keys are the fields of ``transport/config.py``'s model.
Anywhere else in the packages, such a name is imported, never written as a string.
"""

from __future__ import annotations

import ast
from pathlib import Path

import transport.contract as contract
from transport.config import keys

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("client", "server", "strategies", "transport")
HOMES = {ROOT / "transport" / "contract.py", ROOT / "transport" / "config.py"}
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


def test_the_contract_names_are_unique_where_they_must_be():
    records = [contract.ARRAYS, contract.METRICS, contract.CONFIG, contract.DEVICE, contract.MASK]
    assert len(set(records)) == len(records)
    metrics = [*contract.TRAIN_METRICS, *contract.QCN_METRICS]
    assert len(set(metrics)) == len(metrics)
