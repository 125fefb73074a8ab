"""Compressing an update before the quantum channel: top-k with error feedback, low-bit quantisation.

The paper asks for "quantum-compatible data compression techniques for resource efficient
QCNs" (Chehimi et al., Sec. III-C5). Over the ``qcn`` transport every value of an update
costs teleported carrier qubits, each one end-to-end pair (and the pairs cost elementary
Bell pairs on every link, :func:`transport.qcn.sample_pairs_costed`). Two reductions, each
selectable by option and composable with each other and with the scheduler
(:mod:`transport.qcn_schedule` plans with the carriers they leave):

- **top-k sparsification with error feedback** (``qcn-topk`` = :math:`\\rho`): the node adds
  the residual :math:`e_t` it kept to its update, :math:`a = \\Delta + e_t`, sends the
  :math:`k = \\lceil \\rho n \\rceil` coordinates of largest :math:`|a_j|` (their indices go
  classically) and keeps :math:`e_{t+1} = a - \\hat a`, where :math:`\\hat a` is what it sent
  (zero elsewhere, quantised where quantised). Coordinates not sent are a zero update, not a
  loss (the ``mask`` marks channel losses only). Memory of what was not sent keeps the
  compressed iterates close to the uncompressed ones (Stich, Cordonnier & Jaggi, "Sparsified
  SGD with memory", NeurIPS 2018; Karimireddy et al., "Error feedback fixes SignSGD", ICML
  2019). The residual lives in the node's Flower state (``context.state``), so it survives
  between rounds and runs nowhere else;
- **b-bit quantisation** (``qcn-bits`` = b): each sent value :math:`v \\in [-s, s]`,
  :math:`s = \\max |v|` (sent classically), is rounded stochastically to one of :math:`2^b`
  levels, unbiased: :math:`E[Q(v)] = v` (Alistarh et al., "QSGD", NeurIPS 2017), and the
  level goes bit by bit, each bit as ``qcn-bit-copies`` carriers in a basis state read by
  majority (:func:`transport.qcn.transmit_levels`): ``b * qcn-bit-copies`` pairs a value
  instead of ``qcn-copies``.

Classical bytes of an update (what the channel needs besides the pairs): two bits per
teleported carrier (the Bell-measurement outcome that completes teleportation; Bennett et
al., PRL 70, 1895 (1993)), the scale as one float64, and for top-k the indices (a list of
:math:`\\lceil\\log_2 n\\rceil`-bit indices or an n-bit map, the shorter). "Saved" figures are
against sending every value analog with ``qcn-copies`` copies over the same path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from transport.qcn import QCNPath, transmit, transmit_levels

SCALE_BYTES = 8  # the classical scale (max |value|) of an update, one float64
OUTCOME_BITS = 2  # per teleported carrier


@dataclass(frozen=True)
class Encoding:
    """How an update's values become carriers.

    Attributes
    ----------
    copies : int
        Analog copies per value (``qcn-copies``; 0: exact expectations over one pair).
    topk : float
        Share of coordinates sent, :math:`\\rho \\in (0, 1]` (1: all, no error feedback unless quantised).
    bits : int
        Bits per quantised value (0: analog).
    bit_copies : int
        Carriers per bit when quantised.
    """

    copies: int = 100
    topk: float = 1.0
    bits: int = 0
    bit_copies: int = 3

    def __post_init__(self) -> None:
        if self.copies < 0 or not 0 < self.topk <= 1 or not 0 <= self.bits <= 16 or self.bit_copies < 1:
            raise ValueError(f"bad encoding {self}: copies >= 0, 0 < topk <= 1, 0 <= bits <= 16, bit_copies >= 1")

    @property
    def compressed(self) -> bool:
        return self.topk < 1 or self.bits > 0

    def sent_values(self, n: int) -> int:
        """Values sent of an update of ``n``."""
        return n if self.topk >= 1 else min(n, max(1, math.ceil(self.topk * n)))

    @property
    def carriers_per_value(self) -> int:
        return self.bits * self.bit_copies if self.bits else max(self.copies, 1)

    def carriers(self, n: int) -> int:
        """Carriers (end-to-end pairs) an update of ``n`` values needs."""
        return self.sent_values(n) * self.carriers_per_value

    def lost_fraction(self, copy_lost: float | np.ndarray) -> float | np.ndarray:
        """Expected share of sent values lost when each carrier is lost with probability
        ``copy_lost`` independently: all copies (analog), or all copies of any bit."""
        if self.bits:
            return 1.0 - (1.0 - copy_lost**self.bit_copies) ** self.bits
        return copy_lost ** max(self.copies, 1)

    def quality(self, w: float) -> float:
        r"""What a sent value is worth at mean carrier Werner parameter ``w``, in :math:`[0, 1]`.

        Analog: :math:`w^2`, the inverse of the estimator's variance relative to a perfect
        pair (FidelityWeightedFedAvg's weight). Digital: a copy reads the wrong bit with
        :math:`p = (1 - w)/2` and the majority of :math:`m` copies with
        :math:`e = \sum_{j > m/2} \binom{m}{j} p^j (1-p)^{m-j}` (half of a tie), and the value
        is worth :math:`(1 - 2e)^2`, the same measure (one copy gives back :math:`w^2`).
        """
        w = max(0.0, min(1.0, w))
        if not self.bits:
            return w * w
        p, m = (1.0 - w) / 2.0, self.bit_copies
        error = sum(math.comb(m, j) * p**j * (1 - p) ** (m - j) * (0.5 if 2 * j == m else 1.0)
                    for j in range((m + 1) // 2, m + 1))
        return (1.0 - 2.0 * error) ** 2

    def classical_bytes(self, n: int) -> int:
        """Classical bytes an update of ``n`` values needs (module doc)."""
        k = self.sent_values(n)
        index_bits = 0 if k == n else min(k * max(1, math.ceil(math.log2(max(n, 2)))), n)
        return math.ceil((k * self.carriers_per_value * OUTCOME_BITS + index_bits) / 8) + SCALE_BYTES

    def reference(self) -> Encoding:
        """The uncompressed encoding the savings are measured against."""
        return Encoding(self.copies)


@dataclass(frozen=True)
class Sent:
    """An update after compression and the channel.

    Attributes
    ----------
    estimate : np.ndarray
        What the server recovers of the update (zero where not sent; ``nan`` where lost).
    delivered : np.ndarray
        False only where a sent value was lost on the channel.
    residual : np.ndarray or None
        The node's new error-feedback memory (``None`` without compression).
    fidelity, latency_s, lost_fraction : float
        As :class:`transport.qcn.Transmission` (lost: share of all coordinates).
    pairs, bell_pairs, classical_bytes : int
        End-to-end pairs (carriers), the elementary Bell pairs they cost, classical bytes.
    pairs_saved, bytes_saved : float
        Against the uncompressed encoding over the same path (pairs at this send's Bell
        pairs per carrier).
    """

    estimate: np.ndarray
    delivered: np.ndarray
    residual: np.ndarray | None
    fidelity: float
    latency_s: float
    lost_fraction: float
    pairs: int
    bell_pairs: int
    classical_bytes: int
    pairs_saved: float
    bytes_saved: float


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``|values|``, ascending (ties: the lower index first)."""
    order = np.argsort(-np.abs(values), kind="stable")
    return np.sort(order[:k])


def quantise(values: np.ndarray, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Unbiased stochastic rounding of ``values`` to :math:`2^b` levels over :math:`[-s, s]`:
    ``(levels, s)``. With :math:`x = (v + s)/(2s) \\cdot (2^b - 1)`, the level is
    :math:`\\lfloor x \\rfloor + 1` with probability :math:`x - \\lfloor x \\rfloor`."""
    scale = float(np.abs(values).max()) if values.size else 0.0
    top = 2**bits - 1
    if scale == 0.0:
        return np.full(values.shape, top // 2, dtype=np.int64), 0.0
    x = (np.clip(values, -scale, scale) + scale) / (2 * scale) * top
    low = np.floor(x)
    return (low + (rng.random(values.shape) < x - low)).astype(np.int64).clip(0, top), scale


def dequantise(levels: np.ndarray, bits: int, scale: float) -> np.ndarray:
    return np.asarray(levels, dtype=np.float64) / (2**bits - 1) * 2 * scale - scale


def send_update(update: np.ndarray, path: QCNPath, encoding: Encoding, rng: np.random.Generator, channels: int = 1,
                residual: np.ndarray | None = None) -> Sent:
    """Compress ``update`` (plus the error-feedback ``residual``) and send it over ``path``.

    Without compression this is :func:`transport.qcn.transmit` of the whole update, draw
    for draw. The residual is ignored (and none is kept) without compression.
    """
    update = np.asarray(update, dtype=np.float64).ravel()
    n = update.size
    reference_bytes = encoding.reference().classical_bytes(n)
    if not encoding.compressed:
        sent = transmit(update, path, encoding.copies, rng, channels)
        return Sent(sent.estimates, sent.delivered, None, sent.fidelity, sent.latency_s,
                    float(1.0 - sent.delivered.mean()) if n else 0.0, sent.pairs, sent.bell_pairs, reference_bytes, 0.0, 0.0)
    acc = update + (residual if residual is not None and residual.shape == update.shape else 0.0)
    k = encoding.sent_values(n)
    idx = np.arange(n) if k == n else top_k(acc, k)
    chosen = acc[idx]
    if encoding.bits:
        levels, scale = quantise(chosen, encoding.bits, rng)
        sent = transmit_levels(levels, encoding.bits, path, encoding.bit_copies, rng, channels)
        values = dequantise(np.nan_to_num(sent.estimates), encoding.bits, scale)
        intended = dequantise(levels, encoding.bits, scale)  # what the node meant to send
    else:
        sent = transmit(chosen, path, encoding.copies, rng, channels)
        values, intended = np.nan_to_num(sent.estimates), chosen
    estimate, delivered = np.zeros(n), np.ones(n, dtype=bool)
    estimate[idx] = np.where(sent.delivered, values, np.nan)
    delivered[idx] = sent.delivered
    new_residual = acc.copy()
    new_residual[idx] -= intended  # the memory keeps what compression left out, not what the channel lost
    per_carrier = sent.bell_pairs / sent.pairs if sent.pairs else 0.0
    reference_carriers = encoding.reference().carriers(n)
    used_bytes = encoding.classical_bytes(n)
    return Sent(estimate, delivered, new_residual, sent.fidelity, sent.latency_s,
                float(1.0 - delivered.mean()) if n else 0.0, sent.pairs, sent.bell_pairs, used_bytes,
                float(per_carrier * reference_carriers - sent.bell_pairs), float(reference_bytes - used_bytes))
