"""Work-arounds in qfl.common.flower_internals that do not need Flower running."""

from __future__ import annotations

import ast
import threading
import time

from qfl.common.flower_internals import serialized_ast_parse


def _concurrency(monkeypatch, serialize: bool) -> int:  # noqa: ANN001
    """The most threads inside ``ast.parse`` at once, of four that call it together."""
    inside, most, guard = 0, 0, threading.Lock()

    def slow_parse(source, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with guard:
            inside -= 1
        return source

    monkeypatch.setattr(ast, "parse", slow_parse)
    if serialize:
        serialized_ast_parse()
        serialized_ast_parse()  # idempotent: one lock, not two wrappers
    threads = [threading.Thread(target=ast.parse, args=("x = 1",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return most


def test_ast_parse_runs_one_thread_at_a_time_once_serialized(monkeypatch):
    # Arrange / Act / Assert: four threads overlap in a bare parse, never in the serialized one
    assert _concurrency(monkeypatch, serialize=False) > 1
    assert _concurrency(monkeypatch, serialize=True) == 1
    assert getattr(ast.parse, "_qfl_serialized", False)


def test_the_serialized_parse_is_still_ast_parse(monkeypatch):
    monkeypatch.setattr(ast, "parse", ast.parse)  # restored after the test
    serialized_ast_parse()
    tree = ast.parse("y = 2 + 3", filename="<test>")
    assert isinstance(tree, ast.Module) and isinstance(tree.body[0], ast.Assign)
