"""A vectorised BB84 link: pulses to secret key, with eavesdropper detection.

Pipeline for one batch of ``n`` pulses (numpy, no per-pulse Python loop):

1. **Source**: a single-photon source (one photon per pulse), or weak coherent pulses
   (photon number ~ Poisson(intensity)) with the vacuum + weak decoy method: each pulse
   is a signal (``mu``), decoy (``nu``) or vacuum pulse.
2. **Channel and detector**: transmittance
   :math:`\\eta = 10^{-\\alpha L / 10}\\, \\eta_{det}`; a pulse of ``k`` photons clicks with
   :math:`1 - (1-\\eta)^k`; dark counts click with ``p_dark`` per pulse and give a random bit;
   misalignment flips a detected bit with ``e_d``.
3. **Eavesdropper** (optional): intercept-resend on a fraction of the pulses: Eve
   measures in a random basis and resends her result, so a sifted intercepted bit is wrong
   with probability 1/4.
4. **Sifting**: keep clicks where Bob's basis equals Alice's (about half).
5. **Parameter estimation**: a random ``sample_fraction`` of the sifted signal bits is
   disclosed; their error rate is the estimated QBER. **Abort** if it exceeds
   ``qber_threshold`` (11 %: above it BB84 yields no key against collective attacks).
6. **Error reconciliation**: one-way syndrome decoding with an LDPC code: Alice sends
   ``H x_A`` for a random regular LDPC matrix ``H`` sized for the estimated QBER; Bob
   decodes the error pattern with belief propagation from the maintained ``ldpc``
   package; a block whose SHA-256 tags still differ is discarded. Leakage = syndrome bits
   + tag bits.
7. **Privacy amplification**: Toeplitz hashing (a 2-universal family) to

   .. math::

       \\ell = n_1 \\left[1 - h(e_1)\\right] - \\mathrm{leak}_{EC} - 2 \\log_2 (1/\\epsilon_{PA})

   bits, where for a single-photon source :math:`n_1 = n` and :math:`e_1` is the estimated
   QBER plus a statistical margin, and for weak coherent pulses :math:`n_1, e_1` are the
   decoy-state bounds on single-photon counts and errors (Ma, Qi, Zhao & Lo,
   PRA 72, 012326 (2005), Eqs. 34-37 with one weak decoy and vacuum).

Units: lengths in km, attenuation in dB/km, probabilities per pulse.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.signal import fftconvolve

QBER_BOUND = 0.11
TAG_BITS = 64  # SHA-256 tag truncated to 64 bits per reconciled block
EC_EFFICIENCY = 2.0  # syndrome bits / (n h(QBER)) of the LDPC reconciliation


class QKDAbort(RuntimeError):
    """A batch of pulses produced no secret key."""


class QBERAbort(QKDAbort):
    """The estimated QBER exceeded the security bound: possible eavesdropper."""


def binary_entropy(p: float | np.ndarray) -> float | np.ndarray:
    """:math:`h(p) = -p \\log_2 p - (1-p) \\log_2 (1-p)`, with h(0) = h(1) = 0."""
    p = np.clip(np.asarray(p, dtype=float), 1e-15, 1 - 1e-15)
    out = -p * np.log2(p) - (1 - p) * np.log2(1 - p)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class BB84Config:
    """Physical and protocol parameters of a BB84 link.

    Attributes
    ----------
    length_km : float
        Fiber length (km).
    attenuation_db_per_km : float
        Fiber loss (dB/km); 0.2 is standard telecom fiber at 1550 nm.
    source : str
        ``"single-photon"`` or ``"wcp"`` (weak coherent pulses with decoys).
    mu, nu : float
        Mean photon numbers of signal and weak-decoy pulses (WCP).
    p_signal, p_decoy : float
        Probabilities of sending a signal / decoy pulse (the rest are vacuum).
    detector_efficiency : float
        Bob's detection efficiency (0-1).
    dark_count : float
        Dark-count probability per pulse.
    misalignment : float
        Probability that a detected photon's bit flips (optical misalignment).
    eve_fraction : float
        Fraction of pulses an intercept-resend eavesdropper attacks.
    sample_fraction : float
        Fraction of sifted signal bits disclosed to estimate the QBER.
    qber_threshold : float
        Abort above this estimated QBER.
    ec_block : int
        Reconciliation block length (bits).
    epsilon_pa : float
        Privacy-amplification failure probability.
    """

    length_km: float = 10.0
    attenuation_db_per_km: float = 0.2
    source: str = "wcp"
    mu: float = 0.5
    nu: float = 0.1
    p_signal: float = 0.8
    p_decoy: float = 0.1
    detector_efficiency: float = 0.2
    dark_count: float = 1e-6
    misalignment: float = 0.015
    eve_fraction: float = 0.0
    sample_fraction: float = 0.1
    qber_threshold: float = QBER_BOUND
    ec_block: int = 2048
    epsilon_pa: float = 1e-10

    def __post_init__(self) -> None:
        if self.source not in ("single-photon", "wcp"):
            raise ValueError(f"source must be 'single-photon' or 'wcp', got {self.source!r}")
        if not self.length_km >= 0:
            raise ValueError("length_km must be >= 0")
        if not self.attenuation_db_per_km >= 0:
            raise ValueError("attenuation_db_per_km must be >= 0")
        for name in ("detector_efficiency", "dark_count", "misalignment", "eve_fraction", "sample_fraction", "p_signal", "p_decoy"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.source == "wcp" and not (0 < self.nu < self.mu):
            raise ValueError("decoy intensity nu must satisfy 0 < nu < mu")
        if self.p_signal + self.p_decoy > 1:
            raise ValueError("p_signal + p_decoy must be <= 1")
        if not 0 < self.sample_fraction < 1:
            raise ValueError("sample_fraction must be in (0, 1)")

    @property
    def transmittance(self) -> float:
        """Overall :math:`\\eta = 10^{-\\alpha L/10} \\eta_{det}`."""
        return 10 ** (-self.attenuation_db_per_km * self.length_km / 10) * self.detector_efficiency


@dataclass
class SiftedBits:
    """What sifting and parameter estimation leave: the raw key and the statistics."""

    alice: np.ndarray  # (m,) uint8, the key bits not disclosed
    bob: np.ndarray
    qber_estimate: float
    qber_true: float  # on the undisclosed bits (simulation only: Alice and Bob cannot see it)
    n_pulses: int
    gains: dict[str, float] = field(default_factory=dict)  # per intensity: clicks / pulses
    errors: dict[str, float] = field(default_factory=dict)  # per intensity: error rate


@dataclass(frozen=True)
class KeyBatch:
    """The outcome of distilling one batch of pulses."""

    key: np.ndarray  # (l,) uint8 secret bits
    n_pulses: int
    sifted: int
    qber_estimate: float
    leak_ec: int
    single_photon_bits: float
    phase_error: float

    @property
    def key_rate(self) -> float:
        """Secret bits per pulse."""
        return len(self.key) / self.n_pulses


class BB84Link:
    """A simulated BB84 link that turns pulses into secret key.

    Alice's bits and bases, which decide the key, come from the operating system's
    cryptographic randomness (:func:`os.urandom`): nothing in a run's configuration, its
    logs or the wire predicts them. The channel, Bob's and Eve's choices are physics, drawn
    from a numpy generator seeded from OS entropy. For reproducible science (tests,
    benchmarks) use :class:`InsecureSeededBB84Link`, never for keys that protect anything.

    Parameters
    ----------
    config : BB84Config

    Examples
    --------
    >>> link = BB84Link(BB84Config(length_km=10, source="single-photon"))
    >>> batch = link.generate_key(200_000)
    >>> batch.qber_estimate < 0.05 and len(batch.key) > 0
    True
    """

    def __init__(self, config: BB84Config) -> None:
        self.config = config
        self.rng = np.random.default_rng()  # OS entropy: physics only, never key bits

    def secret_bits(self, n: int) -> np.ndarray:
        """``n`` uniformly random bits for Alice's key-deciding choices (uint8 0/1)."""
        return np.unpackbits(np.frombuffer(os.urandom((n + 7) // 8), dtype=np.uint8), count=n)


    # --- physical layer and sifting ----------------------------------------------------
    def transmit(self, n_pulses: int) -> SiftedBits:
        """Send ``n_pulses``, detect, sift and estimate the QBER (steps 1-5, no abort)."""
        cfg, rng = self.config, self.rng
        n = int(n_pulses)
        a_bit = self.secret_bits(n)
        a_basis = self.secret_bits(n)
        b_basis = rng.integers(0, 2, n, dtype=np.uint8)
        if cfg.source == "wcp":
            kind = rng.choice(3, size=n, p=[cfg.p_signal, cfg.p_decoy, 1 - cfg.p_signal - cfg.p_decoy])
            intensity = np.array([cfg.mu, cfg.nu, 0.0])[kind]
            photons = rng.poisson(intensity)
        else:
            kind = np.zeros(n, dtype=np.int64)
            photons = np.ones(n, dtype=np.int64)

        # Eve: intercept-resend on a fraction of the non-empty pulses
        attacked = (rng.random(n) < cfg.eve_fraction) & (photons > 0)
        e_basis = rng.integers(0, 2, n, dtype=np.uint8)
        e_bit = np.where(e_basis == a_basis, a_bit, rng.integers(0, 2, n, dtype=np.uint8))
        sent_bit = np.where(attacked, e_bit, a_bit)
        sent_basis = np.where(attacked, e_basis, a_basis)
        sent_photons = np.where(attacked, 1, photons)

        eta = cfg.transmittance
        signal_click = rng.random(n) < 1.0 - (1.0 - eta) ** sent_photons
        dark_click = rng.random(n) < cfg.dark_count
        click = signal_click | dark_click
        random_bit = rng.integers(0, 2, n, dtype=np.uint8)
        measured = np.where(b_basis == sent_basis, sent_bit, random_bit)
        measured = measured ^ (rng.random(n) < cfg.misalignment).astype(np.uint8)
        b_bit = np.where(signal_click, measured, random_bit)  # dark-only click: random

        sifted = click & (a_basis == b_basis)
        gains, errors = {}, {}
        for k, name in enumerate(("signal", "decoy", "vacuum")):
            sent_k = kind == k
            if sent_k.any():
                s = sifted & sent_k
                # gain per pulse of this intensity, over pulses whose bases matched
                gains[name] = float(s.sum() / max(1, (sent_k & (a_basis == b_basis)).sum()))
                errors[name] = float((a_bit[s] != b_bit[s]).mean()) if s.any() else 0.0
        key_idx = np.flatnonzero(sifted & (kind == 0))
        disclose = rng.random(len(key_idx)) < cfg.sample_fraction
        sample, keep = key_idx[disclose], key_idx[~disclose]
        qber_est = float((a_bit[sample] != b_bit[sample]).mean()) if len(sample) else 1.0
        qber_true = float((a_bit[keep] != b_bit[keep]).mean()) if len(keep) else 1.0
        return SiftedBits(a_bit[keep], b_bit[keep], qber_est, qber_true, n, gains, errors)

    # --- distillation -------------------------------------------------------------------
    def generate_key(self, n_pulses: int) -> KeyBatch:
        """Steps 1-7: pulses to secret key bits.

        Raises
        ------
        QKDAbort
            If the estimated QBER exceeds the bound, or no secret key survives.
        """
        cfg = self.config
        sifted = self.transmit(n_pulses)
        if sifted.qber_estimate > cfg.qber_threshold:
            raise QBERAbort(
                f"QBER {sifted.qber_estimate:.3f} above the {cfg.qber_threshold:.2f} bound: "
                "possible eavesdropper, link aborted"
            )
        alice, bob, leak = self.reconcile(sifted.alice, sifted.bob, sifted.qber_estimate)
        n1, e1 = self._single_photon_bounds(sifted, len(alice))
        length = int(math.floor(n1 * (1 - binary_entropy(min(e1, 0.5))) - leak - 2 * math.log2(1 / cfg.epsilon_pa)))
        if length <= 0:
            raise QKDAbort(
                f"no secret key: {len(alice)} reconciled bits, leak {leak}, single-photon bits {n1:.0f}, "
                f"phase error {e1:.3f}"
            )
        seed_bits = self.secret_bits(len(alice) + length - 1)  # public, but never predictable
        key = toeplitz_hash(alice, seed_bits, length)
        if not np.array_equal(key, toeplitz_hash(bob, seed_bits, length)):
            raise QKDAbort("keys differ after privacy amplification (verification failed)")
        return KeyBatch(key, n_pulses, len(sifted.alice), sifted.qber_estimate, leak, n1, e1)

    def reconcile(self, alice: np.ndarray, bob: np.ndarray, qber: float) -> tuple[np.ndarray, np.ndarray, int]:
        """LDPC syndrome decoding per block; returns the agreed bits and the leakage."""
        from ldpc import BpDecoder

        block = self.config.ec_block
        q = min(max(qber, 1e-3), 0.11)
        # Syndrome length h(q) n times an efficiency f_EC = 2: a random regular code of a
        # few thousand bits decodes reliably there (measured: >= 95 % of blocks at 1.5-3 %
        # QBER); designed irregular codes get to f_EC ~ 1.1-1.2 at long block lengths.
        m = min(block - 1, int(math.ceil((EC_EFFICIENCY * binary_entropy(q) + 0.02) * block)))
        h = regular_ldpc(m, block, self.rng)
        decoder = BpDecoder(h, error_rate=q, max_iter=100, bp_method="product_sum", input_vector_type="syndrome")
        keep_a, keep_b, leak = [], [], 0
        for start in range(0, len(alice) - block + 1, block):
            xa, xb = alice[start : start + block], bob[start : start + block]
            syndrome = (h @ (xa ^ xb)) % 2  # = H x_A xor H x_B: Bob knows H x_B
            leak += m + TAG_BITS
            corrected = xb ^ decoder.decode(syndrome.astype(np.uint8)).astype(np.uint8)
            if _tag(corrected) == _tag(xa):
                keep_a.append(xa)
                keep_b.append(corrected)
        if not keep_a:
            return np.zeros(0, np.uint8), np.zeros(0, np.uint8), leak
        return np.concatenate(keep_a), np.concatenate(keep_b), leak

    def _single_photon_bounds(self, sifted: SiftedBits, n_bits: int) -> tuple[float, float]:
        """(bits from single photons, their phase error rate), with finite-size margin."""
        cfg = self.config
        n_sample = max(1, int(cfg.sample_fraction * (len(sifted.alice) / (1 - cfg.sample_fraction))))
        margin = math.sqrt(math.log(1 / cfg.epsilon_pa) / (2 * n_sample))  # Hoeffding
        if cfg.source == "single-photon":
            return float(n_bits), sifted.qber_estimate + margin
        mu, nu = cfg.mu, cfg.nu
        q_mu, q_nu = sifted.gains.get("signal", 0.0), sifted.gains.get("decoy", 0.0)
        y0 = sifted.gains.get("vacuum", 0.0)
        e_mu = sifted.qber_estimate
        # Ma et al. (2005): lower bound on the single-photon yield, upper bound on its error
        y1 = mu / (mu * nu - nu**2) * (q_nu * math.exp(nu) - q_mu * math.exp(mu) * nu**2 / mu**2 - (mu**2 - nu**2) / mu**2 * y0)
        if y1 <= 0 or q_mu <= 0:
            return 0.0, 0.5
        q1 = y1 * mu * math.exp(-mu)
        # E_mu Q_mu e^mu >= e0 Y0 + e1 Y1 mu  (e0 = 1/2: vacuum clicks are random)
        e1 = (e_mu * q_mu * math.exp(mu) - 0.5 * y0) / (y1 * mu)
        return n_bits * q1 / q_mu, min(0.5, e1 + margin)


class InsecureSeededBB84Link(BB84Link):
    """A BB84 link whose every draw, Alice's key bits included, comes from ``seed``.

    Reproducible statistics for tests and benchmarks. INSECURE: anyone who knows the seed
    computes every key. The key manager, the launcher and compose never use it.
    """

    def __init__(self, config: BB84Config, seed: int) -> None:
        super().__init__(config)
        self.rng = np.random.default_rng([seed, 0xB884])

    def secret_bits(self, n: int) -> np.ndarray:
        return self.rng.integers(0, 2, n, dtype=np.uint8)


def regular_ldpc(m: int, n: int, rng: np.random.Generator, column_weight: int = 3) -> sparse.csr_matrix:
    """A random (``column_weight``, ~regular) LDPC parity-check matrix, ``m x n``, uint8."""
    rows = np.concatenate([rng.choice(m, size=column_weight, replace=False) for _ in range(n)])
    cols = np.repeat(np.arange(n), column_weight)
    # rows are distinct within a column, so no entries sum: H is already binary
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.uint8), (rows, cols)), shape=(m, n))


def toeplitz_hash(bits: np.ndarray, seed_bits: np.ndarray, length: int) -> np.ndarray:
    """``T @ bits mod 2`` for the ``length x n`` Toeplitz matrix given by ``n + length - 1``
    seed bits (first column then first row), computed as a convolution by FFT."""
    n = len(bits)
    if len(seed_bits) != n + length - 1:
        raise ValueError(f"need {n + length - 1} seed bits, got {len(seed_bits)}")
    # T[i, j] = seed[i - j + n - 1]  =>  (T x)_i = sum_j seed[i - j + n - 1] x_j
    conv = fftconvolve(seed_bits.astype(np.float64), bits.astype(np.float64))
    return (np.rint(conv[n - 1 : n - 1 + length]).astype(np.int64) % 2).astype(np.uint8)


def _tag(bits: np.ndarray) -> bytes:
    return hashlib.sha256(np.packbits(bits).tobytes()).digest()[: TAG_BITS // 8]


def asymptotic_key_rate(config: BB84Config, f_ec: float = 1.16) -> float:
    """The standard asymptotic key rate (bits/pulse) of decoy-state BB84 (GLLP + decoys,
    Lo, Ma & Chen, PRL 94, 230504 (2005)), for comparison with the simulation:

    .. math::

        R = \\tfrac12 \\left[Q_1 (1 - h(e_1)) - Q_\\mu f\\, h(E_\\mu)\\right],\\quad
        Q_\\mu = Y_0 + 1 - e^{-\\eta\\mu},\\;
        E_\\mu Q_\\mu = \\tfrac12 Y_0 + e_d (1 - e^{-\\eta\\mu}),\\;
        Q_1 = (Y_0 + \\eta)\\mu e^{-\\mu},\\;
        e_1 = \\frac{\\tfrac12 Y_0 + e_d \\eta}{Y_0 + \\eta}.

    For a single-photon source ``mu`` is 1 photon exactly: :math:`Q_1 = Q = Y_0 + \\eta`.
    """
    eta, y0, ed = config.transmittance, config.dark_count, config.misalignment
    if config.source == "single-photon":
        q = y0 + eta
        e = (0.5 * y0 + ed * eta) / q
        return max(0.0, 0.5 * q * (1 - binary_entropy(e) - f_ec * binary_entropy(e)))
    mu = config.mu
    q_mu = y0 + 1 - math.exp(-eta * mu)
    e_mu = (0.5 * y0 + ed * (1 - math.exp(-eta * mu))) / q_mu
    y1 = y0 + eta
    q1 = y1 * mu * math.exp(-mu)
    e1 = (0.5 * y0 + ed * eta) / y1
    return max(0.0, 0.5 * (q1 * (1 - binary_entropy(e1)) - q_mu * f_ec * binary_entropy(e_mu)))
