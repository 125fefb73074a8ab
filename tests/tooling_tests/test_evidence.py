"""Evidence that survives review (issue 40): known answers for the experiments' statistics
(sign-flip tests, Kaplan-Meier, TOST, Holm), the seeds a summary reports, and the provenance
that decides whether a run may be reused. No Ray, no Flower: runs are made by a stand-in
session that writes what the ServerApp would."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from qfl.experiments import provenance, stats
from qfl.experiments.catalogue import Arm, Experiment
from qfl.experiments.runner import ArmResult, compare, plan_runs, run_experiment, summary_markdown
from qfl.experiments.seeds import classify, parse_seeds
from qfl.launcher import main


# --- statistics: known answers -------------------------------------------------------------------

def test_a_constant_difference_over_ten_seeds_has_p_two_in_1024_not_zero():
    # Arrange: every seed 3 points better; only "all +" and "all -" are as extreme
    d = [0.03] * 10

    # Act
    two_sided, one_sided = stats.sign_flip_test(d), stats.sign_flip_test(d, "greater")

    # Assert
    assert two_sided.p == 2 / 1024 and two_sided.exact and two_sided.resamples == 1024
    assert one_sided.p == 1 / 1024
    assert stats.sign_flip_test([0.0] * 10).p == 1.0  # no difference at all: no evidence
    assert stats.format_p(two_sided.p) == "0.002"  # never "< 1e-4": 10 pairs cannot give that


def test_the_sign_flip_p_is_the_share_of_all_sign_assignments_at_least_as_extreme():
    d = np.array([1.0, 2.0, 3.0, -1.0, 0.5, 4.0])
    extreme = sum(abs(np.dot(signs, d)) >= abs(d.sum()) - 1e-12 for signs in itertools.product((1, -1), repeat=len(d)))
    assert math.isclose(stats.sign_flip_test(d).p, extreme / 2**len(d))  # 8/64 by hand enumeration


def test_above_twenty_pairs_the_sign_flip_test_is_a_stated_seeded_monte_carlo():
    d = [0.01] * 21  # exact: 2/2^21 ~ 1e-6; the Monte Carlo cannot go below 1/(B + 1)
    test = stats.sign_flip_test(d)
    assert not test.exact and test.resamples == stats.MC_RESAMPLES
    assert test.p >= 1 / (stats.MC_RESAMPLES + 1) and test.p == stats.sign_flip_test(d).p  # seeded
    assert f"{stats.MC_RESAMPLES:,} random sign assignments" in test.method


def test_kaplan_meier_median_of_a_small_censored_example():
    # five runs: there at rounds 2, 3 and 5, two never by round 6.
    # S(2) = 4/5, S(3) = 4/5 * 3/4 = 3/5, S(5) = 3/5 * 2/3 = 2/5 <= 1/2: the median is 5
    km = stats.kaplan_meier([2, 3, 5, None, None], 6)
    assert km.survival == pytest.approx((0.8, 0.6, 0.4)) and km.median == 5 and (km.reached, km.n) == (3, 5)
    # ties: half the runs there at round 1 gives S(1) = 1/2: the median is 1
    assert stats.kaplan_meier([1, 1, None, None], 4).median == 1
    # fewer than half there: no median, said so
    short = stats.kaplan_meier([3, None, None], 8)
    assert short.median is None and short.format() == "> 8"
    assert stats.kaplan_meier([None, None], 8).format() == "> 8"


def test_tost_on_a_known_case():
    # ten seeds 1 point better, margin 2 points: d + 0.02 all positive, d - 0.02 all negative
    eq = stats.tost([0.01] * 10, 0.02)
    assert eq.p_lower == eq.p_upper == eq.p == 1 / 1024
    # 5 points better: beyond the upper margin in every seed, not equivalent (but non-inferior)
    far = stats.tost([0.05] * 10, 0.02)
    assert far.p_upper == 1.0 and far.p_lower == 1 / 1024
    with pytest.raises(ValueError, match="margin"):
        stats.tost([0.0] * 10, 0.0)


def test_holm_over_a_family():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 (held at 0.06)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == [0.03, 0.06, 0.06, 0.02]


def test_exact_mcnemar_and_the_round_accuracy_stays_at_target():
    assert stats.mcnemar_exact([True] * 6 + [False] * 4, [False] * 10) == 2 / 64  # 6 discordant, all one way
    assert stats.mcnemar_exact([True, False], [True, False]) == 1.0
    assert stats.rounds_to_stay([0.5, 0.95, 0.8, 0.91, 0.93], 0.9) == 3  # first passage 1, stays from 3
    assert stats.rounds_to_stay([0.5, 0.95, 0.8], 0.9) is None
    assert stats.accuracy_auc([0.0, 1.0, 1.0]) == 0.75


# --- summaries: censored runs, one Holm family ---------------------------------------------------

def _arm(name: str, curves: list[list[float]], arm: Arm | None = None) -> ArmResult:
    rows = [[{"round": r, "test_accuracy": a, "test_loss": 1.0} for r, a in enumerate(c)] for c in curves]
    return ArmResult(arm or Arm(name), list(range(1, len(curves) + 1)), np.array(curves, dtype=float), [0.0] * len(curves),
                     rows)


def test_a_summary_with_censored_runs_prints_no_t_interval_for_their_rounds():
    # Arrange: 10 seeds; "slow" never reaches 0.9 in 4 of them
    fast = [[0.5, 0.92, 0.93, 0.95]] * 10
    slow = [[0.5, 0.6, 0.8, 0.91]] * 6 + [[0.5, 0.6, 0.7, 0.8]] * 4
    exp = Experiment("censored", "c", 2, 3, {}, (Arm("fast"), Arm("slow")), "fast", 0.9)
    results = {"fast": _arm("fast", fast), "slow": _arm("slow", slow)}

    # Act
    text = summary_markdown(exp, results, "qfl experiment censored", 60.0)

    # Assert: rounds are Kaplan-Meier medians with how many got there, never mean [low, high]
    row = next(line for line in text.splitlines() if line.startswith("| slow |")).split("|")
    assert row[5].strip() == "3 (6/10)" and "[" not in row[5] and "[" not in row[6]
    assert row[3].strip().count("[") == 1  # final accuracy keeps its interval: it is not censored
    test = next(line for line in text.splitlines() if line.startswith("| slow | fast |"))
    assert "(restricted: 4 censored)" in test and "| 3 vs 1 |" in test
    assert "Seeds 1-10: exploratory" in text


def test_the_comparison_table_adjusts_over_every_test_the_verdict_reads():
    # two comparisons, each a constant difference in final accuracy and in rounds: 4 tests of raw p 2/1024
    base = [[0.5, 0.7, 0.9, 0.9]] * 10
    better = [[0.5, 0.9, 0.95, 0.95]] * 10
    exp = Experiment("family", "c", 2, 3, {}, (Arm("a"), Arm("b"), Arm("c")), "a", 0.9)
    results = {"a": _arm("a", base), "b": _arm("b", better), "c": _arm("c", better)}
    text = summary_markdown(exp, results, "qfl experiment family", 1.0)
    row = next(line for line in text.splitlines() if line.startswith("| b | a |")).split("|")
    assert row[5].strip() == "0.002" and row[6].strip() == stats.format_p(4 * 2 / 1024)  # Holm over 4, not 2
    assert row[-2].strip() == "higher final accuracy; fewer rounds" and "over all 4 tests of this table" in text


def test_a_declared_equivalence_margin_adds_tost_rows_that_show_equivalence_only_inside_the_margin():
    # Arrange: "near" ends 0.005 to 0.014 above the base in every seed (inside 0.02), "far" 0.05 above;
    # "other" declares no margin: it claims only a difference
    base = [[0.5, 0.8, 0.90]] * 10
    near = [[0.5, 0.8, 0.90 + 0.005 + 0.001 * s] for s in range(10)]
    far = [[0.5, 0.8, 0.95]] * 10
    arms = (Arm("base"), Arm("near", equivalence_margin=0.02), Arm("far", equivalence_margin=0.02), Arm("other"))
    exp = Experiment("equiv", "c", 2, 2, {}, arms, "base", 0.9)
    results = {arm.name: _arm(arm.name, curves, arm) for arm, curves in zip(arms, (base, near, far, near))}

    # Act
    text = summary_markdown(exp, results, "qfl experiment equiv", 1.0)

    # Assert: both one-sided tests of "near" reject at the exact 1/1024; "far" is outside the margin
    equivalence = text[text.index("Equivalence of final accuracy"):]
    rows = {line.split("|")[1].strip(): line.split("|") for line in equivalence.splitlines() if line.startswith("| ")}
    assert set(rows) == {"arm", "near", "far"}  # "other" claims no equivalence
    near_row, far_row = rows["near"], rows["far"]
    assert near_row[3].strip() == "±0.02"
    assert near_row[5].strip() == near_row[6].strip() == stats.format_p(1 / 1024)
    assert near_row[7].strip() == stats.format_p(2 / 1024) and near_row[8].strip() == "shown"  # Holm over 2
    assert far_row[8].strip() == "not shown" and far_row[6].strip() == "1"
    # without a declared margin the summary makes no equivalence claim
    plain = {name: _arm(name, curves) for name, curves in zip(results, (base, near, far, near))}
    assert "Equivalence of final accuracy" not in summary_markdown(exp, plain, "qfl experiment plain", 1.0)
    with pytest.raises(ValueError, match="equivalence margin"):
        Experiment("bad", "c", 2, 2, {}, (Arm("base"), Arm("near", equivalence_margin=0.0)), "base", 0.9)


def test_the_shared_settings_leave_out_a_key_every_arm_sets_itself():
    # a tuned experiment: every arm runs its own learning rate, the catalogue's 0.1 runs nowhere
    arms = (Arm("a", {"learning-rate": 0.05}), Arm("b", {"learning-rate": 0.2, "model": "mlp"}))
    exp = Experiment("tuned", "c", 2, 2, {"learning-rate": 0.1, "model": "pqc", "dataset": "iris"}, arms, "a", 0.9)
    results = {arm.name: _arm(arm.name, [[0.5, 0.8, 0.9]] * 10, arm) for arm in arms}
    line = next(x for x in summary_markdown(exp, results, "qfl experiment tuned", 1.0).splitlines()
                if "shared settings" in x)
    assert "learning-rate" not in line and 'model="pqc"' in line and 'dataset="iris"' in line


def test_the_resources_bar_is_met_at_ten_seeds_when_the_ratio_of_means_is_shown_below_70_percent(tmp_path):
    from qfl.experiments.resources import resource_lines

    def arm(name: str, config: dict, pairs: float, final: float) -> ArmResult:
        curves = [[0.5, 0.92, final]] * 10
        rows = [[{"round": r, "test_accuracy": a, "qcn_bell_pairs": 0.0 if r == 0 else pairs + s, "qcn_network_s": 0.5,
                  "qcn_served": 2.0, "qcn_schedule_s": 0.01, "qcn_pairs_saved": 0.0, "qcn_bytes": 10.0}
                 for r, a in enumerate(c)] for s, c in enumerate(curves)]
        return ArmResult(Arm(name, config), list(range(1, 11)), np.array(curves), [0.0] * 10, rows)

    results = {"g/fixed": arm("g/fixed", {"qcn-schedule": "fixed"}, 100.0, 0.93),
               "g/joint": arm("g/joint", {"qcn-schedule": "joint"}, 50.0, 0.93),  # half the pairs, same accuracy
               "g/joint-lossy": arm("g/joint-lossy", {"qcn-schedule": "joint"}, 50.0, 0.88)}  # 5 points lower
    exp = Experiment("x", "c", 2, 2, {}, tuple(r.arm for r in results.values()), "g/fixed", 0.9, resources=True)
    text = "\n".join(resource_lines(exp, results, lambda a, s: tmp_path))
    joint = next(line for line in text.splitlines() if line.startswith("| g | g/joint |"))
    assert joint.endswith("| met |") and "| 0.52 |" in joint  # mean 54.5 / 104.5 = 0.5215
    lossy = next(line for line in text.splitlines() if line.startswith("| g | g/joint-lossy |"))
    assert "no loss of final accuracy beyond 0.02 not shown" in lossy


# --- seeds ---------------------------------------------------------------------------------------

def test_seeds_parse_as_n_or_a_range_and_say_what_saw_them():
    assert parse_seeds("3") == [1, 2, 3] and parse_seeds("11..30") == list(range(11, 31))
    for bad in ("0", "5..3", "1-3", "x"):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    assert classify("qcn", list(range(1, 11))).kind == "exploratory"
    assert classify("qcn", list(range(11, 31))).kind == "confirmatory"
    assert classify("attacks", [0, 11]).confirmatory == (11,)  # bench/attacks.py saw 0-9
    assert classify("qcn-resources", [101, 104]).refusal().startswith("qcn-resources: seeds 101 of 101,104 were seen")
    assert classify("heterogeneous-circuits", [101, 11]).confirmatory == (11,)  # bench/qng_rates.py saw 101
    assert "NOT confirmatory, mixed" in classify("noise", [10, 11]).lines()[0]


def test_a_confirmatory_request_on_seeds_a_search_saw_is_refused(tmp_path, capsys):
    assert main(["experiment", "noise", "--out", str(tmp_path), "--seeds", "8..20", "--confirmatory"]) == 2
    assert "seeds 8-10 of 8-20 were seen" in capsys.readouterr().err
    assert main(["experiment", "noise", "--out", str(tmp_path), "--seeds", "2..x"]) == 2
    assert "give N (seeds 1..N) or A..B" in capsys.readouterr().err


# --- provenance ----------------------------------------------------------------------------------

class FakeSession:
    """Writes what the ServerApp would (metrics.json), a curve that depends on the seed."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, config: dict, clients: int, client_app: str | None = None) -> float:
        folder = provenance.Path(config["output-dir"]) / config["run-name"]
        folder.mkdir(parents=True, exist_ok=True)
        seed, rounds = config["seed"], config["num-server-rounds"]
        rows = [{"round": r, "test_accuracy": min(1.0, 0.5 + 0.1 * r + 0.01 * seed), "test_loss": 1.0}
                for r in range(rounds + 1)]
        (folder / "metrics.json").write_text(json.dumps({"rounds": rows}))
        self.ran.append(config["run-name"])
        return 0.1


def _experiment(lr: float = 0.1) -> Experiment:
    return Experiment("prov", "c", 2, 2, {"dataset": "iris", "learning-rate": lr},
                      (Arm("fedavg", {"strategy": "fedavg"}), Arm("fedmedian", {"strategy": "fedmedian"})), "fedavg",
                      0.6, seeds=2)


def test_runs_record_their_provenance_and_are_reused_only_by_the_same_code_and_config(tmp_path):
    # Arrange / Act: a first run of 2 arms x 2 seeds, with the code as it is now (kept for the later
    # calls: others may edit the tree in between)
    code = provenance.code_identity()
    first = FakeSession()
    out = run_experiment(_experiment(), tmp_path, "qfl experiment prov", session_factory=lambda: first, say=print,
                         code=code)

    # Assert: each folder records commit, dirty tree, hashes and the full config (defaults included)
    rec = json.loads((out / "runs" / "fedavg-s1" / "provenance.json").read_text())
    assert rec["complete"] and len(rec["sha256"]) == 64 and rec["config"]["seed"] == 1
    assert rec["config"]["learning-rate"] == 0.1 and "output-dir" not in rec["config"]
    assert "dirty" in rec and "git_status" in rec and rec["simulation"]["clients"] == 2
    summary = (out / "summary.md").read_text()
    assert "Provenance: 4 runs from commit" in summary

    # the same command again reuses all four
    again = FakeSession()
    run_experiment(_experiment(), tmp_path, "qfl experiment prov", session_factory=lambda: again, say=print, code=code)
    assert again.ran == []

    # another config: stop before running anything, the key named
    with pytest.raises(provenance.ProvenanceError, match=r"learning-rate: 0\.1 -> 0\.2"):
        run_experiment(_experiment(0.2), tmp_path, "qfl experiment prov", session_factory=FakeSession, say=print,
                       code=code)
    rerun = FakeSession()
    run_experiment(_experiment(0.2), tmp_path, "x", session_factory=lambda: rerun, say=print, rerun_stale=True,
                   code=code)
    assert sorted(rerun.ran) == ["fedavg-s1", "fedavg-s2", "fedmedian-s1", "fedmedian-s2"]


def test_a_run_with_no_record_is_unknown_refused_unless_reused_by_name(tmp_path):
    exp, code = _experiment(), provenance.code_identity()
    run_experiment(exp, tmp_path, "x", session_factory=FakeSession, say=print, code=code)
    (tmp_path / "prov" / "runs" / "fedmedian-s2" / "provenance.json").unlink()  # as made before this change
    plan = plan_runs(exp, tmp_path / "prov" / "runs", [1, 2], code)
    assert plan.refused == ["fedmedian-s2: made before runs recorded their provenance (code and config unknown)"]
    with pytest.raises(provenance.ProvenanceError, match="--reuse-unknown"):
        run_experiment(exp, tmp_path, "x", session_factory=FakeSession, say=print, code=code)
    out = run_experiment(exp, tmp_path, "x", session_factory=FakeSession, say=print, reuse_unknown=True, code=code)
    summary = (out / "summary.md").read_text()
    assert "1 run(s) of unknown code and config** (made before provenance was recorded), reused because the " \
           "command said `--reuse-unknown`: fedmedian-s2" in summary
    assert "1 run from unknown" in summary


def test_fresh_seeds_write_their_own_summary_and_say_they_are_confirmatory(tmp_path):
    exp = _experiment()
    code = provenance.code_identity()
    out = run_experiment(exp, tmp_path, "x", session_factory=FakeSession, say=print, seeds=[11, 12], code=code)
    summary = (out / "summary-s11-12.md").read_text()
    assert "# Experiment `prov` (seeds 11-12)" in summary and "**Seeds 11-12: confirmatory.**" in summary
    assert (out / "results-s11-12.csv").exists() and not (out / "summary.md").exists()
    table = compare(exp, tmp_path, [("fedmedian", "fedavg")], seeds=[11, 12])
    assert "seeds 11-12" in table and "Provenance: 4 runs from commit" in table


def test_a_single_seed_gets_its_exact_sign_flip_p_instead_of_an_error():
    from qfl.experiments.stats import sign_flip_test

    assert sign_flip_test([0.2]).p == 1.0  # two-sided: both signs as extreme
    assert sign_flip_test([0.2], alternative="greater").p == 0.5
    assert sign_flip_test([0.2], alternative="less").p == 1.0
