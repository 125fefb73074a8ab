r"""In-bound attacks on a round's updates: one harness for the tests, ``bench/attacks.py`` and
the attack ClientApp (:mod:`qfl.experiments.attack_app`).

Each attack is a pure function of what the attackers know, the honest updates ``honest``
(``(n, P)``, rows :math:`h_i = w_i - w`), returning the updates :math:`g_a` the ``count``
attackers send (``(count, P)``); the message helpers below put them into replies. Every
crafted update but the sign flip's has, per attacker, noise of its own added
(:data:`OWN_NOISE` of the honest per-coordinate standard deviation), so that colluders
are not near-copies of one another and the guard's twin screen does not catch them for
free. With :math:`\mu`, :math:`\sigma` the honest mean and per-coordinate standard
deviation (``ddof = 1``) and :math:`\hat u = \mu / \lVert \mu \rVert`:

- ``sign-flip`` / ``colluders``: :math:`g_a = -3\, h_a`, each attacker its own honest update
  reversed (inside the guard's 4x norm bar);
- ``sideways``: :math:`g_a = 1.95 \operatorname{med}_i \lVert h_i \rVert\,(c\,\hat u + \sqrt{1 - c^2}\, v)`,
  :math:`v \perp \hat u` one direction the colluders agree on for the whole run (it is the
  drift they are after), :math:`c` = :data:`SIDEWAYS_COSINE`: a positive cosine and a length
  inside twice the median, which the direction rule lets pass;
- ``sideways-edge``: the sideways attacker who has read the sideways bound: the honest
  median step along :math:`\hat u` and, along :math:`v`, :data:`SIDEWAYS_EDGE` times the
  honest median part across :math:`\hat u` (what the guard's bound still weighs in full);
- ``alie``: *a little is enough* (Baruch, Baruch & Goldberg, NeurIPS 2019),
  :math:`g_a = \mu - z \sigma \odot \operatorname{sign}(\mu)` with
  :math:`z = \Phi^{-1}((n - s)/n)`, :math:`s = \lfloor n/2 + 1 \rfloor - m`, the largest shift
  a median of :math:`n` clients with :math:`m` attackers cannot see;
- ``ipm``: inner-product manipulation (Xie, Koyejo & Gupta, UAI 2019, "Fall of Empires"),
  :math:`g_a = -\epsilon \mu`, :math:`\epsilon` = :data:`IPM_EPSILON`;
- ``min-max`` / ``min-sum`` (Shejwalkar & Houmansadr, NDSS 2021, AGR-agnostic):
  :math:`g_a = \mu + \gamma p`, :math:`p = -\sigma` (their *std* perturbation), with the
  largest :math:`\gamma` for which the malicious update is no farther from any honest one
  than the honest ones are from each other (min-max:
  :math:`\max_i \lVert g - h_i \rVert \le \max_{i,j} \lVert h_i - h_j \rVert`), or its sum of
  squared distances is no larger than an honest one's (min-sum:
  :math:`\sum_i \lVert g - h_i \rVert^2 \le \max_i \sum_j \lVert h_i - h_j \rVert^2`).

Knowledge: in the tests and the bench the attackers know every honest update of the round
(full knowledge, the papers' strongest setting); the experiment's ClientApp knows only what
a client sees (:func:`partial_knowledge`: its own honest update and the global model's last
step).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Error, Message, RecordDict

from qfl.common.contract import ARRAYS
from qfl.common.records import flatten, unflatten

# partitions that attack, by the run config's `simulated-attack`
ATTACKERS = {"sign-flip": (0,), "colluders": (0, 1), "absent": (0, 1), "sideways": (0, 1), "sideways-edge": (0, 1),
             "alie": (0, 1), "ipm": (0, 1), "min-max": (0, 1), "min-sum": (0, 1)}
CRAFTED = ("sideways", "sideways-edge", "alie", "ipm", "min-max", "min-sum")  # made from knowledge of honest updates
FLIP = 3.0  # sign flip: global - FLIP x the honest update
OWN_NOISE = 0.5  # each colluder's own noise, in honest per-coordinate standard deviations
SIDEWAYS_COSINE = 0.5  # the sideways attack's cosine with the honest mean
SIDEWAYS_LENGTH = 1.95  # and its length, in honest median norms (the direction rule cuts at 2)
SIDEWAYS_EDGE = 1.5  # sideways-edge: its part across, in honest median such parts (the guard's SIDEWAYS_BOUND)
IPM_EPSILON = 0.5
ABSENT_CODE = 4390


def alie_z(total: int, attackers: int) -> float:
    """Baruch et al.'s largest unseen shift, :math:`\\Phi^{-1}((n - s)/n)`, :math:`s = \\lfloor n/2 + 1 \\rfloor - m`.

    Examples
    --------
    >>> round(alie_z(5, 2), 2)
    0.84
    """
    from scipy.stats import norm

    s = math.floor(total / 2 + 1) - attackers
    return float(norm.ppf((total - s) / total))


def _spread(honest: np.ndarray) -> np.ndarray:
    """Per-coordinate standard deviation (``ddof = 1``; zero from a single update)."""
    return honest.std(axis=0, ddof=1) if len(honest) > 1 else np.zeros(honest.shape[1])


def own_noise(honest: np.ndarray, count: int, rng: np.random.Generator, scale: float = OWN_NOISE) -> np.ndarray:
    """``(count, P)`` noise, each row an attacker's own: ``scale`` honest standard deviations per coordinate."""
    return scale * _spread(honest) * rng.normal(size=(count, honest.shape[1]))


def sideways_direction(size: int, seed: int) -> np.ndarray:
    """The one direction the sideways colluders drift along for a whole run (a unit vector)."""
    v = np.random.default_rng([seed, 4242]).normal(size=size)
    return v / np.linalg.norm(v)


def sideways(honest: np.ndarray, count: int, rng: np.random.Generator, direction: np.ndarray,
             cosine: float = SIDEWAYS_COSINE, length: float = SIDEWAYS_LENGTH) -> np.ndarray:
    """``length`` median norms along ``cosine`` u + sqrt(1 - cosine^2) v, with noise of each attacker's own."""
    mean = honest.mean(axis=0)
    u = mean / np.linalg.norm(mean)
    v = direction - (direction @ u) * u
    v /= np.linalg.norm(v)
    aim = cosine * u + math.sqrt(1 - cosine**2) * v + own_noise(honest, count, rng) / np.linalg.norm(mean)
    return length * float(np.median(np.linalg.norm(honest, axis=1))) * aim / np.linalg.norm(aim, axis=1, keepdims=True)


def sideways_edge(honest: np.ndarray, count: int, rng: np.random.Generator, direction: np.ndarray,
                  across: float = SIDEWAYS_EDGE) -> np.ndarray:
    """The honest median step along u, and ``across`` honest median parts across u along v."""
    mean = honest.mean(axis=0)
    u = mean / np.linalg.norm(mean)
    v = direction - (direction @ u) * u
    v /= np.linalg.norm(v)
    along = honest @ u
    spread = float(np.median(np.linalg.norm(honest - np.outer(along, u), axis=1)))
    return float(np.median(along)) * u + across * spread * v + own_noise(honest, count, rng)


def alie(honest: np.ndarray, count: int, rng: np.random.Generator, total: int, colluders: int | None = None) -> np.ndarray:
    """*A little is enough*: the mean shifted by :func:`alie_z` deviations against its sign."""
    mean = honest.mean(axis=0)
    z = alie_z(total, colluders or count)
    return mean - z * _spread(honest) * np.sign(mean) + own_noise(honest, count, rng)


def ipm(honest: np.ndarray, count: int, rng: np.random.Generator, epsilon: float = IPM_EPSILON) -> np.ndarray:
    """Inner-product manipulation: ``-epsilon`` times the honest mean."""
    return -epsilon * honest.mean(axis=0) + own_noise(honest, count, rng)


def min_max(honest: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Shejwalkar & Houmansadr's min-max: the farthest point along ``-sigma`` no farther from any
    honest update than the two farthest apart are from each other."""
    def distance(x: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.linalg.norm(h - x, axis=1)

    bar = max((distance(h, honest).max() for h in honest), default=0.0)
    return _along_perturbation(honest, count, rng, lambda g: distance(g, honest).max() <= bar)


def min_sum(honest: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Shejwalkar & Houmansadr's min-sum: the farthest point along ``-sigma`` whose sum of squared
    distances to the honest updates is no larger than an honest one's."""
    def total(x: np.ndarray) -> float:
        return float((np.linalg.norm(honest - x, axis=1) ** 2).sum())

    bar = max((total(h) for h in honest), default=0.0)
    return _along_perturbation(honest, count, rng, lambda g: total(g) <= bar)


def _along_perturbation(honest: np.ndarray, count: int, rng: np.random.Generator, fits) -> np.ndarray:  # noqa: ANN001
    """``mu + gamma p`` with ``p = -sigma`` and the largest ``gamma`` that ``fits`` (bisection,
    Shejwalkar & Houmansadr's Algorithm 1; the set is an interval from 0: a convex distance)."""
    mean, p = honest.mean(axis=0), -_spread(honest)
    if not np.any(p):
        return mean + own_noise(honest, count, rng)
    low, high = 0.0, 1.0
    while fits(mean + high * p) and high < 1e6:
        low, high = high, 2 * high
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mean + mid * p) else (low, mid)
    return mean + low * p + own_noise(honest, count, rng)


def craft(attack: str, honest: np.ndarray, count: int, rng: np.random.Generator, *, total: int,
          colluders: int | None = None, direction: np.ndarray | None = None) -> np.ndarray:
    """The ``count`` updates of :data:`CRAFTED` attack ``attack`` from the honest updates known
    (``total``: the round's clients; ``colluders``: how many attack, ``count`` by default;
    ``direction``: the sideways drift's, :func:`sideways_direction`)."""
    honest = np.atleast_2d(np.asarray(honest, dtype=float))
    if attack == "sideways":
        return sideways(honest, count, rng, direction if direction is not None else sideways_direction(honest.shape[1], 0))
    if attack == "sideways-edge":
        return sideways_edge(honest, count, rng, direction if direction is not None else sideways_direction(honest.shape[1], 0))
    if attack == "alie":
        return alie(honest, count, rng, total, colluders)
    if attack == "ipm":
        return ipm(honest, count, rng)
    if attack == "min-max":
        return min_max(honest, count, rng)
    if attack == "min-sum":
        return min_sum(honest, count, rng)
    raise ValueError(f"attack must be one of {CRAFTED}, got {attack!r}")


def partial_knowledge(own: np.ndarray, last_step: np.ndarray | None) -> np.ndarray:
    """What one attacking client knows of the honest updates without the others': its own
    honest update and, from round 2 on, the global model's last step (the mean of last
    round's accepted updates), as two samples of an honest update."""
    return np.stack([own] if last_step is None or not np.any(last_step) else [own, last_step])


# --- replies


def update_of(reply: Message, request: Message) -> np.ndarray:
    """The reply's update :math:`w_k - w` against the model its request carried, flat."""
    sent = request.content[ARRAYS]
    names = list(sent.keys())
    return flatten(reply.content[ARRAYS], names) - flatten(sent, names)


def with_update(reply: Message, request: Message, update: np.ndarray) -> Message:
    """``reply`` with its parameters :math:`w + g` for the update ``update``."""
    sent = request.content[ARRAYS]
    names = list(sent.keys())
    content = RecordDict(dict(reply.content.items()))
    content[ARRAYS] = unflatten(flatten(sent, names) + update, sent, names)
    return Message(content=content, reply_to=request)


def sign_flipped(reply: Message, request: Message) -> Message:
    """``reply`` with its parameters :math:`w - F (w_k - w)`: the honest update reversed and scaled."""
    return with_update(reply, request, -FLIP * update_of(reply, request))


def absent(request: Message) -> Message:
    """An error reply, as from a node that crashed: counted as failed, not aggregated."""
    return Message(Error(ABSENT_CODE, "absent (simulated-attack control)"), reply_to=request)


def corrupt_round(attack: str, replies: dict[int, Message], requests: dict[int, Message], attackers: list[int],
                  rng: np.random.Generator, direction: np.ndarray | None = None) -> dict[int, Message]:
    """A round's replies by node with the ``attackers``' replaced, knowing every honest update
    of the round (full knowledge: the attackers' own honest updates included)."""
    out = dict(replies)
    sound = [n for n in sorted(replies) if not replies[n].has_error()]
    for node in attackers if attack in ("sign-flip", "colluders", "absent") else ():
        if node in replies:
            out[node] = absent(requests[node]) if attack == "absent" else (
                replies[node] if replies[node].has_error() else sign_flipped(replies[node], requests[node]))
    if attack in CRAFTED and sound:
        honest = np.stack([update_of(replies[n], requests[n]) for n in sound])
        mine = [n for n in attackers if n in sound]
        crafted = craft(attack, honest, len(mine), rng, total=len(replies), direction=direction)
        out.update({n: with_update(replies[n], requests[n], g) for n, g in zip(mine, crafted)})
    return out


def global_step(previous: ArrayRecord | None, current: ArrayRecord) -> np.ndarray | None:
    """The global model's last step, ``current - previous`` flat (``None`` without a previous)."""
    if previous is None or set(previous.keys()) != set(current.keys()):
        return None
    names = list(current.keys())
    return flatten(current, names) - flatten(previous, names)
