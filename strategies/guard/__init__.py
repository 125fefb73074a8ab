"""The server's guard: what stands between the wire and any strategy.

Four ideas, one module each:

- :mod:`~strategies.guard.schema`: exactly a sound reply (records, keys, shapes, dtypes,
  finite values);
- :mod:`~strategies.guard.screens`: what a well-formed update may do, judged against the
  round's others (distance, near-copies, direction, twins; :func:`robust_screen` runs the
  round);
- :mod:`~strategies.guard.sideways`: the part of an update across the round's reference,
  bounded by the round's spread;
- :mod:`~strategies.guard.claims`: every number a reply claims and a weight depends on.
"""

from strategies.guard.claims import (
    FIDELITY_RANGE,
    NOISE_CLAIM_RANGES,
    bound_noise_claim,
    cap_examples,
    clip_fidelity,
    clip_noise_claims,
)
from strategies.guard.schema import (
    ReplySchema,
    arrays_problem,
    common_optional_metrics,
    filter_replies,
    is_finite_number,
    reply_problem,
    schema_problem,
    shapes_of,
)
from strategies.guard.screens import (
    MIN_COSINE,
    NEAR_COPY_FRACTION,
    NORM_BOUND,
    TWIN_FRACTION,
    DirectionResult,
    ScreenResult,
    delta_screen,
    direction_screen,
    robust_screen,
)
from strategies.guard.sideways import SIDEWAYS_BOUND, SidewaysResult, sideways_screen

__all__ = [
    "DirectionResult",
    "FIDELITY_RANGE",
    "MIN_COSINE",
    "NEAR_COPY_FRACTION",
    "NOISE_CLAIM_RANGES",
    "NORM_BOUND",
    "ReplySchema",
    "SIDEWAYS_BOUND",
    "ScreenResult",
    "SidewaysResult",
    "TWIN_FRACTION",
    "arrays_problem",
    "bound_noise_claim",
    "cap_examples",
    "clip_fidelity",
    "clip_noise_claims",
    "common_optional_metrics",
    "delta_screen",
    "direction_screen",
    "filter_replies",
    "is_finite_number",
    "reply_problem",
    "robust_screen",
    "schema_problem",
    "shapes_of",
    "sideways_screen",
]
