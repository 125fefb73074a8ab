"""A run's progress as events, one JSON object a line in ``<run>/progress.jsonl``.

The ServerApp writes them as the run goes; ``qfl launch`` follows the file to show a live
display (round k of N, replies so far, elapsed and ETA) and the cause of every client a
round went without. Anyone else can follow it too (``tail -f``). Events:

- ``start``: ``rounds`` (the run's length), ``first`` (the round it starts after),
  ``stack`` (the transports);
- ``ready``: ``nodes`` connected (the run waited for ``min-nodes`` of them), ``warm_up_s``
  until they answered the warm-up, ``not_warm`` (nodes that did not within ``warm-up-timeout``);
- ``replies``: ``round``, ``phase`` (``train``/``evaluate``), ``received`` of ``expected``;
- ``round``: ``round`` and the round's row of ``metrics.csv``;
- ``issue``: ``round``, ``node``, ``why``: a client the round went without, or bounded;
- ``end``: ``status`` (``done`` or ``failed``) and ``why``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

FILE = "progress.jsonl"


class ProgressLog:
    """Appends events to ``<run_dir>/progress.jsonl`` (flushed at once)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: object) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, "t": time.time(), **clean}) + "\n")


def follow(path: Path, stop, offset: int = 0) -> Iterator[dict]:  # noqa: ANN001 (stop: a threading.Event)
    """Yield the events appended to ``path`` after byte ``offset``, until ``stop`` is set
    and the file is read out."""
    while True:
        done = stop.is_set()  # read once more after the stop: nothing written before it is lost
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # a line being written: read it next time
                    offset += len(raw)
                    try:
                        yield json.loads(raw.decode(errors="replace"))
                    except json.JSONDecodeError:
                        continue
        if done:
            return
        stop.wait(0.2)
