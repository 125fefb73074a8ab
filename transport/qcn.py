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
  :math:`\\rho \\to w\\rho + (1-w) I/2` to the carrier qubit. A value mapped to the angle
  :math:`\\phi \\in [0, \\pi]` in :math:`\\cos(\\phi/2)|0\\rangle + \\sin(\\phi/2)|1\\rangle`
  gives :math:`\\langle Z\\rangle = w \\cos\\phi`; the server measures ``copies`` copies and
  inverts, :math:`\\hat\\phi = \\arccos(\\hat Z / \\bar w)` (clipped): finite copies and low
  fidelity both add noise, of standard deviation about :math:`1/(\\bar w \\sqrt{copies})` in Z.
- **loss**: the carrier waits in the sender's memory while its pair is established; a
  carrier that waits longer than the cutoff is discarded like any stored qubit, so that
  copy is lost; a value whose copies are all lost is absent from the update (a mask).
  Path loss thus shows up as time (more attempts), and time as loss and decoherence.
- **latency** of an update: its pairs are served in order on ``channels`` parallel
  channels; the update has arrived when the busiest channel is done and the last
  teleportation outcome (one classical message, :math:`L/c`) has reached the server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from qfl.common.specs import from_spec

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


    @property
    def name(self) -> str:
        return f"{self.distance_km:g} km/{self.hops} hops"


# Named paths (fields can be overridden: "far:coherence_time_s=0.01,hops=4"). Fidelities,
# memories and BSMs are in the range reported for trapped-ion / NV / atomic-ensemble
# repeater nodes; "ideal" is a perfect, instantaneous link (for tests and controls).
PATHS: dict[str, QCNPath] = {
    "ideal": QCNPath(0.0, 0, p_gen=1.0, link_fidelity=1.0, coherence_time_s=math.inf,
                     cutoff_s=math.inf, swap_fidelity=1.0),
    "metro": QCNPath(10.0, 0, p_gen=0.5, link_fidelity=0.99, coherence_time_s=1.0, cutoff_s=0.5,
                     swap_fidelity=0.99),
    "regional": QCNPath(60.0, 1, p_gen=0.5, link_fidelity=0.97, coherence_time_s=0.1, cutoff_s=0.05,
                        swap_fidelity=0.98),
    "long-haul": QCNPath(200.0, 3, p_gen=0.3, link_fidelity=0.95, coherence_time_s=0.05, cutoff_s=0.04,
                         swap_fidelity=0.97),
    "poor-memory": QCNPath(120.0, 2, p_gen=0.3, link_fidelity=0.93, coherence_time_s=0.004, cutoff_s=0.008,
                           swap_fidelity=0.95),
    # long-haul with memories good enough for one round of distillation to pay off
    "distilled": QCNPath(200.0, 3, p_gen=0.3, link_fidelity=0.95, coherence_time_s=1.0, cutoff_s=0.5,
                         swap_fidelity=0.97, distillation_rounds=1, protocol="dejmps"),
}


def get_path(spec: str) -> QCNPath:
    """A named path, optionally with fields overridden: ``"metro"``,
    ``"long-haul:distillation_rounds=1,protocol=dejmps"``.

    Raises
    ------
    ValueError
        Unknown name or field, or a value out of range (naming it).
    """
    return from_spec(spec, PATHS, "QCN path")[0]


# --- Monte Carlo of end-to-end pairs ----------------------------------------------------

# A path whose segments almost never all succeed within the cutoff would loop for ever.
MAX_CUTOFF_RESTARTS = 100_000


def sample_pairs(path: QCNPath, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` end-to-end pairs, each established from scratch: ``(fidelity[n], latency_s[n])``.

    A pair is ``2**distillation_rounds`` raw pairs distilled pairwise; a raw pair is one
    elementary pair per segment (geometric attempts; all restart if a stored qubit
    passes the cutoff), decayed while waiting for the slowest, then swapped at every
    repeater. Latency counts the attempts, the memory waiting and the classical
    signalling of swaps and distillation.
    """
    fid, lat, _ = sample_pairs_costed(path, n, rng)
    return fid, lat


def sample_pairs_costed(path: QCNPath, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample_pairs` and what each pair cost: ``(fidelity[n], latency_s[n], bell_pairs[n])``.

    ``bell_pairs`` counts the **elementary (link-level) Bell pairs** heralded to make each
    end-to-end pair: one per segment per attempt cycle of a raw pair (a cycle that passes
    the cutoff discards the pairs it stored and starts again: they were generated and
    are spent, as in the cut-off analyses of Rozpędek et al., PRA 99, 052330 (2019) and
    Li et al., PRA 103, 062423 (2021)), and both inputs of every distillation attempt,
    failed ones included. It draws nothing more than :func:`sample_pairs`: the same
    generator gives the same pairs through either.
    """
    return _distilled(path, path.distillation_rounds, n, rng)


def deliver_pair(path: QCNPath, rng: np.random.Generator) -> tuple[float, float]:
    """One end-to-end pair: ``(fidelity, latency_s)``."""
    f, t = sample_pairs(path, 1, rng)
    return float(f[0]), float(t[0])


def _raw_pairs(path: QCNPath, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_seg = path.hops + 1
    p, t_att = path.attempt_success, path.attempt_time_s
    w_link, w_bsm = werner_parameter(path.link_fidelity), werner_parameter(path.swap_fidelity)
    fid, lat, cost = np.empty(n), np.empty(n), np.zeros(n)
    start = np.zeros(n)
    todo = np.arange(n)
    for _ in range(MAX_CUTOFF_RESTARTS):
        ready = rng.geometric(p, size=(todo.size, n_seg)) * t_att  # each segment's success time
        cost[todo] += n_seg  # one heralded pair per segment this cycle, kept or discarded
        done = ready.max(axis=1)
        waited = done[:, None] - ready
        ok = waited.max(axis=1) <= path.cutoff_s
        idx = todo[ok]
        # swapping Werner pairs multiplies their parameters: w = prod(w_i) * w_BSM^hops
        w = np.prod(w_link * _decay(waited[ok], path.coherence_time_s), axis=1) * w_bsm**path.hops
        fid[idx] = werner_fidelity(w)
        lat[idx] = start[idx] + done[ok] + path.hops * path.segment_km / C_FIBER_KM_S
        start[todo[~ok]] += done[~ok]  # a qubit passed the cutoff: discard all, start again
        todo = todo[~ok]
        if todo.size == 0:
            return fid, lat, cost
    raise ValueError(f"QCN path {path}: segments almost never all succeed within the cutoff; raise cutoff_s")


def _distilled(path: QCNPath, level: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if level == 0:
        return _raw_pairs(path, n, rng)
    signalling = path.distance_km / C_FIBER_KM_S  # one-way classical message per round
    fid, lat, start, cost = np.empty(n), np.empty(n), np.zeros(n), np.zeros(n)
    todo = np.arange(n)
    while todo.size:
        fa, ta, ca = _distilled(path, level - 1, todo.size, rng)
        fb, tb, cb = _distilled(path, level - 1, todo.size, rng)
        cost[todo] += ca + cb  # both inputs are consumed, whether the round succeeds or not
        t = np.maximum(ta, tb) + signalling
        # both inputs decay while the other is made and the outcomes are exchanged;
        # symmetric input: the weaker pair bounds the output
        f = np.minimum(
            0.25 + (fa - 0.25) * _decay(t - ta, path.coherence_time_s),
            0.25 + (fb - 0.25) * _decay(t - tb, path.coherence_time_s),
        )
        if path.protocol == "bbpssw":
            f_out, p = bbpssw(f)
        else:
            rest = (1 - f) / 3
            (f_out, *_), p = dejmps((f, rest, rest, rest))
        ok = rng.random(todo.size) < p
        fid[todo[ok]] = f_out[ok]
        lat[todo[ok]] = start[todo[ok]] + t[ok]
        start[todo[~ok]] += t[~ok]  # failed: both pairs are gone, make two new ones
        todo = todo[~ok]
    return fid, lat, cost


def _decay(t: np.ndarray, coherence_time: float) -> np.ndarray:
    """Werner-parameter factor :math:`e^{-t/T}` of a memory (1 for ``T = inf``)."""
    return np.ones_like(t) if math.isinf(coherence_time) else np.exp(-t / coherence_time)


# --- parameters carried by qubits ----------------------------------------------------


def encode_angles(values: np.ndarray, bound: float) -> np.ndarray:
    """Map values in ``[-bound, bound]`` to carrier angles in ``[0, pi]`` (clipped)."""
    return np.pi * (np.clip(values, -bound, bound) + bound) / (2 * bound)


def decode_angles(angles: np.ndarray, bound: float) -> np.ndarray:
    return angles * (2 * bound) / np.pi - bound


@dataclass(frozen=True)
class Carriers:
    """Carrier qubits, each teleported over one end-to-end pair of a path.

    Attributes
    ----------
    w : np.ndarray
        The Werner parameter each carrier went through: its pair's, times the memory decay
        :math:`e^{-t/T}` while the carrier waited in the sender's memory for that pair.
    alive : np.ndarray
        Boolean: the carrier's wait stayed within the cutoff (else it was discarded).
    latency_s : float
        The pairs served in order on the channels, plus the last classical outcome (s).
    bell_pairs : int
        Elementary Bell pairs heralded to make the carriers' pairs
        (:func:`sample_pairs_costed`).
    """

    w: np.ndarray
    alive: np.ndarray
    latency_s: float
    bell_pairs: int


def carrier_state(path: QCNPath, fidelity: np.ndarray, latency_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(alive, w)`` of carriers whose pairs arrived with ``fidelity`` after ``latency_s``:
    a carrier waits for its pair in memory, decays meanwhile (:math:`w = w_{pair} e^{-t/T}`)
    and is discarded when the wait passes the cutoff."""
    alive = latency_s <= path.cutoff_s
    return alive, werner_parameter(fidelity) * _decay(latency_s, path.coherence_time_s)


def send_carriers(path: QCNPath, n: int, rng: np.random.Generator, channels: int = 1) -> Carriers:
    """``n`` carriers over ``path``, their pairs served in order on ``channels`` parallel channels."""
    f, t, cost = sample_pairs_costed(path, n, rng)
    per_channel = np.zeros(channels * math.ceil(n / channels))
    per_channel[:n] = t
    latency = float(per_channel.reshape(-1, channels).sum(axis=0).max()) + path.distance_km / C_FIBER_KM_S
    alive, w = carrier_state(path, f, t)
    return Carriers(w, alive, latency, int(cost.sum()))


@dataclass(frozen=True)
class Transmission:
    """What the server recovers of values sent over a path.

    Attributes
    ----------
    estimates : np.ndarray
        The server's estimate of each value; ``nan`` where it was lost.
    delivered : np.ndarray
        Boolean, same shape: at least one copy of the value arrived.
    fidelity : float
        Mean fidelity of the pairs (with carrier storage) that carried the copies that
        arrived: what the server inverts with, and what travels with the update.
    latency_s : float
        From the first pair request to the last classical teleportation outcome (s).
    pairs : int
        End-to-end pairs consumed (one per carrier).
    lost_copies : float
        Fraction of copies whose carrier passed the cutoff before its pair arrived.
    bell_pairs : int
        Elementary Bell pairs the carriers' pairs cost (:func:`sample_pairs_costed`).
    """

    estimates: np.ndarray
    delivered: np.ndarray
    fidelity: float
    latency_s: float
    pairs: int
    lost_copies: float
    bell_pairs: int = 0


def transmit(values: np.ndarray, path: QCNPath, copies: int, rng: np.random.Generator, channels: int = 1) -> Transmission:
    """Send ``values`` over ``path``, each as ``copies`` teleported carrier qubits.

    Each value gets ``max(copies, 1)`` end-to-end pairs (:func:`sample_pairs`), served in
    order on ``channels`` parallel channels. A carrier waits in the sender's memory for
    its pair: it decays meanwhile and is discarded (the copy is lost) when the wait
    passes the cutoff; a value is lost when every copy is. The server measures Z on
    the copies that arrived and inverts with the mean Werner parameter :math:`\\bar w`
    (module doc). ``copies = 0`` means exact expectations (infinitely many copies) on
    one pair per value; then fidelity one gives back the values bit-identical. The
    range ``[-bound, bound]`` of the encoding is ``max |values|``, sent classically.
    """
    if copies < 0 or channels < 1:
        raise ValueError(f"copies must be >= 0 and channels >= 1, got {copies}, {channels}")
    values = np.asarray(values, dtype=np.float64)
    flat = values.ravel()
    n, k = flat.size, max(copies, 1)
    sent = send_carriers(path, n * k, rng, channels)
    w, alive = sent.w.reshape(n, k), sent.alive.reshape(n, k)
    w_bar = float(w[alive].mean()) if alive.any() else 0.0
    delivered = alive.any(axis=1) & (w_bar > 0)  # at w <= 0 the copies carry nothing
    bound = float(np.abs(flat).max()) if n else 0.0
    if (copies == 0 and np.all(w[alive] == 1.0)) or bound == 0.0:
        est = flat.copy()
    else:
        cos_phi = np.cos(encode_angles(flat, bound))[:, None]
        n_alive = np.maximum(alive.sum(axis=1), 1)
        if copies == 0:
            z = (w * alive).sum(axis=1) / n_alive * cos_phi[:, 0]
        else:  # one +-1 outcome per copy: P(+1) = (1 + w cos(phi)) / 2
            outcome = np.where(rng.random((n, k)) < (1 + w * cos_phi) / 2, 1.0, -1.0)
            z = (outcome * alive).sum(axis=1) / n_alive
        est = decode_angles(np.arccos(np.clip(z / w_bar, -1.0, 1.0)), bound) if w_bar > 0 else np.zeros(n)
    est = np.where(delivered, est, np.nan).reshape(values.shape)
    return Transmission(
        estimates=est,
        delivered=delivered.reshape(values.shape),
        fidelity=werner_fidelity(w_bar),
        latency_s=sent.latency_s,
        pairs=n * k,
        lost_copies=float(1.0 - alive.mean()) if n else 0.0,
        bell_pairs=sent.bell_pairs,
    )


def transmit_levels(levels: np.ndarray, bits: int, path: QCNPath, copies: int, rng: np.random.Generator,
                    channels: int = 1) -> Transmission:
    """Send integers in ``[0, 2**bits)`` bit by bit, each bit as ``copies`` carriers in a basis state.

    A carrier prepared in :math:`|b\\rangle` and teleported through a Werner pair of
    parameter :math:`w` (its decay while waiting included) comes out of the depolarizing
    channel :math:`\\rho \\to w\\rho + (1-w)I/2`, so measuring Z returns the wrong bit with
    probability :math:`(1 - w)/2`. The server takes the majority of the copies that
    arrived (a tie is a fair coin); a bit whose copies were all lost loses its value.
    With ``copies`` copies of each of ``bits`` bits a value costs ``bits * copies`` pairs,
    against ``qcn-copies`` (often 100) for one analog value (:func:`transmit`): the
    "quantum-compatible compression" of the paper (Sec. III-C5) as a repetition code.
    ``estimates`` holds the decoded levels (``nan`` where lost).
    """
    if bits < 1 or copies < 1 or channels < 1:
        raise ValueError(f"bits, copies and channels must be >= 1, got {bits}, {copies}, {channels}")
    levels = np.asarray(levels, dtype=np.int64).ravel()
    n = levels.size
    if n and (levels.min() < 0 or levels.max() >= 2**bits):
        raise ValueError(f"levels must lie in [0, {2**bits}), got [{levels.min()}, {levels.max()}]")
    sent = send_carriers(path, n * bits * copies, rng, channels)
    w, alive = sent.w.reshape(n, bits, copies), sent.alive.reshape(n, bits, copies)
    truth = (levels[:, None] >> np.arange(bits)[None, :]) & 1  # (n, bits), least significant first
    wrong = rng.random((n, bits, copies)) < (1 - w) / 2
    votes = np.where(wrong, -1, 1) * alive  # +1: a copy that read the true bit
    tally = votes.sum(axis=2)
    coin = rng.random((n, bits)) < 0.5
    right = (tally > 0) | ((tally == 0) & coin)
    decoded_bits = np.where(right, truth, 1 - truth)
    delivered = alive.any(axis=2).all(axis=1)
    decoded = (decoded_bits << np.arange(bits)[None, :]).sum(axis=1).astype(np.float64)
    w_bar = float(w[alive].mean()) if alive.any() else 0.0
    return Transmission(
        estimates=np.where(delivered, decoded, np.nan),
        delivered=delivered,
        fidelity=werner_fidelity(w_bar),
        latency_s=sent.latency_s,
        pairs=n * bits * copies,
        lost_copies=float(1.0 - alive.mean()) if n else 0.0,
        bell_pairs=sent.bell_pairs,
    )
