"""Builders shared by the tests."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict


def make_reply(params: dict[str, np.ndarray], num_examples: float, node_id: int) -> Message:
    """A training reply as a ClientApp sends it (needs the ``task_identity`` fixture)."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in params.items()}),
            "metrics": MetricRecord({"train-loss": 0.5 + node_id, "num-examples": num_examples}),
        }
    )
    msg = Message(content=content, dst_node_id=0, message_type="train")
    msg.metadata.__dict__["_src_node_id"] = node_id
    return msg


def processes(match) -> list[str]:  # noqa: ANN001 (a predicate on (cwd, cmdline))
    """``"pid: cmdline"`` of every live process for which ``match(cwd, cmdline)`` holds."""
    import os
    from pathlib import Path

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone, or a zombie
        if match(cwd, cmd):
            found.append(f"{pid}: {cmd}")
    return found
