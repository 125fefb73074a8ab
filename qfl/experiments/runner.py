"""Run an experiment's arms x seeds on one simulation session, then write its evidence.

``experiments/<name>/`` gets:

- ``runs/<arm>-s<seed>/``: each run's folder as the ServerApp writes it (metrics, checkpoints)
  and ``provenance.json`` (:mod:`qfl.experiments.provenance`: commit, dirty tree, code and
  config hashes). A run is reused only when it holds every round and its record matches what
  the same arm and seed would be run with now, so an interrupted experiment resumes where it
  stopped; a run made by other code or config, or before records were kept, stops the
  experiment with the difference named (:func:`plan_runs`) unless told to rerun it (or, for
  one with no record, to reuse it: the summary then names it);
- ``results.csv``: one row per seed x arm x round (accuracy, loss, epsilon, clients);
- ``summary.md``: the exact command, the seeds and whether they are exploratory or
  confirmatory (:mod:`qfl.experiments.seeds`), the commits the runs came from, the running
  time, per arm the final accuracy and area under the curve (mean, 95 % CI), the rounds to
  the target and the rounds from which accuracy stays there (Kaplan-Meier medians, how many
  got there), and the paired sign-flip tests against the arm's baseline, Holm-adjusted over
  the table (:mod:`qfl.experiments.stats`). Seeds other than the catalogue's 1..N write
  their own files (``summary-s11-30.md``, ``results-s11-30.csv``, ...);
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
from qfl.experiments import provenance, stats
from qfl.experiments.catalogue import Arm, Experiment
from qfl.experiments.seeds import classify, label

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


def run_config_of(experiment: Experiment, arm: Arm, seed: int, runs: Path) -> dict[str, object]:
    """The run config of ``arm`` on ``seed`` (the experiment's keys, the arm's over them)."""
    return {**experiment.config, **arm.config, KEY.seed: seed, KEY.num_server_rounds: experiment.rounds,
            KEY.min_nodes: experiment.clients, KEY.output_dir: str(runs), KEY.run_name: run_folder_name(arm, seed)}


@dataclass(frozen=True)
class Plan:
    """What to do with each arm x seed: run it, or reuse its folder."""

    todo: list[tuple[Arm, int]]
    reused_unknown: list[str]  # folders with no provenance, reused because the command said so
    refused: list[str]  # "<folder>: why", runs neither reused nor (without the flag) rerun
    records: dict[str, dict]  # folder name -> the provenance a run made now gets


def plan_runs(experiment: Experiment, runs: Path, seeds: list[int], code: provenance.Code,
              rerun_stale: bool = False, reuse_unknown: bool = False) -> Plan:
    """Reuse a run only when it is complete and its ``provenance.json`` matches the record it
    would get now; an interrupted run of the same code and config is run again. A folder made
    by other code or config, or one without a record (made before records were kept), is
    *refused*: never reused silently. ``rerun_stale`` runs those again (their folders are
    replaced); ``reuse_unknown`` keeps complete folders that have no record (and only those)."""
    todo, unknown, refused, records = [], [], [], {}
    for arm in experiment.arms:
        for seed in seeds:
            name = run_folder_name(arm, seed)
            folder = runs / name
            records[name] = provenance.record(code, run_config_of(experiment, arm, seed, runs), experiment.clients,
                                              experiment.client_app)
            if not folder.exists():
                todo.append((arm, seed))
                continue
            found = provenance.read(folder)
            complete = _complete_rows(folder, experiment.rounds) is not None
            why = provenance.mismatch(found, records[name])
            if why is None:  # this code and config: reuse it when complete, else it was interrupted
                if not (complete and found.get("complete")):
                    todo.append((arm, seed))
            elif found is None and complete and reuse_unknown:
                unknown.append(name)
            elif rerun_stale:
                todo.append((arm, seed))
            else:
                refused.append(f"{name}: {why}" + ("" if complete or found is not None else
                                                   " (and it does not hold these rounds)"))
    return Plan(todo, unknown, refused, records)


def refusal_message(experiment: Experiment, refused: list[str]) -> str:
    shown = "\n  ".join(refused[:5]) + (f"\n  ... and {len(refused) - 5} more" if len(refused) > 5 else "")
    return (f"{len(refused)} run(s) of {experiment.name} were not made by this code and config, so they are not "
            f"reused:\n  {shown}\nRun them again with --rerun-stale (their folders are replaced), reuse folders "
            "that have no record with --reuse-unknown (the summary names them), or write to another --out.")


def files_tag(experiment: Experiment, seeds: list[int]) -> str:
    """``""`` for the catalogue's seeds 1..N, else ``"-s<seeds>"``: each seed set's own summary."""
    return "" if seeds == list(range(1, experiment.seeds + 1)) else f"-s{label(seeds)}"


def run_experiment(
    experiment: Experiment,
    out_root: Path,
    command: str,
    session_factory: Callable[[], object] | None = None,
    say: Callable[[str], None] = print,
    seeds: list[int] | None = None,
    rerun_stale: bool = False,
    reuse_unknown: bool = False,
    code: provenance.Code | None = None,
) -> Path:
    """Run every arm x seed (default: 1..``experiment.seeds``) not yet made by this code and
    config under ``out_root/<name>/runs`` and write the experiment's files; the experiment's
    folder. Raises :class:`~qfl.experiments.provenance.ProvenanceError`, before running
    anything, when a folder was made by other code or config (:func:`plan_runs`). ``code``: the
    code's identity to record and compare (default: :func:`~qfl.experiments.provenance.code_identity`
    now; a seam for tests, whose tree others may edit between two calls)."""
    out = Path(out_root).resolve() / experiment.name
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds) if seeds is not None else list(range(1, experiment.seeds + 1))
    tag = files_tag(experiment, seeds)
    plan = plan_runs(experiment, runs, seeds, code or provenance.code_identity(), rerun_stale, reuse_unknown)
    if plan.refused:
        raise provenance.ProvenanceError(refusal_message(experiment, plan.refused))
    todo = plan.todo
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
                if partial.exists():  # an interrupted or stale run: start it again from round 0
                    import shutil

                    shutil.rmtree(partial)
                provenance.write(partial, plan.records[name], complete=False)
                seconds = session.run(run_config_of(experiment, arm, seed, runs), clients=experiment.clients,
                                      client_app=experiment.client_app)
                provenance.write(partial, plan.records[name], complete=True)
                say(f"[{experiment.name}] {i}/{len(todo)} {arm.name} seed {seed}: {seconds:.1f} s")
        peak, scope = getattr(memory, "peak_bytes", None), getattr(memory, "scope", None)
    elapsed = time.perf_counter() - start
    timing = out / f"timing{tag}.json"
    before = json.loads(timing.read_text()) if timing.exists() else {}
    spent = before.get("seconds", 0.0) + elapsed
    if peak and peak < before.get("peak_memory_bytes", 0):  # an earlier session's peak was the higher
        peak, scope = before["peak_memory_bytes"], before.get("peak_memory_scope")
    elif not peak:
        peak, scope = before.get("peak_memory_bytes"), before.get("peak_memory_scope")
    memory = {"peak_memory_bytes": peak, "peak_memory_scope": scope} if peak else {}
    timing.write_text(json.dumps({"seconds": spent, **memory}))
    results = collect(experiment, runs, seeds)
    write_results_csv(experiment, results, out / f"results{tag}.csv")
    records = [provenance.read(runs / run_folder_name(arm, seed)) for arm in experiment.arms for seed in seeds]
    summary = summary_markdown(experiment, results, command, spent, peak, scope,
                               provenance_lines=provenance_lines(records, plan.reused_unknown), tag=tag)
    if experiment.resources:  # a shared quantum network: Bell pairs, simulated time, the bar
        from qfl.experiments.resources import plot_resources, resource_lines

        section = resource_lines(experiment, results, lambda arm, seed: runs / run_folder_name(arm, seed))
        summary = summary.rstrip("\n") + "\n" + "\n".join(section) + "\n"
        plot_resources(experiment, results, out / f"resources{tag}.png")
    if experiment.noise_bar:  # heterogeneous devices: the gap, the bar, and what noise isolation saw
        from qfl.experiments.noise_bar import noise_bar_lines

        section = noise_bar_lines(experiment, results, lambda arm, seed: runs / run_folder_name(arm, seed))
        summary = summary.rstrip("\n") + "\n" + "\n".join(section) + "\n"
    (out / f"summary{tag}.md").write_text(summary)
    plot_curves(experiment, results, out / f"curves{tag}.png")
    if experiment.privacy:
        plot_privacy(experiment, results, out / f"privacy{tag}.png")
    return out


def provenance_lines(records: list[dict | None], reused_unknown: list[str]) -> list[str]:
    """The summary's statement of the code its runs came from (and of runs of unknown code)."""
    lines = [f"Provenance: {provenance.commits_line(records)} (each run's `provenance.json`: commit, "
             "`git status --porcelain`, code and config hashes, the full run config)."]
    if reused_unknown:
        lines.append(f"**{len(reused_unknown)} run(s) of unknown code and config** (made before provenance was "
                     f"recorded), reused because the command said `--reuse-unknown`: {', '.join(reused_unknown)}.")
    return lines


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
    """Each seed's rounds to the target, ``rounds + 1`` where it never got there (the restricted
    time: only for paired tests, never for a mean or an interval), and how many got there."""
    reached = [stats.rounds_to_target(c, experiment.target) for c in res.accuracy]
    return stats.censored_rounds(reached, experiment.rounds), sum(r is not None for r in reached)


def time_to(res: ArmResult, experiment: Experiment, stay: bool = False) -> stats.KaplanMeier:
    """Kaplan-Meier estimate of the rounds to the target (``stay``: from which it stays there)."""
    first = stats.rounds_to_stay if stay else stats.rounds_to_target
    return stats.kaplan_meier([first(c, experiment.target) for c in res.accuracy], experiment.rounds)


def _km_cell(km: stats.KaplanMeier) -> str:
    return f"{km.format()} ({km.reached}/{km.n})"


def summary_markdown(experiment: Experiment, results: dict[str, ArmResult], command: str, seconds: float,
                     peak_memory: int | None = None, memory_scope: str | None = None,
                     provenance_lines: list[str] | None = None, tag: str = "") -> str:
    """The experiment's summary: its seeds and provenance, per-arm figures, then the paired
    tests (sign-flip, Holm over the table)."""
    e = experiment
    seeds = next(iter(results.values())).seeds
    lines = [
        f"# Experiment `{e.name}`" + (f" (seeds {label(seeds)})" if tag else ""), "",
        f"Command: `{command}`", "",
        f"Claim: {e.claim}.", "",
        *classify(e.name, seeds).lines(), "",
        *([e.tuned, ""] if e.tuned else []),  # the arms' frozen tuned settings, or that a declared tuning was not run
        *(provenance_lines or []), *([""] if provenance_lines else []),
        f"{e.clients} clients, {e.rounds} rounds, seeds {res_seeds(results)}; shared settings: `{_toml(shared_settings(e))}`. "
        f"Running time: {seconds / 60:.1f} min (the runs' own, on this machine; resumed runs count where they ran).", "",
        cost_line(results, peak_memory, memory_scope), "",
        f"Final accuracy is the central test accuracy after round {e.rounds}; area: the area under the accuracy "
        f"curve over rounds 0-{e.rounds} divided by {e.rounds} (the mean accuracy over the run); both mean and 95 % "
        f"Student-t CI over seeds. Rounds to target: the first round with accuracy >= {e.target:g}; stays: the "
        f"round from which accuracy stays >= {e.target:g} to round {e.rounds}. A run that does not get there is "
        f"censored at round {e.rounds} (it might later): both are Kaplan-Meier medians (the first round by which "
        f"half the runs got there; > {e.rounds}: fewer than half did) with how many runs got there; no mean or "
        "interval is given for them.", "",
        "| arm | settings | final accuracy | area | rounds to target: median (reached) | stays from: median "
        "(stayed) | epsilon |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results.values():
        eps = f"{np.mean(res.final_epsilon):.3g}" if any(res.final_epsilon) else "-"
        area = stats.mean_ci([stats.accuracy_auc(c) for c in res.accuracy])
        lines.append(f"| {res.arm.name} | `{_toml(res.arm.config)}` | {stats.mean_ci(res.accuracy[:, -1])} | {area} | "
                     f"{_km_cell(time_to(res, e))} | {_km_cell(time_to(res, e, stay=True))} | {eps} |")
    comparisons = [(res, results[other]) for res in results.values() if (other := e.versus(res.arm)) is not None]
    if comparisons:
        lines += ["", *comparison_heading(e, comparisons, "against the baseline"), "",
                  *comparison_table(e, comparisons)]
        claimed = [(a, b) for a, b in comparisons if a.arm.equivalence_margin is not None]
        if claimed:
            lines += ["", *equivalence_table(claimed)]
    lines += ["", f"Files: `results{tag}.csv` (one row per seed x arm x round), `curves{tag}.png`, "
              "`runs/<arm>-s<seed>/` (each run's metrics, checkpoints and provenance.json)."
              + (f" `privacy{tag}.png`: final accuracy against epsilon." if e.privacy else ""), ""]
    return "\n".join(lines)


def comparison_heading(experiment: Experiment, comparisons: list[tuple[ArmResult, ArmResult]], which: str) -> list[str]:
    """What the comparison table's tests are, in words."""
    method = stats.sign_flip_method(len(comparisons[0][0].seeds))
    return [f"Paired tests {which} on the same seeds (arm minus the arm in *vs*; two-sided sign-flip permutation "
            f"tests of the mean difference, {method}; Holm's adjustment over all {2 * len(comparisons)} tests of this "
            "table, both quantities: the verdict reads them all). Rounds: each run's rounds to the target, a run "
            f"that never got there counted as {experiment.rounds + 1}; where a run is censored that is a restricted time, so the difference is marked "
            "*restricted* and the Kaplan-Meier medians stand beside it. *Seeds for*: the seeds in which the arm did "
            "better (higher final accuracy, fewer rounds). *Not significant* is not evidence of no difference: a "
            "claim of no loss needs an equivalence test with a margin (`qfl.experiments.stats.tost`)."]


def comparison_table(experiment: Experiment, comparisons: list[tuple[ArmResult, ArmResult]]) -> list[str]:
    """Markdown rows of paired sign-flip tests, arm minus other, of final accuracy and of
    rounds to target, Holm-adjusted over every test of the table (both quantities)."""
    finals = [stats.paired_sign_flip(a.accuracy[:, -1], b.accuracy[:, -1]) for a, b in comparisons]
    rounds = [(_rounds(a, experiment), _rounds(b, experiment)) for a, b in comparisons]
    rnds = [stats.paired_sign_flip(ra[0], rb[0]) for ra, rb in rounds]
    adjusted = stats.holm([t.p for t in finals] + [t.p for t in rnds])
    final_adj, rounds_adj = adjusted[:len(finals)], adjusted[len(finals):]
    lines = ["| arm | vs | final acc. diff | seeds for | p | p (Holm) | rounds diff | median rounds (arm vs) | "
             "seeds for | p | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (a, b), f, fp, ((ra, na), (rb, nb)), r, rp in zip(comparisons, finals, final_adj, rounds, rnds, rounds_adj):
        final_for = sign_count(a.accuracy[:, -1] - b.accuracy[:, -1])
        rounds_for = sign_count(rb - ra)  # fewer rounds favour the arm
        n = len(a.seeds)
        restricted = f" (restricted: {2 * n - na - nb} censored)" if na < n or nb < n else ""
        medians = f"{time_to(a, experiment).format()} vs {time_to(b, experiment).format()}"
        lines.append(f"| {a.arm.name} | {b.arm.name} | {f.mean_difference:+.3f} | {final_for} | {_p(f.p)} | {_p(fp)} | "
                     f"{r.mean_difference:+.2f}{restricted} | {medians} | {rounds_for} | {_p(r.p)} | {_p(rp)} | "
                     f"{_verdict(f, fp, r, rp)} |")
    return lines


def shared_settings(experiment: Experiment) -> dict[str, object]:
    """The experiment's settings that some arm runs with: a key every arm sets itself (a tuned
    learning rate, say) is in each arm's row, not here."""
    return {k: v for k, v in experiment.config.items() if not all(k in a.config for a in experiment.arms)}


def equivalence_table(comparisons: list[tuple[ArmResult, ArmResult]]) -> list[str]:
    """Markdown rows of TOST on final accuracy, arm minus other, within each arm's declared margin
    (:attr:`Arm.equivalence_margin`): two one-sided sign-flip tests, Holm-adjusted over this
    table's TOST p-values (each the larger of its two)."""
    tests = [stats.tost(a.accuracy[:, -1] - b.accuracy[:, -1], a.arm.equivalence_margin) for a, b in comparisons]
    adjusted = stats.holm([t.p for t in tests])
    lines = ["Equivalence of final accuracy where an arm claims \"as well as\" (its margin declared in the catalogue "
             "before the runs; TOST: two one-sided sign-flip tests of the paired differences shifted by the margin, "
             f"the larger p of the two, Holm over the {len(tests)} tests of this table). *Shown* at adjusted p < "
             f"{stats.ALPHA:g}; *not shown* is not evidence of a difference.", "",
             "| arm | vs | margin | final acc. diff | p (diff > -margin) | p (diff < +margin) | p (Holm) | equivalence |",
             "|---|---|---|---|---|---|---|---|"]
    for (a, b), t, p in zip(comparisons, tests, adjusted):
        lines.append(f"| {a.arm.name} | {b.arm.name} | ±{t.margin:g} | {t.mean_difference:+.3f} | {_p(t.p_lower)} | "
                     f"{_p(t.p_upper)} | {_p(p)} | {'shown' if p < stats.ALPHA else 'not shown'} |")
    return lines


def sign_count(favour: np.ndarray) -> str:
    """How many seeds individually favour the arm (``favour > 0``) of all, ties named:
    ``"7/10 (1 tie)"``; beside a paired test it shows whether a mean rests on a few seeds."""
    wins, ties = int(np.sum(favour > 0)), int(np.sum(favour == 0))
    return f"{wins}/{favour.size}" + (f" ({ties} tie{'s' if ties > 1 else ''})" if ties else "")


def compare(experiment: Experiment, out_root: Path, pairs: list[tuple[str, str]], seeds: list[int] | None = None) -> str:
    """Paired tests between any arms of a finished experiment (``qfl experiment NAME
    --compare A:B``), from its runs, Holm-adjusted over every test of ``pairs``; runs nothing."""
    names = [a.name for a in experiment.arms]
    for name in (n for pair in pairs for n in pair):
        if name not in names:
            raise ValueError(f"{experiment.name} has no arm {name!r} (its arms: {', '.join(names)})")
    seeds = list(seeds) if seeds is not None else list(range(1, experiment.seeds + 1))
    runs = out_root / experiment.name / "runs"
    results = collect(experiment, runs, seeds)
    wanted = dict.fromkeys(n for pair in pairs for n in pair)
    records = [provenance.read(runs / run_folder_name(results[n].arm, s)) for n in wanted for s in seeds]
    chosen = [(results[a], results[b]) for a, b in pairs]
    return "\n".join([
        f"Paired tests in `{experiment.name}`, seeds {res_seeds(results)}, over these {len(pairs)} comparisons.", "",
        *classify(experiment.name, seeds).lines(), "",
        f"Provenance: {provenance.commits_line(records)}.", "",
        *comparison_heading(experiment, chosen, "chosen after the fact"), "",
        *comparison_table(experiment, chosen), ""])


def _verdict(final: stats.SignFlip, final_p: float, rounds: stats.SignFlip, rounds_p: float) -> str:
    parts = []
    if final_p < stats.ALPHA:
        parts.append("higher final accuracy" if final.mean_difference > 0 else "lower final accuracy")
    if rounds_p < stats.ALPHA:
        parts.append("fewer rounds" if rounds.mean_difference < 0 else "more rounds")
    return "; ".join(parts) if parts else "not significant"


def _p(p: float) -> str:
    return stats.format_p(p)


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
