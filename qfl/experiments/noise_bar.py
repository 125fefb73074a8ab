"""The device-noise experiment's bar: does noise isolation recover what noisy devices cost FedAvg?

For an experiment with ``Experiment.noise_bar`` (the catalogue's ``noise``), whose arms are
named ``<method>/<mitigation>`` beside one control arm (FedAvg with every client on a good
device), the summary gets a section:

- **the gap**: what the noisy devices cost FedAvg against the control, in final accuracy and
  in rounds to the target, per mitigation; the issue asks for a setting where the
  unmitigated gap is at least :data:`GAP_POINTS` of final accuracy or :data:`GAP_ROUNDS`
  rounds (*noise matters*);
- **the bar**, per mitigation *m* and per quantity (final accuracy; rounds to target): the
  new NoiseIsolatingFedAvg (``noise-isolating/m``) must close at least half of FedAvg's gap,
  tested as the paired difference from the midpoint of FedAvg and the control,
  :math:`d_s = x_s^{NI} - (x_s^{FedAvg} + x_s^{control})/2` (rounds: the other way round,
  fewer is better), and beat FedMedian and MultiKrum of the same mitigation, each paired on
  seeds; two-sided sign-flip permutation tests (:func:`qfl.experiments.stats.sign_flip_test`),
  Holm-adjusted over every test of the bar's table, both quantities (the verdicts read them
  all). Rounds are restricted at ``rounds + 1`` where a run never got there (the gap's table
  then gives Kaplan-Meier medians, not an interval). The bar is met for *m* on a quantity where
  noise matters when all three are significant in the arm's favour;
- **what the strategy saw**, from ``clients.csv`` of the ``noise-isolating`` arms: per device
  profile, the clients' claims (``update-noise-var``, ``noise-contraction``), what the strategy
  used (variance, the contraction it divided by, how many claims it named contradicted) and
  the weight it gave against the FedAvg share. What is *true* about each client's noise needs
  repeated training from the round's model: ``bench/noise_search.py diagnose``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qfl.common.contract import (
    DEVICE_PROFILE,
    NOISE_CONTRACTION,
    NUM_EXAMPLES,
    REPORT_CONTRACTION,
    REPORT_NOISE_SOURCE,
    REPORT_NOISE_VAR,
    REPORT_WEIGHT,
    UPDATE_NOISE_VAR,
)
from qfl.experiments import stats

GAP_POINTS = 0.05  # noise matters: FedAvg loses at least 5 points of final accuracy to the control ...
GAP_ROUNDS = 3.0  # ... or needs at least 3 more rounds to the target
SHARE = 0.5  # the new strategy must close at least half of the gap
NEW = "noise-isolating"  # not a contract name: the method part of an arm's name
FEDAVG = "fedavg"  # not a contract name
RIVALS = ("fedmedian", "multikrum")
CONTROL = "control-good-devices"  # not a contract name: the arm with every client on a good device
CONTRADICTED = "contradicted"  # not a contract name: strategies.noise_isolating's source of a replaced claim


def _col(name: str) -> str:
    return name.replace("-", "_")


def split(name: str) -> tuple[str, str]:
    """``(method, mitigation)`` of an arm named ``method/mitigation`` (``(name, "")`` otherwise)."""
    method, _, mitigation = name.partition("/")
    return method, mitigation


def noise_bar_lines(experiment, results: dict, folder_of: Callable[..., Path]) -> list[str]:  # noqa: ANN001
    """The summary's section on the gap, the bar and the strategy's view (module doc)."""
    finals = {n: r.accuracy[:, -1] for n, r in results.items()}
    rounds = {n: stats.censored_rounds([stats.rounds_to_target(c, experiment.target) for c in r.accuracy],
                                       experiment.rounds) for n, r in results.items()}
    mitigations = list(dict.fromkeys(split(n)[1] for n in results if split(n)[0] == FEDAVG))
    control = CONTROL if CONTROL in results else None
    lines = ["", "## Noise: the gap, the bar, and what the strategy saw", ""]
    if control is None or not mitigations:
        return lines + ["(no control arm or no FedAvg arm: nothing to compare)"]
    lines += [f"The gap: the control (FedAvg, every client on a good device) minus FedAvg on the noisy federation, "
              f"paired on seeds (final accuracy in points, mean [95 % t CI]; rounds to {experiment.target:g}: the mean "
              f"gap with its CI where every run got there, else the mean of restricted gaps (a run that never got "
              f"there counted as {experiment.rounds + 1}: a lower bound when only FedAvg's are censored) beside the "
              "Kaplan-Meier medians, control vs FedAvg, and no interval). Noise matters where the gap is at least "
              f"{100 * GAP_POINTS:.0f} points or "
              f"{GAP_ROUNDS:g} rounds.", "",
              "| mitigation | final acc.: gap [CI] | seeds for control | rounds: gap [CI] | seeds for control | "
              "noise matters |", "|---|---|---|---|---|---|"]
    matters: dict[str, list[str]] = {}
    reached = {n: [stats.rounds_to_target(c, experiment.target) for c in r.accuracy] for n, r in results.items()}
    for m in mitigations:
        fa = f"{FEDAVG}/{m}"
        gap_f = finals[control] - finals[fa]
        gap_r = rounds[fa] - rounds[control]
        which = ([f"final ({100 * gap_f.mean():+.1f} points)"] if gap_f.mean() >= GAP_POINTS else []) + \
                ([f"rounds ({gap_r.mean():+.1f})"] if gap_r.mean() >= GAP_ROUNDS else [])
        matters[m] = [q for q, ok in (("final", gap_f.mean() >= GAP_POINTS), ("rounds", gap_r.mean() >= GAP_ROUNDS)) if ok]
        lines.append(f"| {m} | {100 * gap_f.mean():+.1f} [{100 * stats.mean_ci(gap_f).low:+.1f}, "
                     f"{100 * stats.mean_ci(gap_f).high:+.1f}] | {_for(gap_f)} | "
                     f"{_rounds_gap(gap_r, reached[fa], reached[control], experiment.rounds)} | "
                     f"{_for(gap_r)} | {', '.join(which) or 'no'} |")
    lines += _bar(finals, rounds, mitigations, control, matters)
    lines += _views(results, folder_of)
    return lines


def _bar(finals: dict, rounds: dict, mitigations: list[str], control: str, matters: dict) -> list[str]:
    """Paired tests of the new strategy, Holm-adjusted over the table per quantity."""
    rows = []  # (mitigation, label, favour_final (n,), favour_rounds (n,))
    for m in mitigations:
        new, fa = f"{NEW}/{m}", f"{FEDAVG}/{m}"
        if new not in finals:
            continue
        # half the gap: beyond the midpoint of FedAvg and the control (higher accuracy, fewer rounds)
        rows.append((m, f"closes >= {SHARE:.0%} of FedAvg's gap", finals[new] - (1 - SHARE) * finals[fa] - SHARE * finals[control],
                     (1 - SHARE) * rounds[fa] + SHARE * rounds[control] - rounds[new]))
        for rival in RIVALS:
            other = f"{rival}/{m}"
            if other in finals:
                rows.append((m, f"beats {other}", finals[new] - finals[other], rounds[other] - rounds[new]))
    if not rows:
        return []
    tests = {q: [stats.sign_flip_test(r[i]) for r in rows] for q, i in (("final", 2), ("rounds", 3))}
    family = stats.holm([t.p for t in tests["final"]] + [t.p for t in tests["rounds"]])  # one family: the table
    adjusted = {"final": family[:len(rows)], "rounds": family[len(rows):]}
    lines = ["", f"The bar: `{NEW}/<mitigation>` closes at least {SHARE:.0%} of FedAvg's gap to the control (its "
             "difference from the midpoint of FedAvg and the control, seed by seed) and beats FedMedian and MultiKrum "
             "of the same mitigation; differences in the arm's favour (final accuracy: higher; rounds: fewer, restricted "
             "where a run never got there), two-sided sign-flip tests "
             f"({stats.sign_flip_method(len(rows[0][2]))}), p Holm-adjusted over all {2 * len(rows)} tests of this "
             "table.", "",
             "| mitigation | test | final: favour | seeds for | p (Holm) | rounds: favour | seeds for | p (Holm) |",
             "|---|---|---|---|---|---|---|---|"]
    passed = []  # per row: the quantities on which it is significant in the arm's favour
    for (m, label, ff, fr), tf, pf, tr, pr in zip(rows, tests["final"], adjusted["final"], tests["rounds"],
                                                  adjusted["rounds"]):
        passed.append({q for q, t, p in (("final", tf, pf), ("rounds", tr, pr))
                       if p < stats.ALPHA and t.mean_difference > 0})
        lines.append(f"| {m} | {label} | {tf.mean_difference:+.3f} | {_for(ff)} | {_p(tf.p)} ({_p(pf)}) | "
                     f"{tr.mean_difference:+.2f} | {_for(fr)} | {_p(tr.p)} ({_p(pr)}) |")
    lines += ["", "Verdict per mitigation (the bar counts on a quantity where noise matters):", ""]
    for m in dict.fromkeys(r[0] for r in rows):
        mine = [(r[1], ok) for r, ok in zip(rows, passed) if r[0] == m]
        met = [q for q in matters.get(m, []) if all(q in ok for _, ok in mine)]
        if not matters.get(m):
            verdict = "noise does not cost FedAvg enough here to test the bar"
        elif met:
            verdict = f"**met** on {' and '.join(met)}"
        else:
            verdict = "**not met**: " + "; ".join(
                f"{q}: not significant in its favour: {', '.join(label for label, ok in mine if q not in ok)}"
                for q in matters[m])
        lines.append(f"- {m}: {verdict}")
    return lines


def _views(results: dict, folder_of: Callable[..., Path]) -> list[str]:
    """Per noise-isolating arm and device profile: claims, what the strategy used, weights."""
    lines = ["", f"What `{NEW}` saw, per device profile (means over every client-round of every seed; the weight "
             "beside the FedAvg share n_k / sum n):", "",
             "| arm | profile | client-rounds | claimed update-noise-var | claimed contraction | divided by | "
             "variance used | contradicted | weight | FedAvg share |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        if split(name)[0] != NEW:
            continue
        per: dict[str, list[dict]] = defaultdict(list)
        kept: list[float] = []  # per round: the share a binding cap left with the global model
        for seed in res.seeds:
            path = folder_of(res.arm, seed) / "clients.csv"
            if not path.exists():
                continue
            with path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if r.get(REPORT_WEIGHT)]
            totals: dict[str, float] = defaultdict(float)
            for r in rows:
                totals[r["round"]] += _num(r[_col(NUM_EXAMPLES)])  # not a contract name: the column
            weights: dict[str, float] = defaultdict(float)
            for r in rows:
                r["share"] = _num(r[_col(NUM_EXAMPLES)]) / totals[r["round"]]  # not a contract name
                weights[r["round"]] += _num(r[REPORT_WEIGHT])
                per[r[DEVICE_PROFILE]].append(r)
            kept += [max(0.0, 1.0 - w) for w in weights.values()]
        for profile, rows in per.items():
            def mean(key: str) -> float:
                return float(np.nanmean([_num(r[key]) for r in rows]))

            contradicted = sum(r.get(REPORT_NOISE_SOURCE) == CONTRADICTED for r in rows)
            lines.append(f"| {name} | {profile} | {len(rows)} | {mean(_col(UPDATE_NOISE_VAR)):.3g} | "
                         f"{mean(_col(NOISE_CONTRACTION)):.3g} | {mean(REPORT_CONTRACTION):.3g} | "
                         f"{mean(REPORT_NOISE_VAR):.3g} | {contradicted} | {mean(REPORT_WEIGHT):.3f} | "
                         f"{mean('share'):.3f} |")  # not a contract name: the column added above
        if kept:
            lines.append(f"| {name} | (no step: left with the global model) | {len(kept)} rounds | | | | | | "
                         f"{np.mean(kept):.3f} | |")
    return lines


def _rounds_gap(gap: np.ndarray, fedavg: list[int | None], control: list[int | None], horizon: int) -> str:
    """The rounds gap: mean [t CI] when no run is censored, else the restricted mean and the KM medians."""
    if all(r is not None for r in (*fedavg, *control)):
        return stats.mean_ci(gap).format(1)
    km_c, km_f = stats.kaplan_meier(control, horizon), stats.kaplan_meier(fedavg, horizon)
    return (f"{gap.mean():+.1f} restricted (medians {km_c.format()} vs {km_f.format()}; reached {km_c.reached}/{km_c.n} "
            f"vs {km_f.reached}/{km_f.n})")


def _for(favour: np.ndarray) -> str:
    wins, ties = int(np.sum(favour > 0)), int(np.sum(favour == 0))
    return f"{wins}/{favour.size}" + (f" ({ties} tie{'s' if ties > 1 else ''})" if ties else "")


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _p(p: float) -> str:
    return stats.format_p(p)
