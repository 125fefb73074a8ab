"""Run an experiment's arms x seeds on one simulation session, then write its evidence.

``experiments/<name>/`` gets:

- ``runs/<arm>-s<seed>/``: each run's folder as the ServerApp writes it (metrics, checkpoints);
  a run whose ``metrics.json`` already holds every round is not run again, so an
  interrupted experiment resumes where it stopped;
- ``results.csv``: one row per seed x arm x round (accuracy, loss, epsilon, clients);
- ``summary.md``: the exact command, the running time, per arm the mean and 95 % CI of
  the final accuracy and of the rounds to the target, and the paired tests against
  the arm's baseline with Holm-adjusted p-values (:mod:`qfl.experiments.stats`);
- ``curves.png`` (mean accuracy per round with its 95 % band) and, for the privacy
  experiment, ``privacy.png`` (final accuracy against the reported epsilon); over a shared
  quantum network (``qcn-resources``) the summary's resources section and ``resources.png``
  (:mod:`qfl.experiments.resources`); on heterogeneous devices (``noise``) the gap noise costs
  FedAvg, the bar for noise isolation and what it saw (:mod:`qfl.experiments.noise_bar`).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qfl.common.config import KEY
from qfl.experiments import stats
from qfl.experiments.catalogue import Arm, Experiment

# results.csv's header ("seed" is a column here, not the run-config key); no timing: the
# file is a function of the command (each run's metrics.json keeps its round times)
COLUMNS = ("experiment", "arm", "seed", "round",  # not a contract name
           "test_accuracy", "test_loss", "dp_epsilon", "clients_ok", "clients_failed")


@dataclass(frozen=True)
class ArmResult:
    """One arm's curves, one row per seed (``(seeds, rounds + 1)``), and its epsilons."""

    arm: Arm
    seeds: list[int]
    accuracy: np.ndarray
    final_epsilon: list[float]
    rows: list[list[dict]]  # each seed's metrics.json rounds, as read once by collect


def run_folder_name(arm: Arm, seed: int) -> str:
    """``arm`` names may hold '/' (``split/method``); a run folder's name may not."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", arm.name) + f"-s{seed}"


def _complete_rows(run_dir: Path, rounds: int) -> list[dict] | None:
    path = run_dir / "metrics.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rounds"]
    return rows if [r["round"] for r in rows] == list(range(rounds + 1)) else None


def run_experiment(
    experiment: Experiment,
    out_root: Path,
    command: str,
    session_factory: Callable[[], object] | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Run every arm x seed not yet complete under ``out_root/<name>/runs`` and write the
    experiment's files; the experiment's folder."""
    out = Path(out_root).resolve() / experiment.name
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    seeds = list(range(1, experiment.seeds + 1))
    todo = [(arm, seed) for arm in experiment.arms for seed in seeds
            if _complete_rows(runs / run_folder_name(arm, seed), experiment.rounds) is None]
    start = time.perf_counter()
    peak, scope = None, None  # the session's peak memory in bytes and what it covers (engine.PeakMemory), if measured
    if todo:
        if session_factory is None:
            from qfl.experiments.engine import SimulationSession

            session_factory = SimulationSession
        with session_factory() as session:  # type: ignore[attr-defined]
            memory = getattr(session, "memory", None)
            for i, (arm, seed) in enumerate(todo, 1):
                name = run_folder_name(arm, seed)
                partial = runs / name
                if partial.exists():  # an interrupted run: start it again from round 0
                    import shutil

                    shutil.rmtree(partial)
                config = {**experiment.config, **arm.config, KEY.seed: seed, KEY.num_server_rounds: experiment.rounds,
                          KEY.min_nodes: experiment.clients, KEY.output_dir: str(runs), KEY.run_name: name}
                seconds = session.run(config, clients=experiment.clients, client_app=experiment.client_app)
                say(f"[{experiment.name}] {i}/{len(todo)} {arm.name} seed {seed}: {seconds:.1f} s")
        peak, scope = getattr(memory, "peak_bytes", None), getattr(memory, "scope", None)
    elapsed = time.perf_counter() - start
    timing = out / "timing.json"
    before = json.loads(timing.read_text()) if timing.exists() else {}
    spent = before.get("seconds", 0.0) + elapsed
    if peak and peak < before.get("peak_memory_bytes", 0):  # an earlier session's peak was the higher
        peak, scope = before["peak_memory_bytes"], before.get("peak_memory_scope")
    elif not peak:
        peak, scope = before.get("peak_memory_bytes"), before.get("peak_memory_scope")
    memory = {"peak_memory_bytes": peak, "peak_memory_scope": scope} if peak else {}
    timing.write_text(json.dumps({"seconds": spent, **memory}))
    results = collect(experiment, runs, seeds)
    write_results_csv(experiment, results, out / "results.csv")
    summary = summary_markdown(experiment, results, command, spent, peak, scope)
    if experiment.resources:  # a shared quantum network: Bell pairs, simulated time, the bar
        from qfl.experiments.resources import plot_resources, resource_lines

        section = resource_lines(experiment, results, lambda arm, seed: runs / run_folder_name(arm, seed))
        summary = summary.rstrip("\n") + "\n" + "\n".join(section) + "\n"
        plot_resources(experiment, results, out / "resources.png")
    if experiment.noise_bar:  # heterogeneous devices: the gap, the bar, and what noise isolation saw
        from qfl.experiments.noise_bar import noise_bar_lines

        section = noise_bar_lines(experiment, results, lambda arm, seed: runs / run_folder_name(arm, seed))
        summary = summary.rstrip("\n") + "\n" + "\n".join(section) + "\n"
    (out / "summary.md").write_text(summary)
    plot_curves(experiment, results, out / "curves.png")
    if experiment.privacy:
        plot_privacy(experiment, results, out / "privacy.png")
    return out


def collect(experiment: Experiment, runs: Path, seeds: list[int]) -> dict[str, ArmResult]:
    """Every arm's curves from its runs' ``metrics.json``."""
    results = {}
    for arm in experiment.arms:
        curves, eps, all_rows = [], [], []
        for seed in seeds:
            rows = _complete_rows(runs / run_folder_name(arm, seed), experiment.rounds)
            if rows is None:
                raise FileNotFoundError(f"run {run_folder_name(arm, seed)} of {experiment.name} is missing or incomplete")
            all_rows.append(rows)
            curves.append([r["test_accuracy"] for r in rows])
            eps.append(float(rows[-1].get("dp_epsilon") or 0.0))
        results[arm.name] = ArmResult(arm, seeds, np.array(curves, dtype=float), eps, all_rows)
    return results


def write_results_csv(experiment: Experiment, results: dict[str, ArmResult], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for res in results.values():
            for seed, seed_rows in zip(res.seeds, res.rows):
                for row in seed_rows:
                    writer.writerow([experiment.name, res.arm.name, seed, row["round"], row["test_accuracy"],
                                     row["test_loss"], row.get("dp_epsilon", ""), row.get("clients_ok", ""),
                                     row.get("clients_failed", "")])


def _rounds(res: ArmResult, experiment: Experiment) -> tuple[np.ndarray, int]:
    reached = [stats.rounds_to_target(c, experiment.target) for c in res.accuracy]
    return stats.censored_rounds(reached, experiment.rounds), sum(r is not None for r in reached)


def summary_markdown(experiment: Experiment, results: dict[str, ArmResult], command: str, seconds: float,
                     peak_memory: int | None = None, memory_scope: str | None = None) -> str:
    """The experiment's summary: per-arm intervals, then the paired tests (Holm-adjusted)."""
    e = experiment
    lines = [
        f"# Experiment `{e.name}`", "",
        f"Command: `{command}`", "",
        f"Claim: {e.claim}.", "",
        f"{e.clients} clients, {e.rounds} rounds, seeds {res_seeds(results)}; shared settings: `{_toml(e.config)}`. "
        f"Running time: {seconds / 60:.1f} min (the runs' own, on this machine; resumed runs count where they ran).", "",
        cost_line(results, peak_memory, memory_scope), "",
        f"Final accuracy is the central test accuracy after round {e.rounds}; rounds to target is the first round "
        f"with accuracy >= {e.target:g}, a run that never gets there counted as {e.rounds + 1} (so such a mean is a "
        "lower bound, marked *censored*). Intervals: mean and 95 % Student-t CI over seeds.", "",
        "| arm | settings | final accuracy | rounds to target | reached | epsilon |",
        "|---|---|---|---|---|---|",
    ]
    for res in results.values():
        rounds, reached = _rounds(res, e)
        censored = " (censored)" if reached < len(res.seeds) else ""
        eps = f"{np.mean(res.final_epsilon):.3g}" if any(res.final_epsilon) else "-"
        lines.append(f"| {res.arm.name} | `{_toml(res.arm.config)}` | {stats.mean_ci(res.accuracy[:, -1])} | "
                     f"{stats.mean_ci(rounds).format(1)}{censored} | {reached}/{len(res.seeds)} | {eps} |")
    comparisons = [(res, results[other]) for res in results.values() if (other := e.versus(res.arm)) is not None]
    if comparisons:
        lines += ["", "Paired tests against the baseline on the same seeds (arm minus baseline; two-sided; "
                  "p adjusted with Holm's method over all the comparisons of this table, per quantity; "
                  "significant means adjusted p < 0.05 in the t-test; *seeds for*: the seeds in which the arm "
                  "did better than the one it is tested against: higher final accuracy, fewer rounds).", "", *comparison_table(e, comparisons)]
    lines += ["", "Files: `results.csv` (one row per seed x arm x round), `curves.png`, `runs/<arm>-s<seed>/` "
              "(each run's metrics and checkpoints)." + (" `privacy.png`: final accuracy against epsilon." if e.privacy else ""), ""]
    return "\n".join(lines)


def cost_line(results: dict[str, ArmResult], peak_memory: int | None, memory_scope: str | None = None) -> str:
    """Seconds a round (rounds 2 on: round 1 also builds each actor's first tasks) over every
    run, and the peak memory of the sessions that ran them (``memory_scope``: what it covers)."""
    times = [float(r["round_time_s"]) for res in results.values() for rows in res.rows for r in rows
             if r["round"] >= 2 and r.get("round_time_s") is not None]
    rounds = (f"{np.mean(times):.2f} s a round (mean of rounds 2 on over all runs; {min(times):.2f}-{max(times):.2f})"
              if times else "no round after the first to time")
    scope = memory_scope or "PSS of the experiment's process, its Ray processes and actors"
    memory = f"; peak memory {peak_memory / 2**30:.2f} GiB ({scope}, sampled every 0.5 s)" if peak_memory else ""
    return f"Cost: {rounds}{memory}."


def comparison_table(experiment: Experiment, comparisons: list[tuple[ArmResult, ArmResult]]) -> list[str]:
    """Markdown rows of paired tests, arm minus other, of final accuracy and of rounds to
    target, each quantity's p-values Holm-adjusted over the given comparisons."""
    finals = [stats.paired_test(a.accuracy[:, -1], b.accuracy[:, -1]) for a, b in comparisons]
    rnds = [stats.paired_test(_rounds(a, experiment)[0], _rounds(b, experiment)[0]) for a, b in comparisons]
    final_adj = stats.holm([t.t_p for t in finals])
    rounds_adj = stats.holm([t.t_p for t in rnds])
    lines = ["| arm | vs | final acc. diff | seeds for | t p (Holm) | Wilcoxon p | rounds diff | seeds for | "
             "t p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (a, b), f, fp, r, rp in zip(comparisons, finals, final_adj, rnds, rounds_adj):
        final_for = sign_count(a.accuracy[:, -1] - b.accuracy[:, -1])
        rounds_for = sign_count(_rounds(b, experiment)[0] - _rounds(a, experiment)[0])  # fewer rounds favour the arm
        lines.append(f"| {a.arm.name} | {b.arm.name} | {f.mean_difference:+.3f} | {final_for} | {_p(f.t_p)} ({_p(fp)}) | "
                     f"{_p(f.wilcoxon_p)} | {r.mean_difference:+.2f} | {rounds_for} | {_p(r.t_p)} ({_p(rp)}) | "
                     f"{_verdict(f, fp, r, rp)} |")
    return lines


def sign_count(favour: np.ndarray) -> str:
    """How many seeds individually favour the arm (``favour > 0``) of all, ties named:
    ``"7/10 (1 tie)"``; beside a paired test it shows whether a mean rests on a few seeds."""
    wins, ties = int(np.sum(favour > 0)), int(np.sum(favour == 0))
    return f"{wins}/{favour.size}" + (f" ({ties} tie{'s' if ties > 1 else ''})" if ties else "")


def compare(experiment: Experiment, out_root: Path, pairs: list[tuple[str, str]]) -> str:
    """Paired tests between any arms of a finished experiment (``qfl experiment NAME
    --compare A:B``), from its runs, Holm-adjusted over ``pairs``; runs nothing."""
    names = [a.name for a in experiment.arms]
    for name in (n for pair in pairs for n in pair):
        if name not in names:
            raise ValueError(f"{experiment.name} has no arm {name!r} (its arms: {', '.join(names)})")
    results = collect(experiment, out_root / experiment.name / "runs", list(range(1, experiment.seeds + 1)))
    return "\n".join([
        f"Paired tests in `{experiment.name}`, seeds {res_seeds(results)} (arm minus vs; two-sided; p adjusted with "
        f"Holm's method over these {len(pairs)} comparisons, per quantity; rounds to {experiment.target:g}, "
        f"censored at {experiment.rounds + 1}).", "",
        *comparison_table(experiment, [(results[a], results[b]) for a, b in pairs]), ""])


def _verdict(final: stats.PairedTest, final_p: float, rounds: stats.PairedTest, rounds_p: float) -> str:
    parts = []
    if final_p < stats.ALPHA:
        parts.append("higher final accuracy" if final.mean_difference > 0 else "lower final accuracy")
    if rounds_p < stats.ALPHA:
        parts.append("fewer rounds" if rounds.mean_difference < 0 else "more rounds")
    return "; ".join(parts) if parts else "not significant"


def _p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _toml(config: dict[str, object]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in config.items()) or "-"


def res_seeds(results: dict[str, ArmResult]) -> str:
    seeds = next(iter(results.values())).seeds
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))


def plot_curves(experiment: Experiment, results: dict[str, ArmResult], path: Path) -> None:
    """Mean accuracy per round with its 95 % band, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for res in results.values():
        mean, low, high = stats.curve_band(res.accuracy)
        x = np.arange(len(mean))
        style = "--" if res.arm.name.startswith("control") else "-"  # not a contract name: control arms
        ax.plot(x, mean, style, label=res.arm.name)
        ax.fill_between(x, low, high, alpha=0.15)
    ax.axhline(experiment.target, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="round", ylabel="central test accuracy", ylim=(0, 1.02),
           title=f"{experiment.name}: mean of {len(next(iter(results.values())).seeds)} seeds, 95 % CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_privacy(experiment: Experiment, results: dict[str, ArmResult], path: Path) -> None:
    """Final accuracy (mean, 95 % CI) against the mean reported epsilon, per DP mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (matplotlib.ticker below)

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in ("local", "central"):
        pts = [(np.mean(r.final_epsilon), stats.mean_ci(r.accuracy[:, -1])) for r in results.values()
               if r.arm.config.get(KEY.dp_mode) == mode]
        if pts:
            pts.sort(key=lambda p: p[0])
            eps = [p[0] for p in pts]
            ci = [p[1] for p in pts]
            ax.errorbar(eps, [c.mean for c in ci], yerr=[[c.mean - c.low for c in ci], [c.high - c.mean for c in ci]],
                        marker="o", capsize=3, label=f"{mode} DP")
    base = results[experiment.baseline]
    ax.axhline(base.accuracy[:, -1].mean(), color="grey", ls="--", label=f"{experiment.baseline} (no DP)")
    ax.set(xscale="log", xlabel="epsilon (delta = 1e-5)", ylabel="final test accuracy", title="accuracy against epsilon")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels overlap
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def with_overrides(experiment: Experiment, seeds: int | None, rounds: int | None) -> Experiment:
    """The experiment with fewer seeds or rounds (a smoke run); its files then say so."""
    return replace(experiment, seeds=seeds or experiment.seeds, rounds=rounds or experiment.rounds)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["qfl", *sys.argv[1:]])
