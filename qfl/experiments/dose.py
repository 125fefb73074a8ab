"""The verdict of a factorial design (:class:`~qfl.experiments.catalogue.Factorial`): where the proposal wins.

``qfl experiment noise-dose`` runs every cell (an ordinary experiment each, with its own
summary, noise bar and tuning) and then writes ``experiments/noise-dose/summary<tag>.md``
from their runs, nothing else run:

- **the verdict's family**: in every cell, each comparison of :attr:`Factorial.verdict` (arm
  minus other, seed by seed) on each quantity (final accuracy; rounds to the target, a run that
  never got there counted as ``rounds + 1``, fewer is better), a two-sided exact sign-flip test
  (:func:`qfl.experiments.stats.sign_flip_test`), Holm-adjusted over every test of the family at
  once (all cells, all comparisons, both quantities);
- **wins**, declared before any run: in a cell the arm *wins on a quantity* when every verdict
  comparison on it is significant (adjusted p < :data:`~qfl.experiments.stats.ALPHA`) in the arm's
  favour, and *wins in the cell* when it wins on at least one quantity and no verdict test of the
  cell, on either quantity, is significant against it. The region is the set of cells where it
  wins, drawn as a grid; where it wins nowhere the summary says so beside the diagnostics;
- **diagnostics**, not tests: per cell the gap the noisy devices cost FedAvg against the control
  (final accuracy, mean), each arm's mean final accuracy, and whether the oracle's curves are the
  same in every device level of a (shots, noisy clients, optimiser) column, as they should be (it
  drops exactly the noisy clients, whatever their device); the guard's norm screen, which compares
  each update with the round's median distance, noisy ones included, can reject a good client at
  one dose and not another, and a column's ``clients.csv`` then names it; anything else is a bug;
- **the secondary family** (:attr:`Factorial.secondary`, the ablations against the whole): the
  same tests, Holm over their own family, reported and never read by the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qfl.experiments import stats
from qfl.experiments.catalogue import Experiment, Factorial
from qfl.experiments.seeds import classify, label

FINAL, ROUNDS = "final accuracy", "rounds to target"  # not a contract name: the two quantities' names
CONTROL = "control-good-devices"  # not a contract name: the arm with every client on a good device
BASELINE = "fedavg/none"  # not a contract name: the arm the gap is FedAvg's of
ORACLE = "oracle/none"  # not a contract name: the arm whose curves must not depend on the noisy device


@dataclass(frozen=True)
class Test:
    """One paired test of a family: ``arm`` minus ``other`` in ``cell`` on ``quantity``."""

    cell: str
    arm: str
    other: str
    quantity: str
    favour: np.ndarray  # per seed, in the arm's favour (final: higher; rounds: fewer)
    result: stats.SignFlip
    p_holm: float

    @property
    def significant(self) -> int:
        """+1 significant in the arm's favour, -1 against it, 0 not significant."""
        if not self.p_holm < stats.ALPHA:
            return 0
        return 1 if self.result.mean_difference > 0 else -1


def favour(curves: np.ndarray, other: np.ndarray, quantity: str, target: float, rounds: int) -> np.ndarray:
    """Per seed, the arm's advantage over ``other`` (``(seeds, rounds + 1)`` accuracy curves each):
    final accuracy, arm minus other; rounds to ``target``, other minus arm, a run that never got
    there counted as ``rounds + 1`` (restricted)."""
    if quantity == FINAL:
        return curves[:, -1] - other[:, -1]
    if quantity != ROUNDS:
        raise ValueError(f"unknown quantity {quantity!r}")

    def reached(c: np.ndarray) -> np.ndarray:
        return stats.censored_rounds([stats.rounds_to_target(row, target) for row in c], rounds)

    return reached(other) - reached(curves)


def family(pairs: tuple[tuple[str, str], ...], quantities: tuple[str, ...], cells: list[Experiment],
           curves: dict[str, dict[str, np.ndarray]]) -> list[Test]:
    """Every test of ``pairs`` x ``quantities`` in every cell, Holm-adjusted over all of them.
    ``curves``: cell name -> arm name -> ``(seeds, rounds + 1)`` accuracy."""
    rows = []
    for cell in cells:
        for arm, other in pairs:
            for quantity in quantities:
                d = favour(curves[cell.name][arm], curves[cell.name][other], quantity, cell.target, cell.rounds)
                rows.append((cell.name, arm, other, quantity, d, stats.sign_flip_test(d)))
    adjusted = stats.holm([r[5].p for r in rows])
    return [Test(*r, p) for r, p in zip(rows, adjusted)]


def wins(tests: list[Test], quantities: tuple[str, ...]) -> dict[str, list[str]]:
    """Per cell, the quantities on which the arm wins (every comparison significant in its favour),
    or ``[]``: it does not win in the cell (also when a test of the cell is significant against it)."""
    by_cell: dict[str, list[Test]] = {}
    for t in tests:
        by_cell.setdefault(t.cell, []).append(t)
    out = {}
    for cell, mine in by_cell.items():
        if any(t.significant < 0 for t in mine):
            out[cell] = []
            continue
        out[cell] = [q for q in quantities if all(t.significant > 0 for t in mine if t.quantity == q)]
    return out


def oracle_consistent(factorial: Factorial, cells: list[Experiment], curves: dict[str, dict[str, np.ndarray]]) -> tuple[int, int]:
    """``(columns whose oracle curves agree across every device level, columns)``: the oracle drops
    exactly the noisy clients, so the noisy device must not change its curve (the first factor is the
    device)."""
    columns: dict[tuple[str, ...], list[np.ndarray]] = {}
    named = {c.name: c for c in cells}
    for levels in factorial.levels():
        name = factorial.cell_name(levels)
        if name in named and ORACLE in curves.get(name, {}):
            columns.setdefault(levels[1:], []).append(curves[name][ORACLE])
    agree = sum(all(np.array_equal(c, group[0]) for c in group[1:]) for group in columns.values() if len(group) > 1)
    return agree, sum(len(group) > 1 for group in columns.values())


def summary_lines(factorial: Factorial, cells: list[Experiment], curves: dict[str, dict[str, np.ndarray]],
                  seeds: list[int], command: str) -> list[str]:
    """The design's summary: its seeds, the family, the region, the tests and the diagnostics."""
    status = classify(cells[0].name, seeds)
    main = family(factorial.verdict, factorial.quantities, cells, curves)
    won = wins(main, factorial.quantities)
    n, size = len(seeds), len(main)
    smallest = 2.0 / 2**n
    arm = factorial.verdict[0][0]
    rivals = ", ".join(f"`{other}`" for _, other in factorial.verdict)
    lines = [f"# Design `{factorial.name}`" + (f" (seeds {label(seeds)})" if seeds != list(range(1, 11)) else ""), "",
             f"Command: `{command}`", "", f"Claim: {factorial.claim}.", "", *status.lines(), "",
             f"{len(cells)} of the design's {len(factorial.cells)} cells "
             f"({' x '.join(f'{len(levels)} {name}' for name, levels in factorial.factors)}), each an "
             f"experiment with its own summary (`{factorial.name}/<cell>/summary*.md`: arms, gap, bar, what noise "
             "isolation saw).", "",
             f"**The verdict's family**: `{arm}` against {rivals} in every cell, on {' and '.join(factorial.quantities)}: "
             f"{size} two-sided sign-flip tests ({stats.sign_flip_method(n)}), Holm over all of them. With {n} seeds the "
             f"smallest p is 2/2^{n} = {smallest:.3g}; x {size} tests = {smallest * size:.3g}: "
             + ("Holm **can** reach 0.05." if smallest * size < stats.ALPHA else
                f"Holm **cannot** reach 0.05 with this many seeds (the design needs {factorial.min_seeds()}): nothing "
                "below can be significant."),
             "", f"**Wins** (declared before the runs): in a cell, `{arm}` wins on a quantity when all "
             f"{len(factorial.verdict)} comparisons on it are significant in its favour, and wins in the cell when it "
             "wins on at least one quantity and no test of the cell is significant against it.", ""]
    region = [c for c, q in won.items() if q]
    lines += _grid(factorial, cells, won, main)
    if region:
        lines += ["", f"**It wins in {len(region)} of {len(cells)} cells**: " + "; ".join(
            f"`{c.removeprefix(factorial.name + '/')}` ({', '.join(won[c])})" for c in region) + "."]
    else:
        lines += ["", f"**It wins nowhere.** In no cell is `{arm}` significantly better than all of {rivals} on "
                  "either quantity after Holm's adjustment. The diagnostics below (the gap noise costs FedAvg in each "
                  "cell, each arm's mean) and each cell's summary (what the strategy saw per device) say why."]
    lines += ["", "| cell | vs | quantity | favour (mean) | seeds for | p | p (Holm) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {t.cell.removeprefix(factorial.name + '/')} | {t.other} | {t.quantity} | {t.result.mean_difference:+.3f} | "
              f"{_for(t.favour)} | {stats.format_p(t.result.p)} | {stats.format_p(t.p_holm)} |" for t in main]
    lines += ["", "## Diagnostics (not tests)", "",
              "Per cell: the gap (the control minus FedAvg, final accuracy, mean over seeds) and each arm's mean "
              "final accuracy.", ""]
    arms = [a.name for a in cells[0].arms]
    lines += ["| cell | gap | " + " | ".join(arms) + " |", "|---" * (len(arms) + 2) + "|"]
    for cell in cells:
        c = curves[cell.name]
        gap = (c[CONTROL][:, -1] - c[BASELINE][:, -1]).mean() if CONTROL in c and BASELINE in c else float("nan")
        lines.append(f"| {cell.name.removeprefix(factorial.name + '/')} | {gap:+.3f} | "
                     + " | ".join(f"{c[a][:, -1].mean():.3f}" for a in arms) + " |")
    agree, columns = oracle_consistent(factorial, cells, curves)
    lines += ["", f"The oracle's curves agree across every device level in {agree} of {columns} (shots, noisy clients, "
              "optimiser) columns" + (": as they should." if agree == columns else
                                      ": **they should agree in all**; where not, the cells' `clients.csv` must show the "
                                      "guard rejecting a good client at one dose (its norm screen compares each update with "
                                      "the round's median distance, noisy ones included); anything else is a bug.")]
    if factorial.secondary:
        extra = family(factorial.secondary, factorial.quantities, cells, curves)
        lines += ["", "## Secondary: the ablations (their own family, not read by the verdict)", "",
                  f"{len(extra)} tests, Holm over them: " + ", ".join(f"`{a}` against `{o}`" for a, o in factorial.secondary)
                  + " (favour: the ablation's advantage; negative: what the part it removes adds).", "",
                  "| cell | ablation | quantity | favour (mean) | seeds for | p (Holm) |", "|---|---|---|---|---|---|"]
        lines += [f"| {t.cell.removeprefix(factorial.name + '/')} | {t.arm} | {t.quantity} | "
                  f"{t.result.mean_difference:+.3f} | {_for(t.favour)} | {stats.format_p(t.p_holm)} |" for t in extra]
    return lines + [""]


def _grid(factorial: Factorial, cells: list[Experiment], won: dict[str, list[str]], tests: list[Test]) -> list[str]:
    """The region as a table: rows the first two factors' levels, columns the others'; each entry
    **wins** (and on what), or the rivals the arm beats significantly, or -."""
    (f1, l1), (f2, l2), *rest = factorial.factors
    columns = [levels for levels in factorial.levels() if levels[:2] == (l1[0], l2[0])]
    named = {c.name for c in cells}
    short = {FINAL: "final", ROUNDS: "rounds"}
    lines = [f"The region (rows: {f1} x {f2}; columns: {' x '.join(name for name, _ in rest)}). Each entry: **wins** "
             "(the quantities), else the comparisons it wins significantly (`vs other: quantity`), `lost` where one "
             "is significant against it, `-` none:", "",
             f"| {f1} / {f2} | " + " | ".join("/".join(c[2:]) for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for a in l1:
        for b in l2:
            entries = []
            for c in columns:
                name = factorial.cell_name((a, b, *c[2:]))
                if name not in named:
                    entries.append("not run")
                    continue
                mine = [t for t in tests if t.cell == name]
                if won.get(name):
                    entries.append("**wins** (" + ", ".join(short.get(q, q) for q in won[name]) + ")")
                elif any(t.significant < 0 for t in mine):
                    entries.append("lost: " + ", ".join(f"{t.other.split('/')[0]} {short.get(t.quantity, t.quantity)}"
                                                       for t in mine if t.significant < 0))
                else:
                    beaten = [f"{t.other.split('/')[0]} {short.get(t.quantity, t.quantity)}" for t in mine
                              if t.significant > 0]
                    entries.append(", ".join(beaten) or "-")
            lines.append(f"| {a} / {b} | " + " | ".join(entries) + " |")
    return lines


def write_summary(factorial: Factorial, cells: list[Experiment], out_root: Path, seeds: list[int], command: str) -> Path:
    """Read every cell's runs (``out_root/<cell>/runs``) and write ``out_root/<design>/summary<tag>.md``."""
    from qfl.experiments.runner import collect, files_tag

    curves = {cell.name: {name: res.accuracy for name, res in collect(cell, Path(out_root).resolve() / cell.name / "runs",
                                                                        seeds).items()}
              for cell in cells}
    tag = files_tag(cells[0], seeds)
    path = Path(out_root).resolve() / factorial.name / f"summary{tag}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(summary_lines(factorial, cells, curves, seeds, command)))
    return path


def _for(favour: np.ndarray) -> str:
    wins_, ties = int(np.sum(favour > 0)), int(np.sum(favour == 0))
    return f"{wins_}/{favour.size}" + (f" ({ties} tie{'s' if ties > 1 else ''})" if ties else "")
