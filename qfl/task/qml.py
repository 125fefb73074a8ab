"""PennyLane, as the task imports it: without the import of cirq it makes for nothing.

PennyLane 0.45 imports cirq at start-up (``pennylane.io.qualtran_io``) only to look for
qualtran beside it, and gives both up when qualtran is missing. Where cirq is installed
(mitiq brings it into the test environment) that costs about 0.4 s of CPU in every process
that imports PennyLane: the ServerApp, each warm worker, the worker zygote. Without
qualtran, cirq is hidden from that one import and nothing else changes: PennyLane's
qualtran interface is off either way, and ``import cirq`` works as before afterwards.
"""

from __future__ import annotations

import importlib.util
import sys

if "pennylane" not in sys.modules and "cirq" not in sys.modules and importlib.util.find_spec("qualtran") is None:
    sys.modules["cirq"] = None  # type: ignore[assignment] (an import of it fails, as if not installed)
    try:
        import pennylane
    finally:
        del sys.modules["cirq"]

import pennylane as qml  # noqa: E402

__all__ = ["qml"]
