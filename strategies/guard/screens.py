"""Screens across a round's replies: what a well-formed update may do, judged against the others.

:func:`robust_screen` is the guard's round: it rejects an update whose distance from the
global model is far outside the round's robust spread, one that is (nearly) the global
model itself, and (:func:`direction_screen`) one that points against the round's
coordinate-wise median update; it bounds the others' norms by twice the round's median and
their weights by how far they go across the median update
(:func:`~strategies.guard.sideways.sideways_screen`); then it bounds their claims
(:mod:`strategies.guard.claims`). :func:`delta_screen` bounds a delta a strategy sums into
state of its own (SCAFFOLD's ``control-delta``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.supercore import log
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

from qfl.common.contract import ARRAYS, NUM_EXAMPLES
from qfl.common.records import flatten
from strategies.guard._common import among, examples, lower_median, with_arrays, with_metric
from strategies.guard.claims import cap_examples, clip_fidelity, clip_noise_claims
from strategies.guard.sideways import SidewaysResult, sideways_screen

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
    sideways: dict[int, tuple[float, float]] = field(default_factory=dict)  # node -> (part across / round's, weight factor)


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
    sideways: bool = True,
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
    their counts (after the caps) are multiplied by their cosine with the median; with
    ``sideways`` too (the default), :func:`~strategies.guard.sideways.sideways_screen`: each
    update's weight is bounded so that its part across the median update pulls at most as
    much as 1.5 times the round's median such part would.

    With fewer than 3 replies no update is rejected for its size or direction and a copy
    only when it is bit-equal (no majority says what is typical); the claims are bounded all
    the same.
    """
    error = [m for m in replies if m.has_error()]
    sound = [m for m in replies if not m.has_error()]
    dist = _distances(sound, global_arrays, arrayrecord_key)
    rejected = _near_copies(sound, dist, weighted_by_key)
    if norm_factor > 0 and len(sound) - len(rejected) >= 3:
        rejected += _too_far([(m, d) for m, d in zip(sound, dist) if not among(m, rejected)], norm_factor)
    sound = [m for m in sound if not among(m, rejected)]
    seen = DirectionResult(sound, [])
    if direction:
        seen = direction_screen(sound, global_arrays, arrayrecord_key)
        sound, rejected = seen.kept, rejected + seen.rejected
    across = sideways_screen(sound, global_arrays, arrayrecord_key) if direction and sideways else SidewaysResult()
    for msg, reason in rejected:
        log(WARNING, "Rejected the update of node %d: %s", msg.metadata.src_node_id, reason)
    sound, capped, unbound = cap_examples(sound, examples_factor, weighted_by_key, examples_bounds)
    sound, clipped, overclaimed = clip_fidelity(sound, fidelity_estimates(sound) if fidelity_estimates else None)
    sound, noise_clipped = clip_noise_claims(sound)
    weighed = set(seen.trust) | set(across.bounded)
    sound = _trusted(sound, {node: seen.trust.get(node, 1.0) * across.factor(node) for node in weighed}, weighted_by_key)
    return ScreenResult(sound + error, rejected, capped, unbound, clipped, seen.scaled, seen.twins, overclaimed,
                        noise_clipped, across.bounded)


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
    kept = [k for k in kept if not among(k[0], rejected)]
    bar = NORM_BOUND * lower_median(np.array([n for _, _, n, _ in kept]))
    out, scaled, trust = [], {}, {}
    for msg, update, norm, cos in kept:
        trust[msg.metadata.src_node_id] = float(min(cos, 1.0))
        if norm > bar > 0:
            scale = bar / norm
            scaled[msg.metadata.src_node_id] = scale
            out.append(with_arrays(msg, arrayrecord_key, global_arrays, names, reference + scale * update))
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
    return [with_metric(m, weighted_by_key, examples(m, weighted_by_key) * trust[m.metadata.src_node_id])
            if m.metadata.src_node_id in trust else m for m in replies]


def _distances(sound: list[Message], global_arrays: ArrayRecord, arrayrecord_key: str) -> np.ndarray:
    """Each reply's Euclidean distance from the global model (``inf`` where it overflows)."""
    names = list(global_arrays.keys())
    reference = flatten(global_arrays, names)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array([np.linalg.norm(flatten(m.content[arrayrecord_key], names) - reference) for m in sound])



def _near_copies(sound: list[Message], dist: np.ndarray, weighted_by_key: str) -> list[tuple[Message, str]]:
    """Replies that claim examples but return (nearly) the global model: at most
    :data:`NEAR_COPY_FRACTION` of the round's median distance (alone in its round: bit-equal)."""
    finite = dist[np.isfinite(dist)]
    median = lower_median(finite) if finite.size else 0.0
    return [(m, _copy_reason(d, median)) for m, d in zip(sound, dist)
            if d <= NEAR_COPY_FRACTION * median and examples(m, weighted_by_key) > 0]


def _copy_reason(distance: float, median: float) -> str:
    if distance == 0:
        return "returned the global model unchanged while claiming to have trained"
    return (f"returned the global model all but unchanged (update distance {distance:.3g}, at most "
            f"{NEAR_COPY_FRACTION:g} x the round's median {median:.3g}) while claiming to have trained")


def _too_far(pairs: list[tuple[Message, float]], norm_factor: float) -> list[tuple[Message, str]]:
    """Replies whose distance exceeds ``norm_factor`` times the lower median of the distances."""
    dist = np.array([d for _, d in pairs])
    bar = norm_factor * lower_median(dist[np.isfinite(dist)]) if np.isfinite(dist).any() else 0.0
    median = bar / norm_factor if bar > 0 else 0.0
    return [(m, f"update distance {d:.3g} from the global model exceeds {norm_factor:g} x the round's median ({median:.3g})")
            for m, d in pairs if bar > 0 and not d <= bar]



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
    median = lower_median(finite) if finite.size else 0.0
    rejected, out, scaled = [], [], {}
    for msg, delta, norm in zip(replies, deltas, norms):
        if norm_factor > 0 and median > 0 and not norm <= norm_factor * median:
            rejected.append((msg, f"'{key}' norm {norm:.3g} exceeds {norm_factor:g} x the round's median ({median:.3g})"))
        elif norm > median > 0:
            scaled[msg.metadata.src_node_id] = median / norm
            out.append(with_arrays(msg, key, like, names, delta * (median / norm)))
        else:
            out.append(msg)
    for msg, reason in rejected:
        log(WARNING, "Rejected the update of node %d: %s", msg.metadata.src_node_id, reason)
    return out, rejected, scaled

