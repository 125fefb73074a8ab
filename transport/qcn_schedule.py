r"""Managing a shared quantum network for learning: association, then a joint schedule per round.

The paper (Chehimi et al., Table II; Sec. III-C1, III-C2) asks for memory scheduling with
cutoffs chosen rather than fixed, association of clients with network resources by
matching games, and a "joint QFL optimization framework for learning parameter aggregation
and distillation design". On a :class:`~transport.qcn_network.QCNNetwork` the server plans
every training round in two steps, before the round's messages leave
(:class:`ScheduleGrid`):

1. **Association** (:mod:`transport.matching`): the round's clients are matched to
   repeaters whose memory slots they will hold, on utilities
   :math:`u(c, r) = \bar F(c, r) - \lambda \bar t(c, r)` (mean fidelity and latency of a
   pair over the route at the default setting: cutoff :math:`T/2`, no distillation,
   :math:`\lambda` = :data:`LATENCY_PRICE` per second), by deferred acceptance (stable under
   the capacities), the Hungarian optimum or greedy (``qcn-association``). All three are
   computed every round: the plan records the chosen one's total utility, the optimum's,
   and the chosen one's blocking pairs. A client no repeater can hold is not served.
2. **Schedule**: for each associated client :math:`k` an option
   :math:`o = (c, m)` (cutoff :math:`c = f\,T_k` for :math:`f` in :data:`CUTOFF_FACTORS`,
   :math:`T_k` the route's shortest coherence time; :math:`m` in :data:`DISTILLATION_ROUNDS`
   rounds of DEJMPS) or *skip* (not served this round). From a seeded Monte Carlo of the
   route (:class:`Predictor`, the single-path physics of :mod:`transport.qcn`) each option
   predicts, for the update's :math:`C` carriers (:class:`~transport.qcn_compress.Encoding`)
   on ``qcn-channels`` channels: delivered fidelity :math:`F`, lost share :math:`\ell`,
   probability :math:`P_{on}` of arriving within the deadline :math:`D`, and elementary
   Bell pairs :math:`E` (generation, cutoff discards and distillation included). The
   expected quality a client adds to the aggregate is

   .. math::

       u_k(o) = \pi_k \left[ P_{on}\left((1 - \ell)\, g(F) - \kappa \ell\right) - (1 - P_{on})\,\kappa \right],
       \qquad u_k(\text{skip}) = -\kappa\, \pi_k,

   with :math:`\pi_k = n_k / \sum_j n_j` the strategy's weight share (examples),
   :math:`g(F) = w^2 = ((4F-1)/3)^2` (the information a teleported copy carries, the inverse
   of its estimator's variance; :class:`~strategies.FidelityWeightedFedAvg`'s weight; for
   quantised values the same measure of the majority vote, :meth:`Encoding.quality`) and
   :math:`\kappa` = ``qcn-loss-cost`` (what a lost or late coordinate costs). The **joint
   policy** solves

   .. math::

       \max_{o_k} \sum_k u_k(o_k) - \mu \sum_k E_k(o_k)/1000
       \quad \text{s.t.} \quad \sum_{k:\, e \in \text{route}_k} E_k(o_k)/h_k \le B_e \;\; \forall e,

   :math:`\mu` = ``qcn-pair-price`` (quality per 1,000 Bell pairs), :math:`h_k` the route's
   links (each generates :math:`E_k/h_k` of the pairs) and :math:`B_e` = link *e*'s
   ``pair_rate_hz`` times the deadline (no deadline: no budget). It is a multiple-choice,
   multi-dimensional knapsack. Up to :data:`EXACT_MAX_VARIABLES` client-option pairs it is
   solved **exactly** as an integer program (``scipy.optimize.milp``, HiGHS); beyond, by
   the **Lagrangian heuristic** :func:`lagrangian`: the link budgets are priced by
   multipliers :math:`\lambda_e` (subgradient steps on the dual), each client then picks
   its best option alone, a greedy repair drops the options that overrun a budget (least
   value lost per pair freed first) and a greedy fill upgrades clients by value gained per
   pair while every budget holds; the dual gives an upper bound on the optimum. Without
   budgets the problem separates and every client's best option is exact. A round serves
   at least one client (the most valuable one that fits), or there would be nothing to
   aggregate.

   The **fixed policies** give every client the same cutoff factor and distillation
   (``qcn-schedule = "fixed"``, ``qcn-cutoff``, ``qcn-distillation``) and admit clients in
   partition order, rotated by one each round, while their predicted pairs fit the budgets.

Decisions travel to each node in its training message (a ConfigRecord, ``qcn-plan``),
where :class:`~transport.qcn_transport.QCNTransport` sends over exactly that route and
setting; a skipped client gets no training message that round. The server then checks the
fidelity each reply claims against this prediction (``server.app.PathFidelity``).
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.special import ndtr

from qfl.common.config import RunConfig
from qfl.common.contract import (
    LATENCY_S,
    QCN_BELL_PAIRS,
    QCN_BYTES,
    QCN_BYTES_SAVED,
    QCN_PAIRS_SAVED,
    QCN_PLAN,
    ROUND_QCN_BLOCKING_PAIRS,
    ROUND_QCN_NETWORK_S,
    ROUND_QCN_OPTIMUM_GAP,
    ROUND_QCN_SCHEDULE_S,
    ROUND_QCN_SERVED,
    SCHEDULE_DECISION,
    SCHEDULE_PREDICTED_BELL_PAIRS,
    SCHEDULE_PREDICTED_FIDELITY,
    SCHEDULE_PREDICTED_LATENCY_S,
    SCHEDULE_PREDICTED_LOST,
    SERVER_ROUND,
)
from transport import matching
from transport.delegating_grid import DelegatingGrid
from transport.qcn import C_FIBER_KM_S, QCNPath, carrier_state, sample_pairs_costed, werner_fidelity
from transport.qcn_compress import Encoding
from transport.qcn_network import QCNNetwork, load_topology

CUTOFF_FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0)  # cutoffs as multiples of the route's coherence time
DISTILLATION_ROUNDS = (0, 1, 2)
PROTOCOL = "dejmps"  # better than BBPSSW on the same pairs (Deutsch et al., PRL 77, 2818 (1996))
DEFAULT_CUTOFF_FACTOR = 0.5  # the association's setting (QCNNetwork.path's default cutoff)
LATENCY_PRICE = 1.0  # association utility per second of pair latency (matching.utilities' lambda)
PREDICTION_SAMPLES = 1024  # pairs per Monte Carlo prediction of a route and setting
EXACT_MAX_VARIABLES = 200  # client-option pairs up to which the joint schedule is an exact integer program
LAGRANGIAN_ITERATIONS = 60
PAIRS_UNIT = 1000.0  # qcn-pair-price is per this many Bell pairs
POLICIES = ("joint", "fixed")
ASSOCIATIONS = {"deferred-acceptance": matching.deferred_acceptance, "hungarian": matching.hungarian,
                "greedy": matching.greedy}


# --- predictions ---------------------------------------------------------------------


@dataclass(frozen=True)
class PairStats:
    """Per carrier over one route and setting (seeded Monte Carlo of :data:`PREDICTION_SAMPLES` pairs).

    ``fidelity`` and ``latency_s`` are of the pairs (the association's utility); ``alive``
    the probability that a carrier's wait stays within the cutoff; ``w_alive`` and ``w_sd``
    the mean and standard deviation of the Werner parameter of the carriers that arrive;
    ``bell_pairs`` the elementary pairs per carrier.
    """

    fidelity: float
    latency_s: float
    latency_sd: float
    alive: float
    w_alive: float
    w_sd: float
    bell_pairs: float


@dataclass(frozen=True)
class Prediction:
    """What a send of ``carriers`` carriers is expected to give (see the module doc)."""

    fidelity: float
    lost: float
    latency_s: float
    on_time: float
    bell_pairs: float
    carriers: int
    fidelity_sd: float  # of the fidelity a reply reports (the mean over its carriers)
    quality: float  # what a delivered value is worth (Encoding.quality): g(F) = w^2 for analog values


class Predictor:
    """Seeded, cached Monte Carlo statistics of routes (:class:`PairStats`) and sends (:class:`Prediction`)."""

    def __init__(self, seed: int = 0, samples: int = PREDICTION_SAMPLES) -> None:
        self.seed, self.samples = seed, samples
        self._stats: dict[QCNPath, PairStats | None] = {}

    def stats(self, path: QCNPath) -> PairStats | None:
        """``None`` where the cutoff almost never lets the segments finish (infeasible)."""
        if path not in self._stats:
            rng = np.random.default_rng([self.seed, zlib.crc32(repr(path).encode())])
            try:
                f, t, cost = sample_pairs_costed(path, self.samples, rng)
            except ValueError:
                self._stats[path] = None
                return None
            alive, w = carrier_state(path, f, t)
            w_alive = w[alive]
            self._stats[path] = PairStats(
                fidelity=float(f.mean()), latency_s=float(t.mean()), latency_sd=float(t.std()),
                alive=float(alive.mean()), w_alive=float(w_alive.mean()) if w_alive.size else 0.0,
                w_sd=float(w_alive.std()) if w_alive.size else 0.0, bell_pairs=float(cost.mean()))
        return self._stats[path]

    def predict(self, path: QCNPath, encoding: Encoding, values: int, channels: int, deadline_s: float) -> Prediction | None:
        r"""A send of an update of ``values`` values over ``path``.

        Carriers :math:`C` (:meth:`Encoding.carriers`) share ``channels`` channels; a channel's
        time is a sum of :math:`C/ch` pair times, about normal with mean :math:`C t̄/ch` and
        s.d. :math:`\sigma = s_t\sqrt{C/ch}`; the update arrives when the slowest channel is
        done, plus one classical message :math:`L/c`: predicted latency
        :math:`C t̄/ch + \sigma\sqrt{2\ln ch} + L/c` (the expected maximum of ``ch`` normals)
        and :math:`P_{on} = \Phi((D - C t̄/ch - L/c)/\sigma)^{ch}`. Loss
        (:meth:`Encoding.lost_fraction`) assumes independent carriers.
        """
        stats = self.stats(path)
        if stats is None or stats.alive == 0.0:
            return None
        carriers = encoding.carriers(values)
        per_channel = carriers / channels
        mean = per_channel * stats.latency_s + path.distance_km / C_FIBER_KM_S
        sd = stats.latency_sd * math.sqrt(per_channel)
        latency = mean + sd * math.sqrt(2 * math.log(channels)) if channels > 1 else mean
        if deadline_s > 0:
            on_time = float(ndtr((deadline_s - mean) / sd)) ** channels if sd > 0 else float(mean <= deadline_s)
        else:
            on_time = 1.0
        sent_share = encoding.sent_values(values) / values if values else 1.0
        lost = float(encoding.lost_fraction(1.0 - stats.alive)) * sent_share
        alive_carriers = max(1.0, carriers * stats.alive)
        fidelity_sd = 0.75 * stats.w_sd / math.sqrt(alive_carriers)  # F = (1 + 3w)/4
        return Prediction(werner_fidelity(stats.w_alive), lost, latency, on_time, carriers * stats.bell_pairs,
                          carriers, fidelity_sd, encoding.quality(stats.w_alive))


# --- decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The server's decision for one partition in one round.

    ``skip``: not served (``reason`` says why: ``no slot``, ``budget``, ``not worth its pairs``,
    ``would miss the deadline``, ``unknown partition``, ``infeasible``); otherwise the route
    through ``repeater`` with ``cutoff_s`` and ``distillation`` rounds of :data:`PROTOCOL`.
    """

    client: str
    repeater: str = ""
    cutoff_s: float = 0.0
    distillation: int = 0
    skip: bool = False
    reason: str = ""
    prediction: Prediction | None = None
    utility: float = 0.0

    def label(self) -> str:
        if self.skip:
            return f"skip: {self.reason}"
        return f"{self.repeater} cutoff {self.cutoff_s:.3g} s, {self.distillation} distillation"

    def to_record(self) -> ConfigRecord:
        """What the node needs: its client name, the repeater, the setting (ConfigRecord values)."""
        return ConfigRecord({"client": self.client, "repeater": self.repeater, "cutoff-s": float(self.cutoff_s),
                             "distillation": int(self.distillation), "skip": bool(self.skip)})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Decision:
        """The node's side of :meth:`to_record`; ``ValueError`` on a malformed record."""
        try:
            client, repeater = record["client"], record["repeater"]
            cutoff, rounds, skip = record["cutoff-s"], record["distillation"], record["skip"]
        except KeyError as err:
            raise ValueError(f"QCN schedule lacks {err}") from None
        if not (isinstance(client, str) and isinstance(repeater, str) and isinstance(skip, bool)
                and isinstance(cutoff, float) and isinstance(rounds, int) and not isinstance(rounds, bool)):
            raise ValueError("QCN schedule: client and repeater must be strings, cutoff-s a float, "
                             "distillation an integer, skip a boolean")
        if not skip and not (cutoff > 0 and 0 <= rounds <= max(DISTILLATION_ROUNDS)):
            raise ValueError(f"QCN schedule: cutoff {cutoff} s and {rounds} distillation rounds are out of range")
        return cls(client, repeater, cutoff, rounds, skip)

    def columns(self) -> dict[str, object]:
        """clients.csv columns: the decision and what it predicted."""
        p = self.prediction
        return {
            SCHEDULE_DECISION: self.label(),
            SCHEDULE_PREDICTED_FIDELITY: "" if p is None else round(p.fidelity, 6),
            SCHEDULE_PREDICTED_LOST: "" if p is None else round(p.lost, 6),
            SCHEDULE_PREDICTED_LATENCY_S: "" if p is None else round(p.latency_s, 6),
            SCHEDULE_PREDICTED_BELL_PAIRS: "" if p is None else round(p.bell_pairs, 1),
        }


@dataclass
class Plan:
    """One round's decisions (by partition) and how they were reached."""

    server_round: int
    decisions: dict[int, Decision]
    association: str
    association_utility: float = 0.0
    optimum_utility: float = 0.0
    blocking_pairs: int = 0
    solver: str = ""
    objective: float = 0.0
    bound: float = math.nan  # an upper bound on the joint objective, where the solver gives one
    seconds: float = 0.0

    @property
    def served(self) -> int:
        return sum(not d.skip for d in self.decisions.values())


@dataclass
class _Candidate:
    decision: Decision
    value: float  # utility minus the pairs' price
    pairs: float  # predicted elementary Bell pairs (all links)


@dataclass
class _Problem:
    """Options per client (index 0: skip) and each client's share of pairs on every budgeted link."""

    partitions: list[int]
    options: list[list[_Candidate]]
    usage: np.ndarray  # (clients, links): pairs on the link per pair of the client's total
    budgets: np.ndarray  # (links,)

    def values(self) -> np.ndarray:
        width = max(len(o) for o in self.options)
        out = np.full((len(self.options), width), -np.inf)
        for i, opts in enumerate(self.options):
            out[i, : len(opts)] = [c.value for c in opts]
        return out

    def pairs(self) -> np.ndarray:
        width = max(len(o) for o in self.options)
        out = np.zeros((len(self.options), width))
        for i, opts in enumerate(self.options):
            out[i, : len(opts)] = [c.pairs for c in opts]
        return out


def _load(choice: np.ndarray, problem: _Problem, pairs: np.ndarray) -> np.ndarray:
    """Pairs on every budgeted link when client i takes option ``choice[i]``."""
    taken = pairs[np.arange(len(choice)), choice]
    return taken @ problem.usage


def exact(problem: _Problem) -> tuple[np.ndarray, float]:
    """The optimal choice (one option per client) and its objective, by ``scipy.optimize.milp``."""
    sizes = [len(o) for o in problem.options]
    offsets = np.cumsum([0, *sizes])
    value = np.concatenate([[c.value for c in o] for o in problem.options])
    pairs = np.concatenate([[c.pairs for c in o] for o in problem.options])
    one = np.zeros((len(sizes), offsets[-1]))
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        one[i, a:b] = 1.0
    constraints = [LinearConstraint(one, 1.0, 1.0)]
    finite = np.isfinite(problem.budgets)
    if finite.any():
        owner = np.repeat(np.arange(len(sizes)), sizes)
        rows = (problem.usage[owner][:, finite] * pairs[:, None]).T
        constraints.append(LinearConstraint(rows, -np.inf, problem.budgets[finite]))
    result = milp(-value, constraints=constraints, integrality=np.ones_like(value), bounds=Bounds(0, 1))
    if result.x is None:
        raise RuntimeError(f"the exact schedule failed: {result.message}")
    x = np.round(result.x).astype(int)
    choice = np.array([int(np.argmax(x[a:b])) for a, b in zip(offsets, offsets[1:])])
    return choice, float(value[x.astype(bool)].sum())


def lagrangian(problem: _Problem, iterations: int = LAGRANGIAN_ITERATIONS) -> tuple[np.ndarray, float, float]:
    r"""A feasible choice, its objective, and the best dual bound, by Lagrangian relaxation.

    For multipliers :math:`\lambda_e \ge 0` on the link budgets each client alone takes
    :math:`\arg\max_o v_{k,o} - E_{k,o} \sum_e \lambda_e a_{k,e}` (:math:`a_{k,e}` its share
    of pairs on link *e*); :math:`L(\lambda) = \sum_k \max_o(\cdot) + \sum_e \lambda_e B_e`
    bounds the optimum from above. Multipliers follow projected subgradient steps
    :math:`\lambda \leftarrow \max(0, \lambda + s\,(\text{load} - B))`, Polyak's step
    :math:`s = (L(\lambda) - \text{best}) / \lVert \text{load} - B \rVert^2`. Each relaxed
    choice is made feasible by :func:`_repair` and improved by :func:`_fill`; the best is
    kept and polished by one pass of downgrade-and-refill (:func:`_improve`).
    """
    values, pairs = problem.values(), problem.pairs()
    finite = np.isfinite(problem.budgets)
    budgets = np.where(finite, problem.budgets, 0.0)
    lam = np.zeros(len(budgets))
    best_choice = np.zeros(len(problem.options), dtype=int)  # everyone skipped: always feasible
    best = float(values[:, 0].sum())
    bound = math.inf
    rows = np.arange(len(problem.options))
    for _ in range(iterations):
        price = problem.usage @ (lam * finite)  # per client, per pair
        reduced = values - pairs * price[:, None]
        choice = np.argmax(reduced, axis=1)
        bound = min(bound, float(reduced[rows, choice].sum() + lam @ budgets))
        candidate = _fill(_repair(choice.copy(), problem, values, pairs), problem, values, pairs)
        objective = float(values[rows, candidate].sum())
        if objective > best:
            best, best_choice = objective, candidate
        gradient = np.where(finite, _load(choice, problem, pairs) - budgets, 0.0)
        norm = float(gradient @ gradient)
        if norm == 0.0 or bound - best <= 1e-12 * max(1.0, abs(best)):
            break
        lam = np.maximum(0.0, lam + (bound - best) / norm * gradient)
    best_choice = _improve(best_choice, problem, values, pairs)
    return best_choice, float(values[rows, best_choice].sum()), bound


def _over(choice: np.ndarray, problem: _Problem, pairs: np.ndarray) -> np.ndarray:
    finite = np.isfinite(problem.budgets)
    return finite & (_load(choice, problem, pairs) > problem.budgets * (1 + 1e-9))


def _moves(choice: np.ndarray, problem: _Problem, values: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, ...]:
    """For every (client, option): value gained, pairs added, and the links' loads after the move."""
    rows = np.arange(len(choice))
    gain = values - values[rows, choice][:, None]
    extra = pairs - pairs[rows, choice][:, None]
    after = _load(choice, problem, pairs)[None, None, :] + extra[:, :, None] * problem.usage[:, None, :]
    return gain, extra, after


def _repair(choice: np.ndarray, problem: _Problem, values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """While a link is over its budget, move one of its clients to a cheaper option: the move
    that loses the least value per pair it frees on the overloaded links."""
    while (over := _over(choice, problem, pairs)).any():
        gain, extra, _ = _moves(choice, problem, values, pairs)
        freed = -extra * problem.usage[:, over].sum(axis=1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where((freed > 0) & np.isfinite(values), -gain / freed, np.inf)
        if not np.isfinite(rate).any():  # nothing cheaper left: cannot happen while skip is option 0
            break
        i, o = np.unravel_index(np.argmin(rate), rate.shape)
        choice[i] = o
    return choice


def _fill(choice: np.ndarray, problem: _Problem, values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Greedy improvement: the move of largest value gained per extra pair (or any gain at no
    extra pairs) that keeps every budget, until none is left."""
    finite = np.isfinite(problem.budgets)
    limit = np.where(finite, problem.budgets * (1 + 1e-9), np.inf)
    while True:
        gain, extra, after = _moves(choice, problem, values, pairs)
        fits = np.all(after <= limit, axis=2)
        ok = fits & np.isfinite(values) & (gain > 1e-15)
        if not ok.any():
            return choice
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(extra > 0, gain / extra, np.inf)
        rate = np.where(ok, rate, -np.inf)
        best = np.flatnonzero(rate == rate.max())
        i, o = np.unravel_index(best[np.argmax(gain.ravel()[best])], rate.shape)  # ties: the larger gain
        choice[i] = o


def _improve(choice: np.ndarray, problem: _Problem, values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """One pass of downgrade-and-refill: move one served client to a cheaper option (skip
    included), refill greedily, keep the result if it is better."""
    rows = np.arange(len(choice))
    best = float(values[rows, choice].sum())
    for i in np.flatnonzero(choice > 0):
        current = choice
        for o in np.flatnonzero((pairs[i] < pairs[i, current[i]]) & np.isfinite(values[i])):
            trial = current.copy()
            trial[i] = o  # cheaper than a feasible choice: still feasible
            trial = _fill(trial, problem, values, pairs)
            value = float(values[rows, trial].sum())
            if value > best + 1e-12:
                choice, best = trial, value
    return choice


# --- the planner -------------------------------------------------------------------------


class Planner:
    """Plans rounds on a shared network (module doc).

    Parameters
    ----------
    network : QCNNetwork
    encoding : Encoding
        How updates become carriers (copies, compression).
    policy : str
        ``"joint"`` or ``"fixed"``.
    association : str
        A key of :data:`ASSOCIATIONS`.
    cutoff_factor, distillation : float, int
        The fixed policy's setting (cutoff as a multiple of the route's coherence time).
    pair_price, loss_cost : float
        :math:`\\mu` (per :data:`PAIRS_UNIT` pairs) and :math:`\\kappa`.
    deadline_s : float
        The round deadline (0: none); also the window of the link budgets.
    channels : int
    seed : int
        Seeds the predictions (the same plan in every run of a config).
    """

    def __init__(self, network: QCNNetwork, encoding: Encoding, policy: str = "joint",
                 association: str = "deferred-acceptance", cutoff_factor: float = DEFAULT_CUTOFF_FACTOR,
                 distillation: int = 0, pair_price: float = 0.0, loss_cost: float = 0.1, deadline_s: float = 0.0,
                 channels: int = 16, seed: int = 0, samples: int = PREDICTION_SAMPLES) -> None:
        if policy not in POLICIES or association not in ASSOCIATIONS:
            raise ValueError(f"policy must be one of {POLICIES} and association one of {list(ASSOCIATIONS)}")
        if not cutoff_factor > 0 or distillation < 0 or pair_price < 0 or loss_cost < 0 or channels < 1:
            raise ValueError("cutoff factor > 0, distillation >= 0, pair price >= 0, loss cost >= 0, channels >= 1")
        self.network, self.encoding, self.policy, self.association = network, encoding, policy, association
        self.cutoff_factor, self.distillation = cutoff_factor, distillation
        self.pair_price, self.loss_cost, self.deadline_s, self.channels = pair_price, loss_cost, deadline_s, channels
        self.predictor = Predictor(seed, samples)
        # what a round's plan is built from depends only on the round's clients, weights and
        # update size (the network is static): kept, so that a round only solves
        self._associations: dict[tuple[int, ...], tuple[dict[int, str], dict[str, float]]] = {}
        self._candidates: dict[tuple[int, str, float, int], list[_Candidate]] = {}
        links = sorted({tuple(sorted(e)) for e in network.graph.edges})
        self._budget = {e: network.link_budget(e, deadline_s) for e in links}
        self._budgeted = [e for e in links if math.isfinite(self._budget[e])]

    @classmethod
    def from_run_config(cls, cfg: RunConfig) -> Planner:
        return cls(load_topology(cfg.qcn_topology), encoding_of(cfg), cfg.qcn_schedule, cfg.qcn_association,
                   cfg.qcn_cutoff, cfg.qcn_distillation, cfg.qcn_pair_price, cfg.qcn_loss_cost, cfg.round_deadline,
                   cfg.qcn_channels, cfg.seed)

    def prepare(self, partitions: Iterable[int]) -> float:
        """Make the predictions of every route and setting these partitions' clients can use
        (each route's default setting, and the policy's settings over every repeater) before
        the first round, e.g. while the nodes warm up; the seconds it took. Plans do not
        depend on it: a prediction not made here is made when first needed, the same."""
        start = time.perf_counter()
        settings = ([(f, m) for m in DISTILLATION_ROUNDS for f in CUTOFF_FACTORS] if self.policy == "joint"
                    else [(self.cutoff_factor, self.distillation)])
        for client in dict.fromkeys(self.network.client_of(p) for p in partitions):
            for repeater in self.network.repeaters:
                for factor, rounds in [(DEFAULT_CUTOFF_FACTOR, 0), *settings]:
                    self.predictor.stats(self.path(client, repeater, factor, rounds))
        return time.perf_counter() - start

    # --- association ---------------------------------------------------------------
    def path(self, client: str, repeater: str, cutoff_factor: float, distillation: int) -> QCNPath:
        coherence = self.network.coherence_time(client, repeater)
        return self.network.path(client, repeater, cutoff_factor * coherence, distillation, PROTOCOL)

    def utilities(self, partitions: Iterable[int]) -> matching.Utilities:
        """:math:`u(c, r)` of every partition's client for every repeater it can use."""
        out: matching.Utilities = {}
        for p in partitions:
            client = self.network.client_of(p)
            out[p] = {}
            for r in self.network.repeaters:
                stats = self.predictor.stats(self.path(client, r, DEFAULT_CUTOFF_FACTOR, 0))
                if stats is not None:
                    out[p][r] = stats.fidelity - LATENCY_PRICE * stats.latency_s
        return out

    def associate(self, partitions: list[int]) -> tuple[dict[int, str], dict[str, float]]:
        """``{partition: repeater}`` by :attr:`association`, and how it compares: its total
        utility, the Hungarian optimum's, and its blocking pairs."""
        key = tuple(partitions)
        if key in self._associations:
            return self._associations[key]
        utility = self.utilities(partitions)
        capacity = {r: self.network.capacity(r) for r in self.network.repeaters}
        chosen = ASSOCIATIONS[self.association](utility, capacity)
        optimum = chosen if self.association == "hungarian" else matching.hungarian(utility, capacity)
        self._associations[key] = chosen, {"utility": matching.total_utility(chosen, utility),
                                           "optimum": matching.total_utility(optimum, utility),
                                           "blocking": float(len(matching.blocking_pairs(chosen, utility, capacity)))}
        return self._associations[key]

    # --- scheduling ----------------------------------------------------------------
    def candidates(self, partition: int, repeater: str, weight: float, values: int) -> list[_Candidate]:
        """Skip first, then every feasible (cutoff, distillation) of the policy, with its value."""
        key = (partition, repeater, weight, values)
        if key not in self._candidates:
            self._candidates[key] = self._options(partition, repeater, weight, values)
        return self._candidates[key]

    def _options(self, partition: int, repeater: str, weight: float, values: int) -> list[_Candidate]:
        client = self.network.client_of(partition)
        out: list[_Candidate] = []
        settings = ([(f, m) for m in DISTILLATION_ROUNDS for f in CUTOFF_FACTORS] if self.policy == "joint"
                    else [(self.cutoff_factor, self.distillation)])
        for factor, rounds in settings:
            path = self.path(client, repeater, factor, rounds)
            pred = self.predictor.predict(path, self.encoding, values, self.channels, self.deadline_s)
            if pred is None:
                continue
            u = weight * (pred.on_time * ((1 - pred.lost) * pred.quality - self.loss_cost * pred.lost)
                          - (1 - pred.on_time) * self.loss_cost)
            decision = Decision(client, repeater, path.cutoff_s, rounds, prediction=pred, utility=u,
                                reason=self.policy)
            out.append(_Candidate(decision, u - self.pair_price * pred.bell_pairs / PAIRS_UNIT, pred.bell_pairs))
        late = bool(out) and all(c.decision.prediction.on_time < 0.5 for c in out)
        skip_value = -self.loss_cost * weight
        reason = "would miss the deadline" if late else "not worth its pairs"
        return [_Candidate(Decision(client, repeater, skip=True, reason=reason, utility=skip_value), skip_value, 0.0), *out]

    def plan(self, server_round: int, weights: dict[int, float], values: int) -> Plan:
        """Decisions for the round's partitions (``weights``: examples of each)."""
        start = time.perf_counter()
        partitions = sorted(weights)
        total = sum(weights.values()) or 1.0
        assoc, stats = self.associate(partitions)
        decisions: dict[int, Decision] = {}
        problem_parts, options = [], []
        for p in partitions:
            client = self.network.client_of(p)
            if p not in assoc:
                decisions[p] = Decision(client, skip=True, reason="no slot", utility=-self.loss_cost * weights[p] / total)
                continue
            opts = self.candidates(p, assoc[p], weights[p] / total, values)
            if len(opts) == 1:
                decisions[p] = Decision(client, assoc[p], skip=True, reason="infeasible", utility=opts[0].value)
                continue
            problem_parts.append(p)
            options.append(opts)
        plan = Plan(server_round, decisions, self.association, stats["utility"], stats["optimum"], int(stats["blocking"]))
        if problem_parts:
            problem = self._problem(problem_parts, options, assoc)
            if self.policy == "fixed":
                choice, plan.solver = self._admit(problem, server_round), "fixed"
            elif not np.isfinite(problem.budgets).any():
                choice, plan.solver = np.argmax(problem.values(), axis=1), "independent"
                plan.bound = float(problem.values().max(axis=1).sum())
            elif sum(len(o) for o in options) <= EXACT_MAX_VARIABLES:
                choice, plan.bound = exact(problem)
                plan.solver = "exact"
            else:
                choice, _, plan.bound = lagrangian(problem)
                plan.solver = "lagrangian"
            choice = self._at_least_one(problem, choice)
            for p, opts, o in zip(problem_parts, options, choice):
                d = opts[int(o)].decision
                if d.skip and self.policy == "fixed":
                    d = Decision(d.client, d.repeater, skip=True, reason="budget", utility=d.utility)
                decisions[p] = d
            plan.objective = float(sum(opts[int(o)].value for opts, o in zip(options, choice)))
        plan.decisions = {p: decisions[p] for p in partitions}
        plan.seconds = time.perf_counter() - start
        return plan

    def _problem(self, partitions: list[int], options: list[list[_Candidate]], assoc: dict[int, str]) -> _Problem:
        index = {e: i for i, e in enumerate(self._budgeted)}
        usage = np.zeros((len(partitions), len(index)))
        for i, p in enumerate(partitions):
            links = self.network.links(self.network.client_of(p), assoc[p])
            for e in links:
                if e in index:
                    usage[i, index[e]] = 1.0 / len(links)  # each link of the route generates E / h pairs
        budgets = np.array([self._budget[e] for e in self._budgeted])
        return _Problem(partitions, options, usage, budgets)

    def _admit(self, problem: _Problem, server_round: int) -> np.ndarray:
        """The fixed policy: everyone's one setting, admitted in partition order rotated by the
        round while their predicted pairs fit every budget."""
        n = len(problem.options)
        pairs = problem.pairs()
        choice = np.zeros(n, dtype=int)
        load = np.zeros(len(problem.budgets))
        for i in np.roll(np.arange(n), -(server_round % n)):
            extra = pairs[i, 1] * problem.usage[i]
            if np.all(load + extra <= problem.budgets * (1 + 1e-9)):
                choice[i], load = 1, load + extra
        return choice

    def _at_least_one(self, problem: _Problem, choice: np.ndarray) -> np.ndarray:
        """A round with nobody served would aggregate nothing: serve the client whose best
        option that fits the budgets alone has the highest value."""
        if np.any(choice > 0):
            return choice
        values, pairs = problem.values(), problem.pairs()
        best, best_value = None, -math.inf
        for i in range(len(choice)):
            for o in range(1, values.shape[1]):
                fits = np.all(pairs[i, o] * problem.usage[i] <= problem.budgets * (1 + 1e-9))
                if np.isfinite(values[i, o]) and fits and values[i, o] > best_value:
                    best, best_value = (i, o), values[i, o]
        if best is not None:
            choice = choice.copy()
            choice[best[0]] = best[1]
        return choice

    def fidelity_estimate(self, decision: Decision) -> tuple[float, float]:
        """The fidelity a reply sent under ``decision`` should report, and a tolerance
        :math:`\\max(0.01, 4\\,\\mathrm{sd})` (``server.app.PathFidelity``)."""
        if decision.skip or decision.prediction is None:
            return 0.25, 0.01
        return decision.prediction.fidelity, max(0.01, 4 * decision.prediction.fidelity_sd)


def encoding_of(cfg: RunConfig) -> Encoding:
    return Encoding(cfg.qcn_copies, cfg.qcn_topk, cfg.qcn_bits, cfg.qcn_bit_copies)


# --- the server side: decisions into the training messages ---------------------------------


class ScheduleGrid(DelegatingGrid):
    """Delegate to ``grid``; plan each training round and put each node's decision in its message.

    Data flow: strategy -> ScheduleGrid -> transport grid -> wire. The training messages a
    strategy sends name the round's nodes; each gets a :data:`QCN_PLAN` ConfigRecord
    (:meth:`Decision.to_record`), and a node the plan skips gets no message this round (it
    does not train for nothing). Other messages pass unchanged.

    Parameters
    ----------
    grid : Grid
    planner : Planner
    partition_of : callable
        The partition a node is bound to (``None``: not known: not served).
    examples_of : callable
        The examples of a partition (the strategy's weight), ``None`` if unknown (then 1).
    """

    def __init__(self, grid, planner: Planner, partition_of: Callable[[int], int | None],  # noqa: ANN001
                 examples_of: Callable[[int], float | None]) -> None:
        super().__init__(grid)
        self.planner, self.partition_of, self.examples_of = planner, partition_of, examples_of
        self.plan: Plan | None = None
        self.by_node: dict[int, Decision] = {}
        self._taken = True

    def _schedule(self, messages: list[Message]) -> list[Message]:
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if not train:
            return messages
        server_round = _round_of(train)
        values = _values(train[0].content)
        nodes = {m.metadata.dst_node_id: self.partition_of(m.metadata.dst_node_id) for m in train}
        weights = {p: float(self.examples_of(p) or 1.0) for p in nodes.values() if p is not None}
        self.plan = self.planner.plan(server_round, weights, values)
        self.by_node, self._taken = {}, False
        out = [m for m in messages if m.metadata.message_type != MessageType.TRAIN]
        for msg in train:
            node = msg.metadata.dst_node_id
            partition = nodes[node]
            if partition is None:
                self.by_node[node] = Decision("", skip=True, reason="unknown partition")
                continue
            decision = self.plan.decisions[partition]
            self.by_node[node] = decision
            if decision.skip:
                continue
            content = RecordDict(dict(msg.content.items()))
            content[QCN_PLAN] = decision.to_record()
            planned = copy.copy(msg)  # the strategy's message (its metadata) with the plan added
            planned.content = content
            out.append(planned)
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(self._schedule(list(messages)))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(self._schedule(list(messages)), timeout=timeout)

    def decision_of(self, node: int) -> Decision | None:
        """This round's decision for ``node`` (``None``: it got no training message through here)."""
        return self.by_node.get(node)

    def take_round(self) -> tuple[Plan | None, dict[int, tuple[int | None, Decision]]]:
        """The last training round's plan and ``{node: (partition, decision)}``, once (then ``(None, {})``)."""
        if self._taken:
            return None, {}
        self._taken = True
        return self.plan, {node: (self.partition_of(node), d) for node, d in self.by_node.items()}


def _round_of(messages: list[Message]) -> int:
    for msg in messages:
        for record in msg.content.config_records.values():
            value = record.get(SERVER_ROUND)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return 0


def _values(content: RecordDict) -> int:
    """Values an update of this message's model has (every parameter of its ArrayRecords)."""
    return sum(int(a.numpy().size) for record in content.array_records.values() for a in record.values())


# --- a round's totals for metrics.csv ------------------------------------------------------

ROUND_TOTALS = (QCN_BELL_PAIRS, QCN_PAIRS_SAVED, QCN_BYTES, QCN_BYTES_SAVED)  # summed over a round's replies


@dataclass
class RoundTotals:
    """What a round of the ``qcn`` transport cost, from its replies (realised) and its plan."""

    values: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, replies: list[dict[str, float]], plan: Plan | None, deadline_s: float) -> RoundTotals:
        """``replies``: each answering client's realised qcn metrics (contract keys), late ones
        included (their pairs were spent); ``latency-s`` among them gives the round's length on
        the network clock: the last arrival, or the deadline if an update missed it."""
        out = {k: float(sum(r.get(k, 0.0) for r in replies)) for k in ROUND_TOTALS}
        latest = max((float(r.get(LATENCY_S, 0.0)) for r in replies), default=0.0)
        out[ROUND_QCN_NETWORK_S] = min(latest, deadline_s) if deadline_s > 0 else latest
        out[ROUND_QCN_SERVED] = float(len(replies)) if plan is None else float(plan.served)
        out[ROUND_QCN_SCHEDULE_S] = math.nan if plan is None else plan.seconds
        out[ROUND_QCN_BLOCKING_PAIRS] = math.nan if plan is None else float(plan.blocking_pairs)
        out[ROUND_QCN_OPTIMUM_GAP] = math.nan if plan is None else plan.optimum_utility - plan.association_utility
        return cls(out)


def check_topology(cfg: RunConfig) -> None:
    """``ValueError`` naming why ``qcn-topology`` cannot serve this run."""
    if not cfg.qcn_topology:
        return
    network = load_topology(cfg.qcn_topology)
    if not network.clients or not network.repeaters:
        raise ValueError("the topology needs at least one client and one repeater")
