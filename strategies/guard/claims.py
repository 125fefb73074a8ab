"""Bound every number a reply claims and a weight depends on: example counts, link fidelity, noise.

A reply carries numbers the server does not see being made. None decides a weight unchecked:

- a claimed example count is capped by the round's median claim and by the partition the
  reply names (the round's smallest for a reply that names none) (:func:`cap_examples`);
- a claimed link fidelity is clipped to its physical range :data:`FIDELITY_RANGE`, and to the
  server's own estimate of the node's link where it has one (:func:`clip_fidelity`);
- a client's claims about its own noise are clipped to their physical ranges
  (:func:`clip_noise_claims`).

Each function returns copies of the replies it bounded (the originals stay as sent) and,
per node, what was claimed and what is used.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import Message
from flwr.supercore import log

from qfl.common.contract import FIDELITY, NOISE_CONTRACTION, PEC_GAMMA2, UPDATE_NOISE_VAR
from strategies.guard._common import examples, lower_median, with_metric
from strategies.guard.schema import is_finite_number

FIDELITY_RANGE = (0.25, 1.0)  # a Werner pair's fidelity: 1/4 is no entanglement left, 1 a perfect pair


def cap_examples(
    sound: list[Message], examples_factor: float, weighted_by_key: str,
    examples_bounds: Callable[[list[Message]], list[float | None]] | None,
) -> tuple[list[Message], dict[int, tuple[float, float]], frozenset[int]]:
    """The replies with their counts capped, ``node -> (claimed, counted)`` of those capped,
    and the nodes with no partition (counted as the round's smallest, capped or not)."""
    if not sound:
        return sound, {}, frozenset()
    claims = np.array([examples(m, weighted_by_key) for m in sound])
    median_cap = examples_factor * lower_median(claims) if examples_factor > 0 else np.inf
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
        out.append(with_metric(msg, weighted_by_key, float(c)) if c < n else msg)
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
            out.append(with_metric(msg, FIDELITY, estimate[0]))
            continue
        if used is None or used == claims[0]:
            out.append(msg)
            continue
        claimed = float(claims[0]) if is_finite_number(claims[0]) else float("nan")  # type: ignore[arg-type]
        clipped[msg.metadata.src_node_id] = (claimed, used)
        log(WARNING, "Clipped the fidelity node %d claims: %g is outside [%g, %g]", msg.metadata.src_node_id, claimed,
            *FIDELITY_RANGE)
        out.append(with_metric(msg, FIDELITY, used))
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
                msg = with_metric(msg, key, used)
        if said:
            clipped[msg.metadata.src_node_id] = tuple(said)
            log(WARNING, "Clipped the noise claims of node %d: %s", msg.metadata.src_node_id,
                "; ".join(f"{k} {c:g} is outside {NOISE_CLAIM_RANGES[k]}, used {u:g}" for k, c, u in said))
        out.append(msg)
    return out, clipped

