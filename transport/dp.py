"""Differential privacy of client updates, with privacy accounting.

*Local DP* (``dp-mode = "local"``): on each node, before its reply leaves, the update
:math:`\\Delta = w_k - w^t` (over all parameters) is clipped to L2 norm ``C`` and Gaussian
noise :math:`\\mathcal N(0, \\sigma^2 C^2 I)` is added:

.. math:: \\tilde w_k = w^t + \\Delta \\min\\!\\left(1, \\frac{C}{\\lVert\\Delta\\rVert_2}\\right) + \\mathcal N(0, \\sigma^2 C^2 I).

*Central DP* (``dp-mode = "central"``): the server clips each update to ``C``, averages
them with equal weights and adds noise of std :math:`\\sigma C / m'` to the average of
:math:`m'` updates (:class:`~strategies.central_dp.CentralDPFixedClipping`, built on Flower's
``DifferentialPrivacyServerSideFixedClipping``); the wire is untouched.

Accounting is client-level, for neighbours that replace one client's data (a clipped
contribution then moves by up to :math:`2C`, so each release is a Gaussian mechanism of
noise multiplier :math:`\\sigma/2`), in Google's ``dp-accounting`` (RDP, or PLD which
is tighter):

- local DP (:class:`LocalDPLedger`): the server is the adversary and chose the sample, so
  there is no amplification: each client's epsilon composes its own releases;
- central DP (:class:`CentralDPLedger`): each round is Flower's real sampling, ``m`` of the
  ``N`` available nodes without replacement (``SampledWithoutReplacementDpEvent``, RDP only).

Every noise draw comes from OS entropy, never from the run's seed (see the classes).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import RecordDict

from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.records import clip_update, flatten, unflatten
from transport.base import Envelope, Transport

DP_MODES = ("local", "central")


def validate_dp(clip: float, noise_multiplier: float, delta: float) -> None:
    """Check DP parameters at start-up (Flower accepts some that fail only later)."""
    for name, v in ((KEY.dp_clip, clip), (KEY.dp_noise_multiplier, noise_multiplier)):
        if isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if isinstance(delta, bool) or not 0 < delta < 1:
        raise ValueError(f"{KEY.dp_delta} must be in (0, 1), got {delta!r}")


class LocalDPTransport(Transport):
    """Clip and noise a node's update before it leaves (see the module doc).

    Parameters
    ----------
    clip : float
        L2 clipping norm ``C`` of the whole update.
    noise_multiplier : float
        :math:`\\sigma`: noise std is :math:`\\sigma C`.
    mode : str
        ``"local"`` noises here; ``"central"`` leaves the update to the server.

    The noise is drawn from OS entropy, never from the run's seed: noise that the server
    (or anyone who knows the configuration) could regenerate, it could also subtract.
    """

    name = "dp"

    def __init__(self, clip: float, noise_multiplier: float, mode: str = "local") -> None:
        validate_dp(clip, noise_multiplier, 0.5)
        if mode not in DP_MODES:
            raise ValueError(f"the DP mode must be one of {DP_MODES}, got {mode!r}")
        self.clip, self.noise_multiplier, self.mode = clip, noise_multiplier, mode

    @classmethod
    def from_run_config(cls, cfg: RunConfig, node: NodeConfig | None = None) -> LocalDPTransport:
        return cls(cfg.dp_clip, cfg.dp_noise_multiplier, cfg.dp_mode)

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if self.mode != "local" or envelope.direction != "up" or request is None:
            return content
        rng = np.random.default_rng()  # OS entropy: see the class doc
        out = RecordDict(dict(content.items()))
        for key, record in content.array_records.items():
            if key not in request.array_records:
                continue
            names = list(record.keys())
            new, old = flatten(record, names), flatten(request.array_records[key], names)
            noisy = old + clip_update(new - old, self.clip) + rng.normal(0.0, self.noise_multiplier * self.clip, new.shape)
            out[key] = unflatten(noisy, record, names)
        return out

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        return content


ACCOUNTANTS = ("rdp", "pld")


def gaussian_event(noise_multiplier: float):  # -> dp_event.GaussianDpEvent
    """One release of a clipped contribution with noise std :math:`\\sigma C`, for neighbours
    that *replace* one client's data: the contribution moves by up to :math:`2C`, so the
    noise is :math:`\\sigma/2` times the sensitivity."""
    from dp_accounting import dp_event

    return dp_event.GaussianDpEvent(noise_multiplier / 2.0)


def epsilon_of(events: list[tuple[object, int]], delta: float, accountant: str = "rdp") -> float:
    """epsilon(delta) of ``(dp_event, count)`` compositions in dp-accounting's ``accountant``.

    A :class:`~dp_accounting.dp_event.SampledWithoutReplacementDpEvent` is accounted for
    replace-one neighbours, as its analysis requires (RDP only: dp-accounting's PLD
    accountant has no such event).
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"the accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not events:
        return 0.0
    from dp_accounting import dp_event
    from dp_accounting.privacy_accountant import NeighboringRelation

    sampled = any(isinstance(e, dp_event.SampledWithoutReplacementDpEvent) for e, _ in events)
    relation = NeighboringRelation.REPLACE_ONE if sampled else NeighboringRelation.ADD_OR_REMOVE_ONE
    if accountant == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    else:
        if sampled:
            raise ValueError("the PLD accountant has no event for fixed-size sampling: use the RDP accountant")
        from dp_accounting.pld import pld_privacy_accountant

        acc = pld_privacy_accountant.PLDAccountant(neighboring_relation=relation)
    for event, count in events:
        acc.compose(event, count)
    return float(acc.get_epsilon(delta))


class LocalDPLedger:
    """Local DP: each client's epsilon from its own releases, with no amplification.

    Under local DP the adversary is the server, and the server chose whom to sample, so
    sampling hides nothing from it: a client's epsilon is that of the updates it released
    (every reply the server received from it, accepted or not), composed.

    Examples
    --------
    >>> ledger = LocalDPLedger(noise_multiplier=2.0, delta=1e-5)
    >>> ledger.record(["partition-0", "partition-1"]); ledger.record(["partition-0"])
    >>> ledger.epsilon("partition-0") > ledger.epsilon("partition-1") > 0
    True
    """

    def __init__(self, noise_multiplier: float, delta: float, accountant: str = "rdp") -> None:
        validate_dp(1.0, noise_multiplier, delta)
        epsilon_of([], delta, accountant)  # checks the accountant's name
        self.noise_multiplier, self.delta, self.accountant = noise_multiplier, delta, accountant
        self.releases: dict[str, int] = {}
        self._cache: dict[int, float] = {}

    def record(self, clients: list[str]) -> None:
        """One more release by each of ``clients``."""
        for client in clients:
            self.releases[client] = self.releases.get(client, 0) + 1

    def epsilon(self, client: str) -> float:
        count = self.releases.get(client, 0)
        if count not in self._cache:
            self._cache[count] = epsilon_of([(gaussian_event(self.noise_multiplier), count)] if count else [], self.delta, self.accountant)
        return self._cache[count]

    def worst(self) -> float:
        """The largest epsilon of any client (0 before any release)."""
        return max((self.epsilon(c) for c in self.releases), default=0.0)

    def state(self) -> dict:
        return {"mode": "local", "releases": dict(self.releases)}

    def load(self, state: dict) -> None:
        if state.get("mode") != "local":
            raise ValueError(f"privacy ledger of mode {state.get('mode')!r} cannot continue a local-DP run")
        self.releases = {str(k): int(v) for k, v in state["releases"].items()}


class CentralDPLedger:
    """Central DP: one release of the noised aggregate per round, amplified by sampling.

    Flower samples a fixed number ``m`` of the ``N`` available nodes without replacement;
    each round is that event (dp-accounting's ``SampledWithoutReplacementDpEvent``, for
    replace-one neighbours) around the Gaussian release, with the *real* ``N`` and ``m``
    of that round. With every node sampled there is no amplification.
    """

    def __init__(self, noise_multiplier: float, delta: float, accountant: str = "rdp") -> None:
        validate_dp(1.0, noise_multiplier, delta)
        epsilon_of([], delta, accountant)
        self.noise_multiplier, self.delta, self.accountant = noise_multiplier, delta, accountant
        self.rounds: list[tuple[int, int]] = []  # (available N, sampled m)

    def record(self, available: int, sampled: int) -> None:
        if not 1 <= sampled <= available:
            raise ValueError(f"sampled {sampled} of {available} nodes")
        if self.accountant == "pld" and sampled < available:
            raise ValueError(
                f"round sampled {sampled} of {available} nodes: the PLD accountant cannot amplify fixed-size "
                "sampling; use the RDP accountant or sample every node"
            )
        self.rounds.append((available, sampled))

    @property
    def epsilon(self) -> float:
        from dp_accounting import dp_event

        counts: dict[tuple[int, int], int] = {}
        for r in self.rounds:
            counts[r] = counts.get(r, 0) + 1
        events = []
        for (n, m), count in counts.items():
            base = gaussian_event(self.noise_multiplier)
            events.append((base if m == n else dp_event.SampledWithoutReplacementDpEvent(n, m, base), count))
        return epsilon_of(events, self.delta, self.accountant)

    def state(self) -> dict:
        return {"mode": "central", "rounds": [list(r) for r in self.rounds]}

    def load(self, state: dict) -> None:
        if state.get("mode") != "central":
            raise ValueError(f"privacy ledger of mode {state.get('mode')!r} cannot continue a central-DP run")
        self.rounds = [(int(n), int(m)) for n, m in state["rounds"]]
