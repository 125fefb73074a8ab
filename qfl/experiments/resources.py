"""What an experiment over a shared quantum network spent: Bell pairs, time, and the bar.

For an experiment whose runs use ``qcn-topology`` (``Experiment.resources``), the summary
gets a section from each run's ``metrics.csv`` columns (``qcn_bell_pairs``, ``qcn_network_s``,
``qcn_served``, ``qcn_schedule_s``, what compression saved) and its ``clients.csv`` (the
server's decisions and predictions beside what each client realised):

- per arm: **Bell pairs to target** (elementary pairs spent up to and including the first
  round at the target; a run that never gets there counts all its pairs, a lower bound,
  marked *censored*), Bell pairs per round, the **simulated wall-clock** to target (the
  rounds' lengths on the network clock, ``qcn_network_s``), clients served per round and
  the scheduler's own time per round;
- **the bar**, per group of arms (the part of an arm's name before ``/``: a data regime):
  the best fixed policy is, of the uncompressed ``qcn-schedule = "fixed"`` arms that reach
  the target in every seed, the one with the fewest mean Bell pairs to target (chosen after
  the fact on the same seeds, which favours the fixed side); every joint arm is compared
  with it, with the cheapest fixed arm if that one does not always reach the target, and a
  compressed joint arm also with the fixed arm of the same compression. The quantity the bar
  names is the **ratio of mean pairs to target**, and it is what is tested: the ratio is below
  :data:`BAR_RATIO` exactly when the mean of :math:`d_s = P_s^{joint} - 0.70\\, P_s^{fixed}` is
  below 0, so a one-sided sign-flip test of :math:`\\bar d < 0` tests the ratio of means
  (the geometric mean of the per-seed ratios is shown beside it, not tested). *No loss of
  final accuracy* is a non-inferiority test with a stated margin
  (:data:`qfl.experiments.stats.EQUIVALENCE_MARGIN`, 2 points): the lower of TOST's two
  one-sided sign-flip tests, :math:`H_0: \\bar\\delta \\le -0.02`. Both p-values are
  Holm-adjusted over every test of the section's table. The bar is met when the joint arm
  reaches the target in every seed, its ratio is significantly below 70 % and its final
  accuracy is shown non-inferior. A fixed arm that did not always get there counts all its
  pairs: a lower bound, so the test is then conservative;
- what the joint policy chose (served, skipped and why, distillation rounds) and how well
  it predicted: mean |predicted - realised| fidelity, realised / predicted Bell pairs.

``resources.png``: mean test accuracy against mean cumulative Bell pairs, per arm.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qfl.common.config import KEY
from qfl.common.contract import (
    FIDELITY,
    QCN_BELL_PAIRS,
    QCN_BYTES,
    QCN_PAIRS_SAVED,
    ROUND_QCN_NETWORK_S,
    ROUND_QCN_SCHEDULE_S,
    ROUND_QCN_SERVED,
    SCHEDULE_DECISION,
    SCHEDULE_PREDICTED_BELL_PAIRS,
    SCHEDULE_PREDICTED_FIDELITY,
)
from qfl.experiments import stats

BAR_RATIO = 0.70  # the joint policy needs at most this share of the best fixed policy's pairs
NO_LOSS_MARGIN = stats.EQUIVALENCE_MARGIN  # "at no loss of final accuracy": not more than 2 points lower


def _col(name: str) -> str:
    return name.replace("-", "_")


def _series(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r.get(_col(key)) or 0.0) if r.get(_col(key)) is not None else 0.0 for r in rows])


def _num(value: object) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return out


class ArmSpend:
    """One arm's per-seed resource figures (see the module doc)."""

    def __init__(self, res, experiment) -> None:  # noqa: ANN001 (runner.ArmResult, catalogue.Experiment)
        self.res, self.name = res, res.arm.name
        self.config = {**experiment.config, **res.arm.config}
        self.pairs_to, self.net_to, self.censored = [], [], 0
        self.per_round, self.served, self.schedule_ms, self.saved_share, self.bytes_per_round = [], [], [], [], []
        for curve, rows in zip(res.accuracy, res.rows):
            pairs = np.cumsum(_series(rows, QCN_BELL_PAIRS))
            net = np.cumsum(_series(rows, ROUND_QCN_NETWORK_S))
            reach = stats.rounds_to_target(curve, experiment.target)
            if reach is None:
                self.censored += 1
            last = len(rows) - 1 if reach is None else reach
            self.pairs_to.append(float(pairs[last]))
            self.net_to.append(float(net[last]))
            self.per_round.append(float(pairs[-1]) / max(1, len(rows) - 1))
            self.served.append(float(np.mean(_series(rows[1:], ROUND_QCN_SERVED))))
            self.schedule_ms.append(1e3 * float(np.nanmean([_num(r.get(_col(ROUND_QCN_SCHEDULE_S))) for r in rows[1:]]
                                                           or [math.nan])))
            saved = float(np.sum(_series(rows, QCN_PAIRS_SAVED)))
            self.saved_share.append(saved / (saved + float(pairs[-1])) if saved + float(pairs[-1]) > 0 else 0.0)
            self.bytes_per_round.append(float(np.sum(_series(rows, QCN_BYTES))) / max(1, len(rows) - 1))
        self.final = res.accuracy[:, -1]

    @property
    def fixed(self) -> bool:
        return self.config.get(KEY.qcn_schedule) == "fixed"

    @property
    def compression(self) -> tuple[object, object]:
        return self.config.get(KEY.qcn_bits, 0), self.config.get(KEY.qcn_topk, 1.0)

    def censored_mark(self) -> str:
        n = len(self.pairs_to)
        return f" (censored: {n - self.censored}/{n} reached)" if self.censored else ""

    def to_target(self, values: list[float], digits: int) -> str:
        """Mean [95 % t CI] of a quantity to the target; where a run never got there its value is
        a lower bound: the mean is marked ``>=`` and given without an interval."""
        if self.censored:
            return f">= {np.mean(values):.{digits}f}{self.censored_mark()}"
        return stats.mean_ci(values).format(digits)


def group_of(name: str) -> str:
    return name.split("/")[0] if "/" in name else ""


def resource_lines(experiment, results: dict, folder_of: Callable[..., Path]) -> list[str]:  # noqa: ANN001
    """The summary's section on resources and the bar (module doc); ``folder_of(arm, seed)`` is a run's folder."""
    spends = {name: ArmSpend(res, experiment) for name, res in results.items()}
    lines = ["", "## Resources: Bell pairs, simulated time, and the bar", "",
             f"Bell pairs are elementary (link-level) pairs, generation, cutoff discards and distillation included; "
             f"to target: up to the first round at accuracy >= {experiment.target:g} (a run that never gets there "
             "counts all its pairs: censored, a lower bound, given as >= the mean with no interval). Simulated time: "
             "the rounds' lengths on the network clock (last arrival, or the deadline), to target likewise. Mean and "
             "95 % CI over seeds.", "",
             "| arm | Bell pairs to target | Bell pairs / round | simulated s to target | served / round | "
             "saved by compression | classical kB / round | scheduler ms / round |",
             "|---|---|---|---|---|---|---|---|"]
    for s in spends.values():
        lines.append(f"| {s.name} | {s.to_target(s.pairs_to, 0)} | "
                     f"{stats.mean_ci(s.per_round).format(0)} | {s.to_target(s.net_to, 2)} | "
                     f"{np.mean(s.served):.2f} | {100 * np.mean(s.saved_share):.0f} % | "
                     f"{np.mean(s.bytes_per_round) / 1e3:.1f} | {np.nanmean(s.schedule_ms):.1f} |")
    comparisons = []
    for group in dict.fromkeys(group_of(n) for n in spends):
        members = [s for s in spends.values() if group_of(s.name) == group]
        plain_fixed = [s for s in members if s.fixed and s.compression == (0, 1.0)]
        if not plain_fixed:
            continue
        # a policy that does not always reach the target has no pairs to target (its censored
        # mean is a lower bound): the best fixed policy is the cheapest of those that always do
        reaching = [s for s in plain_fixed if not s.censored] or plain_fixed
        best = min(reaching, key=lambda s: (np.mean(s.pairs_to), -np.mean(s.final)))
        cheapest = min(plain_fixed, key=lambda s: (np.mean(s.pairs_to), -np.mean(s.final)))
        for joint in (s for s in members if not s.fixed):
            comparisons.append((group, joint, best, "best fixed"))
            if cheapest is not best:
                comparisons.append((group, joint, cheapest, "fewest pairs, censored"))
            same = [s for s in members if s.fixed and s.compression == joint.compression and s is not best]
            if joint.compression != (0, 1.0) and same:
                comparisons.append((group, joint, min(same, key=lambda s: np.mean(s.pairs_to)), "fixed, same compression"))
    if comparisons:
        lines += _bar(comparisons)
    lines += _choices(spends, folder_of)
    return lines


def _bar(comparisons: list) -> list[str]:
    """The bar's table: per comparison the ratio of mean pairs to target, tested one-sided
    against :data:`BAR_RATIO`, and final accuracy tested for non-inferiority; one Holm family."""
    n = len(comparisons[0][1].pairs_to)
    pairs = [stats.sign_flip_test(np.asarray(j.pairs_to) - BAR_RATIO * np.asarray(b.pairs_to), "less")
             for _, j, b, _ in comparisons]
    finals = [stats.sign_flip_test(j.final - b.final, "greater", null=-NO_LOSS_MARGIN) for _, j, b, _ in comparisons]
    family = stats.holm([t.p for t in pairs] + [t.p for t in finals])
    pairs_adj, final_adj = family[:len(pairs)], family[len(pairs):]
    lines = ["", f"The bar: a joint arm against the best fixed policy of its group (of the uncompressed fixed arms that "
             "reach the target in every seed, the one with the fewest mean Bell pairs to target, chosen on these "
             f"seeds) reaches the target in every seed, its ratio of mean pairs to target is significantly below "
             f"{100 * BAR_RATIO:.0f} % (one-sided sign-flip test of pairs_joint - {BAR_RATIO:g} x pairs_fixed < 0, seed "
             f"by seed: the ratio of means is the quantity tested) and its final accuracy is shown no more than "
             f"{100 * NO_LOSS_MARGIN:.0f} points lower (non-inferiority: the lower of TOST's one-sided sign-flip tests, "
             f"H0: mean difference <= -{NO_LOSS_MARGIN:g}). Where a fixed arm that does not always reach the target "
             "spends fewer pairs (its censored runs count all of theirs: a lower bound, so the test is conservative), "
             f"the joint arms are compared with it too. {stats.sign_flip_method(n)}; p Holm-adjusted over all "
             f"{2 * len(comparisons)} tests of this table. The geometric mean of the per-seed ratios is shown, not "
             "tested.", "",
             "| group | joint arm | vs | pairs to target: ratio of means | seeds for | p: ratio < "
             f"{BAR_RATIO:g} (Holm) | per-seed ratio (geo. mean) | final acc. diff | p: no loss (Holm) | bar |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (group, j, b, label), p, pp, f, fp in zip(comparisons, pairs, pairs_adj, finals, final_adj):
        ratio = float(np.mean(j.pairs_to) / np.mean(b.pairs_to)) if np.mean(b.pairs_to) > 0 else math.nan
        geo = float(np.exp(np.mean(np.log(np.maximum(j.pairs_to, 1.0)) - np.log(np.maximum(b.pairs_to, 1.0)))))
        fewer = _sign(BAR_RATIO * np.asarray(b.pairs_to) - np.asarray(j.pairs_to))
        shown = f"a ratio below {100 * BAR_RATIO:.0f} % not shown (Holm p {_p(pp)})"
        reasons = ([f"needs {100 * ratio:.0f} % of the pairs"] if not ratio <= BAR_RATIO else
                   [shown] if not pp < stats.ALPHA else []) \
            + ([f"reached the target in {n - j.censored}/{n} seeds only"] if j.censored else []) \
            + ([f"no loss of final accuracy beyond {NO_LOSS_MARGIN:g} not shown (Holm p {_p(fp)})"]
               if not fp < stats.ALPHA else [])
        why = "not met: " + "; ".join(reasons) if reasons else "met"
        if not reasons and b.censored:  # the fixed arm's censored pairs are a lower bound: the saving is at least this
            why += f" (the fixed arm reached it in {n - b.censored}/{n} seeds: the ratio is an upper bound)"
        lines.append(f"| {group or '-'} | {j.name} | {b.name} ({label}) | {ratio:.2f} | {fewer} | {_p(p.p)} ({_p(pp)}) "
                     f"| {geo:.2f} | {f.mean_difference:+.3f} | {_p(f.p)} ({_p(fp)}) | {why} |")
    return lines


def _choices(spends: dict, folder_of: Callable[..., Path]) -> list[str]:
    """What each joint arm chose and how well its predictions held (from clients.csv)."""
    lines = ["", "What the joint arms chose (all client-rounds of all seeds) and how their predictions held "
             "(|predicted - realised| fidelity; realised / predicted Bell pairs, over the served replies the guard "
             "accepted):", "",
             "| arm | client-rounds | served | skipped (why) | distillation rounds 0/1/2 | fidelity error | "
             "pairs realised / predicted |", "|---|---|---|---|---|---|---|"]
    for s in spends.values():
        if s.fixed:
            continue
        rows = []
        for seed in s.res.seeds:
            path = folder_of(s.res.arm, seed) / "clients.csv"
            if path.exists():
                with path.open() as fh:
                    rows += [r for r in csv.DictReader(fh) if r.get(SCHEDULE_DECISION)]
        if not rows:
            continue
        skipped = Counter(r[SCHEDULE_DECISION].split(": ", 1)[1] for r in rows if r[SCHEDULE_DECISION].startswith("skip"))
        planned = [r for r in rows if not r[SCHEDULE_DECISION].startswith("skip")]
        served = [r for r in planned if _num(r.get(_col(QCN_BELL_PAIRS))) > 0]  # a rejected reply reports nothing
        rounds = Counter(r[SCHEDULE_DECISION].rsplit(", ", 1)[-1].split(" ")[0] for r in planned)
        error = [abs(_num(r[SCHEDULE_PREDICTED_FIDELITY]) - _num(r[_col(FIDELITY)])) for r in served]
        ratio = [_num(r[_col(QCN_BELL_PAIRS)]) / _num(r[SCHEDULE_PREDICTED_BELL_PAIRS]) for r in served
                 if _num(r[SCHEDULE_PREDICTED_BELL_PAIRS]) > 0]
        why = ", ".join(f"{n} {k}" for k, n in skipped.most_common()) or "-"
        lines.append(f"| {s.name} | {len(rows)} | {len(planned)} | {sum(skipped.values())} ({why}) | "
                     f"{rounds.get('0', 0)}/{rounds.get('1', 0)}/{rounds.get('2', 0)} | "
                     f"{np.nanmean(error) if error else math.nan:.4f} | {np.nanmean(ratio) if ratio else math.nan:.3f} |")
    return lines


def _sign(favour: np.ndarray) -> str:
    return f"{int(np.sum(favour > 0))}/{favour.size}"


def _p(p: float) -> str:
    return stats.format_p(p)


def _fixed_arm(policy: str) -> bool:
    return policy.startswith("fixed")  # not a contract name: the catalogue's arm names


def plot_resources(experiment, results: dict, path: Path) -> None:  # noqa: ANN001
    """Mean test accuracy against mean cumulative Bell pairs, one line per arm (log x): a colour
    per policy, a line style per group (data regime); joint arms with round markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    policies = list(dict.fromkeys(name.split("/")[-1] for name in results))
    groups = list(dict.fromkeys(group_of(name) for name in results))
    colours = plt.get_cmap("tab20" if len(policies) > 10 else "tab10")
    for name, res in results.items():
        pairs = np.mean([np.cumsum(_series(rows, QCN_BELL_PAIRS)) for rows in res.rows], axis=0)
        policy = name.split("/")[-1]
        ax.plot(np.maximum(pairs[1:], 1.0), res.accuracy.mean(axis=0)[1:], ("-", "--", ":", "-.")[groups.index(group_of(name)) % 4],
                color=colours(policies.index(policy)), marker="o" if not _fixed_arm(policy) else ".", ms=3, label=name)
    ax.axhline(experiment.target, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="cumulative Bell pairs (mean over seeds)", ylabel="central test accuracy",
           title=f"{experiment.name}: accuracy against Bell pairs spent")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
