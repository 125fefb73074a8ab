"""Differential privacy of client updates, with privacy accounting.

*Local DP* (``dp-mode = "local"``): on each node, before its reply leaves, everything it
sends that depends on its data is covered. The release vector :math:`v` joins the update
:math:`\\Delta = w_k - w^t` of every parameter with every other array of the reply (SCAFFOLD's
``control-delta``, an array with no reference in the request, counts as it is); :math:`v` is
clipped to L2 norm ``C`` as a whole and Gaussian noise :math:`\\mathcal N(0, \\sigma^2 C^2 I)`
is added:

.. math:: \\tilde v = v \\min\\!\\left(1, \\frac{C}{\\lVert v\\rVert_2}\\right) + \\mathcal N(0, \\sigma^2 C^2 I).

Of the reply's metrics only those that do not depend on the data leave (the circuit's size
on the device) and the example count, rounded down to a multiple of ``dp-count-granularity``;
loss, accuracy, timing, the noise gap and the client's noise variance and contraction are not
sent (:data:`DATA_METRICS`), in training
and evaluation replies alike. The node owns its floor (:class:`NodePrivacy`): with
``dp-min-noise-multiplier`` or ``dp-max-epsilon`` in its node config it trains only under
local DP with at least that sigma, and keeps its own ledger across runs.

*Central DP* (``dp-mode = "central"``): the server clips each update to ``C``, sums them
with equal weights, divides by the number :math:`m` of nodes sampled (a reply that fails or
is refused adds zero) and adds noise of std :math:`\\sigma C / m`
(:class:`~strategies.central_dp.CentralDPFixedClipping`, built on Flower's
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

import json
import math
import os
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.supercore import log

from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.contract import (
    EVAL_ACCURACY,
    EVAL_LOSS,
    NODE_DP_MAX_EPSILON,
    NODE_DP_MIN_NOISE_MULTIPLIER,
    NOISE_CONTRACTION,
    NOISE_GAP,
    NUM_EXAMPLES,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    TRAIN_TIME_S,
    UPDATE_NOISE_VAR,
)
from qfl.common.files import atomic_write
from qfl.common.records import clip_update, flatten, unflatten
from transport.base import Envelope, Transport, TransportError

DP_MODES = ("local", "central")


def validate_dp(clip: float, noise_multiplier: float, delta: float) -> None:
    """Check DP parameters at start-up (Flower accepts some that fail only later)."""
    for name, v in ((KEY.dp_clip, clip), (KEY.dp_noise_multiplier, noise_multiplier)):
        if isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if isinstance(delta, bool) or not 0 < delta < 1:
        raise ValueError(f"{KEY.dp_delta} must be in (0, 1), got {delta!r}")


# what a reply's metrics say about the data: local DP does not send them (the update's noise
# variance and the contraction are measured on the local data and the trained parameters;
# pec-gamma2 counts the circuit's gates only, and leaves)
DATA_METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, TRAIN_TIME_S, NOISE_GAP, UPDATE_NOISE_VAR, NOISE_CONTRACTION, EVAL_LOSS,
                EVAL_ACCURACY)


def rounded_count(count: float, granularity: int) -> int:
    """``count`` rounded down to a multiple of ``granularity``, at least one multiple."""
    return max(granularity, int(count // granularity) * granularity)


class LocalDPTransport(Transport):
    """Clip and noise all a node sends before it leaves (see the module doc).

    Parameters
    ----------
    clip : float
        L2 clipping norm ``C`` of the whole release vector.
    noise_multiplier : float
        :math:`\\sigma`: noise std is :math:`\\sigma C`.
    mode : str
        ``"local"`` noises here; ``"central"`` leaves the update to the server.
    count_granularity : int
        The example count leaves rounded down to a multiple of this.
    node : NodePrivacy, optional
        The node's own floor and ledger; ``None`` on the server.

    The noise is drawn from OS entropy, never from the run's seed: noise that the server
    (or anyone who knows the configuration) could regenerate, it could also subtract.
    """

    name = "dp"

    def __init__(self, clip: float, noise_multiplier: float, mode: str = "local", count_granularity: int = 10,
                 node: NodePrivacy | None = None) -> None:
        validate_dp(clip, noise_multiplier, 0.5)
        if mode not in DP_MODES:
            raise ValueError(f"the DP mode must be one of {DP_MODES}, got {mode!r}")
        self.clip, self.noise_multiplier, self.mode = clip, noise_multiplier, mode
        self.count_granularity, self.node = count_granularity, node
        self.withheld_metrics = DATA_METRICS if mode == "local" else ()

    @classmethod
    def from_run_config(cls, cfg: RunConfig, node: NodeConfig | None = None) -> LocalDPTransport:
        privacy = NodePrivacy.from_configs(cfg, node) if node is not None and cfg.dp_mode == "local" else None
        return cls(cfg.dp_clip, cfg.dp_noise_multiplier, cfg.dp_mode, cfg.dp_count_granularity, privacy)

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if self.mode != "local" or envelope.direction != "up" or request is None:
            return content
        out = RecordDict(dict(content.items()))
        if content.array_records:
            if self.node is not None:
                self.node.spend(self.noise_multiplier)  # refuses (TransportError) past the node's budget
            self._noise_arrays(content, request, out)
        for key, record in content.metric_records.items():
            out[key] = MetricRecord({k: (rounded_count(v, self.count_granularity) if k == NUM_EXAMPLES else v)
                                     for k, v in record.items() if k not in DATA_METRICS})
        return out

    def _noise_arrays(self, content: RecordDict, request: RecordDict, out: RecordDict) -> None:
        """Clip the joined release vector of every ArrayRecord to ``C`` and noise it, in place in ``out``."""
        pieces = []  # (key, names, reference, size)
        for key, record in content.array_records.items():
            names = list(record.keys())
            ref = request.array_records.get(key)
            base = flatten(ref, names) if ref is not None and set(names) <= set(ref.keys()) else None
            new = flatten(record, names)
            pieces.append((key, names, new if base is None else new - base, base))
        joint = clip_update(np.concatenate([d for _, _, d, _ in pieces]), self.clip)
        joint = joint + np.random.default_rng().normal(0.0, self.noise_multiplier * self.clip, joint.shape)  # OS entropy
        at = 0
        for key, names, delta, base in pieces:
            part = joint[at:at + delta.size]
            at += delta.size
            out[key] = unflatten(part if base is None else base + part, content.array_records[key], names)

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        if self.node is not None and envelope.direction == "down" and content.array_records:
            self.node.check(self.noise_multiplier)  # refuse before training, not after
        return content


def check_node_floor(cfg: RunConfig, node: NodeConfig, local_dp: bool) -> None:
    """Refuse a run that does not meet this node's privacy floor (``ValueError`` naming it)."""
    if node.dp_min_noise_multiplier is None and node.dp_max_epsilon is None:
        return
    floor = f"{NODE_DP_MIN_NOISE_MULTIPLIER}={node.dp_min_noise_multiplier}, {NODE_DP_MAX_EPSILON}={node.dp_max_epsilon}"
    if not local_dp:
        raise ValueError(f"this node trains only under local DP ({floor} in its node config); the run's transport "
                         f"is {cfg.transport!r} with dp-mode {cfg.dp_mode!r}")
    if node.dp_min_noise_multiplier is not None and cfg.dp_noise_multiplier < node.dp_min_noise_multiplier:
        raise ValueError(f"the run's dp-noise-multiplier {cfg.dp_noise_multiplier:g} is below this node's "
                         f"{NODE_DP_MIN_NOISE_MULTIPLIER} {node.dp_min_noise_multiplier:g}")


STATE_DIR_ENV = "QFL_STATE_DIR"  # where a node keeps its privacy ledger (see NodePrivacy)


def state_dir() -> Path:
    """``$QFL_STATE_DIR``, else ``$XDG_STATE_HOME/qfl``, else ``~/.local/state/qfl``."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "qfl"


class NodePrivacy:
    """A node's own privacy ledger, kept in a file across runs, and its budget.

    The ledger counts every release (a training reply's arrays) per data set and partition:
    ``"<dataset>/<partition-id>-of-<num-partitions>"``, a key the server cannot reset by
    changing the seed or the split. Its epsilon composes the Gaussian releases at the sigma
    each ran with (dp-accounting RDP, replace-one neighbours, as :class:`LocalDPLedger`), at
    the node's own ``dp-delta``. With ``dp-max-epsilon`` the node refuses a release that
    would pass it: :meth:`check` before training, :meth:`spend` when the reply leaves.
    """

    def __init__(self, path: Path, key: str, max_epsilon: float | None = None, delta: float = 1e-5) -> None:
        self.path, self.key, self.max_epsilon, self.delta = Path(path), key, max_epsilon, delta

    @classmethod
    def from_configs(cls, cfg: RunConfig, node: NodeConfig) -> NodePrivacy:
        path = Path(node.dp_ledger) if node.dp_ledger else state_dir() / "dp-ledger.json"
        key = f"{cfg.dataset}/{node.partition_id}-of-{node.num_partitions}"
        return cls(path, key, node.dp_max_epsilon, node.dp_delta)

    def _book(self) -> dict:
        """The ledger file's contents (every key's releases); empty before the first."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise TransportError(f"the node's privacy ledger {self.path} cannot be read: {err}") from err

    def releases(self, book: dict | None = None) -> dict[float, int]:
        """``{sigma: count}`` of this key's releases so far (in ``book``, else the file)."""
        book = self._book() if book is None else book
        return {float(s): int(c) for s, c in book.get(self.key, {}).items()}

    def epsilon(self, extra_sigma: float | None = None, book: dict | None = None) -> float:
        """This key's epsilon so far, or after one more release at ``extra_sigma``."""
        counts = self.releases(book)
        if extra_sigma is not None:
            counts[extra_sigma] = counts.get(extra_sigma, 0) + 1
        return epsilon_of([(gaussian_event(s), c) for s, c in counts.items()], self.delta)

    def check(self, sigma: float, book: dict | None = None) -> None:
        """Raise :class:`TransportError` if one more release at ``sigma`` would pass the budget."""
        if self.max_epsilon is None:
            return
        after = self.epsilon(sigma, book)
        if after > self.max_epsilon:
            raise TransportError(f"this node's privacy budget is spent: one more release would make its epsilon "
                                 f"{after:.3g} > {NODE_DP_MAX_EPSILON} {self.max_epsilon:g} (delta {self.delta:g}, "
                                 f"ledger {self.path}, {self.key})")

    def spend(self, sigma: float) -> None:
        """Check, then record one release at ``sigma``, reading and writing the file once under a
        lock (one node may run several ClientApps). A ledger that cannot be written refuses the
        release when the node has a budget (one that cannot be kept is none), else it warns."""
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                book = self._book()
                self.check(sigma, book)
                entry = book.setdefault(self.key, {})
                entry[repr(float(sigma))] = int(entry.get(repr(float(sigma)), 0)) + 1
                atomic_write(self.path, json.dumps(book, indent=1, sort_keys=True).encode())
        except OSError as err:
            if self.max_epsilon is not None:
                raise TransportError(f"the node's privacy ledger {self.path} cannot be written: {err}") from err
            log(WARNING, "dp: this release is not in the node's ledger %s (%s); set dp-ledger to a writable file",
                self.path, err)


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
