"""Differential privacy of client updates, with privacy accounting.

*Local DP* (``dp-mode = "local"``): on each node, before its reply leaves, the update
:math:`\\Delta = w_k - w^t` (over all parameters) is clipped to L2 norm ``C`` and Gaussian
noise :math:`\\mathcal N(0, \\sigma^2 C^2 I)` is added:

.. math:: \\tilde w_k = w^t + \\Delta \\min\\!\\left(1, \\frac{C}{\\lVert\\Delta\\rVert_2}\\right) + \\mathcal N(0, \\sigma^2 C^2 I).

*Central DP* (``dp-mode = "central"``): the server clips each update and noises the
aggregate with Flower's :class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`
(noise std :math:`\\sigma C / m` for ``m`` sampled clients); the wire is untouched.

Accounting (both modes, client-level DP): each round is a Gaussian mechanism with noise
multiplier :math:`\\sigma` on a client sampled with probability ``q`` (``fraction-train``).
:class:`PrivacyAccountant` composes one Poisson-subsampled Gaussian event per round in
the RDP accountant of Google's ``dp-accounting`` and reports :math:`\\varepsilon(\\delta)`.
The bound counts amplification by subsampling; Flower samples a fixed-size subset without
replacement, for which the Poisson bound with ``q = m / N`` is the usual approximation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from transport.base import Envelope, Transport

DP_MODES = ("local", "central")


def validate_dp(clip: float, noise_multiplier: float, delta: float) -> None:
    """Check DP parameters at start-up (Flower accepts some that fail only later)."""
    for name, v in (("dp-clip", clip), ("dp-noise-multiplier", noise_multiplier)):
        if isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if isinstance(delta, bool) or not 0 < delta < 1:
        raise ValueError(f"dp-delta must be in (0, 1), got {delta!r}")


def clip_update(update: np.ndarray, clip: float) -> np.ndarray:
    """Scale ``update`` to L2 norm at most ``clip``; a zero update stays zero."""
    norm = float(np.linalg.norm(update))
    if norm <= clip:  # includes norm == 0 (Flower's helper divides by it)
        return update
    return update * (clip / norm)


class LocalDPTransport(Transport):
    """Clip and noise a node's update before it leaves (see the module doc).

    Parameters
    ----------
    clip : float
        L2 clipping norm ``C`` of the whole update.
    noise_multiplier : float
        :math:`\\sigma`: noise std is :math:`\\sigma C`.
    seed : int
        With the run, node and round, seeds the noise (reproducible, distinct per message).
    """

    name = "dp"

    def __init__(self, clip: float, noise_multiplier: float, seed: int = 0, mode: str = "local") -> None:
        validate_dp(clip, noise_multiplier, 0.5)
        if mode not in DP_MODES:
            raise ValueError(f"dp-mode must be one of {DP_MODES}, got {mode!r}")
        self.clip, self.noise_multiplier, self.seed, self.mode = clip, noise_multiplier, seed, mode

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object], sae_id: str) -> LocalDPTransport:
        return cls(
            float(run_config["dp-clip"]),  # type: ignore[arg-type]
            float(run_config["dp-noise-multiplier"]),  # type: ignore[arg-type]
            int(run_config["seed"]),  # type: ignore[call-overload]
            str(run_config["dp-mode"]),
        )

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if self.mode != "local" or envelope.direction != "up" or request is None:
            return content
        node = int(envelope.src.rsplit("-", 1)[-1]) if envelope.src.startswith("node-") else 0
        rng = np.random.default_rng([self.seed, envelope.run_id % 2**32, node % 2**32, envelope.server_round])
        out = RecordDict(dict(content.items()))
        for key, record in content.array_records.items():
            if key not in request.array_records:
                continue
            names = list(record.keys())
            new = np.concatenate([record[n].numpy().ravel() for n in names])
            old = np.concatenate([request.array_records[key][n].numpy().ravel() for n in names])
            noisy = old + clip_update(new - old, self.clip) + rng.normal(0.0, self.noise_multiplier * self.clip, new.shape)
            arrays, offset = {}, 0
            for n in names:
                shape = record[n].numpy().shape
                size = int(np.prod(shape))
                arrays[n] = Array(noisy[offset : offset + size].reshape(shape))
                offset += size
            out[key] = ArrayRecord(arrays)
        return out

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        return content


class PrivacyAccountant:
    """Client-level (epsilon, delta) of ``rounds`` Poisson-subsampled Gaussian releases,
    from the RDP accountant of ``dp-accounting``.

    Examples
    --------
    >>> acc = PrivacyAccountant(noise_multiplier=1.0, sampling_rate=0.1, delta=1e-5)
    >>> acc.step(10)
    >>> round(acc.epsilon, 3) > 0
    True
    """

    BOUND = "RDP (dp-accounting), Poisson-subsampled Gaussian, amplification by subsampling"

    def __init__(self, noise_multiplier: float, sampling_rate: float, delta: float) -> None:
        validate_dp(1.0, noise_multiplier, delta)
        if not 0 < sampling_rate <= 1:
            raise ValueError(f"sampling rate must be in (0, 1], got {sampling_rate}")
        self.noise_multiplier, self.sampling_rate, self.delta = noise_multiplier, sampling_rate, delta
        self.rounds = 0

    def step(self, rounds: int = 1) -> None:
        self.rounds += rounds

    @property
    def epsilon(self) -> float:
        return rdp_epsilon(self.noise_multiplier, self.sampling_rate, self.rounds, self.delta)


def rdp_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """epsilon(delta) of ``steps`` Poisson-subsampled Gaussian mechanisms (dp-accounting RDP)."""
    if steps == 0:
        return 0.0
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    event = dp_event.PoissonSampledDpEvent(sampling_rate, dp_event.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))
