"""Reject bad training replies before any strategy aggregates them.

Two levels, both returning a reason for every rejection (logged with the node):

- :func:`reply_problem`: what every strategy checks on its own (NoiseIsolatingFedAvg calls
  it): the ``ArrayRecord`` holds exactly the global model's parameter names, the *data*
  (not the declared shape) has their shapes, a real floating dtype and finite values, and
  the example count is one positive finite number;
- :func:`schema_problem`: what the server's guard checks on top (:class:`ReplySchema`): exactly
  the records and metric keys a sound ClientApp sends, nothing more, nothing less. Flower's
  own aggregation raises on replies whose metric keys differ, so one such reply would
  otherwise end the run.

Then :func:`robust_screen` bounds what a well-formed reply can do: an update whose distance
from the global model is far outside the round's robust spread is rejected, and a claimed
example count far above the round's median is capped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from transport.contract import ARRAYS, MASK, METRICS, NUM_EXAMPLES
from transport.records import flatten


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
        The keys of its one MetricRecord, all of them, no others.
    configs : Mapping[str, frozenset[str] | None]
        The ConfigRecords it may carry, each with the keys it may hold (a subset; ``None``:
        keys checked elsewhere, e.g. a ``mask``'s by :func:`reply_problem`).
    arrayrecord_key, metricrecord_key : str
        The names of its one parameter ArrayRecord and its one MetricRecord.
    extra_arrays : frozenset[str]
        Further ArrayRecords it must carry, each with the model's parameter names and shapes.
    """

    metrics: frozenset[str]
    configs: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    arrayrecord_key: str = ARRAYS
    metricrecord_key: str = METRICS
    extra_arrays: frozenset[str] = frozenset()  # more ArrayRecords of the model's parameters (e.g. SCAFFOLD's)


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
    if set(metrics.keys()) != schema.metrics:
        missing, extra_keys = schema.metrics - set(metrics.keys()), set(metrics.keys()) - schema.metrics
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


@dataclass(frozen=True)
class ScreenResult:
    """What :func:`robust_screen` decided about one round's sound replies."""

    kept: list[Message]
    rejected: list[tuple[Message, str]]
    capped: dict[int, tuple[float, float]]  # node -> (claimed, capped) example counts


def _lower_median(values: np.ndarray) -> float:
    """The median, or with an even count the lower of the two middle values, so that a
    half of the replies cannot raise the bar."""
    ordered = np.sort(values)
    return float(ordered[(len(ordered) - 1) // 2])


def robust_screen(
    replies: list[Message],
    global_arrays: ArrayRecord,
    norm_factor: float,
    examples_factor: float,
    arrayrecord_key: str = ARRAYS,
    weighted_by_key: str = NUM_EXAMPLES,
    examples_bounds: Callable[[list[Message]], list[float | None]] | None = None,
) -> ScreenResult:
    r"""Bound what well-formed replies can do to the global model.

    For the sound replies :math:`k` with parameters :math:`w_k` and claimed example counts
    :math:`n_k`, against the global model :math:`w`:

    .. math::

        d_k = \lVert w_k - w \rVert_2, \qquad
        \text{reject } k \iff d_k > \rho \,\operatorname{med}_j d_j, \qquad
        n_k \leftarrow \min\!\left(n_k,\; \nu \,\operatorname{med}_j n_j\right),

    with :math:`\rho` = ``norm_factor`` and :math:`\nu` = ``examples_factor`` (0 turns a
    rule off) and the lower median for an even count; ``examples_bounds(replies)``, where
    the server knows better (the size of the partition each reply claims, rebuilt from the
    seed), caps each :math:`n_k` further (``None``: no bound known). A honest client's update is a few
    local epochs from the same start, so its distance is of the same order as the others';
    a scaled or random update is not. A reply identical to :math:`w` (:math:`d_k = 0`) with
    :math:`n_k > 0` is rejected whatever the count: it trained on nothing. Capping the claim keeps one client from outweighing
    the rest by saying it holds more data. With fewer than 3 replies nothing is rejected
    (no majority says what is typical), and the examples cap still applies.
    """
    error = [m for m in replies if m.has_error()]
    sound = [m for m in replies if not m.has_error()]
    rejected: list[tuple[Message, str]] = []
    capped: dict[int, tuple[float, float]] = {}
    names = list(global_arrays.keys())
    reference = flatten(global_arrays, names)
    with np.errstate(over="ignore", invalid="ignore"):
        dist = np.array([np.linalg.norm(flatten(m.content[arrayrecord_key], names) - reference) for m in sound])
    # a reply that claims examples but returns the global model bit for bit trained on
    # nothing: a free rider whose stale copy would hold a median or a mean back
    stale = [i for i, (m, d) in enumerate(zip(sound, dist)) if d == 0 and _examples(m, weighted_by_key) > 0]
    for i in stale:
        reason = "returned the global model unchanged while claiming to have trained"
        rejected.append((sound[i], reason))
        log(WARNING, "Rejected the update of node %d: %s", sound[i].metadata.src_node_id, reason)
    sound = [m for i, m in enumerate(sound) if i not in stale]
    dist = np.delete(dist, stale)
    if norm_factor > 0 and len(sound) >= 3:
        bar = norm_factor * _lower_median(dist[np.isfinite(dist)]) if np.isfinite(dist).any() else 0.0
        kept = []
        for msg, d in zip(sound, dist):
            if bar > 0 and not d <= bar:
                reason = f"update distance {d:.3g} from the global model exceeds {norm_factor:g} x the round's median ({bar / norm_factor:.3g})"
                rejected.append((msg, reason))
                log(WARNING, "Rejected the update of node %d: %s", msg.metadata.src_node_id, reason)
            else:
                kept.append(msg)
        sound = kept
    if sound:
        counts = np.array([_examples(m, weighted_by_key) for m in sound])
        median_cap = examples_factor * _lower_median(counts) if examples_factor > 0 else np.inf
        bounds = examples_bounds(sound) if examples_bounds is not None else [None] * len(sound)
        for i, (msg, n, bound) in enumerate(zip(sound, counts, bounds)):
            cap = min(median_cap, np.inf if bound is None else bound)
            if n > cap:
                sound[i] = _with_examples(msg, weighted_by_key, cap)
                capped[msg.metadata.src_node_id] = (float(n), float(cap))
                log(WARNING, "Capped the example count of node %d: claimed %g, counted %g", msg.metadata.src_node_id, n, cap)
    return ScreenResult(sound + error, rejected, capped)


def _examples(message: Message, key: str) -> float:
    for record in message.content.metric_records.values():
        if key in record:
            return float(record[key])  # type: ignore[arg-type]
    raise KeyError(key)


def _with_examples(message: Message, key: str, value: float) -> Message:
    """A copy of ``message`` whose ``key`` metric is ``value`` (the original is left as sent)."""
    import copy

    content = RecordDict(dict(message.content.items()))
    for name, record in message.content.metric_records.items():
        if key in record:
            content[name] = MetricRecord({**dict(record), key: value})
    out = copy.copy(message)
    out.content = content
    return out
