"""The noise-dose design as registered ("Evidence that survives review", item 5): the declared
factorial, its arms, its tuning, its seeds, and the verdict read across its cells."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qfl.common.config import KEY, RunConfig, defaults
from qfl.experiments import dose
from qfl.experiments.catalogue import (
    CELLS,
    DOSE_DEVICES,
    EXPERIMENTS,
    FACTORIALS,
    Arm,
    Experiment,
    Factorial,
    find,
)
from qfl.experiments.seeds import classify
from strategies import parse_strategy_options

DESIGN = FACTORIALS["noise-dose"]
ARMS = ["fedavg/none", "guard/none", "fedmedian/none", "multikrum/none", "oracle/none", "inverse-variance/none",
        "noise-isolating/none", "noise-isolating-no-division/none", "noise-isolating-no-cap/none",
        "control-good-devices"]


def test_the_design_is_the_declared_factorial():
    # 4 noisy devices x 3 shot counts x 3 counts of noisy clients x 2 optimisers, 10 arms each
    assert [(name, len(levels)) for name, levels in DESIGN.factors] == [
        ("noisy device", 4), ("shots", 3), ("noisy", 3), ("optimiser", 2)]
    assert len(DESIGN.cells) == 72 == len(CELLS) and len({c.name for c in DESIGN.cells}) == 72
    assert all([a.name for a in cell.arms] == ARMS for cell in DESIGN.cells)
    assert set(CELLS).isdisjoint(EXPERIMENTS)  # the catalogue's experiments (and "all") are as they were
    assert find("noise") is EXPERIMENTS["noise"] and find(DESIGN.cells[5].name) is DESIGN.cells[5]


@pytest.mark.parametrize(("device", "shots", "noisy", "optimiser"),
                         list(itertools.product(DOSE_DEVICES, (128, 1024, 4096), (1, 3, 5), ("adam", "sgd"))))
def test_every_cell_puts_its_noise_where_it_says(device, shots, noisy, optimiser):
    cell = find(f"noise-dose/{device}/shots{shots}/noisy{noisy}/{optimiser}")
    arms = {a.name: a for a in cell.arms}
    profiles = cell.config[KEY.device_profiles].split(";")
    noisy_spec = f"{DOSE_DEVICES[device]}:shots={shots}"
    # k of 6 on the noisy device, the others on good ones, every client at the cell's shots, the control too
    assert cell.clients == len(profiles) == 6 and profiles.count(noisy_spec) == noisy
    control = arms["control-good-devices"].config[KEY.device_profiles].split(";")
    assert len(control) == 6 and noisy_spec not in control
    assert all(p.endswith(f":shots={shots}") for p in profiles + control)
    assert cell.config[KEY.optimizer] == optimiser and cell.config[KEY.robust_direction] is False
    assert arms["guard/none"].config[KEY.robust_direction] is True  # FedAvg behind the default guard
    # the oracle is told exactly the cell's noisy spec: it drops the noisy partitions and no other
    told = parse_strategy_options(arms["oracle/none"].config[KEY.strategy_options])["noisy_profiles"]
    assert [p in told for p in profiles] == [p == noisy_spec for p in profiles]
    # the ablations switch off one part each, and are tested against the whole
    assert parse_strategy_options(arms["noise-isolating-no-division/none"].config[KEY.strategy_options]) == {
        "min_contraction": 1.0}
    assert parse_strategy_options(arms["noise-isolating-no-cap/none"].config[KEY.strategy_options]) == {
        "weight_cap": float("inf")}
    assert {cell.versus(arms[a]) for a in ("noise-isolating-no-division/none", "noise-isolating-no-cap/none")} == {
        "noise-isolating/none"}


def test_every_arm_gets_the_same_tuning_budget_and_builds():
    from qfl.experiments.tuning import tuning_experiment
    from server.chain import server_strategy

    for cell in DESIGN.cells:
        assert {cell.budget(a) for a in cell.arms} == {4}
        grids = {a.name: cell.grid(a) for a in cell.arms}
        knobs = {name: {g.get(KEY.strategy_options) for g in grid} - {None} for name, grid in grids.items()}
        assert len(knobs["multikrum/none"]) == 2 and len(knobs["noise-isolating/none"]) == 2  # their own knobs
        assert all(parse_strategy_options(o)["min_contraction"] == 1.0 for o in knobs["noise-isolating-no-division/none"])
        assert knobs["fedavg/none"] == set()  # no knob: four learning rates
        for arm in (*cell.arms, *tuning_experiment(cell).arms):
            server_strategy(RunConfig.from_run_config({**defaults(), **cell.config, **arm.config}))


def test_the_seeds_can_reach_significance_under_holm_over_the_verdicts_family():
    # 72 cells x 3 comparisons x 2 quantities; the smallest exact two-sided p is 2 / 2^n
    assert DESIGN.tests() == 432 and DESIGN.tests(secondary=True) == 288
    assert DESIGN.min_seeds() == 15 and 2 / 2**15 * 432 < 0.05 <= 2 / 2**14 * 432
    assert DESIGN.seeds == tuple(range(11, 31)) and 2 / 2 ** len(DESIGN.seeds) * DESIGN.tests() < 0.05
    # fresh: no search saw them; the tuning's seeds 1-3 and the catalogue's 1-10 were seen
    assert classify(DESIGN.cells[0].name, list(DESIGN.seeds)).kind == "confirmatory"
    assert classify(DESIGN.cells[0].name, [1, 2, 3]).kind == "exploratory"
    with pytest.raises(ValueError, match="cannot reach significance over 432 tests"):
        Factorial(DESIGN.name, DESIGN.claim, DESIGN.factors, DESIGN.cells, DESIGN.verdict, seeds=tuple(range(11, 25)))


# --- the verdict, on curves made up for it ------------------------------------------------------------

DOSE_NEW = "noise-isolating/none"


def _tiny() -> Factorial:
    """Two cells (a good and a bad noisy device), the design's verdict, 10 seeds (12 tests: 2/1024 x 12 < 0.05)."""
    arms = tuple(Arm(n) for n in ("fedavg/none", "multikrum/none", "oracle/none", "noise-isolating/none",
                                  "control-good-devices"))
    cells = tuple(Experiment(f"toy/{d}/s/k/o", "c", 2, 3, {}, arms, "fedavg/none", 0.9) for d in ("good", "bad"))
    return Factorial("toy", "a claim", (("device", ("good", "bad")), ("shots", ("s",)), ("noisy", ("k",)),
                                        ("optimiser", ("o",))), cells, DESIGN.verdict, seeds=tuple(range(1, 11)))


def _curves(final: dict[str, float], seeds: int = 10) -> dict[str, np.ndarray]:
    """Per arm, ``(seeds, 4)`` curves ending at ``final`` plus a small seeded jitter; every run
    reaches 0.9 in round 1 (so rounds to target tie)."""
    rng = np.random.default_rng(0)
    jitter = rng.normal(scale=0.002, size=seeds)
    return {arm: np.column_stack([np.full(seeds, 0.5), np.full(seeds, 0.95), np.full(seeds, 0.95), f + jitter])
            for arm, f in final.items()}


def test_the_verdict_draws_the_region_from_holm_over_every_cell():
    toy = _tiny()
    oracle = 0.93
    curves = {
        # NI above FedAvg, MultiKrum and the oracle in every seed by a constant: significant (2/1024 x 12 < 0.05)
        toy.cells[0].name: _curves({"fedavg/none": 0.90, "multikrum/none": 0.91, "oracle/none": oracle,
                                    "noise-isolating/none": 0.95, "control-good-devices": 0.96}),
        # NI above FedAvg and MultiKrum, below the oracle: lost to the oracle, no win
        toy.cells[1].name: _curves({"fedavg/none": 0.80, "multikrum/none": 0.85, "oracle/none": oracle,
                                    "noise-isolating/none": 0.90, "control-good-devices": 0.96}),
    }
    tests = dose.family(toy.verdict, toy.quantities, list(toy.cells), curves)
    assert len(tests) == toy.tests() == 12
    won = dose.wins(tests, toy.quantities)
    assert won == {toy.cells[0].name: [dose.FINAL], toy.cells[1].name: []}
    text = "\n".join(dose.summary_lines(toy, list(toy.cells), curves, list(range(1, 11)), "qfl experiment toy"))
    assert "Holm **can** reach 0.05" in text and "It wins in 1 of 2 cells" in text
    assert "lost: oracle final" in text and "**wins** (final)" in text
    assert "agree across every device level in 1 of 1" in text  # the oracle's curves are the same in both


def test_a_verdict_that_wins_nowhere_says_so_and_one_that_cannot_reach_significance_says_that():
    toy = _tiny()
    flat = {"fedavg/none": 0.9, "multikrum/none": 0.9, "oracle/none": 0.9, "noise-isolating/none": 0.9,
            "control-good-devices": 0.9}
    curves = {c.name: _curves(flat) for c in toy.cells}
    text = "\n".join(dose.summary_lines(toy, list(toy.cells), curves, list(range(1, 11)), "cmd"))
    assert "It wins nowhere" in text
    few = {c.name: {a: v[:4] for a, v in _curves({**flat, DOSE_NEW: 0.99}).items()} for c in toy.cells}
    text = "\n".join(dose.summary_lines(toy, list(toy.cells), few, [1, 2, 3, 4], "cmd"))
    assert "Holm **cannot** reach 0.05" in text and "It wins nowhere" in text  # 4 seeds: 2/16 x 12 > 0.05


def test_the_cli_names_the_design_and_its_cells(capsys):
    from qfl.launcher import _names, main

    assert _names("noise-dose") == [c.name for c in DESIGN.cells]
    assert _names("all") == list(EXPERIMENTS)
    assert _names(DESIGN.cells[0].name) == [DESIGN.cells[0].name]
    assert main(["experiment", "noise-dos"]) == 2
    assert "or a factorial design, noise-dose, or one of its cells" in capsys.readouterr().err
    assert main(["experiment", "noise-dose", "--compare", "a:b"]) == 2  # one experiment's arms, not 72 cells'
    assert "--compare needs one experiment's name" in capsys.readouterr().err
