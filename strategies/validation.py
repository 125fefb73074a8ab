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
from the global model is far outside the round's robust spread is rejected, so is one that is
(nearly) the global model itself, and one that points against the round's coordinate-wise
median update; the others' norms are bounded by twice the round's median; and no claim
decides a weight unchecked: a claimed example
count is capped by the round's median and the partition the reply names (the round's smallest
without one), a claimed link fidelity is clipped to its physical range, and so are a client's
claims about its own noise (:func:`clip_noise_claims`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

from qfl.common.contract import (
    ARRAYS,
    FIDELITY,
    MASK,
    METRICS,
    NOISE_CONTRACTION,
    NUM_EXAMPLES,
    PEC_GAMMA2,
    UPDATE_NOISE_VAR,
)
from qfl.common.records import flatten, unflatten


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


FIDELITY_RANGE = (0.25, 1.0)  # a Werner pair's fidelity: 1/4 is no entanglement left, 1 a perfect pair
NEAR_COPY_FRACTION = 0.01  # an update this small against the round's median distance carries nothing


@dataclass(frozen=True)
class ScreenResult:
    """What :func:`robust_screen` decided about one round's sound replies."""

    kept: list[Message]
    rejected: list[tuple[Message, str]]
    capped: dict[int, tuple[float, float]]  # node -> (claimed, counted) example counts
    unbound: frozenset[int] = frozenset()  # nodes that name no partition the server can size
    clipped: dict[int, tuple[float, float]] = field(default_factory=dict)  # node -> (claimed, used) fidelity
    scaled: dict[int, float] = field(default_factory=dict)  # node -> factor its update was scaled by (< 1)
    twins: dict[int, tuple[int, ...]] = field(default_factory=dict)  # node -> the others of its group
    overclaimed: dict[int, tuple[float, float]] = field(default_factory=dict)  # node -> (claimed, server's estimate)
    noise_clipped: dict[int, tuple[tuple[str, float, float], ...]] = field(default_factory=dict)  # node -> (key, claimed, used)


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
    direction: bool = False,
    fidelity_estimates: Callable[[list[Message]], list[tuple[float, float] | None]] | None = None,
) -> ScreenResult:
    r"""Bound what well-formed replies can do to the global model.

    For the sound replies :math:`k` with parameters :math:`w_k`, claimed example counts
    :math:`n_k` and claimed link fidelities :math:`F_k`, against the global model :math:`w`:

    .. math::

        d_k = \lVert w_k - w \rVert_2, \qquad
        \text{reject } k \iff d_k \le \epsilon \,\operatorname{med}_j d_j
        \;\text{ or }\; d_k > \rho \,\operatorname{med}_j d_j,

        n_k \leftarrow \min\!\left(n_k,\; \nu \,\operatorname{med}_j n_j,\; N_{p(k)}\right), \qquad
        F_k \leftarrow \min(\max(F_k, \tfrac14), 1),

    with :math:`\epsilon` = :data:`NEAR_COPY_FRACTION`, :math:`\rho` = ``norm_factor`` and
    :math:`\nu` = ``examples_factor`` (0 turns a rule off), the lower median for an even count
    (so that a half of the replies cannot raise a bar: above, honest updates would pass for
    copies and attackers' for typical), and
    :math:`N_{p(k)}` the size of the partition :math:`p(k)` the reply names, which
    ``examples_bounds(replies)`` rebuilds from the seed. The server checks every claim a
    weight depends on:

    - a honest client's update is a few local epochs from the same start, so its distance is
      of the same order as the others'; a scaled or random update is far above, and a reply
      that is (nearly) the global model while claiming examples trained on nothing: a free
      rider whose copy would hold a median or a mean back (a threshold relative to the
      round's spread, so noise of any size below it does not hide one);
    - capping the count keeps one client from outweighing the rest by saying it holds more
      data; a reply for which ``examples_bounds`` knows no partition (``None``: it names
      none, or one that does not exist) is counted as the round's smallest count, the
      smallest of those with a partition if any;
    - a fidelity outside the physical range :data:`FIDELITY_RANGE` is clipped into it, so
      its weight :math:`((4F - 1)/3)^2` is at most 1; one above what
      ``fidelity_estimates(replies)`` (the server's own estimate of each reply's link, and
      its tolerance) allows is replaced by the estimate (:func:`clip_fidelity`).

    A client's claims about its own noise (``update-noise-var``, ``noise-contraction``,
    ``pec-gamma2``) are bounded to their physical ranges (:func:`clip_noise_claims`).

    With ``direction`` (the run's ``robust-direction``, on by default), then
    :func:`direction_screen`: an update that points against the round's coordinate-wise
    median update is rejected, the others' norms are bounded by twice their median, and
    their counts (after the caps) are multiplied by their cosine with the median.

    With fewer than 3 replies no update is rejected for its size or direction and a copy
    only when it is bit-equal (no majority says what is typical); the claims are bounded all
    the same.
    """
    error = [m for m in replies if m.has_error()]
    sound = [m for m in replies if not m.has_error()]
    dist = _distances(sound, global_arrays, arrayrecord_key)
    rejected = _near_copies(sound, dist, weighted_by_key)
    if norm_factor > 0 and len(sound) - len(rejected) >= 3:
        rejected += _too_far([(m, d) for m, d in zip(sound, dist) if not _among(m, rejected)], norm_factor)
    sound = [m for m in sound if not _among(m, rejected)]
    seen = DirectionResult(sound, [])
    if direction:
        seen = direction_screen(sound, global_arrays, arrayrecord_key)
        sound, rejected = seen.kept, rejected + seen.rejected
    for msg, reason in rejected:
        log(WARNING, "Rejected the update of node %d: %s", msg.metadata.src_node_id, reason)
    sound, capped, unbound = _cap_examples(sound, examples_factor, weighted_by_key, examples_bounds)
    sound, clipped, overclaimed = clip_fidelity(sound, fidelity_estimates(sound) if fidelity_estimates else None)
    sound, noise_clipped = clip_noise_claims(sound)
    sound = _trusted(sound, seen.trust, weighted_by_key)
    return ScreenResult(sound + error, rejected, capped, unbound, clipped, seen.scaled, seen.twins, overclaimed,
                        noise_clipped)


MIN_COSINE = 0.0  # an update at or below this cosine with the median update pulls the model back
NORM_BOUND = 2.0  # an update that passes is cut to this many times the round's median norm
TWIN_FRACTION = 0.1  # two updates closer than this times the round's median pairwise distance are one voice


@dataclass(frozen=True)
class DirectionResult:
    """What :func:`direction_screen` decided about a round's replies."""

    kept: list[Message]  # those scaled are copies
    rejected: list[tuple[Message, str]]
    scaled: dict[int, float] = field(default_factory=dict)  # node -> factor its update was cut by (< 1)
    trust: dict[int, float] = field(default_factory=dict)  # node -> cosine with the median, in (0, 1]
    twins: dict[int, tuple[int, ...]] = field(default_factory=dict)  # kept node -> the others of its group


def direction_screen(replies: list[Message], global_arrays: ArrayRecord, arrayrecord_key: str = ARRAYS) -> DirectionResult:
    r"""Reject updates that point against the round's median update; trust the others by their
    cosine with it; bound their norms.

    For the updates :math:`g_k = w_k - w` of a round's :math:`K \ge 3` sound replies:

    .. math::

        r = \operatorname{med}_k g_k \;\text{(coordinate-wise)}, \qquad
        t_k = \cos(g_k, r), \qquad \text{reject } k \iff t_k \le 0,

        g_k \leftarrow g_k \min\!\left(1, \frac{\beta \operatorname{med}_j \lVert g_j \rVert}{\lVert g_k \rVert}\right),
        \qquad n_k \leftarrow t_k\, n_k \;\text{ for the others,}

    with :math:`\beta` = :data:`NORM_BOUND` (2) and :math:`n_k` the example count a
    weighted strategy (FedAvg) weighs by; :func:`robust_screen` applies :math:`t_k` after
    the counts are capped. Updates that are all but identical (linked by distances
    :math:`\lVert g_k - g_j \rVert \le \gamma \operatorname{med}_{i<l} \lVert g_i - g_l \rVert`,
    :math:`\gamma` = :data:`TWIN_FRACTION`) count as one: the group's lowest node ID stays,
    the others are rejected, all are named.

    This is FLTrust (Cao et al. 2021) with the server's own reference update replaced by
    the coordinate-wise median of the round's updates (Yin et al. 2018), since this server
    holds no training data of its own: each update's trust score is its cosine with the
    reference, zero (rejected) when not positive, and weighs it; its length is bounded as
    in norm bounding (Sun et al. 2019), here at twice the median norm. The median is the
    reference because fewer than half of the replies cannot move it outside the honest
    ones' range in any coordinate; a sign-flipped update (global minus :math:`c` times an
    honest one, inside any norm bar) has a negative cosine with it and is rejected. An
    attacker who keeps a small positive cosine passes, but weighs :math:`t_k` (in the
    attack study, ``bench/attacks.py``, colluders that passed had 0.01-0.29 where the honest
    updates of those rounds had 0.30-0.69) at most twice a typical length.
    Twice, not once: cut at the median itself, every honest update above it is shortened
    too, and a median-based strategy behind the guard lags (iris, FedMedian, 3 clients:
    0.71 against 0.82 after 4 rounds). Designed for fewer than half of the replies
    attacking (the median's breakdown point).

    With fewer than 3 replies, or a median that is the zero vector, the replies pass as
    they are.
    """
    if len(replies) < 3:
        return DirectionResult(replies, [])
    names = list(global_arrays.keys())
    reference = flatten(global_arrays, names)
    with np.errstate(over="ignore", invalid="ignore"):
        updates = np.stack([flatten(m.content[arrayrecord_key], names) - reference for m in replies])
        norms = np.linalg.norm(updates, axis=1)
        if not np.all(np.isfinite(norms)):
            return DirectionResult(replies, [])  # an overflowing update: the norm rule rejects it, not this one
        median = np.median(updates, axis=0)
        median_norm = float(np.linalg.norm(median))
        if median_norm == 0:
            return DirectionResult(replies, [])
        cosine = updates @ median / np.maximum(norms * median_norm, np.finfo(float).tiny)
    rejected = [(m, f"update points against the round's coordinate-wise median update (cosine {c:.2f} <= {MIN_COSINE:g})")
                for m, c in zip(replies, cosine) if not c > MIN_COSINE]
    kept = [(m, g, n, c) for m, g, n, c in zip(replies, updates, norms, cosine) if c > MIN_COSINE]
    if not kept:
        return DirectionResult([], rejected)
    twins = _twin_groups([m.metadata.src_node_id for m, _, _, _ in kept], np.stack([g for _, g, _, _ in kept]))
    # a group speaks once: its lowest node ID stays (which one does not matter, they agree)
    rejected += [(m, f"update all but identical to node {min(twins[m.metadata.src_node_id])}'s (within "
                     f"{TWIN_FRACTION:g} x the round's median pairwise distance): the group counts as one reply")
                 for m, _, _, _ in kept if min(twins.get(m.metadata.src_node_id, (np.inf,))) < m.metadata.src_node_id]
    kept = [k for k in kept if not _among(k[0], rejected)]
    bar = NORM_BOUND * _lower_median(np.array([n for _, _, n, _ in kept]))
    out, scaled, trust = [], {}, {}
    for msg, update, norm, cos in kept:
        trust[msg.metadata.src_node_id] = float(min(cos, 1.0))
        if norm > bar > 0:
            scale = bar / norm
            scaled[msg.metadata.src_node_id] = scale
            out.append(_with_arrays(msg, arrayrecord_key, global_arrays, names, reference + scale * update))
        else:
            out.append(msg)
    twins = {node: others for node, others in twins.items() if node in trust}
    return DirectionResult(out, rejected, scaled, trust, twins)


def _twin_groups(nodes: list[int], updates: np.ndarray) -> dict[int, tuple[int, ...]]:
    """``node -> the other nodes of its group`` for the updates linked (transitively) by a
    distance at most :data:`TWIN_FRACTION` times the median pairwise distance; nodes alone
    are left out. ``updates`` is ``(K, P)``; fewer than 3 or all equal: no groups."""
    if len(nodes) < 3:
        return {}
    pairs = pdist(updates)
    bar = TWIN_FRACTION * float(np.median(pairs))
    if bar == 0:
        return {}
    _, label = connected_components(csr_matrix(squareform(pairs <= bar)), directed=False)
    groups = {}
    for i, node in enumerate(nodes):
        others = tuple(sorted(nodes[j] for j in np.flatnonzero(label == label[i]) if j != i))
        if others:
            groups[node] = others
    return groups


def _trusted(replies: list[Message], trust: dict[int, float], weighted_by_key: str) -> list[Message]:
    """The replies with their example counts multiplied by their trust score."""
    return [_with_metric(m, weighted_by_key, _examples(m, weighted_by_key) * trust[m.metadata.src_node_id])
            if m.metadata.src_node_id in trust else m for m in replies]


def _distances(sound: list[Message], global_arrays: ArrayRecord, arrayrecord_key: str) -> np.ndarray:
    """Each reply's Euclidean distance from the global model (``inf`` where it overflows)."""
    names = list(global_arrays.keys())
    reference = flatten(global_arrays, names)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array([np.linalg.norm(flatten(m.content[arrayrecord_key], names) - reference) for m in sound])


def _among(msg: Message, pairs: list[tuple[Message, str]]) -> bool:
    return any(msg is m for m, _ in pairs)


def _near_copies(sound: list[Message], dist: np.ndarray, weighted_by_key: str) -> list[tuple[Message, str]]:
    """Replies that claim examples but return (nearly) the global model: at most
    :data:`NEAR_COPY_FRACTION` of the round's median distance (alone in its round: bit-equal)."""
    finite = dist[np.isfinite(dist)]
    median = _lower_median(finite) if finite.size else 0.0
    return [(m, _copy_reason(d, median)) for m, d in zip(sound, dist)
            if d <= NEAR_COPY_FRACTION * median and _examples(m, weighted_by_key) > 0]


def _copy_reason(distance: float, median: float) -> str:
    if distance == 0:
        return "returned the global model unchanged while claiming to have trained"
    return (f"returned the global model all but unchanged (update distance {distance:.3g}, at most "
            f"{NEAR_COPY_FRACTION:g} x the round's median {median:.3g}) while claiming to have trained")


def _too_far(pairs: list[tuple[Message, float]], norm_factor: float) -> list[tuple[Message, str]]:
    """Replies whose distance exceeds ``norm_factor`` times the lower median of the distances."""
    dist = np.array([d for _, d in pairs])
    bar = norm_factor * _lower_median(dist[np.isfinite(dist)]) if np.isfinite(dist).any() else 0.0
    median = bar / norm_factor if bar > 0 else 0.0
    return [(m, f"update distance {d:.3g} from the global model exceeds {norm_factor:g} x the round's median ({median:.3g})")
            for m, d in pairs if bar > 0 and not d <= bar]


def _cap_examples(
    sound: list[Message], examples_factor: float, weighted_by_key: str,
    examples_bounds: Callable[[list[Message]], list[float | None]] | None,
) -> tuple[list[Message], dict[int, tuple[float, float]], frozenset[int]]:
    """The replies with their counts capped, ``node -> (claimed, counted)`` of those capped,
    and the nodes with no partition (counted as the round's smallest, capped or not)."""
    if not sound:
        return sound, {}, frozenset()
    claims = np.array([_examples(m, weighted_by_key) for m in sound])
    median_cap = examples_factor * _lower_median(claims) if examples_factor > 0 else np.inf
    bounds = examples_bounds(sound) if examples_bounds is not None else [np.inf] * len(sound)
    counted = np.array([min(n, median_cap, np.inf if b is None else b) for n, b in zip(claims, bounds)])
    bound = np.array([b is not None for b in bounds])
    # the server cannot size what a reply without a partition holds: it weighs as the least
    floor = counted[bound].min() if bound.any() else counted.min()
    counted = np.where(bound, counted, np.minimum(counted, floor))
    unbound = frozenset(m.metadata.src_node_id for m, b in zip(sound, bound) if not b)
    capped: dict[int, tuple[float, float]] = {}
    out = []
    for msg, n, c, b in zip(sound, claims, counted, bound):
        node = msg.metadata.src_node_id
        if c < n or not b:
            capped[node] = (float(n), float(c))
            log(WARNING, "Capped the example count of node %d: claimed %g, counted %g%s", node, n, c,
                "" if b else " (no partition the server can size: the round's smallest)")
        out.append(_with_metric(msg, weighted_by_key, float(c)) if c < n else msg)
    return out, capped, unbound


def clip_fidelity(
    replies: list[Message], estimates: list[tuple[float, float] | None] | None = None,
) -> tuple[list[Message], dict[int, tuple[float, float]], dict[int, tuple[float, float]]]:
    r"""Replies whose claimed ``fidelity`` metric is bounded, ``node -> (claimed, used)`` of
    those that claimed outside :data:`FIDELITY_RANGE`, and of those that claimed more than
    the server's estimate allows.

    :math:`F \leftarrow \min(\max(F, 1/4), 1)`; a claim that is no finite number counts as
    :math:`1/4` (weight 0). Where ``estimates[i]`` is ``(\hat F, \tau)``, the server's own
    estimate of what reply *i*'s link delivers and its tolerance, a claim above
    :math:`\hat F + \tau` is replaced by :math:`\hat F`; a lower claim stands (it only
    costs the client its own weight). Replies without the metric pass as they are.
    """
    out, clipped, over = [], {}, {}
    for i, msg in enumerate(replies):
        claims = [r[FIDELITY] for r in msg.content.metric_records.values() if FIDELITY in r]
        used = _in_range(claims[0]) if claims and not msg.has_error() else None
        estimate = estimates[i] if estimates is not None and used is not None else None
        if estimate is not None and used > estimate[0] + estimate[1]:
            over[msg.metadata.src_node_id] = (float(claims[0]) if is_finite_number(claims[0]) else float("nan"),
                                              estimate[0])
            log(WARNING, "Node %d claims fidelity %g; the server's estimate for its path is %.4f: used that",
                msg.metadata.src_node_id, claims[0], estimate[0])
            out.append(_with_metric(msg, FIDELITY, estimate[0]))
            continue
        if used is None or used == claims[0]:
            out.append(msg)
            continue
        claimed = float(claims[0]) if is_finite_number(claims[0]) else float("nan")  # type: ignore[arg-type]
        clipped[msg.metadata.src_node_id] = (claimed, used)
        log(WARNING, "Clipped the fidelity node %d claims: %g is outside [%g, %g]", msg.metadata.src_node_id, claimed,
            *FIDELITY_RANGE)
        out.append(_with_metric(msg, FIDELITY, used))
    return out, clipped, over


def _in_range(claim: object) -> float:
    low, high = FIDELITY_RANGE
    return min(max(float(claim), low), high) if is_finite_number(claim) else low  # type: ignore[arg-type]


# a client's claims about its own noise, the physical range of each (as words), and the value
# that stands for a claim outside it: a variance is not negative, a contraction of expectation
# values is in (0, 1] (outside it the update is taken as it is: no division, no sign flip), PEC
# costs at least nothing
NOISE_CLAIM_RANGES = {UPDATE_NOISE_VAR: "[0, inf)", NOISE_CONTRACTION: "(0, 1]", PEC_GAMMA2: "[1, inf)"}


def bound_noise_claim(key: str, value: object) -> float | None:
    """A noise claim (``key`` of :data:`NOISE_CLAIM_RANGES`) within its physical range; ``None``
    when it is no finite number (no claim). A variance below 0 counts as 0, a contraction outside
    (0, 1] as 1, a PEC overhead below 1 as 1."""
    if not is_finite_number(value):
        return None
    claim = float(value)  # type: ignore[arg-type]
    if key == UPDATE_NOISE_VAR:
        return max(claim, 0.0)
    if key == NOISE_CONTRACTION:
        return claim if 0.0 < claim <= 1.0 else 1.0
    if key == PEC_GAMMA2:
        return max(claim, 1.0)
    raise KeyError(key)


def clip_noise_claims(replies: list[Message]) -> tuple[list[Message], dict[int, tuple[tuple[str, float, float], ...]]]:
    """Replies whose noise claims (:data:`NOISE_CLAIM_RANGES`) are inside their physical range
    (:func:`bound_noise_claim`), and ``node -> ((key, claimed, used), ...)`` of those that were not.

    A claim in range stands here: what it may buy is bounded by the strategy that weighs it
    (:class:`strategies.noise_isolating.NoiseIsolatingFedAvg` caps every weight and tests each
    variance against the update's spread). Replies without the metrics pass as they are."""
    out, clipped = [], {}
    for msg in replies:
        said = []
        for key in NOISE_CLAIM_RANGES if not msg.has_error() else ():
            claims = [r[key] for r in msg.content.metric_records.values() if key in r]
            used = bound_noise_claim(key, claims[0]) if claims else None
            if used is not None and used != claims[0]:
                said.append((key, float(claims[0]), used))  # type: ignore[arg-type]
                msg = _with_metric(msg, key, used)
        if said:
            clipped[msg.metadata.src_node_id] = tuple(said)
            log(WARNING, "Clipped the noise claims of node %d: %s", msg.metadata.src_node_id,
                "; ".join(f"{k} {c:g} is outside {NOISE_CLAIM_RANGES[k]}, used {u:g}" for k, c, u in said))
        out.append(msg)
    return out, clipped


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
    return [m if m.has_error() else _without_metrics(m, partial) for m in replies]


def _without_metrics(message: Message, keys: set[str]) -> Message:
    """A copy of ``message`` without the metrics ``keys`` (the original is left as sent)."""
    import copy

    content = RecordDict(dict(message.content.items()))
    for name, record in message.content.metric_records.items():
        content[name] = MetricRecord({k: v for k, v in record.items() if k not in keys})
    out = copy.copy(message)
    out.content = content
    return out


def _examples(message: Message, key: str) -> float:
    for record in message.content.metric_records.values():
        if key in record:
            return float(record[key])  # type: ignore[arg-type]
    raise KeyError(key)


def delta_screen(
    replies: list[Message], key: str, like: ArrayRecord, norm_factor: float
) -> tuple[list[Message], list[tuple[Message, str]], dict[int, float]]:
    r"""Bound the ArrayRecord ``key`` that a reply carries as a *delta* (SCAFFOLD's ``control-delta``).

    A strategy that sums such deltas into state of its own (SCAFFOLD's server control
    variate :math:`c \leftarrow c + \tfrac{|S|}{N}\,\overline{\Delta c}`) would be steered by
    one large :math:`\Delta c_k` for every later round. Over a round's :math:`K \ge 3`
    replies:

    .. math::

        \text{reject } k \iff \lVert \Delta c_k \rVert > \rho \operatorname{med}_j \lVert \Delta c_j \rVert,
        \qquad \Delta c_k \leftarrow \Delta c_k \min\!\left(1,
        \frac{\operatorname{med}_j \lVert \Delta c_j \rVert}{\lVert \Delta c_k \rVert}\right),

    so a poisoned delta inside the bar moves the variate by at most :math:`1/K` of a median
    one per round. No direction rule: honest control variates estimate each client's own
    gradient, which differ by design on non-IID data. Returns the kept replies (copies where
    scaled), the rejected with the reason, and ``node -> scale``.
    """
    if len(replies) < 3:
        return replies, [], {}
    names = list(like.keys())
    with np.errstate(over="ignore", invalid="ignore"):
        deltas = [flatten(m.content[key], names) for m in replies]
        norms = np.array([np.linalg.norm(d) for d in deltas])
    finite = norms[np.isfinite(norms)]
    median = _lower_median(finite) if finite.size else 0.0
    rejected, out, scaled = [], [], {}
    for msg, delta, norm in zip(replies, deltas, norms):
        if norm_factor > 0 and median > 0 and not norm <= norm_factor * median:
            rejected.append((msg, f"'{key}' norm {norm:.3g} exceeds {norm_factor:g} x the round's median ({median:.3g})"))
        elif norm > median > 0:
            scaled[msg.metadata.src_node_id] = median / norm
            out.append(_with_arrays(msg, key, like, names, delta * (median / norm)))
        else:
            out.append(msg)
    for msg, reason in rejected:
        log(WARNING, "Rejected the update of node %d: %s", msg.metadata.src_node_id, reason)
    return out, rejected, scaled


def _with_arrays(message: Message, key: str, like: ArrayRecord, names: list[str], flat: np.ndarray) -> Message:
    """A copy of ``message`` whose ``key`` ArrayRecord holds ``flat``, cut into ``like``'s arrays."""
    import copy

    content = RecordDict(dict(message.content.items()))
    content[key] = unflatten(flat, like, names)
    out = copy.copy(message)
    out.content = content
    return out


def _with_metric(message: Message, key: str, value: float) -> Message:
    """A copy of ``message`` whose ``key`` metric is ``value`` (the original is left as sent)."""
    import copy

    content = RecordDict(dict(message.content.items()))
    for name, record in message.content.metric_records.items():
        if key in record:
            content[name] = MetricRecord({**dict(record), key: value})
    out = copy.copy(message)
    out.content = content
    return out
