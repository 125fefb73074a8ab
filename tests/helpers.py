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
