"""The experiment runner: its statistics (known answers) and a smoke run (2 seeds x 2 rounds)
on Flower's real simulation engine, not the experiments themselves."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from qfl.experiments import stats
from qfl.experiments.catalogue import EXPERIMENTS, Arm, Experiment
from qfl.experiments.runner import compare, run_experiment
from qfl.launcher import main


def test_rounds_to_target_counts_a_run_that_never_gets_there_as_censored():
    reached = [stats.rounds_to_target(c, 0.9) for c in ([0.9, 0.5, 0.95], [0.2, 0.4, 0.6])]
    assert reached == [2, None]  # round 0 does not count: it is the initial model
    assert stats.censored_rounds(reached, 2).tolist() == [2.0, 3.0]


def test_confidence_interval_and_paired_tests_have_their_textbook_values():
    ci = stats.mean_ci([1.0, 2.0, 3.0])  # t_{0.975,2} = 4.303, s = 1
    assert ci.mean == 2.0 and math.isclose(ci.high - 2.0, 4.302653 / math.sqrt(3), rel_tol=1e-5)
    # scipy's own paired t-test on a textbook pair: differences 1, 2, 3, 4 -> t = 3.873, p = 0.0305
    test = stats.paired_test([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    assert math.isclose(test.t_p, 0.0305, abs_tol=5e-4) and test.mean_difference == 2.5
    assert stats.paired_test([0.5, 0.6], [0.5, 0.6]).t_p == 1.0  # identical arms: no evidence at all
    assert stats.holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]


def test_the_catalogue_names_every_claim_with_ten_seeds_and_a_valid_baseline():
    assert set(EXPERIMENTS) == {"noise", "qcn", "privacy", "noniid", "quantum-vs-classical", "scale", "scale-10k",
                                "attacks", "qcn-resources", "cluster-ising", "digits10", "heterogeneous-circuits"}
    assert all(e.seeds >= 10 for e in EXPERIMENTS.values())
    assert EXPERIMENTS["scale"].clients == 1000
    big = EXPERIMENTS["scale-10k"]  # 100 of 10,000 a round, three training states each
    assert big.clients == 10_000 and round(big.clients * big.config["fraction-train"]) == 100
    assert big.config["tfim-samples"] * (1 - 0.25) / big.clients == 3
    from qfl.common.config import RunConfig, defaults
    from server.chain import server_strategy

    for e in EXPERIMENTS.values():
        for arm in e.arms:  # every arm's settings are a valid run config, and its strategy builds
            server_strategy(RunConfig.from_run_config({**defaults(), **e.config, **arm.config}))


def test_the_noise_experiment_has_the_issues_arms_and_regime():
    """Issue 4: FedAvg, FedMedian, MultiKrum and the old and new noise isolation, each with every
    client's mitigation none / ZNE / PEC, against FedAvg of the same mitigation (mitigated FedAvg
    against unmitigated), and the good-device control; more noisy clients than good ones, on the
    published device with the biased read-out, 64-256 shots; the summary adds the bar."""
    from qfl.task.profiles import get_profile

    e = EXPERIMENTS["noise"]
    methods = ("fedavg", "fedmedian", "multikrum", "noise-isolating-median", "noise-isolating")
    assert [a.name for a in e.arms] == [f"{m}/{mit}" for mit in ("none", "zne", "pec") for m in methods] + [
        "control-good-devices"]
    assert e.noise_bar and e.baseline == "fedavg/none" and e.seeds == 10
    for arm in e.arms:
        method, _, mitigation = arm.name.partition("/")
        want = None if arm.name == "fedavg/none" else "fedavg/none" if method in ("fedavg", "control-good-devices") \
            else f"fedavg/{mitigation}"
        assert e.versus(arm) == want, arm.name
        assert arm.config.get("mitigation", "none") == (mitigation or "none")
    profiles = e.config["device-profiles"].split(";")
    noisy = [p for p in profiles if get_profile(p).p2 > 2e-2]
    assert len(profiles) == e.clients and len(noisy) > len(profiles) - len(noisy)
    assert all(64 <= get_profile(p).shots <= 256 and get_profile(p).readout_asymmetry > 0 for p in noisy)
    control = e.arms[-1].config["device-profiles"].split(";")
    assert all(get_profile(p).p2 <= 6e-3 for p in control)  # every control client on a good device


def test_compare_names_a_wrong_arm_or_pair_before_reading_any_run(tmp_path, capsys):
    with pytest.raises(ValueError, match="privacy has no arm 'central'.*its arms: no-dp"):
        compare(EXPERIMENTS["privacy"], tmp_path, [("central", "no-dp")])
    assert main(["experiment", "privacy", "--out", str(tmp_path), "--compare", "no-dp"]) == 2
    assert "give two arm names as ARM:OTHER" in capsys.readouterr().err
    assert main(["experiment", "privacy", "--out", str(tmp_path), "--compare", "central-sigma1:local-sigma1"]) == 2
    assert "is missing or incomplete" in capsys.readouterr().err  # nothing ran: nothing to compare


@pytest.fixture(scope="module")
def session():
    """One simulation session (one Ray, one pool of actors) for this module's experiments:
    each run in it still gets a new random run ID and new random node IDs from the engine."""
    from qfl.experiments.engine import SimulationSession

    with SimulationSession() as kept:
        yield kept


class _Entered:
    """The module's session as a ``session_factory``: ``run_experiment``'s block leaves it open."""

    def __init__(self, kept) -> None:  # noqa: ANN001
        self.kept = kept

    def __enter__(self):  # noqa: ANN204
        return self.kept

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.integration
def test_a_smoke_experiment_runs_resumes_and_gives_the_same_curve_for_the_same_seed(tmp_path, session):
    smoke = Experiment(
        name="smoke", claim="the runner works", clients=2, rounds=2, target=0.6, seeds=2,
        config={"dataset": "iris", "learning-rate": 0.1, "local-epochs": 1},
        # the same settings twice: on the same seed they must give the same curve
        arms=(Arm("fedavg", {"strategy": "fedavg"}), Arm("fedavg-again", {"strategy": "fedavg"}),
              Arm("fedmedian", {"strategy": "fedmedian"})),
        baseline="fedavg",
    )
    from qfl.experiments.provenance import code_identity

    code = code_identity()  # the same for both calls, though the tree may be edited in between
    out = run_experiment(smoke, tmp_path, "qfl experiment smoke", session_factory=lambda: _Entered(session), say=print,
                         code=code)
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * 3  # seeds x arms x rounds (0, 1, 2)
    curve = {(r["arm"], r["seed"]): [] for r in rows}
    for r in rows:
        curve[(r["arm"], r["seed"])].append(float(r["test_accuracy"]))
    for seed in ("1", "2"):
        assert curve[("fedavg", seed)] == curve[("fedavg-again", seed)]
    assert curve[("fedavg", "1")] != curve[("fedavg", "2")]  # the seed reaches the runs
    summary = (out / "summary.md").read_text()
    assert "Command: `qfl experiment smoke`" in summary and "Running time:" in summary
    assert "s a round (mean of rounds 2 on" in summary and "GiB (PSS of the experiment's process" in summary
    assert "| fedavg-again | fedavg | +0.000 | 0/2 (2 ties) | 1 | 1 |" in summary  # identical arms: p = 1, no seed for
    assert "Provenance: 6 runs from commit" in summary and "Seeds 1-2: exploratory" in summary
    assert (out / "runs" / "fedavg-s1" / "provenance.json").exists()
    assert (out / "curves.png").stat().st_size > 0

    # any two arms compared after the fact, from the same runs, Holm over the pairs given
    table = compare(smoke, tmp_path, [("fedavg-again", "fedavg"), ("fedmedian", "fedavg-again")])
    assert "over these 2 comparisons" in table and "| fedavg-again | fedavg | +0.000 | 0/2 (2 ties) | 1 | 1 |" in table
    assert "| fedmedian | fedavg-again |" in table

    class NoSession:  # a resumed experiment with every run complete starts nothing
        def __enter__(self):
            raise AssertionError("a complete run was run again")

    before = (out / "results.csv").read_text()
    run_experiment(smoke, tmp_path, "qfl experiment smoke", session_factory=NoSession, code=code)
    assert (out / "results.csv").read_text() == before
    assert np.isfinite([float(r["test_accuracy"]) for r in rows]).all()


@pytest.mark.integration
def test_the_same_command_gives_the_same_results_and_two_arms_see_the_same_channel(tmp_path, session):
    """Issue 27: an experiment is a function of its command. Over the qcn transport, with a
    sample of 2 of 3 nodes a round (the engine gives the nodes random IDs, and Flower the run
    a random ID, every run), the same experiment twice writes the same results.csv byte for
    byte; and within
    one seed, two arms (different strategies) see the same channel draws: the fidelity each
    partition's update arrived with in round r is the same in both (common random numbers)."""
    exp = Experiment(
        name="crn", claim="reruns reproduce", clients=3, rounds=2, target=0.6, seeds=1,
        config={"dataset": "iris", "learning-rate": 0.1, "local-epochs": 1, "transport": "qcn",
                "qcn-paths": "metro;poor-memory;regional", "qcn-copies": 20, "fraction-train": 0.67,
                "device-profiles": "noisy-nisq:shots=64"},
        arms=(Arm("fedavg", {"strategy": "fedavg"}), Arm("fidelity-weighted", {"strategy": "fidelity-weighted"})),
        baseline="fedavg",
    )
    first = run_experiment(exp, tmp_path / "a", "qfl experiment crn", session_factory=lambda: _Entered(session), say=print)
    second = run_experiment(exp, tmp_path / "b", "qfl experiment crn", session_factory=lambda: _Entered(session), say=print)
    assert (first / "results.csv").read_bytes() == (second / "results.csv").read_bytes()

    def channel(root, arm: str) -> dict[tuple[str, str], tuple[str, str]]:
        with (root / "runs" / f"{arm}-s1" / "clients.csv").open() as fh:
            return {(r["round"], r["partition_id"]): (r["fidelity"], r["qcn_lost_fraction"]) for r in csv.DictReader(fh)
                    if r["fidelity"]}

    fedavg, weighted = channel(first, "fedavg"), channel(first, "fidelity-weighted")
    assert len(fedavg) == 2 * 2 and fedavg.keys() == weighted.keys(), (fedavg, weighted)  # the same 2 of 3, each round
    assert fedavg == weighted
    assert channel(second, "fedavg") == fedavg


@pytest.mark.integration
def test_the_engines_node_map_samples_the_same_partitions_as_the_warm_ups_roll_call(tmp_path, session):
    """The engine hands the ServerApp its node map (node ID -> partition) instead of the
    warm-up asking every node (minutes at 10,000 nodes): the nodes are listed in the same
    order, so a seeded sample of 3 of 7 a round picks the same partitions and the run writes
    the same results, byte for byte; and with the map no node was asked."""
    import json

    exp = Experiment(
        name="node-map", claim="the map is the roll call", clients=7, rounds=2, target=0.6, seeds=1,
        config={"dataset": "iris", "learning-rate": 0.1, "local-epochs": 1, "fraction-train": 0.43},
        arms=(Arm("fedavg", {"strategy": "fedavg"}),), baseline="fedavg",
    )
    outs = {}
    for asked in (False, True):
        session.engine_node_map = not asked
        try:
            outs[asked] = run_experiment(exp, tmp_path / str(asked), "qfl experiment node-map",
                                         session_factory=lambda: _Entered(session), say=print)
        finally:
            session.engine_node_map = True
    assert (outs[False] / "results.csv").read_bytes() == (outs[True] / "results.csv").read_bytes()

    def run(asked: bool) -> tuple[dict, list[list[str]]]:
        folder = outs[asked] / "runs" / "fedavg-s1"
        ready = next(e for e in map(json.loads, (folder / "progress.jsonl").read_text().splitlines()) if e["event"] == "ready")
        with (folder / "clients.csv").open() as fh:
            return ready, [[r["round"], r["partition_id"]] for r in csv.DictReader(fh)]

    (mapped, trained), (called, trained_too) = run(False), run(True)
    assert trained == trained_too and len(trained) == 2 * 3  # the same 3 partitions each round
    assert mapped["last_node_ready"] is None and called["last_node_ready"] is not None  # asked nobody / everybody


@pytest.mark.integration
def test_the_attack_experiments_clientapp_attacks_and_the_guard_names_it(tmp_path, session):
    """``qfl experiment attacks`` runs the real ClientApp behind an attacking mod: partition 0
    sign-flips; FedAvg without the direction rule takes it ("ok"), the default guard names
    and rejects it every round."""
    from dataclasses import replace

    from qfl.experiments.catalogue import EXPERIMENTS

    full = EXPERIMENTS["attacks"]
    exp = Experiment(
        name="attack-smoke", claim="the attack app attacks", clients=3, rounds=2, target=0.6, seeds=1,
        config={"dataset": "iris", "local-epochs": 1},
        arms=tuple(replace(a, versus=None) for a in full.arms if a.name in ("fedavg/clean", "fedavg/sign-flip", "guard/sign-flip")),
        baseline="fedavg/clean", client_app=full.client_app,
    )
    out = run_experiment(exp, tmp_path, "qfl experiment attack-smoke", session_factory=lambda: _Entered(session),
                         say=print)

    def statuses(arm: str) -> list[str]:
        with (out / "runs" / f"{arm.replace('/', '_')}-s1" / "clients.csv").open() as fh:
            return [r["status"] for r in csv.DictReader(fh) if r["partition_id"] == "0"]

    assert statuses("fedavg/clean") == statuses("fedavg/sign-flip") == ["ok", "ok"]
    guarded = statuses("guard/sign-flip")
    assert len(guarded) == 2 and all(s.startswith("rejected: update points against") for s in guarded), guarded


def test_the_real_clientapp_refuses_a_simulated_attack(defaults, task_identity):
    """A server cannot turn real clients into attackers with the attack experiment's key."""
    from flwr.app import Context, Message, RecordDict

    from client.app import train

    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config={**defaults, "simulated-attack": "sign-flip"})
    reply = train(Message(RecordDict(), dst_node_id=5, message_type="train"), context)
    assert reply.has_error() and "simulated-attack" in reply.error.reason and "refuses" in reply.error.reason


def test_the_noise_bar_tests_half_the_gap_and_both_rivals_holm_adjusted(tmp_path):
    """The noise experiment's bar (qfl.experiments.noise_bar) on made-up curves: 10 seeds where
    the control ends at 0.95 and FedAvg at 0.80 (noise matters: 15 points); unmitigated, the new
    strategy ends at 0.93 (beyond the midpoint 0.875) above FedMedian and MultiKrum: met; with
    "zne" it ends at 0.84, short of the midpoint: not met, and the table says which test failed.
    Its view of the clients is read from each run's clients.csv."""
    from qfl.experiments.noise_bar import noise_bar_lines
    from qfl.experiments.runner import ArmResult

    rng = np.random.default_rng(0)
    exp = Experiment(name="noise-smoke", claim="c", clients=2, rounds=3, target=0.9, config={},
                     arms=tuple(Arm(n) for n in ("fedavg/none", "fedmedian/none", "multikrum/none",
                                                 "noise-isolating/none", "fedavg/zne", "fedmedian/zne",
                                                 "multikrum/zne", "noise-isolating/zne", "control-good-devices")),
                     baseline="fedavg/none", noise_bar=True)
    finals = {"fedavg": 0.80, "fedmedian": 0.82, "multikrum": 0.85, "control-good-devices": 0.95}
    results = {}
    for arm in exp.arms:
        method, _, mitigation = arm.name.partition("/")
        final = finals.get(method, 0.93 if mitigation == "none" else 0.84)
        curve = np.array([[0.5, 0.7, final - 0.05, final] for _ in range(10)]) + rng.normal(0, 0.01, (10, 1))
        results[arm.name] = ArmResult(arm, list(range(1, 11)), curve, [0.0] * 10, [])
        if method == "noise-isolating":
            for seed in range(1, 11):
                folder = tmp_path / f"{arm.name.replace('/', '_')}-s{seed}"
                folder.mkdir()
                (folder / "clients.csv").write_text(
                    "round,partition_id,profile,num_examples,update_noise_var,noise_contraction,noise_var,"
                    "noise_source,contraction,weight\n"
                    "1,0,ibm-heron,30,0.01,0.9,0.012,claimed,0.9,0.9\n"
                    "1,1,ibmq-melbourne,10,0.05,0.1,0.8,contradicted,0.25,0.1\n")
    lines = "\n".join(noise_bar_lines(exp, results, lambda arm, seed: tmp_path / f"{arm.name.replace('/', '_')}-s{seed}"))
    gap = next(line for line in lines.splitlines() if line.startswith("| none |"))
    assert 14.0 < float(gap.split("|")[2].split("[")[0]) < 16.0 and gap.endswith("| final (" + gap.split("|")[2].split("[")[0].strip() + " points) |")
    assert "- none: **met** on final" in lines
    # zne: short of the midpoint, and below MultiKrum (0.84 < 0.85): both rows named
    assert "- zne: **not met**: final: not significant in its favour: closes >= 50% of FedAvg's gap, beats multikrum/zne" in lines
    assert "| noise-isolating/none | ibmq-melbourne | 10 | 0.05 | 0.1 | 0.25 | 0.8 | 10 | 0.100 | 0.250 |" in lines
