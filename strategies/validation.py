"""Reject bad training replies before any strategy aggregates them.

A reply is rejected, with a logged reason, when its ``ArrayRecord`` does not carry
exactly the global model's parameter names and shapes, or holds a NaN or an infinity,
or when its example count is not a positive finite number. Aggregating one such reply
would poison the global model for every client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.supercore import log


def reply_problem(
    message: Message,
    reference: Mapping[str, tuple[int, ...]],
    arrayrecord_key: str = "arrays",
    weighted_by_key: str = "num-examples",
) -> str | None:
    """Why a training reply must not be aggregated, or ``None`` if it is sound.

    Parameters
    ----------
    message : Message
        A reply without an error.
    reference : Mapping[str, tuple[int, ...]]
        The global model's parameter names and shapes.
    """
    content = message.content
    if arrayrecord_key not in content.array_records:
        return f"no ArrayRecord under '{arrayrecord_key}'"
    arrays: ArrayRecord = content.array_records[arrayrecord_key]
    got = {k: tuple(v.shape) for k, v in arrays.items()}
    if set(got) != set(reference):
        return f"parameter names {sorted(got)} differ from the model's {sorted(reference)}"
    for name, shape in reference.items():
        if got[name] != tuple(shape):
            return f"'{name}' has shape {got[name]}, expected {tuple(shape)}"
    for name, arr in arrays.items():
        values = arr.numpy()
        if not np.issubdtype(values.dtype, np.number):
            return f"'{name}' has non-numeric dtype {values.dtype}"
        if not np.all(np.isfinite(values)):
            return f"'{name}' holds NaN or Inf"
    masks = content.config_records.get("mask")  # optional: coordinates that arrived (qcn)
    if masks is not None:
        for name, shape in reference.items():
            if name not in masks:
                continue
            want = -(-int(np.prod(shape)) // 8)
            if not isinstance(masks[name], bytes) or len(masks[name]) != want:
                return f"mask of '{name}' must be {want} packed bytes"
    weights = [mr[weighted_by_key] for mr in content.metric_records.values() if weighted_by_key in mr]
    if len(weights) != 1:
        return f"expected one '{weighted_by_key}' metric, found {len(weights)}"
    weight = weights[0]
    if isinstance(weight, list) or not np.isfinite(weight) or weight <= 0:
        return f"'{weighted_by_key}' must be a positive finite number, got {weight!r}"
    return None


def filter_replies(
    replies: Iterable[Message],
    reference: Mapping[str, tuple[int, ...]],
    arrayrecord_key: str = "arrays",
    weighted_by_key: str = "num-examples",
) -> tuple[list[Message], list[tuple[Message, str]]]:
    """Split replies into ``(sound, rejected-with-reason)``; error replies pass through.

    Error replies are left for the strategy, which counts and logs them as failures.
    Every rejection is logged with the node ID and the reason.
    """
    sound: list[Message] = []
    rejected: list[tuple[Message, str]] = []
    for msg in replies:
        problem = None if msg.has_error() else reply_problem(msg, reference, arrayrecord_key, weighted_by_key)
        if problem is None:
            sound.append(msg)
        else:
            rejected.append((msg, problem))
            log(WARNING, "Rejected the update of node %d before aggregation: %s", msg.metadata.src_node_id, problem)
    return sound, rejected


def shapes_of(arrays: ArrayRecord) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of an ``ArrayRecord``."""
    return {k: tuple(v.shape) for k, v in arrays.items()}
