"""What the guard's modules share: copies of a reply with one thing changed, and the lower median.

A screen never edits a reply in place: the reply stays as the node sent it (for the record)
and the strategy gets a copy with the bounded value.
"""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from qfl.common.records import unflatten


def lower_median(values: np.ndarray) -> float:
    """The median, or with an even count the lower of the two middle values, so that a
    half of the replies cannot raise the bar."""
    ordered = np.sort(values)
    return float(ordered[(len(ordered) - 1) // 2])


def among(msg: Message, pairs: list[tuple[Message, str]]) -> bool:
    """Whether ``msg`` itself (not an equal one) is one of ``pairs``' messages."""
    return any(msg is m for m, _ in pairs)


def examples(message: Message, key: str) -> float:
    """The reply's ``key`` metric (its example count)."""
    for record in message.content.metric_records.values():
        if key in record:
            return float(record[key])  # type: ignore[arg-type]
    raise KeyError(key)


def with_metric(message: Message, key: str, value: float) -> Message:
    """A copy of ``message`` whose ``key`` metric is ``value``."""
    content = RecordDict(dict(message.content.items()))
    for name, record in message.content.metric_records.items():
        if key in record:
            content[name] = MetricRecord({**dict(record), key: value})
    return _with_content(message, content)


def without_metrics(message: Message, keys: set[str]) -> Message:
    """A copy of ``message`` without the metrics ``keys``."""
    content = RecordDict(dict(message.content.items()))
    for name, record in message.content.metric_records.items():
        content[name] = MetricRecord({k: v for k, v in record.items() if k not in keys})
    return _with_content(message, content)


def with_arrays(message: Message, key: str, like: ArrayRecord, names: list[str], flat: np.ndarray) -> Message:
    """A copy of ``message`` whose ``key`` ArrayRecord holds ``flat``, cut into ``like``'s arrays."""
    content = RecordDict(dict(message.content.items()))
    content[key] = unflatten(flat, like, names)
    return _with_content(message, content)


def _with_content(message: Message, content: RecordDict) -> Message:
    out = copy.copy(message)
    out.content = content
    return out
