"""An attacker inside the norm bar: the guard's direction rule against sign flips and colluders.

The issue's measurements, one round behind the server's real guard
(:class:`server.instrumented.InstrumentedStrategy` with the server's defaults: norm factor 4,
examples factor 4, ``robust-direction`` on): five clients, the honest ones step along a
direction :math:`u` from the global model, and the aggregate is read as its projection on
:math:`u` (a clean round gives about 1). Each attack is run with the rule off too, where it
must do the damage the issue measured, so that no test here passes with the rule doing
nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message
from helpers import make_reply

from server.instrumented import InstrumentedStrategy
from strategies import FidelityWeightedFedAvg, load_strategy
from strategies.guard import direction_screen

DIM = 40
CLIENTS = 5
NORM_FACTOR = EXAMPLES_FACTOR = 4.0  # the server's defaults
GLOBAL = np.linspace(-1.0, 1.0, DIM)
U = np.ones(DIM) / np.sqrt(DIM)


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


def honest(node: int) -> np.ndarray:
    """A honest client's update: one unit along ``U`` with a little heterogeneity of its own."""
    return U + 0.05 * np.random.default_rng(node).normal(size=DIM)


def reply(update: np.ndarray, node: int, examples: float = 30, fidelity: float | None = None) -> Message:
    msg = make_reply({"w": GLOBAL + update}, examples, node)
    if fidelity is not None:
        msg.content["metrics"]["fidelity"] = fidelity
    return msg


def guarded_round(replies: list[Message], direction: bool = True, strategy=None):  # noqa: ANN001, ANN201
    """``(aggregate . U, status by node)`` of one round behind the guard."""
    guard = InstrumentedStrategy(strategy or load_strategy("fedavg"), None, NORM_FACTOR, EXAMPLES_FACTOR, None, direction)
    guard._reference, guard._global = {"w": (DIM,)}, ArrayRecord({"w": Array(GLOBAL)})  # as configure_train records them
    arrays, _ = guard.aggregate_train(1, replies)
    status = {row["node_id"]: row["status"] for row in guard.take_client_rows()}
    return float((arrays["w"].numpy() - GLOBAL) @ U), status


def attacked(attackers: dict[int, np.ndarray], **claims) -> list[Message]:  # noqa: ANN003
    """Five replies: the honest ones, and ``attackers``' updates in place of theirs."""
    return [reply(attackers[k], k, **claims) if k in attackers else reply(honest(k), k) for k in range(1, CLIENTS + 1)]


def sign_flip(node: int, factor: float = 3.0) -> np.ndarray:
    """The global model minus ``factor`` times the attacker's own honest update."""
    return -factor * honest(node)


def test_a_clean_round_loses_nobody_and_little_of_its_step():
    clean, status = guarded_round(attacked({}))
    off, _ = guarded_round(attacked({}), direction=False)
    assert set(status.values()) == {"ok"}
    assert clean > 0.95 and abs(clean - off) < 0.03, (clean, off)


@pytest.mark.parametrize("attack", [
    "one sign flip (-3x its update)",
    "one sign flip at the norm bar's edge (-3.9 u)",
    "one sign flip claiming 1e9 examples",
    "two colluders (-3.9 u each)",
])
def test_an_in_bound_attack_is_rejected_named_and_leaves_the_step(attack):
    attackers = {5: sign_flip(5)} if attack.startswith("one sign flip (") else \
        {5: -3.9 * U} if "edge" in attack else {4: -3.9 * U, 5: -3.9 * U} if "colluders" in attack else {5: sign_flip(5)}
    claims = {"examples": 1e9} if "1e9" in attack else {}
    replies = [reply(attackers[k], k, **claims) if k in attackers else reply(honest(k), k) for k in range(1, CLIENTS + 1)]
    step, status = guarded_round(replies)
    without, _ = guarded_round(replies, direction=False)
    assert step > 0.9, (attack, step)
    assert without < 0.6, (attack, without)  # what the rule stops: the issue's +0.05, -1.44, -0.98
    for node in attackers:
        assert status[node].startswith("rejected: update points against the round's coordinate-wise median"), status
    assert all(status[k] == "ok" for k in range(1, CLIENTS + 1) if k not in attackers), status


def test_a_false_fidelity_claim_with_a_sign_flip_does_not_make_the_aggregate():
    replies = attacked({5: -3.5 * U})
    replies[-1].content["metrics"]["fidelity"] = 1e6
    for msg in replies[:-1]:
        msg.content["metrics"]["fidelity"] = 0.95
    step, status = guarded_round(replies, strategy=FidelityWeightedFedAvg())
    without, _ = guarded_round(replies, direction=False, strategy=FidelityWeightedFedAvg())
    assert step > 0.9 and without < 0.5, (step, without)
    assert status[5].startswith("rejected: update points against"), status


def test_an_update_a_little_off_the_median_pulls_by_at_most_a_typical_update():
    """The attacker who reads the rule keeps a positive cosine and puts the rest of its norm
    (just inside the 4x bar) where it hurts: it passes, cut to twice the median norm, and named."""
    orthogonal = np.zeros(DIM)
    orthogonal[: DIM // 2], orthogonal[DIM // 2:] = 1.0, -1.0
    orthogonal /= np.linalg.norm(orthogonal)
    evil = 0.3 * U + 3.9 * orthogonal
    replies = attacked({5: evil})
    seen = direction_screen(replies, ArrayRecord({"w": Array(GLOBAL)}))
    assert seen.rejected == [] and 5 in seen.scaled and seen.scaled[5] < 0.6, seen
    assert seen.trust[5] < 0.2 < min(seen.trust[k] for k in range(1, CLIENTS)), seen.trust  # and it weighs little
    guard = InstrumentedStrategy(load_strategy("fedavg"), None, NORM_FACTOR, EXAMPLES_FACTOR, None, True)
    guard._reference, guard._global = {"w": (DIM,)}, ArrayRecord({"w": Array(GLOBAL)})
    arrays, _ = guard.aggregate_train(1, replies)
    assert guard.take_client_rows()[-1]["status"].startswith("scaled: update norm 3.7 x the round's median, cut to 2 x")
    off_axis = float((arrays["w"].numpy() - GLOBAL) @ orthogonal)
    median_norm = float(np.median([np.linalg.norm(honest(k)) for k in range(1, CLIENTS)]))
    assert off_axis <= 1.05 * 2 * median_norm / CLIENTS, off_axis  # 3.9 / 5 = 0.78 without the bound


def test_fewer_than_three_replies_pass_as_they_are():
    replies = [reply(honest(1), 1), reply(sign_flip(2), 2)]
    seen = direction_screen(replies, ArrayRecord({"w": Array(GLOBAL)}))
    assert seen.kept == replies and seen.rejected == [] and seen.scaled == {} and seen.trust == {}


@pytest.mark.parametrize("poison", [1e3, -0.35])  # far outside the bar; inside it (3.5 x the median)
def test_a_poisoned_scaffold_control_delta_cannot_steer_the_servers_variate(poison):
    """SCAFFOLD sums the control deltas into its variate for every later round: one far
    outside the round's spread is rejected with its reply, one inside is cut to the median."""
    from qfl.common.contract import CONTROL_DELTA
    from strategies.scaffold import Scaffold
    from strategies.guard import ReplySchema

    def scaffold_round(attack: float | None) -> tuple[np.ndarray, dict]:
        strategy = Scaffold()
        strategy.control, strategy._global, strategy._available = {"w": np.zeros(DIM)}, ArrayRecord({"w": Array(GLOBAL)}), CLIENTS
        guard = InstrumentedStrategy(strategy, ReplySchema(metrics=frozenset({"train-loss", "num-examples"}),
                                                                extra_arrays=frozenset({CONTROL_DELTA})), NORM_FACTOR,
                                     EXAMPLES_FACTOR, None, True)
        guard._reference, guard._global = {"w": (DIM,)}, ArrayRecord({"w": Array(GLOBAL)})
        replies = []
        for k in range(1, CLIENTS + 1):
            msg = reply(honest(k), k)
            delta = attack * U if attack is not None and k == CLIENTS else 0.1 * honest(k)
            msg.content[CONTROL_DELTA] = ArrayRecord({"w": Array(delta)})
            replies.append(msg)
        guard.aggregate_train(1, replies)
        return strategy.control["w"], {row["node_id"]: row["status"] for row in guard.take_client_rows()}

    clean, clean_status = scaffold_round(None)
    control, status = scaffold_round(poison)
    assert set(clean_status.values()) == {"ok"} and np.linalg.norm(clean) > 0, clean_status
    pull = abs(float((control - clean) @ U))
    median_norm = float(np.median([np.linalg.norm(0.1 * honest(k)) for k in range(1, CLIENTS + 1)]))
    if poison > 100:
        assert status[CLIENTS].startswith("rejected: 'control-delta' norm"), status
    assert pull <= 2 * median_norm / CLIENTS + 1e-9, pull  # unguarded: |poison| / 5 = 0.07 or 200


class _Grid:
    """What the strategies' ``configure_train`` samples from."""

    def get_node_ids(self):  # noqa: ANN201
        return list(range(1, CLIENTS + 1))


@pytest.mark.parametrize("name", [*__import__("strategies").BUILTIN_STRATEGIES, "strategies.scaffold:Scaffold"])
def test_every_strategy_stands_behind_the_same_direction_rule(name):
    """One sign flip of five, behind the guard as the ServerApp builds it: whatever the
    strategy (by name or by dotted path), the attacker is rejected and the step goes forward."""
    from flwr.app import ConfigRecord

    from qfl.common.contract import CONTROL_DELTA

    def step() -> tuple[float, dict]:
        guard = InstrumentedStrategy(load_strategy(name, min_available_nodes=1), None, NORM_FACTOR, EXAMPLES_FACTOR,
                                     None, True)
        guard.configure_train(1, ArrayRecord({"w": Array(GLOBAL)}), ConfigRecord(), _Grid())
        replies = attacked({5: sign_flip(5)})
        for msg in replies if "scaffold" in name else ():
            msg.content[CONTROL_DELTA] = ArrayRecord({"w": Array(np.zeros(DIM))})  # what SCAFFOLD's replies carry
        arrays, _ = guard.aggregate_train(1, replies)
        return float((arrays["w"].numpy() - GLOBAL) @ U), {r["node_id"]: r["status"] for r in guard.take_client_rows()}

    forward, status = step()
    assert status[5].startswith("rejected: update points against"), status
    assert all(status[k] == "ok" for k in range(1, CLIENTS)), status
    assert forward > 0, forward


def a_little_is_enough(z: float, attackers: tuple[int, ...], own_noise: float = 0.0) -> dict[int, np.ndarray]:
    """Baruch et al. 2019: each attacker sends the honest updates' mean shifted by ``z`` of their
    standard deviations per coordinate, against the mean's sign (it knows every honest update:
    the strongest form); with ``own_noise``, each adds its own noise of that scale per
    coordinate so that no two attackers agree."""
    updates = np.array([honest(k) for k in range(1, CLIENTS + 1)])
    mean, spread = updates.mean(axis=0), updates.std(axis=0)
    return {a: mean - z * spread * np.sign(mean) + own_noise * np.random.default_rng(100 + a).normal(size=DIM)
            for a in attackers}


# z = 0.84 is Baruch's shift for 2 attackers of 5, the largest the median cannot see
# (Phi^-1((n - s) / n), s = floor(n / 2 + 1) - m = 1)
ATTACKS = {
    "sign flip (-3x its update)": lambda: ({5: sign_flip(5)}, {}),
    "sign flip at the norm bar's edge (-3.9 u)": lambda: ({5: -3.9 * U}, {}),
    "two colluders (-3.9 u each)": lambda: ({4: -3.9 * U, 5: -3.9 * U}, {}),
    "a little is enough, two colluders, z = 0.84": lambda: (a_little_is_enough(0.84, (4, 5)), {}),
    "sign flip claiming 1e9 examples": lambda: ({5: sign_flip(5)}, {"examples": 1e9}),
    "sign flip claiming fidelity 1e6": lambda: ({5: sign_flip(5)}, {"fidelity": 1e6}),
    "near-copy free rider claiming 1e9 examples": lambda: (
        {5: 1e-9 * np.random.default_rng(0).normal(size=DIM)}, {"examples": 1e9}),
}
MATRIX_MARGIN = 0.1  # of the strategy's own clean step along u


def strategy_round(name: str, attackers: dict[int, np.ndarray], claims: dict) -> tuple[float, dict]:
    """``(aggregate . U, status by node)`` of one round of strategy ``name`` behind the guard as
    the ServerApp builds it; the honest clients claim fidelity 0.9 where the attacker claims one."""
    from flwr.app import ConfigRecord

    from qfl.common.contract import CONTROL_DELTA

    guard = InstrumentedStrategy(load_strategy(name, min_available_nodes=1), None, NORM_FACTOR, EXAMPLES_FACTOR,
                                 None, True)
    guard.configure_train(1, ArrayRecord({"w": Array(GLOBAL)}), ConfigRecord(), _Grid())
    replies = []
    for k in range(1, CLIENTS + 1):
        mine = claims if k in attackers else {"fidelity": 0.9} if "fidelity" in claims else {}
        replies.append(reply(attackers.get(k, honest(k)), k, **mine))
        if "scaffold" in name:
            replies[-1].content[CONTROL_DELTA] = ArrayRecord({"w": Array(np.zeros(DIM))})
    arrays, _ = guard.aggregate_train(1, replies)
    return float((arrays["w"].numpy() - GLOBAL) @ U), {r["node_id"]: r["status"] for r in guard.take_client_rows()}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("name", list(__import__("strategies").BUILTIN_STRATEGIES))
def test_the_adaptive_attack_matrix(name, attack):
    """Every in-bound attack against every named strategy: the round's step along ``u`` stays
    within :data:`MATRIX_MARGIN` of the same strategy's clean round, every attacker is named
    (its status is not ``ok``) and every honest client is not."""
    attackers, claims = ATTACKS[attack]()
    clean, _ = strategy_round(name, {}, {})
    step, status = strategy_round(name, attackers, claims)
    assert clean > 0 and step >= (1 - MATRIX_MARGIN) * clean, (clean, step)
    assert all(status[k] != "ok" for k in attackers), status
    assert all(status[k] == "ok" for k in range(1, CLIENTS + 1) if k not in attackers), status


def test_colluders_who_agree_on_a_little_is_enough_count_once_and_are_named():
    """Both send the same shifted mean: unguarded by the group rule, a median lags by 0.18
    of its clean step; grouped, the second is rejected and the first stands for both."""
    attackers = a_little_is_enough(0.84, (4, 5))
    seen = direction_screen(attacked(attackers), ArrayRecord({"w": Array(GLOBAL)}))
    assert [m.metadata.src_node_id for m, _ in seen.rejected] == [5] and seen.twins == {4: (5,)}, seen
    assert seen.rejected[0][1].startswith("update all but identical to node 4's"), seen.rejected
    clean, _ = strategy_round("fedmedian", {}, {})
    step, status = strategy_round("fedmedian", attackers, {})
    assert step >= 0.9 * clean and status[4].startswith("twinned: update all but identical to node(s) 5's"), status


def test_honest_clients_are_never_twins_and_two_are_not_a_group():
    assert direction_screen(attacked({}), ArrayRecord({"w": Array(GLOBAL)})).twins == {}
    from strategies.guard.screens import _twin_groups

    assert _twin_groups([1, 2], np.zeros((2, DIM))) == {}
    same = np.stack([U, U, U + 1.0, U - 1.0])
    assert _twin_groups([1, 2, 3, 4], same) == {1: (2,), 2: (1,)}


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedtrimmedavg", "noise-isolating"])
def test_a_little_is_enough_with_noise_of_its_own_stays_unnamed_but_within_the_margin(name):
    """The limit of the guard: colluders that each add their own noise of the honest spread are
    not twins and keep a positive cosine, so nothing names them; at Baruch's z = 0.84 what they
    cost stays within the matrix's margin (measured: 0.92 against 0.97 of a clean FedAvg step)."""
    attackers = a_little_is_enough(0.84, (4, 5), own_noise=0.05)
    clean, _ = strategy_round(name, {}, {})
    step, status = strategy_round(name, attackers, {})
    assert step >= (1 - MATRIX_MARGIN) * clean, (clean, step)
    assert status[4] == status[5] == "ok", status  # if this fails, the guard got better: say so in the docs
