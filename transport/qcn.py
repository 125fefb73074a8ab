"""A simulated quantum communication network (QCN) path: fidelity, latency and loss.

Parameters travel as qubits teleported over entanglement that a repeater chain
distributes between a client and the server (Chehimi et al., Sec. III-B). The formulas,
all for Werner states :math:`\\rho_W = w\\,|\\Phi^+\\rangle\\langle\\Phi^+| + (1-w) I/4`
with fidelity :math:`F = (1 + 3w)/4`:

- **elementary links**: a path of ``hops`` repeaters has ``hops + 1`` segments of length
  ``L/(hops+1)``; each attempt heralds success with probability
  :math:`p = p_{gen}\\, 10^{-\\alpha L_{seg}/10}` and takes :math:`2 L_{seg}/c` (heralding
  round trip, :math:`c` = 2e5 km/s in fiber); attempts until success are geometric.
- **memory decoherence** (depolarizing toward the maximally mixed state):
  :math:`w(t) = w_0\\, e^{-t/T}`, i.e. :math:`F(t) = \\tfrac14 + (F_0 - \\tfrac14) e^{-t/T}`
  (e.g. Dür, Briegel, Cirac & Zoller, PRA 59, 169 (1999)). A qubit stored longer than the
  ``cutoff`` is discarded and its link regenerated (Rozpędek et al., PRA 99, 052330 (2019)).
- **entanglement swapping** (Bell-state measurement) of Werner states multiplies their
  parameters, :math:`w_{12} = w_1 w_2\\, w_{BSM}`, with an imperfect BSM as depolarizing
  of parameter :math:`w_{BSM} = (4F_{swap} - 1)/3` (Briegel et al., PRL 81, 5932 (1998)).
- **distillation**: BBPSSW (Bennett et al., PRL 76, 722 (1996)) on two copies of fidelity
  :math:`F` succeeds with :math:`p = F^2 + \\tfrac23 F(1-F) + \\tfrac59 (1-F)^2` and yields
  :math:`F' = [F^2 + \\tfrac19 (1-F)^2]/p`; DEJMPS (Deutsch et al., PRL 77, 2818 (1996)) on
  Bell-diagonal coefficients :math:`(A, B, C, D)`:
  :math:`A' = (A^2 + B^2)/N,\\ B' = 2CD/N,\\ C' = (C^2 + D^2)/N,\\ D' = 2AB/N`,
  :math:`N = (A + B)^2 + (C + D)^2`.
- **teleporting a parameter** through a Werner pair applies the depolarizing channel
  :math:`\\rho \\to w\\rho + (1-w) I/2` to the carrier qubit. A parameter mapped to the angle
  :math:`\\phi \\in [0, \\pi]` in :math:`\\cos(\\phi/2)|0\\rangle + \\sin(\\phi/2)|1\\rangle`
  gives :math:`\\langle Z\\rangle = w \\cos\\phi`; the server measures ``copies`` copies and
  inverts, :math:`\\hat\\phi = \\arccos(\\hat Z / w)` (clipped): finite copies and low
  fidelity both add noise. A parameter is *lost* when its carrier is (probability
  ``loss``); it is then absent from the update (a mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

C_FIBER_KM_S = 2.0e5  # speed of light in fiber (km/s)


def werner_parameter(fidelity: float) -> float:
    """:math:`w = (4F - 1)/3`."""
    return (4.0 * fidelity - 1.0) / 3.0


def werner_fidelity(w: float) -> float:
    """:math:`F = (1 + 3w)/4`."""
    return (1.0 + 3.0 * w) / 4.0


def swap_fidelity(f1: float, f2: float, f_swap: float = 1.0) -> float:
    """Fidelity after swapping two Werner pairs with a BSM of fidelity ``f_swap``."""
    return werner_fidelity(werner_parameter(f1) * werner_parameter(f2) * werner_parameter(f_swap))


def decayed_fidelity(fidelity: float, t: float, coherence_time: float) -> float:
    """Fidelity after storing a Werner pair for ``t`` in a memory of coherence time ``T``."""
    if math.isinf(coherence_time):
        return fidelity
    return 0.25 + (fidelity - 0.25) * math.exp(-t / coherence_time)


def bbpssw(fidelity: float) -> tuple[float, float]:
    """One BBPSSW round on two Werner pairs: ``(output fidelity, success probability)``."""
    f, g = fidelity, (1.0 - fidelity) / 3.0
    p = f * f + 2 * f * g + 5 * g * g
    return (f * f + g * g) / p, p


def dejmps(coeffs: tuple[float, float, float, float]) -> tuple[tuple[float, float, float, float], float]:
    """One DEJMPS round on Bell-diagonal coefficients ``(A, B, C, D)`` (A = fidelity)."""
    a, b, c, d = coeffs
    n = (a + b) ** 2 + (c + d) ** 2
    return ((a * a + b * b) / n, 2 * c * d / n, (c * c + d * d) / n, 2 * a * b / n), n


@dataclass(frozen=True)
class QCNPath:
    """One client's path to the server.

    Attributes
    ----------
    distance_km : float
    hops : int
        Number of repeater nodes (0: a direct link).
    attenuation_db_per_km : float
    p_gen : float
        Success probability of one entanglement-generation attempt, before fiber loss.
    link_fidelity : float
        Fidelity of a freshly generated elementary pair.
    coherence_time_s : float
        Memory coherence time ``T`` (s).
    cutoff_s : float
        A stored qubit older than this is discarded and regenerated (s).
    swap_fidelity : float
        Fidelity of one Bell-state measurement.
    distillation_rounds : int
        Rounds of end-to-end distillation (each consumes twice the pairs).
    protocol : str
        ``"bbpssw"`` or ``"dejmps"``.
    """

    distance_km: float = 20.0
    hops: int = 1
    attenuation_db_per_km: float = 0.2
    p_gen: float = 0.5
    link_fidelity: float = 0.98
    coherence_time_s: float = 1.0
    cutoff_s: float = 0.5
    swap_fidelity: float = 0.99
    distillation_rounds: int = 0
    protocol: str = "bbpssw"

    def __post_init__(self) -> None:
        if self.distance_km < 0 or self.hops < 0 or self.distillation_rounds < 0:
            raise ValueError("distance_km, hops and distillation_rounds must be >= 0")
        for name in ("p_gen", "link_fidelity", "swap_fidelity"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        if not (self.coherence_time_s > 0 and self.cutoff_s > 0):
            raise ValueError("coherence_time_s and cutoff_s must be > 0")
        if self.protocol not in ("bbpssw", "dejmps"):
            raise ValueError(f"protocol must be 'bbpssw' or 'dejmps', got {self.protocol!r}")

    @property
    def segment_km(self) -> float:
        return self.distance_km / (self.hops + 1)

    @property
    def attempt_success(self) -> float:
        return self.p_gen * 10 ** (-self.attenuation_db_per_km * self.segment_km / 10)

    @property
    def attempt_time_s(self) -> float:
        return 2 * self.segment_km / C_FIBER_KM_S


@dataclass(frozen=True)
class Delivery:
    """One end-to-end pair: its fidelity and the time it took (s)."""

    fidelity: float
    latency_s: float


def deliver_pair(path: QCNPath, rng: np.random.Generator) -> Delivery:
    """Monte-Carlo one end-to-end pair (with distillation, ``2**rounds`` raw pairs)."""
    pairs = [_raw_pair(path, rng) for _ in range(2**path.distillation_rounds)]
    signalling = path.distance_km / C_FIBER_KM_S  # one-way classical message per round
    while len(pairs) > 1:
        nxt = []
        for a, b in zip(pairs[::2], pairs[1::2]):
            t = max(a.latency_s, b.latency_s) + signalling
            fa = decayed_fidelity(a.fidelity, t - a.latency_s, path.coherence_time_s)
            fb = decayed_fidelity(b.fidelity, t - b.latency_s, path.coherence_time_s)
            f = min(fa, fb)  # symmetric input: the weaker pair bounds the output
            if path.protocol == "bbpssw":
                f_out, p = bbpssw(f)
            else:
                rest = (1 - f) / 3
                (f_out, *_), p = dejmps((f, rest, rest, rest))
            if rng.random() < p:
                nxt.append(Delivery(f_out, t))
            else:  # failed: regenerate both from scratch after this attempt
                again = [_raw_pair(path, rng) for _ in range(2)]
                nxt.append(Delivery(min(x.fidelity for x in again), t + max(x.latency_s for x in again)))
        pairs = nxt
    return pairs[0]


def _raw_pair(path: QCNPath, rng: np.random.Generator) -> Delivery:
    """Generate all segments (with cutoffs), wait for the slowest, then swap."""
    p, t_att = path.attempt_success, path.attempt_time_s
    n_seg = path.hops + 1
    ready = np.zeros(n_seg)
    t_now = 0.0
    while True:
        # each segment retries until success; its pair then waits in memory
        ready = t_now + rng.geometric(p, size=n_seg) * t_att
        t_done = ready.max()
        waited = t_done - ready
        if waited.max() <= path.cutoff_s:
            break
        t_now = t_done  # some qubit exceeded the cutoff: discard all, start again
    fids = [decayed_fidelity(path.link_fidelity, w, path.coherence_time_s) for w in waited]
    fidelity = fids[0]
    for f in fids[1:]:
        fidelity = swap_fidelity(fidelity, f, path.swap_fidelity)
    swap_signalling = path.hops * path.segment_km / C_FIBER_KM_S
    return Delivery(fidelity, t_done + swap_signalling)


def encode_angles(values: np.ndarray, bound: float) -> np.ndarray:
    """Map parameters in ``[-bound, bound]`` to carrier angles in ``[0, pi]`` (clipped)."""
    return np.pi * (np.clip(values, -bound, bound) + bound) / (2 * bound)


def decode_angles(angles: np.ndarray, bound: float) -> np.ndarray:
    return angles * (2 * bound) / np.pi - bound


def teleport_parameters(
    values: np.ndarray,
    fidelity: float,
    copies: int,
    loss: float,
    bound: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """What the server recovers of ``values`` sent over pairs of ``fidelity``.

    Returns ``(estimates, delivered_mask)``; lost entries hold ``nan``. With
    ``copies == 0`` the expectation is exact (infinitely many copies); with fidelity one,
    no loss and exact expectations the values come back bit-identical.
    """
    values = np.asarray(values, dtype=np.float64)
    delivered = rng.random(values.shape) >= loss
    if fidelity >= 1.0 and copies == 0:
        out = values.copy()
    else:
        w = werner_parameter(fidelity)
        if w <= 0:
            out = np.full(values.shape, np.nan)
            delivered[...] = False
        else:
            phi = encode_angles(values, bound)
            z = w * np.cos(phi)
            if copies:
                z = 2.0 * rng.binomial(copies, (1 + z) / 2) / copies - 1.0
            out = decode_angles(np.arccos(np.clip(z / w, -1.0, 1.0)), bound)
            # parameters outside the bound come back clipped: keep those the sender clipped
            inside = np.abs(values) <= bound
            out = np.where(inside, out, np.clip(values, -bound, bound))
    return np.where(delivered, out, np.nan), delivered
