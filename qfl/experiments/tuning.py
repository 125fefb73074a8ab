"""Fair baselines: every arm of an experiment tuned with the same budget on a validation split, then frozen.

``qfl experiment NAME --tune`` runs, for each arm, every configuration of its grid
(:meth:`~qfl.experiments.catalogue.Experiment.grid`: the experiment's axes, the learning rate at
least, and the arm's own knobs, declared in the catalogue next to the arm; every arm the same
number, or the catalogue refuses the entry) on the tuning's exploratory seeds. They are ordinary
runs of the experiment's runner (provenance, resume and all) with ``validation-fraction`` on: the
server's central evaluation and the nodes' evaluation are on validation rows carved from the
training split (:func:`qfl.task.data.with_validation`), and no test row is reachable. Each arm
keeps the configuration with the best criterion (:meth:`~qfl.experiments.catalogue.Tuning.criterion`),
and ``experiments/<name>/tuned.json`` (:data:`FILE`) freezes the choices with the grid, every
score, the seeds, the criterion and the code that made them.

``qfl experiment NAME`` then runs each arm with its frozen choice (:func:`frozen`), and only for
the declaration the choices were made for: a file made for another grid, other seeds or other
settings is refused, not applied. The tuning's seeds count as seen by a search
(:func:`qfl.experiments.seeds.searches`), so ``--confirmatory`` refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from qfl.common.config import KEY
from qfl.experiments import provenance
from qfl.experiments.catalogue import Arm, Experiment
from qfl.experiments.seeds import label

FILE = "tuned.json"  # not a contract name: the frozen choices, in the experiment's folder
FOLDER = "tuning"  # the tuning runs' folder in the experiment's (its own runs/, results.csv, summary.md)


class TuningError(ValueError):
    """An experiment cannot be tuned, or its frozen choices do not fit it; the message says why."""


def configuration_name(arm: Arm, index: int) -> str:
    """The tuning arm of ``arm``'s ``index``-th configuration (its runs' folders: ``<arm>_<index>-s<seed>``)."""
    return f"{arm.name}@{index}"


def tuning_experiment(experiment: Experiment) -> Experiment:
    """The tuning runs as an experiment of their own: one arm per arm and configuration (the arm's
    settings, the configuration's over them, the validation split on), each tested against nothing."""
    tuning = _declared(experiment)
    arms = [Arm(configuration_name(arm, i), {**arm.config, **setting, KEY.validation_fraction: tuning.validation_fraction},
                versus=configuration_name(arm, i))
            for arm in experiment.arms for i, setting in enumerate(experiment.grid(arm))]
    return Experiment(
        name=f"{experiment.name}/{FOLDER}",
        claim=f"tuning of `{experiment.name}`, {experiment.budget(experiment.arms[0])} configurations an arm: every "
              f"accuracy here is VALIDATION accuracy (validation-fraction {tuning.validation_fraction:g} of the training "
              "split), not test accuracy; the test split is not used",
        clients=experiment.clients, rounds=experiment.rounds, config=experiment.config, arms=tuple(arms),
        baseline=arms[0].name, target=experiment.target, seeds=len(tuning.seeds), client_app=experiment.client_app)


def declaration(experiment: Experiment) -> dict:
    """What a set of frozen choices was made for: the federation, every arm's settings and grid, the
    seeds, the validation share and the criterion (JSON values: what ``tuned.json`` holds)."""
    tuning = _declared(experiment)
    made = {"experiment": experiment.name, "clients": experiment.clients, "rounds": experiment.rounds,
            "config": experiment.config, "client_app": experiment.client_app,  # not a contract name: a tuned.json field
            "seeds": list(tuning.seeds), "validation_fraction": tuning.validation_fraction, "last": tuning.last,
            "arms": {arm.name: {"config": arm.config, "grid": experiment.grid(arm)} for arm in experiment.arms}}  # not a contract name: a tuned.json field
    return json.loads(json.dumps(made))


def scores(curves: np.ndarray, last: int) -> np.ndarray:
    """Each seed's score: the mean validation accuracy over its last ``last`` rounds (round 0, the
    initial model, never counts). ``curves``: ``(seeds, rounds + 1)``."""
    rounds = curves.shape[1] - 1
    return curves[:, rounds + 1 - min(last, rounds):].mean(axis=1)


def tune(
    experiment: Experiment,
    out_root: Path,
    command: str,
    session_factory: Callable[[], object] | None = None,
    say: Callable[[str], None] = print,
    rerun_stale: bool = False,
    reuse_unknown: bool = False,
    code: provenance.Code | None = None,
) -> Path:
    """Run every arm's grid on the tuning's seeds (runs already made by this code and config are
    reused, as :func:`~qfl.experiments.runner.run_experiment` does), choose each arm's best
    configuration on the validation split and freeze the choices; the path of ``tuned.json``."""
    from qfl.experiments.runner import collect, run_folder_name, run_experiment

    tuning = _declared(experiment)
    code = code or provenance.code_identity()
    runs_of = tuning_experiment(experiment)
    seeds = list(tuning.seeds)
    folder = run_experiment(runs_of, out_root, command, session_factory=session_factory, say=say, seeds=seeds,
                            rerun_stale=rerun_stale, reuse_unknown=reuse_unknown, code=code)
    results = collect(runs_of, folder / "runs", seeds)
    arms = {}
    for arm in experiment.arms:
        tried = []
        for i, setting in enumerate(experiment.grid(arm)):
            res = results[configuration_name(arm, i)]
            per_seed = scores(res.accuracy, tuning.last)
            if not np.isfinite(per_seed).all():
                raise TuningError(f"{experiment.name}: {res.arm.name} has no validation accuracy (NaN): the server "
                                  "holds no validation rows (dataset file evaluates on the nodes only)")
            names = [run_folder_name(res.arm, s) for s in seeds]
            tried.append({"settings": setting, "score": float(per_seed.mean()), "per_seed": per_seed.tolist(),
                          "runs": {n: (provenance.read(folder / "runs" / n) or {}).get("sha256") for n in names}})
        best = int(np.argmax([t["score"] for t in tried]))  # the first of equals: grid order
        arms[arm.name] = {"chosen": tried[best]["settings"], "score": tried[best]["score"], "configurations": tried}
        say(f"[{experiment.name}] tuned {arm.name}: {_settings(tried[best]['settings'])} "
            f"(validation score {tried[best]['score']:.4f}, best of {len(tried)})")
    frozen_file = Path(out_root).resolve() / experiment.name / FILE
    frozen_file.write_text(json.dumps({
        "declaration": declaration(experiment),
        "criterion": tuning.criterion(experiment.rounds),
        "budget": experiment.budget(experiment.arms[0]),
        "arms": arms,
        "runs": str(Path(FOLDER) / "runs"),  # beside this file
        "command": command,
        "code": {"commit": code.commit, "dirty": code.dirty, "git_status": list(code.status),
                 "code_sha256": code.sha256, "packages": code.packages},
    }, indent=1, default=str) + "\n")
    return frozen_file


def load(path: Path) -> dict:
    """A ``tuned.json``, read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise TuningError(f"{path}: cannot be read as frozen choices: {err}") from None


def frozen(experiment: Experiment, out_root: Path) -> Experiment:
    """``experiment`` with each arm's frozen choice over its settings, where ``out_root/<name>/tuned.json``
    exists and was made for this declaration (:func:`declaration`); with no file, ``experiment`` as
    the catalogue declares it (its summary says it was not tuned). An experiment with no tuning is
    returned as it is.

    Raises
    ------
    TuningError
        The file was made for another declaration (other grid, seeds, settings or rounds), or is not
        a file of frozen choices: applying it would run choices made for something else.
    """
    if experiment.tuning is None:
        return experiment
    path = Path(out_root).resolve() / experiment.name / FILE
    if not path.exists():
        return replace(experiment, tuned=f"**Not tuned.** `{experiment.name}` declares a tuning (`qfl experiment "
                                         f"{experiment.name} --tune`) that has not been run here (no `{FILE}`): every "
                                         "arm runs the catalogue's settings, chosen by hand.")
    record = load(path)
    want = declaration(experiment)
    found = record.get("declaration")
    if found != want:
        raise TuningError(f"{path} was made for another declaration of {experiment.name} ({_differences(found, want)}): "
                          f"its choices are not applied. Tune again (`qfl experiment {experiment.name} --tune`; runs of "
                          "this code and config are reused), or move the file away to run the catalogue's settings.")
    try:
        chosen = {arm.name: record["arms"][arm.name]["chosen"] for arm in experiment.arms}
    except (KeyError, TypeError):
        raise TuningError(f"{path}: not every arm of {experiment.name} has a frozen choice") from None
    for arm in experiment.arms:
        if chosen[arm.name] not in want["arms"][arm.name]["grid"]:
            raise TuningError(f"{path}: the choice for {arm.name} ({chosen[arm.name]}) is not in its grid")
    tuning = experiment.tuning
    code = record.get("code") or {}
    note = (f"**Tuned settings.** Each arm runs the configuration `qfl experiment {experiment.name} --tune` chose "
            f"from {record.get('budget')} an arm ({record.get('criterion')}; on the validation split, "
            f"{tuning.validation_fraction:g} of the training split, of seeds {label(list(tuning.seeds))}; code "
            f"{str(code.get('commit'))[:12]}{' (dirty tree)' if code.get('dirty') else ''}, sha256 "
            f"{str(code.get('code_sha256'))[:12]}), frozen in `{FILE}`; the test split gave only these figures.")
    arms = tuple(replace(arm, config={**arm.config, **chosen[arm.name]}) for arm in experiment.arms)
    return replace(experiment, arms=arms, tuned=note)


def _declared(experiment: Experiment):  # noqa: ANN202 (a catalogue.Tuning)
    if experiment.tuning is None:
        raise TuningError(f"{experiment.name} declares no tuning (Experiment.tuning in qfl/experiments/catalogue.py)")
    return experiment.tuning


def _differences(found: object, want: dict) -> str:
    if not isinstance(found, dict):
        return "it holds no declaration"
    parts = [key for key in want if key != "arms" and found.get(key) != want[key]]
    old_arms, new_arms = found.get("arms") or {}, want["arms"]
    parts += [f"arm {name}" for name in new_arms if old_arms.get(name) != new_arms[name]]
    parts += [f"arm {name} (not an arm now)" for name in old_arms if name not in new_arms]
    return "differs in " + ", ".join(parts) if parts else "another declaration"


def _settings(setting: dict[str, object]) -> str:
    return ", ".join(f"{k} = {json.dumps(v) if isinstance(v, str) else v}" for k, v in setting.items())
