"""The guard and a client's claims about its own noise (``update-noise-var``,
``noise-contraction``, ``pec-gamma2``).

A reply may carry them or not; the guard bounds each to its physical range and names a claim
outside it; every strategy keeps working with them, in a round where all carry them and in
one where only some do; noise-isolating's contradicted claims are named in ``clients.csv``.
Each test runs one round of five clients behind the server's real guard
(:class:`server.instrumented.InstrumentedStrategy`, the server's defaults: norm factor 4,
examples factor 4, direction rule on) with the schema the ServerApp builds.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import from_node

from qfl.common.contract import (
    ARRAYS,
    CONTROL_DELTA,
    METRICS,
    NOISE_CLAIM_METRICS,
    NOISE_CONTRACTION,
    NUM_EXAMPLES,
    PEC_GAMMA2,
    ROUND_AGGREGATION_FAILED,
    ROUND_CLIENTS_CAPPED,
    ROUND_CLIENTS_REJECTED,
    TRAIN_METRICS,
    UPDATE_NOISE_VAR,
)
from server.instrumented import InstrumentedStrategy, train_reply_schema
from strategies import BUILTIN_STRATEGIES, NoiseIsolatingFedAvg, load_strategy
from strategies.guard import bound_noise_claim, schema_problem

DIM = 40
CLIENTS = 5
GLOBAL = np.linspace(-1.0, 1.0, DIM)
U = np.ones(DIM) / np.sqrt(DIM)
HONEST = {UPDATE_NOISE_VAR: 1e-4, NOISE_CONTRACTION: 1.0, PEC_GAMMA2: 1.0}


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


class _Grid:
    def get_node_ids(self):  # noqa: ANN201
        return list(range(1, CLIENTS + 1))


def reply(node: int, claims: dict[str, float] | None = None, noise: float = 0.01, examples: float = 30) -> Message:
    """A training reply as our ClientApp sends it: every training metric, and ``claims``."""
    rng = np.random.default_rng(node)
    update = U + 0.05 * rng.normal(size=DIM) + noise * rng.normal(size=DIM)
    metrics = {**{key: 0.5 for key in TRAIN_METRICS}, NUM_EXAMPLES: examples, **(claims or {})}
    content = RecordDict({ARRAYS: ArrayRecord({"w": Array(GLOBAL + update)}), METRICS: MetricRecord(metrics)})
    return from_node(Message(content=content, dst_node_id=0, message_type="train"), node)


def guarded_round(strategy, replies: list[Message]):  # noqa: ANN001, ANN201
    """``(step along U, status by node, round stats)`` behind the guard with the ServerApp's schema."""
    reply_arrays = tuple(getattr(strategy, "reply_arrays", ()))
    guard = InstrumentedStrategy(strategy, train_reply_schema(extra_arrays=reply_arrays), 4.0, 4.0, None, True)
    guard.configure_train(1, ArrayRecord({"w": Array(GLOBAL)}), ConfigRecord(), _Grid())
    if reply_arrays:
        for msg in replies:
            msg.content[CONTROL_DELTA] = ArrayRecord({"w": Array(np.zeros(DIM))})
    arrays, _ = guard.aggregate_train(1, replies)
    status = {row["node_id"]: row["status"] for row in guard.take_client_rows()}
    stats = guard.take_round_stats()
    return (float((arrays["w"].numpy() - GLOBAL) @ U) if arrays is not None else float("nan")), status, stats


def test_the_schema_takes_a_reply_with_or_without_the_claims_and_nothing_else():
    schema = train_reply_schema()
    assert schema.optional_metrics == frozenset(NOISE_CLAIM_METRICS)
    assert schema_problem(reply(1, HONEST), schema) is None
    assert schema_problem(reply(1), schema) is None
    assert schema_problem(reply(1, {UPDATE_NOISE_VAR: 1e-4}), schema) is None
    assert "unexpected ['noise-guess']" in schema_problem(reply(1, {"noise-guess": 1.0}), schema)
    assert "must be a finite number" in schema_problem(reply(1, {UPDATE_NOISE_VAR: float("nan")}), schema)


def test_local_dp_may_withhold_the_claims():
    schema = train_reply_schema(withheld_metrics=(UPDATE_NOISE_VAR,))
    assert UPDATE_NOISE_VAR not in schema.metrics | schema.optional_metrics
    assert "unexpected" in schema_problem(reply(1, {UPDATE_NOISE_VAR: 1e-4}), schema)


@pytest.mark.parametrize(("key", "claim", "used", "words"), [
    (UPDATE_NOISE_VAR, -1.0, 0.0, "[0, inf)"),
    (NOISE_CONTRACTION, 0.0, 1.0, "(0, 1]"),
    (NOISE_CONTRACTION, -0.5, 1.0, "(0, 1]"),
    (NOISE_CONTRACTION, 3.0, 1.0, "(0, 1]"),
    (PEC_GAMMA2, 0.25, 1.0, "[1, inf)"),
])
def test_a_claim_outside_its_physical_range_is_bounded_and_named(key, claim, used, words):
    # Arrange: node 5 claims something impossible, the others the truth
    replies = [reply(k, HONEST) for k in range(1, CLIENTS)] + [reply(CLIENTS, {**HONEST, key: claim})]
    strategy = NoiseIsolatingFedAvg()
    # Act
    _, status, stats = guarded_round(strategy, replies)
    # Assert
    assert status[CLIENTS] == f"clipped: claimed {key} {claim:g}, outside {words}, used {used:g}", status
    assert all(status[k] == "ok" for k in range(1, CLIENTS)), status
    assert stats[ROUND_CLIENTS_CAPPED] == 1
    seen = strategy.last_clients[-1]
    assert {UPDATE_NOISE_VAR: seen.claimed_var, NOISE_CONTRACTION: seen.contraction, PEC_GAMMA2: seen.gamma2}[key] == used
    assert bound_noise_claim(key, claim) == used


def test_claims_in_range_pass_as_they_are():
    assert bound_noise_claim(UPDATE_NOISE_VAR, 0.0) == 0.0 and bound_noise_claim(NOISE_CONTRACTION, 1e-6) == 1e-6
    assert bound_noise_claim(PEC_GAMMA2, 1e9) == 1e9 and bound_noise_claim(UPDATE_NOISE_VAR, float("inf")) is None
    _, status, stats = guarded_round(NoiseIsolatingFedAvg(), [reply(k, HONEST) for k in range(1, CLIENTS + 1)])
    assert set(status.values()) == {"ok"} and stats[ROUND_CLIENTS_CAPPED] == 0


@pytest.mark.parametrize("name", sorted(BUILTIN_STRATEGIES))
@pytest.mark.parametrize("carried", ["all", "some"])
def test_every_strategy_works_with_replies_that_carry_the_claims(name, carried):
    """All replies carry the claims, or only three of five (older clients beside newer ones):
    no aggregation fails, nobody is rejected, and the step is the strategy's step without them."""
    # Arrange
    with_claims = [reply(k, HONEST if carried == "all" or k <= 3 else None) for k in range(1, CLIENTS + 1)]
    without = [reply(k) for k in range(1, CLIENTS + 1)]
    # Act
    got, status, stats = guarded_round(load_strategy(name, min_available_nodes=1), with_claims)
    plain, _, _ = guarded_round(load_strategy(name, min_available_nodes=1), without)
    # Assert
    assert stats[ROUND_AGGREGATION_FAILED] == 0 and stats[ROUND_CLIENTS_REJECTED] == 0, stats
    assert set(status.values()) == {"ok"}, status
    if name != "noise-isolating":  # the one that weighs them
        assert got == pytest.approx(plain, rel=1e-12)


def test_a_mixed_round_leaves_the_claims_out_and_says_so(caplog):
    import logging

    replies = [reply(k, HONEST if k <= 2 else None) for k in range(1, CLIENTS + 1)]
    strategy = NoiseIsolatingFedAvg()
    with caplog.at_level(logging.WARNING):
        guarded_round(strategy, replies)
    assert f"['{NOISE_CONTRACTION}', '{PEC_GAMMA2}', '{UPDATE_NOISE_VAR}'] come from nodes [1, 2]" in caplog.text
    assert all(np.isnan(c.claimed_var) for c in strategy.last_clients)


def test_a_contradicted_noise_claim_is_named_in_the_status_and_counted():
    # Arrange: node 5's update is noisy (variance 0.0625 per coordinate, 25 x the heterogeneity,
    # inside the guard's norm bars) and it claims none; the others claim their true noise 1e-4
    replies = [reply(k, HONEST) for k in range(1, CLIENTS)]
    replies.append(reply(CLIENTS, {**HONEST, UPDATE_NOISE_VAR: 0.0}, noise=0.25))
    # Act
    step, status, stats = guarded_round(NoiseIsolatingFedAvg(), replies)
    # Assert
    assert status[CLIENTS].startswith(f"contradicted: claimed {UPDATE_NOISE_VAR} 0, far below its update's spread"), status
    assert all(status[k] == "ok" for k in range(1, CLIENTS)), status
    assert stats[ROUND_CLIENTS_CAPPED] == 1 and stats["ni-contradicted"] == 1
    assert step > 0.9


def test_clients_csv_records_each_replys_mitigation_claim_beside_its_profile():
    """A client's mitigation (none / zne / pec) is part of its claimed device: the guard
    records it in its row of ``clients.csv``, as the reply said it, for each client."""
    from qfl.common.contract import DEVICE, DEVICE_MITIGATION, DEVICE_PROFILE
    from server.recorder import CLIENT_COLUMNS

    assert DEVICE_MITIGATION in CLIENT_COLUMNS
    said = {1: "none", 2: "zne", 3: "pec", 4: "pec", 5: "none"}
    replies = []
    for node, mitigation in said.items():
        msg = reply(node, HONEST)
        msg.content[DEVICE] = ConfigRecord({DEVICE_PROFILE: "ibm-heron", DEVICE_MITIGATION: mitigation})
        replies.append(msg)
    guard = InstrumentedStrategy(load_strategy("fedavg"), train_reply_schema(), 4.0, 4.0, None, True)
    guard.configure_train(1, ArrayRecord({"w": Array(GLOBAL)}), ConfigRecord(), _Grid())
    guard.aggregate_train(1, replies)
    rows = {row["node_id"]: row for row in guard.take_client_rows()}
    assert {node: row[DEVICE_MITIGATION] for node, row in rows.items()} == said
    assert all(row[DEVICE_PROFILE] == "ibm-heron" for row in rows.values())
