"""Nothing a client claims decides its weight unchecked: the server's guard against claims.

A reply carries numbers the server cannot see being made: the link ``fidelity`` (weighted by
FidelityWeightedFedAvg), ``num-examples`` (weighted by every averaging strategy) and, as its
update, a model that may be the global one in disguise. Each test runs one round behind the
server's real guard (:class:`server.instrumented.InstrumentedStrategy`, with the server's
defaults: norm factor 4, examples factor 4) as the issue measured it: five clients, the
honest ones step along a direction :math:`u` from the global model, and the aggregate is read
as its projection on :math:`u` (a clean round gives about 1). Each attack is compared with
the clean round and with what it achieved before the rule, and the attacker must be named.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from helpers import make_reply

from qfl.common.contract import ROUND_CLIENTS_CAPPED, ROUND_CLIENTS_REJECTED
from server.app import PartitionSizes
from server.instrumented import InstrumentedStrategy
from strategies import FidelityWeightedFedAvg, fidelity_weight, load_strategy
from strategies.guard import FIDELITY_RANGE, NEAR_COPY_FRACTION

DIM = 40
CLIENTS = 5
ATTACKER = 5  # node ID
NORM_FACTOR = EXAMPLES_FACTOR = 4.0  # the server's defaults (robust-norm-factor, robust-examples-factor)
GLOBAL = np.linspace(-1.0, 1.0, DIM)
U = np.ones(DIM) / np.sqrt(DIM)  # the direction the honest clients agree on, unit norm


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


def honest_update(node: int) -> np.ndarray:
    """A honest client's model: one unit along ``U``, with a little heterogeneity of its own."""
    rng = np.random.default_rng(node)
    return GLOBAL + U + 0.05 * rng.normal(size=DIM)


def reply(params: np.ndarray, examples: float, node: int, fidelity: float | None = None,
          partition: int | None = None, num_partitions: int | None = None) -> Message:
    """A training reply with what the ClientApp and the ``qcn`` transport would add."""
    msg = make_reply({"w": params}, examples, node)
    if fidelity is not None:
        msg.content["metrics"]["fidelity"] = fidelity
    device = {k: v for k, v in (("partition-id", partition), ("num-partitions", num_partitions)) if v is not None}
    if device:
        msg.content["device"] = ConfigRecord(device)
    return msg


def guarded_round(strategy, replies: list[Message], examples_bounds=None):  # noqa: ANN001, ANN201
    """``(aggregate . U, per-client status by node, round stats)`` of one round behind the guard."""
    guard = InstrumentedStrategy(strategy, None, NORM_FACTOR, EXAMPLES_FACTOR, examples_bounds)
    guard._reference, guard._global = {"w": (DIM,)}, ArrayRecord({"w": Array(GLOBAL)})  # as configure_train records them
    arrays, _ = guard.aggregate_train(1, replies)
    status = {row["node_id"]: row["status"] for row in guard.take_client_rows()}
    return float((arrays["w"].numpy() - GLOBAL) @ U), status, guard.take_round_stats()


# (a) fidelity --------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", [1.0 + 1e-9, 1.5, 1e6, np.inf])
def test_no_fidelity_claim_weighs_more_than_a_perfect_link(claim):
    assert fidelity_weight(claim) <= 1.0
    assert fidelity_weight(np.array([claim, 0.99, 0.25, 0.0, -3.0, np.nan])).max() <= 1.0


def _fidelity_round(attacker_claim: float | None):  # noqa: ANN202
    """Four honest clients at fidelity 0.95; the fifth sends a sign flip at a honest norm
    (inside the norm bar) and claims ``attacker_claim`` (``None``: the fifth is honest)."""
    replies = [reply(honest_update(k), 30, k, fidelity=0.95) for k in range(1, CLIENTS)]
    if attacker_claim is None:
        replies.append(reply(honest_update(ATTACKER), 30, ATTACKER, fidelity=0.95))
    else:
        replies.append(reply(GLOBAL - U, 30, ATTACKER, fidelity=attacker_claim))
    return guarded_round(FidelityWeightedFedAvg(), replies)


def test_a_fidelity_claim_above_one_is_clipped_named_and_cannot_make_the_aggregate():
    clean, clean_status, _ = _fidelity_round(None)
    attacked, status, stats = _fidelity_round(1e6)
    perfect, _, _ = _fidelity_round(1.0)
    # unclipped, g(1e6) ~ 2e12 makes the attacker the aggregate (-1); clipped it weighs as a
    # perfect link, one fifth or so: the clean round's +1 drops by at most twice its share
    assert clean > 0.9 and all(s == "ok" for s in clean_status.values())
    assert attacked == pytest.approx(perfect, abs=1e-12)
    share = fidelity_weight(1.0) / (fidelity_weight(1.0) + (CLIENTS - 1) * fidelity_weight(0.95))
    assert attacked > clean - 2 * share - 0.05 and attacked > 0.4, (attacked, clean)
    assert status[ATTACKER] == f"clipped: claimed fidelity 1e+06, outside [{FIDELITY_RANGE[0]:g}, {FIDELITY_RANGE[1]:g}], used 1"
    assert all(status[k] == "ok" for k in range(1, CLIENTS))
    assert stats[ROUND_CLIENTS_CAPPED] == 1


def test_a_fidelity_claim_below_a_quarter_is_named_and_weighs_nothing():
    clean, _, _ = _fidelity_round(None)
    attacked, status, _ = _fidelity_round(-5.0)
    honest_only, _, _ = guarded_round(FidelityWeightedFedAvg(),
                                      [reply(honest_update(k), 30, k, fidelity=0.95) for k in range(1, CLIENTS)])
    assert attacked == pytest.approx(honest_only, abs=1e-12) and abs(attacked - clean) < 0.05
    assert status[ATTACKER].startswith("clipped: claimed fidelity -5,") and status[ATTACKER].endswith("used 0.25")


def test_a_fidelity_inside_the_range_is_left_as_claimed():
    _, status, stats = _fidelity_round(FIDELITY_RANGE[0])
    assert status[ATTACKER] == "ok" and stats[ROUND_CLIENTS_CAPPED] == 0


def test_under_qcn_the_server_estimates_each_links_fidelity_and_names_an_overclaim(defaults):
    """Partitions 0-3 on a metro path, partition 4 on a poor-memory one; each honest client
    claims what its own simulation of its path measured (transport.qcn.transmit, as the
    node does). The attacker on the poor path claims a perfect link: the server's own
    estimate for that path replaces it, and the client is named; the honest claims stand."""
    from qfl.common.config import RunConfig
    from server.app import PathFidelity
    from transport.qcn import get_path, transmit

    cfg = RunConfig.from_run_config({**defaults, "transport": "qcn", "qcn-paths": "metro;metro;metro;metro;poor-memory"})
    measured = [transmit(np.ones(DIM), get_path(cfg.path_specs()[k]), cfg.qcn_copies, np.random.default_rng(k),
                         cfg.qcn_channels).fidelity for k in range(CLIENTS)]
    assert measured[4] < measured[0] - 0.05  # the poor path is measurably poorer
    bound = {k: k - 1 for k in range(1, CLIENTS + 1)}  # node k named partition k - 1 at the warm-up
    estimates = PathFidelity(cfg, bound)

    def run(claim: float):  # noqa: ANN202
        replies = [reply(honest_update(k), 30, k, fidelity=measured[k - 1]) for k in range(1, CLIENTS)]
        replies.append(reply(honest_update(ATTACKER), 30, ATTACKER, fidelity=claim))
        guard = InstrumentedStrategy(FidelityWeightedFedAvg(), None, NORM_FACTOR, EXAMPLES_FACTOR, None, False, estimates)
        guard._reference, guard._global = {"w": (DIM,)}, ArrayRecord({"w": Array(GLOBAL)})
        guard.aggregate_train(1, replies)
        return {row["node_id"]: row for row in guard.take_client_rows()}

    honest = run(measured[4])
    assert all(row["status"] == "ok" for row in honest.values()), honest
    lying = run(1.0)
    estimate = estimates.estimate("poor-memory", DIM)[0]
    assert lying[ATTACKER]["status"] == (f"clipped: claimed fidelity 1, above the server's estimate for its path, "
                                         f"used {estimate:.4g}"), lying[ATTACKER]
    assert abs(estimate - measured[4]) < 0.01 and lying[ATTACKER]["fidelity"] == pytest.approx(estimate)
    assert all(lying[k]["status"] == "ok" for k in range(1, CLIENTS))
    # a node the server cannot bind to a partition keeps only the range check
    assert PathFidelity(cfg, {})([reply(honest_update(1), 30, 1, fidelity=1.0)]) == [None]


# (b) example counts without a partition ------------------------------------------------------


@pytest.fixture
def sizes():  # noqa: ANN201
    """The server's real partition sizes (rebuilt from the seed) for a skewed 5-way split of 150 examples: 32, 41, 18, 36, 23."""
    cfg = SimpleNamespace(partitioner="dirichlet", seed=1, dirichlet_alpha=5.0)
    data = SimpleNamespace(y_train=np.arange(150) % 3, h_train=None)
    return PartitionSizes(cfg, data)  # type: ignore[arg-type]


def _partition_round(sizes, attacker: dict | None):  # noqa: ANN001, ANN202
    """Four honest clients on partitions 0..3 of 5, claiming their true sizes; the fifth
    sends a sign flip at a honest norm claiming 1e9 examples and ``attacker``'s device
    claims (``None``: the fifth is honest, on partition 4)."""
    true = sizes.sizes(CLIENTS)
    replies = [reply(honest_update(k), true[k - 1], k, partition=k - 1, num_partitions=CLIENTS) for k in range(1, CLIENTS)]
    if attacker is None:
        replies.append(reply(honest_update(ATTACKER), true[4], ATTACKER, partition=4, num_partitions=CLIENTS))
    else:
        replies.append(reply(GLOBAL - U, 1e9, ATTACKER, **attacker))
    return guarded_round(load_strategy("fedavg"), replies, sizes)


@pytest.mark.parametrize("device", [{}, {"num_partitions": CLIENTS}, {"partition": 99, "num_partitions": CLIENTS}],
                         ids=["no-device", "no-partition-id", "no-such-partition"])
def test_a_count_with_no_partition_weighs_as_the_rounds_smallest_and_is_named(sizes, device):
    true = sizes.sizes(CLIENTS)
    clean, clean_status, _ = _partition_round(sizes, None)
    attacked, status, stats = _partition_round(sizes, device)
    smallest = min(true[: CLIENTS - 1])
    # capped only at 4 x the median claim it would hold half the weight and cancel the round
    # (+1 -> about 0); counted as the smallest honest partition it holds its least fair share
    share = smallest / (smallest + sum(true[: CLIENTS - 1]))
    assert clean > 0.9 and all(s == "ok" for s in clean_status.values())
    assert attacked == pytest.approx(clean * (1 - share) - share, abs=0.05), (attacked, clean, share)
    assert attacked > 0.5
    assert status[ATTACKER] == (f"capped: claimed 1e+09 examples with no partition bound to it to check them against, "
                                f"counted {smallest:g} (the round's smallest)")
    assert all(status[k] == "ok" for k in range(1, CLIENTS)) and stats[ROUND_CLIENTS_CAPPED] == 1


def test_a_small_claim_with_no_partition_is_named_and_kept_as_claimed(sizes):
    true = sizes.sizes(CLIENTS)
    replies = [reply(honest_update(k), true[k - 1], k, partition=k - 1, num_partitions=CLIENTS) for k in range(1, CLIENTS)]
    replies.append(reply(honest_update(ATTACKER), 1, ATTACKER))
    _, status, _ = guarded_round(load_strategy("fedavg"), replies, sizes)
    assert status[ATTACKER].startswith("capped: claimed 1 examples with no partition") and "counted 1 " in status[ATTACKER]


def test_a_round_in_which_nobody_names_a_partition_is_weighted_uniformly(sizes):
    replies = [reply(honest_update(k), 10 * k, k) for k in range(1, CLIENTS + 1)]
    uniform, status, _ = guarded_round(load_strategy("fedavg"), replies, sizes)
    expected = np.mean([(honest_update(k) - GLOBAL) @ U for k in range(1, CLIENTS + 1)])
    assert uniform == pytest.approx(expected, abs=1e-9)
    assert all("counted 10 (the round's smallest)" in s for s in status.values()), status


# (c) near-copies of the global model ---------------------------------------------------------


def _copy_round(strategy: str, riders: dict[int, float]):  # noqa: ANN202
    """Five clients claiming 30 examples each; node ``k`` in ``riders`` sends the global
    model plus noise of norm ``riders[k]`` x a honest update's and claims 1e9 examples."""
    replies = []
    for k in range(1, CLIENTS + 1):
        if k in riders:
            noise = np.random.default_rng(100 + k).normal(size=DIM)
            replies.append(reply(GLOBAL + riders[k] * noise / np.linalg.norm(noise), 1e9, k))
        else:
            replies.append(reply(honest_update(k), 30, k))
    return guarded_round(load_strategy(strategy), replies)


@pytest.mark.parametrize("strategy", ["fedavg", "fidelity-weighted", "noise-isolating"])
@pytest.mark.parametrize("size", [0.0, 1e-9, 1e-4, 0.9 * NEAR_COPY_FRACTION])
def test_a_near_copy_of_the_global_model_is_rejected_and_named(strategy, size):
    clean, clean_status, _ = _copy_round(strategy, {})
    attacked, status, stats = _copy_round(strategy, {ATTACKER: size})
    honest_only, _, _ = guarded_round(load_strategy(strategy), [reply(honest_update(k), 30, k) for k in range(1, CLIENTS)])
    # kept and capped at 4 x the median claim it would halve the round (+1 -> +0.5)
    assert clean > 0.9 and all(s == "ok" for s in clean_status.values())
    assert attacked == pytest.approx(honest_only, abs=1e-12) and abs(attacked - clean) < 0.05
    assert status[ATTACKER].startswith("rejected: returned the global model")
    assert all(status[k] == "ok" for k in range(1, CLIENTS)) and stats[ROUND_CLIENTS_REJECTED] == 1


def test_two_colluding_near_copies_are_both_rejected():
    clean, _, _ = _copy_round("fedavg", {})
    attacked, status, stats = _copy_round("fedavg", {4: 1e-9, 5: 1e-6})
    assert abs(attacked - clean) < 0.05
    assert all(status[k].startswith("rejected: returned the global model") for k in (4, 5))
    assert stats[ROUND_CLIENTS_REJECTED] == 2


def test_a_small_honest_update_is_no_copy():
    # a client whose update is a tenth of the others' (a small partition, few local steps)
    _, status, stats = _copy_round("fedavg", {ATTACKER: 0.1})
    assert status[ATTACKER].startswith("capped")  # its claim is capped, its update kept
    assert stats[ROUND_CLIENTS_REJECTED] == 0


def test_of_two_replies_only_a_bit_equal_copy_is_rejected():
    # no majority says what is typical: the smaller of two updates is no copy for that alone
    _, status, _ = guarded_round(load_strategy("fedavg"), [reply(honest_update(1), 30, 1), reply(GLOBAL + 1e-9 * U, 30, 2)])
    assert status == {1: "ok", 2: "ok"}
    _, status, _ = guarded_round(load_strategy("fedavg"), [reply(honest_update(1), 30, 1), reply(GLOBAL, 30, 2)])
    assert status[2] == "rejected: returned the global model unchanged while claiming to have trained"


def test_a_node_is_bound_to_the_partition_it_named_first(sizes):
    """The attacker names the largest partition in round 2 after naming its own in round 1:
    the switch is not sized (the round's smallest) and named; a node that names another
    node's partition in the same round leaves both unsized."""
    true = sizes.sizes(CLIENTS)
    largest = int(np.argmax(true))
    first = [reply(honest_update(k), true[k - 1], k, partition=k - 1, num_partitions=CLIENTS)
             for k in range(1, CLIENTS + 1)]
    assert sizes(first) == [float(n) for n in true] and sizes.bound[ATTACKER] == CLIENTS - 1
    switched = [*first[:-1], reply(honest_update(ATTACKER), 1e9, ATTACKER, partition=largest, num_partitions=CLIENTS)]
    bounds = sizes(switched)
    assert bounds[largest] is None and bounds[-1] is None  # the victim shares the claim this round
    assert [b for i, b in enumerate(bounds) if i not in (largest, CLIENTS - 1)] == \
        [float(true[i]) for i in range(CLIENTS) if i not in (largest, CLIENTS - 1)]
    again = [*first[:-1], reply(honest_update(ATTACKER), 1e9, ATTACKER, partition=largest, num_partitions=CLIENTS)]
    again[largest] = reply(honest_update(largest + 1), true[largest], largest + 1)  # the victim names none this time
    assert sizes(again)[-1] is None  # still not the attacker's: it named another first
    _, status, _ = guarded_round(load_strategy("fedavg"), switched, sizes)
    assert status[ATTACKER].startswith("capped: claimed 1e+09 examples with no partition bound to it"), status
