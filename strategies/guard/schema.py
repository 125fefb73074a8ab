"""Exactly a sound training reply: the records, keys, shapes, dtypes and values a ClientApp sends.

Two levels, both returning a reason for every rejection (logged with the node):

- :func:`reply_problem`: what every strategy checks on its own (NoiseIsolatingFedAvg calls
  it): the ``ArrayRecord`` holds exactly the global model's parameter names, the *data*
  (not the declared shape) has their shapes, a real floating dtype and finite values, and
  the example count is one positive finite number;
- :func:`schema_problem`: what the server's guard checks on top (:class:`ReplySchema`): exactly
  the records and metric keys a sound ClientApp sends, nothing more, nothing less. Flower's
  own aggregation raises on replies whose metric keys differ, so one such reply would
  otherwise end the run.

:func:`filter_replies` applies both to a round's replies; no reply can make it raise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from qfl.common.contract import ARRAYS, MASK, METRICS, NUM_EXAMPLES
from strategies.guard._common import without_metrics


def _array(record: ArrayRecord, name: str) -> np.ndarray:
    """The array's real data (whatever its declared shape says); raises on garbage."""
    return np.asarray(record[name].numpy())


def arrays_problem(arrays: ArrayRecord, reference: Mapping[str, tuple[int, ...]], what: str = "") -> str | None:
    """Why ``arrays`` are not the model's parameters (names, real shapes, real floats, finite), or ``None``."""
    if set(arrays.keys()) != set(reference):
        return f"{what}parameter names {sorted(arrays.keys())} differ from the model's {sorted(reference)}"
    for name, shape in reference.items():
        try:
            values = _array(arrays, name)
        except Exception as err:  # noqa: BLE001 - whatever the bytes are, they are not an array
            return f"{what}'{name}' is not a readable array ({type(err).__name__})"
        if values.shape != tuple(shape):
            return f"{what}'{name}' holds data of shape {values.shape}, expected {tuple(shape)}"
        if values.dtype.kind != "f":
            return f"{what}'{name}' has dtype {values.dtype}, expected a real floating type"
        if not np.all(np.isfinite(values)):
            return f"{what}'{name}' holds NaN or Inf"
    return None


def reply_problem(
    message: Message,
    reference: Mapping[str, tuple[int, ...]],
    arrayrecord_key: str = ARRAYS,
    weighted_by_key: str = NUM_EXAMPLES,
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
    problem = arrays_problem(content.array_records[arrayrecord_key], reference)
    if problem is not None:
        return problem
    masks = content.config_records.get(MASK)  # optional: coordinates that arrived (qcn)
    if masks is not None:
        if set(masks.keys()) - set(reference):
            return f"mask names {sorted(set(masks.keys()) - set(reference))} are not parameters"
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
    if not is_finite_number(weight) or not weight > 0:
        return f"'{weighted_by_key}' must be a positive finite number, got {weight!r}"
    return None


@dataclass(frozen=True)
class ReplySchema:
    """Exactly what a sound training reply holds.

    Attributes
    ----------
    metrics : frozenset[str]
        The keys of its one MetricRecord, all of them, no others but ``optional_metrics``.
    configs : Mapping[str, frozenset[str] | None]
        The ConfigRecords it may carry, each with the keys it may hold (a subset; ``None``:
        keys checked elsewhere, e.g. a ``mask``'s by :func:`reply_problem`).
    arrayrecord_key, metricrecord_key : str
        The names of its one parameter ArrayRecord and its one MetricRecord.
    extra_arrays : frozenset[str]
        Further ArrayRecords it must carry, each with the model's parameter names and shapes.
    optional_metrics : frozenset[str]
        Keys its MetricRecord may carry or not (a client's claims about its own noise, which an
        older client or a classical model does not send).
    """

    metrics: frozenset[str]
    configs: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    arrayrecord_key: str = ARRAYS
    metricrecord_key: str = METRICS
    extra_arrays: frozenset[str] = frozenset()  # more ArrayRecords of the model's parameters (e.g. SCAFFOLD's)
    optional_metrics: frozenset[str] = frozenset()


def schema_problem(message: Message, schema: ReplySchema) -> str | None:
    """Why a reply's records or keys are not exactly the schema's, or ``None``."""
    content: RecordDict = message.content
    expected = {schema.arrayrecord_key, *schema.extra_arrays}
    if set(content.array_records) != expected:
        return f"ArrayRecords {sorted(content.array_records)}, expected exactly {sorted(expected)}"
    if set(content.metric_records) != {schema.metricrecord_key}:
        return f"MetricRecords {sorted(content.metric_records)}, expected exactly ['{schema.metricrecord_key}']"
    extra = set(content.config_records) - set(schema.configs)
    if extra:
        return f"unexpected ConfigRecord(s) {sorted(extra)}"
    for name, record in content.config_records.items():
        allowed = schema.configs[name]
        if allowed is not None and set(record.keys()) - allowed:
            return f"ConfigRecord '{name}' has unexpected keys {sorted(set(record.keys()) - allowed)}"
    metrics: MetricRecord = content.metric_records[schema.metricrecord_key]
    if not schema.metrics <= set(metrics.keys()) <= schema.metrics | schema.optional_metrics:
        missing = schema.metrics - set(metrics.keys())
        extra_keys = set(metrics.keys()) - schema.metrics - schema.optional_metrics
        return f"metric keys differ: missing {sorted(missing)}, unexpected {sorted(extra_keys)}"
    for key, value in metrics.items():
        if not is_finite_number(value):
            return f"metric '{key}' must be a finite number, got {value!r}"
    return None


def is_finite_number(value: object) -> bool:
    """A finite int or float (not a bool, not a list)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def filter_replies(
    replies: Iterable[Message],
    reference: Mapping[str, tuple[int, ...]],
    arrayrecord_key: str = ARRAYS,
    weighted_by_key: str = NUM_EXAMPLES,
    schema: ReplySchema | None = None,
) -> tuple[list[Message], list[tuple[Message, str]]]:
    """Split replies into ``(sound, rejected-with-reason)``; error replies pass through.

    Error replies are left for the strategy, which counts and logs them as failures.
    Every rejection is logged with the node ID and the reason. No reply can make this
    raise: a check that fails in an unforeseen way rejects that reply.
    """
    sound: list[Message] = []
    rejected: list[tuple[Message, str]] = []
    for msg in replies:
        try:
            problem = None
            if not msg.has_error():
                problem = schema_problem(msg, schema) if schema is not None else None
                problem = problem or reply_problem(msg, reference, arrayrecord_key, weighted_by_key)
                for name in schema.extra_arrays if schema is not None else ():
                    problem = problem or arrays_problem(msg.content.array_records[name], reference, f"{name}: ")
        except Exception as err:  # noqa: BLE001 - one bad reply is dropped and named, never fatal
            problem = f"{type(err).__name__} while validating"
        if problem is None:
            sound.append(msg)
        else:
            rejected.append((msg, problem))
            log(WARNING, "Rejected the update of node %d before aggregation: %s", msg.metadata.src_node_id, problem)
    return sound, rejected


def shapes_of(arrays: ArrayRecord) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of an ``ArrayRecord``."""
    return {k: tuple(v.shape) for k, v in arrays.items()}


def common_optional_metrics(replies: list[Message], optional: frozenset[str]) -> list[Message]:
    """The replies with every ``optional`` metric that not all of the round's sound replies carry
    taken out of those that do, and logged: Flower's strategies average one set of metric keys
    and refuse a round whose replies differ (a round mixing clients that claim their noise with
    older ones; :class:`~strategies.noise_isolating.NoiseIsolatingFedAvg` then weighs the round
    as if nobody had claimed, and says so)."""
    sound = [m for m in replies if not m.has_error()]
    carried = [{k for r in m.content.metric_records.values() for k in r.keys() if k in optional} for m in sound]
    partial = (set().union(*carried) - set.intersection(*carried)) if carried else set()
    if not partial:
        return replies
    log(WARNING, "Metrics %s come from nodes %s but not from the round's others: left out of this round", sorted(partial),
        sorted(m.metadata.src_node_id for m, keys in zip(sound, carried) if keys & partial))
    return [m if m.has_error() else without_metrics(m, partial) for m in replies]

