"""A shared quantum network managed for learning: Bell-pair accounting, compression, the joint
schedule (exact and heuristic), the server's plan on its way to a node, and a round's totals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from qfl.common.config import ConfigError, NodeConfig, RunConfig
from transport import qcn_schedule as sched
from transport.base import Envelope, TransportError
from transport.qcn import QCNPath, get_path, sample_pairs, sample_pairs_costed, transmit, transmit_levels, werner_parameter
from transport.qcn_compress import Encoding, dequantise, quantise, send_update, top_k
from transport.qcn_network import load_topology
from transport.qcn_schedule import Decision, Planner, Predictor, RoundTotals, ScheduleGrid

UP = Envelope(run_id=7, server_round=3, node_id=5, src="node-5", dst="server", direction="up", message_type="train")
PERFECT = dict(p_gen=1.0, link_fidelity=1.0, swap_fidelity=1.0, coherence_time_s=math.inf, cutoff_s=math.inf)


# --- Bell pairs: what a pair costs on the links ---------------------------------------------


def test_costed_pairs_are_the_same_draws_and_count_each_segments_pair_by_hand():
    path = get_path("regional")
    f1, t1 = sample_pairs(path, 300, np.random.default_rng(4))
    f2, t2, cost = sample_pairs_costed(path, 300, np.random.default_rng(4))
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(t1, t2)
    # no cutoff ever reached and no distillation: one elementary pair per segment
    never = QCNPath(distance_km=30, hops=2, **PERFECT)
    assert (sample_pairs_costed(never, 50, np.random.default_rng(0))[2] == 3).all()
    # one DEJMPS round on perfect pairs always succeeds (p = 1): exactly two raw pairs
    once = QCNPath(distance_km=30, hops=2, distillation_rounds=1, protocol="dejmps", **PERFECT)
    assert (sample_pairs_costed(once, 50, np.random.default_rng(0))[2] == 6).all()
    # a cutoff that discards stored pairs spends more of them, a multiple of the segments
    tight = QCNPath(distance_km=100, hops=1, p_gen=0.3, coherence_time_s=0.02, cutoff_s=0.002)
    cost = sample_pairs_costed(tight, 500, np.random.default_rng(1))[2]
    assert cost.min() >= 2 and cost.mean() > 2.5 and np.all(cost % 2 == 0)


def test_a_transmission_reports_the_bell_pairs_its_carriers_cost():
    path = get_path("poor-memory")
    sent = transmit(np.linspace(-1, 1, 20), path, 5, np.random.default_rng(2))
    cost = sample_pairs_costed(path, 100, np.random.default_rng(2))[2]
    assert sent.pairs == 100 and sent.bell_pairs == int(cost.sum()) > 3 * 100


# --- quantum-compatible compression ---------------------------------------------------------------


def test_bits_over_a_perfect_link_arrive_exactly_and_a_noisy_bit_is_read_by_majority():
    levels = np.arange(16)
    sent = transmit_levels(levels, 4, get_path("ideal"), 3, np.random.default_rng(0))
    np.testing.assert_array_equal(sent.estimates, levels)
    assert sent.delivered.all() and sent.pairs == 16 * 4 * 3 and sent.fidelity == 1.0
    # through Werner pairs of parameter w a copy is wrong with p = (1 - w)/2; a majority of 3
    # is wrong with 3p^2(1-p) + p^3
    path = QCNPath(distance_km=0, hops=0, p_gen=1.0, link_fidelity=0.85, swap_fidelity=1.0, coherence_time_s=math.inf,
                   cutoff_s=math.inf)
    p = (1 - werner_parameter(0.85)) / 2
    zeros = transmit_levels(np.zeros(20000, dtype=int), 1, path, 3, np.random.default_rng(1))
    assert zeros.estimates.mean() == pytest.approx(3 * p**2 * (1 - p) + p**3, abs=0.006)
    assert Encoding(bits=4, bit_copies=1).quality(0.8) == pytest.approx(0.8**2)  # one copy: w^2, as analog
    assert Encoding(bits=4, bit_copies=3).quality(0.8) > 0.8**2  # the vote is worth more than one copy
    with pytest.raises(ValueError, match="levels must lie"):
        transmit_levels(np.array([16]), 4, path, 1, np.random.default_rng(0))


def test_top_k_and_unbiased_stochastic_quantisation():
    values = np.array([0.1, -3.0, 0.5, 2.0, -0.2])
    np.testing.assert_array_equal(top_k(values, 2), [1, 3])
    rng = np.random.default_rng(0)
    draws = np.array([dequantise(*_q(values, 2, rng)) for _ in range(4000)])
    np.testing.assert_allclose(draws.mean(axis=0), values, atol=0.05)  # E[Q(v)] = v
    levels, scale = quantise(values, 3, rng)
    assert scale == 3.0 and levels.min() >= 0 and levels.max() <= 7


def _q(values, bits, rng):  # noqa: ANN001, ANN202
    levels, scale = quantise(values, bits, rng)
    return levels, bits, scale


def test_encoding_counts_carriers_losses_and_classical_bytes_by_hand():
    plain, packed = Encoding(100), Encoding(100, topk=0.25, bits=4, bit_copies=3)
    assert plain.carriers(40) == 4000 and packed.carriers(40) == 10 * 12
    assert plain.lost_fraction(0.5) == pytest.approx(0.5**100)
    assert packed.lost_fraction(0.5) == pytest.approx(1 - (1 - 0.5**3) ** 4)
    # 2 bits per carrier and an 8-byte scale; top-k: 10 indices of 6 bits, or a 40-bit map: the map
    assert plain.classical_bytes(40) == 4000 * 2 // 8 + 8
    assert packed.classical_bytes(40) == math.ceil((120 * 2 + 40) / 8) + 8


def test_error_feedback_keeps_what_compression_left_out_and_delivers_it_later():
    ideal = get_path("ideal")
    encoding = Encoding(0, topk=0.25, bits=0)  # exact read-out: only compression changes values
    rng = np.random.default_rng(3)
    updates = [rng.normal(size=12) for _ in range(6)]
    residual, delivered_total = None, np.zeros(12)
    for u in updates:
        sent = send_update(u, ideal, encoding, np.random.default_rng(0), 1, residual)
        assert np.count_nonzero(sent.estimate) <= 3 and sent.delivered.all()
        residual, delivered_total = sent.residual, delivered_total + sent.estimate
    # nothing is lost for good: all that was sent plus what is still kept is every update
    np.testing.assert_allclose(delivered_total + residual, np.sum(updates, axis=0), atol=1e-12)
    # without compression there is no memory, and the draws are transmit's own
    plain = send_update(updates[0], get_path("metro"), Encoding(10), np.random.default_rng(5))
    ref = transmit(updates[0], get_path("metro"), 10, np.random.default_rng(5))
    np.testing.assert_array_equal(plain.estimate, ref.estimates)
    assert plain.residual is None and plain.pairs_saved == 0.0
    packed = send_update(updates[0], get_path("metro"), Encoding(10, bits=4, bit_copies=1), np.random.default_rng(5))
    assert packed.pairs == 12 * 4 and packed.pairs_saved == pytest.approx(12 * 10 - 48) and packed.bytes_saved > 0


# --- the joint schedule -------------------------------------------------------------------------


def _random_problem(rng, clients, links=3, options=4):  # noqa: ANN001, ANN202
    opts = []
    for i in range(clients):
        cands = [sched._Candidate(Decision(f"c{i}", skip=True), -0.05 * rng.uniform(), 0.0)]
        for _ in range(options):
            cands.append(sched._Candidate(Decision(f"c{i}"), float(rng.uniform(-0.1, 0.3)), float(rng.uniform(1, 10))))
        opts.append(cands)
    usage = (rng.uniform(size=(clients, links)) < 0.6) * 0.5
    budgets = rng.uniform(3, 12, size=links)
    return sched._Problem(list(range(clients)), opts, usage, budgets)


def _objective(problem, choice):  # noqa: ANN001, ANN202
    return sum(problem.options[i][o].value for i, o in enumerate(choice))


def test_exact_is_optimal_and_the_lagrangian_heuristic_is_feasible_near_it_with_a_valid_bound():
    """The heuristic serves instances beyond the exact size (> 200 client-options); on random
    ones of 30 clients x 9 options, uncorrelated values and pairs, against the exact optimum."""
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(20):
        problem = _random_problem(rng, clients=30, links=6, options=8)
        choice, best = sched.exact(problem)
        pairs = problem.pairs()
        assert not sched._over(choice, problem, pairs).any()
        assert _objective(problem, choice) == pytest.approx(best)
        heuristic, value, bound = sched.lagrangian(problem)
        assert not sched._over(heuristic, problem, pairs).any()
        assert value == pytest.approx(_objective(problem, heuristic))
        assert value <= best + 1e-9 and bound >= best - 1e-9  # the dual bounds the optimum from above
        gaps.append((best - value) / abs(best))
    assert np.mean(gaps) < 0.03 and max(gaps) < 0.10  # 30 such: mean 1.6 %, worst 9.1 %; at 50 clients 1.3 %, 4.3 %


def test_exact_matches_enumeration_on_small_instances():
    import itertools

    rng = np.random.default_rng(1)
    for _ in range(10):
        problem = _random_problem(rng, clients=4, options=3)
        pairs = problem.pairs()
        feasible = [c for c in itertools.product(range(4), repeat=4)
                    if not sched._over(np.array(c), problem, pairs).any()]
        best = max(_objective(problem, c) for c in feasible)
        assert sched.exact(problem)[1] == pytest.approx(best)


@pytest.fixture(scope="module")
def star():
    return load_topology("star-overloaded")


def test_the_joint_plan_keeps_slots_and_budgets_and_skips_what_would_miss_the_deadline(star):
    planner = Planner(star, Encoding(100), deadline_s=1.0, pair_price=0.001)
    plan = planner.plan(1, {p: 70.0 for p in range(6)}, 40)
    assert plan.solver == "exact" and plan.objective == pytest.approx(plan.bound)
    served = {p: d for p, d in plan.decisions.items() if not d.skip}
    assert sorted(d.repeater for d in served.values()) == ["hub", "hub"]  # its two slots, the far ones are too slow
    for p, d in plan.decisions.items():
        if d.skip:
            assert d.reason == "would miss the deadline"
    # link budgets: the pair rate times the deadline, each route's pairs spread over its links
    load = {}
    for p, d in served.items():
        links = star.links(d.client, d.repeater)
        for e in links:
            load[e] = load.get(e, 0.0) + d.prediction.bell_pairs / len(links)
    assert all(v <= star.link_budget(e, 1.0) + 1e-6 for e, v in load.items())
    # with compression every client makes the deadline and is served
    packed = Planner(star, Encoding(100, bits=4), deadline_s=1.0, pair_price=0.001).plan(1, {p: 70.0 for p in range(6)}, 40)
    assert packed.served == 6
    # with no price on pairs the hub's clients buy distillation (budget permitting)
    greedy = Planner(star, Encoding(100), deadline_s=1.0).plan(1, {p: 70.0 for p in range(6)}, 40)
    assert max(d.distillation for d in greedy.decisions.values() if not d.skip) >= 1


def test_a_fixed_policy_gives_everyone_one_setting_and_admits_within_the_budgets(star):
    planner = Planner(star, Encoding(100), policy="fixed", cutoff_factor=0.5, distillation=2, deadline_s=1.0)
    first, second = planner.plan(1, {p: 70.0 for p in range(6)}, 40), planner.plan(2, {p: 70.0 for p in range(6)}, 40)
    for plan in (first, second):
        assert plan.solver == "fixed" and 1 <= plan.served < 6
        assert all(d.distillation == 2 for d in plan.decisions.values() if not d.skip)
        assert {d.reason for d in plan.decisions.values() if d.skip} <= {"budget", "infeasible"}
    # admission is rotated by the round: another partition goes first
    assert {p for p, d in first.decisions.items() if not d.skip} != {p for p, d in second.decisions.items() if not d.skip}


def test_association_is_stable_and_compared_with_the_optimum_in_the_plan(star):
    for method in sched.ASSOCIATIONS:
        plan = Planner(star, Encoding(100), association=method).plan(1, {p: 70.0 for p in range(6)}, 40)
        assert plan.association == method and plan.optimum_utility >= plan.association_utility - 1e-12
        if method == "deferred-acceptance":
            assert plan.blocking_pairs == 0


def test_the_heuristic_runs_beyond_the_exact_size_and_stays_within_the_budgets():
    network = load_topology("metro-ring:clients=24")
    planner = Planner(network, Encoding(100), deadline_s=0.5, pair_price=0.0, samples=256)
    plan = planner.plan(1, {p: 50.0 + p for p in range(24)}, 40)
    assert plan.solver == "lagrangian" and plan.objective <= plan.bound + 1e-9
    load: dict = {}
    for d in plan.decisions.values():
        if not d.skip:
            links = network.links(d.client, d.repeater)
            for e in links:
                load[e] = load.get(e, 0.0) + d.prediction.bell_pairs / len(links)
    assert all(v <= network.link_budget(e, 0.5) * (1 + 1e-9) for e, v in load.items())


def test_predictions_hold_against_the_channel_they_predict():
    path = load_topology("star-overloaded").path("c0", "far-a", 0.01, 0, "dejmps")
    pred = Predictor(0, 4096).predict(path, Encoding(20), 40, 16, 2.0)
    sends = [transmit(np.linspace(-1, 1, 40), path, 20, np.random.default_rng(s), 16) for s in range(30)]
    assert np.mean([s.fidelity for s in sends]) == pytest.approx(pred.fidelity, abs=0.01)
    assert np.mean([s.bell_pairs for s in sends]) == pytest.approx(pred.bell_pairs, rel=0.05)
    assert np.mean([s.latency_s for s in sends]) == pytest.approx(pred.latency_s, rel=0.1)


# --- the plan on its way: server grid, node transport ---------------------------------------------


class _Grid:
    """A stand-in for the grid below (a unit test of the wrapper): records what it is given."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        self.sent = list(messages)
        return []

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        self.sent = list(messages)
        return [str(i) for i in range(len(self.sent))]


def _train(node: int, server_round: int = 1) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(40))}),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=node, message_type="train")


def test_the_schedule_grid_puts_each_nodes_decision_in_its_message_and_skipped_nodes_get_none(task_identity, star):
    inner = _Grid()
    partition = {100 + p: p for p in range(6)}
    grid = ScheduleGrid(inner, Planner(star, Encoding(100), deadline_s=1.0, pair_price=0.001), partition.get, lambda p: 70.0)
    grid.send_and_receive([_train(n) for n in partition] + [_train(999)])
    assert sorted(m.metadata.dst_node_id for m in inner.sent) == [100, 101]  # the hub's two; 999 has no partition
    for msg in inner.sent:
        decision = Decision.from_record(msg.content.config_records["qcn-plan"])
        assert decision.repeater == "hub" and not decision.skip
    assert grid.decision_of(999).reason == "unknown partition" and grid.decision_of(102).skip
    plan, by_node = grid.take_round()
    assert plan.served == 2 and by_node[102][0] == 2 and grid.take_round() == (None, {})
    evaluate = Message(content=RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(40))})}), dst_node_id=100,
                       message_type="evaluate")
    grid.push_messages([evaluate])
    assert inner.sent == [evaluate]  # not a training message: unchanged


def _node_cfg(defaults, **over):  # noqa: ANN001, ANN202
    run = {**defaults, "transport": "qcn", "qcn-topology": "star-overloaded", "qcn-copies": 20,
           **{k.replace("_", "-"): v for k, v in over.items()}}
    return RunConfig.from_run_config(run)


def _exchange(decision: Decision | None):  # noqa: ANN202
    rng = np.random.default_rng(0)
    old = rng.normal(size=40)
    request = RecordDict({"arrays": ArrayRecord({"w": Array(old)})})
    if decision is not None:
        request["qcn-plan"] = decision.to_record()
    reply = RecordDict({"arrays": ArrayRecord({"w": Array(old + rng.normal(scale=0.1, size=40))}),
                        "metrics": MetricRecord({"num-examples": 10})})
    return request, reply


def test_a_node_sends_over_the_planned_route_and_keeps_its_error_feedback_in_its_state(defaults):
    from transport.registry import build_transport

    cfg = _node_cfg(defaults, qcn_bits=4, qcn_topk=0.5)
    node = NodeConfig.from_node_config({"partition-id": 0, "num-partitions": 6})
    state = RecordDict()
    stack = build_transport(cfg, node, state)
    request, reply = _exchange(Decision("c0", "hub", 0.5, 1))
    wire = stack.encode(reply, UP, request)
    metrics = wire["metrics"]
    assert metrics["fidelity"] > 0.95 and metrics["qcn-pairs"] == 20 * 4 * 3
    assert metrics["qcn-bell-pairs"] >= 2 * 2 * 240 and metrics["qcn-pairs-saved"] > 0 and metrics["qcn-bytes-saved"] > 0
    assert "qcn-residual" in state.array_records  # kept on the node, for its next round
    # the plan is the server's: none, or one for another client, is refused
    with pytest.raises(TransportError, match="plan names the route"):
        stack.encode(reply, UP, _exchange(None)[0])
    with pytest.raises(TransportError, match="the plan is for client 'c1'"):
        stack.encode(reply, UP, _exchange(Decision("c1", "hub", 0.5, 0))[0])


def test_the_shared_network_is_checked_before_launch_naming_the_key(defaults):
    from server.checks import check_run

    with pytest.raises(ConfigError, match="'qcn-topology'.*transport is 'plain'"):
        RunConfig.from_run_config({**defaults, "qcn-topology": "star-overloaded"})
    with pytest.raises(ConfigError, match="'qcn-bits'"):
        RunConfig.from_run_config({**defaults, "qcn-bits": 4})
    with pytest.raises(ConfigError, match="'qcn-topology'.*neither a name"):
        check_run(_node_cfg(defaults, qcn_topology="no-such-network"))
    with pytest.raises(ConfigError, match="'qcn-topology'.*bad override"):
        check_run(_node_cfg(defaults, qcn_topology="star-overloaded:clients=many"))


def test_a_rounds_totals_and_its_length_on_the_network_clock():
    replies = [{"qcn-bell-pairs": 100.0, "qcn-pairs-saved": 10.0, "qcn-bytes": 5.0, "qcn-bytes-saved": 1.0, "latency-s": 0.4},
               {"qcn-bell-pairs": 50.0, "qcn-pairs-saved": 0.0, "qcn-bytes": 3.0, "qcn-bytes-saved": 0.0, "latency-s": 1.7}]
    totals = RoundTotals.of(replies, None, deadline_s=1.0).values
    assert totals["qcn-bell-pairs"] == 150.0 and totals["qcn-bytes"] == 8.0
    assert totals["qcn-network-s"] == 1.0  # a reply missed the deadline: the round lasted until it
    assert RoundTotals.of(replies, None, deadline_s=0.0).values["qcn-network-s"] == 1.7
    assert math.isnan(totals["qcn-schedule-s"])  # no plan: no scheduler


@pytest.mark.slow
def test_a_federation_on_the_shared_network_records_plans_predictions_and_round_totals(tmp_path):
    """Flower's simulation engine, the real apps: 6 clients on star-overloaded for 3 rounds,
    the joint schedule with 4-bit compression, a 1 s deadline."""
    import csv
    import json

    from qfl.experiments.engine import SimulationSession

    config = {"dataset": "breast-cancer", "transport": "qcn", "qcn-topology": "star-overloaded", "qcn-bits": 4,
              "qcn-topk": 0.5, "strategy": "fidelity-weighted", "round-deadline": 1.0, "qcn-pair-price": 0.001,
              "num-server-rounds": 3, "min-nodes": 6, "output-dir": str(tmp_path), "run-name": "shared"}
    with SimulationSession() as session:
        session.run(config, clients=6)
        session.run({**config, "qcn-bits": 0, "qcn-topk": 1.0, "run-name": "plain"}, clients=6)
    rows = json.loads((tmp_path / "shared" / "metrics.json").read_text())["rounds"]
    assert [r["qcn_served"] for r in rows[1:]] == [6, 6, 6]  # compressed, every client makes the deadline
    assert all(r["qcn_bell_pairs"] > 0 and r["qcn_pairs_saved"] > r["qcn_bell_pairs"] for r in rows[1:])
    assert all(r["qcn_schedule_s"] > 0 and r["qcn_blocking_pairs"] == 0 for r in rows[1:])
    with (tmp_path / "shared" / "clients.csv").open() as fh:
        clients = list(csv.DictReader(fh))
    # a bounded claim or a sideways part the guard weighed down is named in the status, and the reply still counts
    assert len(clients) == 18 and all(r["qcn_decision"] and r["status"] in ("ok", "late")
                                      or r["status"].startswith(("capped", "sideways")) for r in clients)
    for r in clients:  # the server's prediction beside what the client realised
        assert abs(float(r["qcn_predicted_fidelity"]) - float(r["fidelity"])) < 0.05
    with (tmp_path / "plain" / "clients.csv").open() as fh:
        plain = list(csv.DictReader(fh))
    skipped = [r for r in plain if r["status"].startswith("skipped")]
    assert len(skipped) == 12 and all(r["status"] == "skipped: would miss the deadline" for r in skipped)
    plain_rows = json.loads((tmp_path / "plain" / "metrics.json").read_text())["rounds"]
    assert [r["qcn_served"] for r in plain_rows[1:]] == [2, 2, 2] and plain_rows[-1]["clients_ok"] == 2


def test_the_resources_summary_picks_the_best_fixed_policy_and_judges_the_bar(tmp_path):
    from qfl.experiments.catalogue import Arm, Experiment
    from qfl.experiments.resources import resource_lines
    from qfl.experiments.runner import ArmResult

    def arm_result(name, config, pairs_per_round, curves):  # noqa: ANN001, ANN202
        rows = [[{"round": r, "test_accuracy": a, "qcn_bell_pairs": 0.0 if r == 0 else p, "qcn_network_s": 0.5,
                  "qcn_served": 2.0, "qcn_schedule_s": 0.01, "qcn_pairs_saved": 0.0, "qcn_bytes": 10.0}
                 for r, a in enumerate(curve)] for p, curve in zip(pairs_per_round, curves)]
        return ArmResult(Arm(name, config), [1, 2, 3], np.array(curves, dtype=float), [0.0] * 3, rows)

    fixed = {"qcn-schedule": "fixed"}
    fast, slow = [0.5, 0.92, 0.93], [0.5, 0.8, 0.91]
    results = {
        "g/fixed-a": arm_result("g/fixed-a", fixed, [100, 110, 90], [slow] * 3),  # 200 pairs to target
        "g/fixed-b": arm_result("g/fixed-b", fixed, [120, 120, 120], [fast] * 3),  # 120: the best fixed
        # cheaper still, but it misses the target in one seed: no pairs to target, not the best fixed
        "g/fixed-c": arm_result("g/fixed-c", fixed, [10, 10, 10], [fast, fast, [0.5, 0.6, 0.7]]),
        "g/joint": arm_result("g/joint", {"qcn-schedule": "joint"}, [60, 70, 80], [fast, fast, [0.5, 0.92, 0.925]]),
        "g/joint-greedy": arm_result("g/joint-greedy", {"qcn-schedule": "joint"}, [100, 100, 100], [fast] * 3),
    }
    experiment = Experiment("x", "c", 2, 2, {}, tuple(r.arm for r in results.values()), "g/fixed-a", 0.9, seeds=3,
                            resources=True)
    text = "\n".join(resource_lines(experiment, results, lambda arm, seed: tmp_path / f"{arm.name}-{seed}"))
    joint = next(line for line in text.splitlines() if line.startswith("| g | g/joint |"))
    # a ratio of 0.58, but 3 seeds cannot show it below 0.70: the smallest one-sided sign-flip p is 1/8
    # (the met case, at 10 seeds: tests/tooling_tests/test_evidence.py)
    assert "g/fixed-b (best fixed)" in joint and "| 0.58 |" in joint and "not met: a ratio below 70 % not shown" in joint
    greedy = next(line for line in text.splitlines() if line.startswith("| g | g/joint-greedy |"))
    assert "not met: needs 83 % of the pairs;" in greedy
    assert "| g/fixed-a | 200 [" in text  # to target: two rounds of 100, 110 and 90
    assert "| g/fixed-c | >= 13 (censored: 2/3 reached) |" in text  # 10, 10 and all of 20: no interval
    censored = next(line for line in text.splitlines() if line.startswith("| g | g/joint | g/fixed-c"))
    assert "(fewest pairs, censored)" in censored and "needs 525 % of the pairs" in censored


def test_named_topologies_scale_by_keyword_and_every_partition_has_a_client():
    network = load_topology("metro-ring:clients=50")
    assert len(network.clients) == 50 and network.capacity("r0") == 16 and network.capacity("r1") == 50
    assert network.client_of(0) == "c0" and network.client_of(53) == network.clients[3]
    star = load_topology("star-overloaded:hub_slots=3")
    assert star.capacity("hub") == 3 and star.link_budget(("hub", "server"), 2.0) == pytest.approx(2 * 30_000.0)
    assert star.link_budget(("c0", "hub"), 2.0) == math.inf  # no rate: no budget
    assert star.link_budget(("hub", "server"), 0.0) == math.inf  # no deadline: no window
    with pytest.raises(ValueError, match="bad override"):
        load_topology("metro-ring:clients=0")
    with pytest.raises(ValueError, match="unexpected keyword"):
        load_topology("metro-ring:hub_slots=2")


def test_the_client_mod_follows_the_plan_and_keeps_its_memory_in_the_nodes_state(task_identity):
    from flwr.app import Context

    from transport.flower import ENVELOPE_RECORD
    from transport.mods import qcn_mod

    mod = qcn_mod("metro", copies=10, topology="star-overloaded", partition=1, bits=2)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(8))}), "qcn-plan": Decision("c1", "hub", 0.5, 0).to_record(),
                          ENVELOPE_RECORD: ConfigRecord({"round": 2, "sae": "server"})})
    msg = Message(content=content, dst_node_id=3, message_type="train")
    context = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})

    def train(m, ctx):  # noqa: ANN001, ANN202 (the ClientApp: an update of ones)
        reply = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(8))}), "metrics": MetricRecord({"num-examples": 4})})
        return Message(content=reply, reply_to=m)

    reply = mod(msg, context, train)
    assert not reply.has_error() and reply.content["metrics"]["qcn-pairs"] == 8 * 2 * 3
    assert "qcn-residual" in context.state.array_records


def test_predictions_made_before_the_first_round_change_no_plan(star):
    weights = {p: 60.0 + p for p in range(6)}
    fresh = Planner(star, Encoding(100), deadline_s=1.0, pair_price=0.001, samples=256)
    prepared = Planner(star, Encoding(100), deadline_s=1.0, pair_price=0.001, samples=256)
    assert prepared.prepare(range(6)) > 0
    a, b = fresh.plan(1, weights, 40), prepared.plan(1, weights, 40)
    assert [d.label() for d in a.decisions.values()] == [d.label() for d in b.decisions.values()]
    assert a.objective == b.objective
