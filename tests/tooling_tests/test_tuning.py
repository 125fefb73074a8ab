"""Fair baselines (qfl.experiments.tuning): equal budgets, the validation split, the frozen choices
and the seeds they were made on; and a tiny real tuning, in process, that picks the better setting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qfl.common.config import KEY, NodeConfig, RunConfig, defaults
from qfl.experiments import provenance
from qfl.experiments.catalogue import EXPERIMENTS, Arm, Experiment, Tuning
from qfl.experiments.runner import run_experiment
from qfl.experiments.seeds import classify
from qfl.experiments.tuning import FILE, TuningError, declaration, frozen, scores, tune, tuning_experiment
from qfl.launcher import main
from qfl.task import build
from qfl.task.build import build_dataset
from qfl.task.data import load_dataset, validation_rows, with_validation

MULTIKRUM_OPTIONS = ("{ num-malicious-nodes = 0, num-nodes-to-select = 2 }",
                     "{ num-malicious-nodes = 0, num-nodes-to-select = 1 }")


def _tiny(rates=(0.0001, 0.3), seeds=(1,), rounds: int = 2, name: str = "tiny", knob: bool = False) -> Experiment:
    """Two arms; with ``knob`` MultiKrum tunes two rates x two settings of its own, FedAvg four rates."""
    if knob:
        return Experiment(name, "c", 2, rounds, {KEY.dataset: "iris", KEY.local_epochs: 1},
                          (Arm("fedavg", {KEY.strategy: "fedavg"}),
                           Arm("multikrum", {KEY.strategy: "multikrum"},
                               tune={KEY.learning_rate: rates[:2], KEY.strategy_options: MULTIKRUM_OPTIONS})),
                          "fedavg", 0.6, seeds=2, tuning=Tuning({KEY.learning_rate: rates}, seeds=seeds))
    return Experiment(name, "c", 2, rounds, {KEY.dataset: "iris", KEY.local_epochs: 1, KEY.robust_direction: False},
                      (Arm("fedavg", {KEY.strategy: "fedavg"}), Arm("fedmedian", {KEY.strategy: "fedmedian"})),
                      "fedavg", 0.6, seeds=2, tuning=Tuning({KEY.learning_rate: rates}, seeds=seeds))


# --- equal budgets --------------------------------------------------------------------------------

def test_a_catalogue_entry_whose_arms_have_unequal_budgets_is_refused():
    # Arrange / Act / Assert: MultiKrum's own knob doubles its grid while FedAvg keeps two rates: refused
    with pytest.raises(ValueError, match="tuning budgets differ .*fedavg 2, multikrum 4 configurations"):
        _tiny(rates=(0.05, 0.1), knob=True)
    # the same knob, FedAvg on four rates and MultiKrum on two of them x two settings: accepted, four each
    fair = _tiny(rates=(0.025, 0.05, 0.1, 0.2), knob=True)
    assert [fair.budget(a) for a in fair.arms] == [4, 4]
    assert fair.grid(fair.arms[1])[1] == {KEY.learning_rate: 0.025, KEY.strategy_options: MULTIKRUM_OPTIONS[1]}
    with pytest.raises(ValueError, match="the learning rate at least"):  # a grid without the learning rate
        Experiment("x", "c", 2, 2, {}, (Arm("a"),), "a", 0.6, tuning=Tuning({KEY.local_epochs: (1, 2)}))
    with pytest.raises(ValueError, match="declare knobs to tune, the experiment no tuning"):
        Experiment("x", "c", 2, 2, {}, (Arm("a", tune={KEY.learning_rate: (0.1,)}),), "a", 0.6)


def test_the_catalogues_tunings_give_every_arm_the_same_budget_of_valid_runs():
    from server.chain import server_strategy

    tuned = [e for e in EXPERIMENTS.values() if e.tuning is not None]
    assert {e.name for e in tuned} >= {"noise", "cluster-ising", "digits10", "heterogeneous-circuits"}
    for e in tuned:
        assert len({e.budget(a) for a in e.arms}) == 1 and e.budget(e.arms[0]) > 1
        knobs = {a.name: set(e.grid(a)[0]) for a in e.arms}
        if "multikrum/none" in knobs:
            assert {KEY.learning_rate, KEY.strategy_options} <= knobs["multikrum/none"] == knobs["noise-isolating/none"]
        for arm in tuning_experiment(e).arms:  # every configuration a valid run config whose strategy builds
            cfg = RunConfig.from_run_config({**defaults(), **e.config, **arm.config})
            assert cfg.validation_fraction == e.tuning.validation_fraction
            server_strategy(cfg)


def test_heterogeneous_circuits_tunes_qng_over_its_own_step_sizes_with_adams_budget():
    e = EXPERIMENTS["heterogeneous-circuits"]
    rates = {a.name: [c[KEY.learning_rate] for c in e.grid(a)] for a in e.arms}
    adam = {tuple(r) for name, r in rates.items() if name.endswith("/adam")}
    qng = {tuple(r) for name, r in rates.items() if name.endswith("/qng")}
    assert len(adam) == len(qng) == 1 and adam != qng  # one grid per optimiser, not shared
    assert len(next(iter(adam))) == len(next(iter(qng))) == 4


# --- the validation split -------------------------------------------------------------------------

def test_the_validation_split_is_seeded_stratified_and_disjoint_from_the_test_rows():
    full = load_dataset("tfim", 4, seed=3, tfim_samples=64)  # continuous states: no two rows alike
    view = with_validation(full, 0.2, seed=3)
    held = validation_rows(full.y_train, 0.2, seed=3)
    # the validation rows are training rows, the rest of the training split trains; no test row is left
    np.testing.assert_array_equal(view.x_test, full.x_train[held])
    np.testing.assert_array_equal(view.x_train, np.delete(full.x_train, held, axis=0))
    np.testing.assert_array_equal(view.h_train, np.delete(full.h_train, held))
    assert len(view.y_train) + len(view.y_test) == len(full.y_train)
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert not rows(view.x_test) & rows(full.x_test) and not rows(view.x_train) & rows(full.x_test)
    assert not rows(view.x_test) & rows(view.x_train)
    # stratified: each class gives round(0.2 x its rows)
    counts = np.bincount(full.y_train)
    assert np.bincount(view.y_test, minlength=len(counts)).tolist() == [round(0.2 * c) for c in counts]
    # seeded: the same seed the same rows, another seed others
    np.testing.assert_array_equal(validation_rows(full.y_train, 0.2, seed=3), held)
    assert not np.array_equal(validation_rows(full.y_train, 0.2, seed=4), held)
    # off (the default): the data set itself, so every run without it is what it was
    assert with_validation(full, 0.0, seed=3) is full
    # a numeric label: a share of all rows; a class of one row keeps it for training
    assert len(validation_rows(np.linspace(0, 1, 10), 0.3, seed=1)) == 3
    assert 4 not in validation_rows(np.array([0, 0, 0, 0, 1]), 0.5, seed=1)


def test_the_test_rows_are_not_read_when_the_validation_split_is_on(monkeypatch):
    # Arrange: the test split poisoned (NaN features, labels of no class) wherever a run loads its data
    def poisoned(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        data = load_dataset(*args, **kwargs)
        from dataclasses import replace

        return replace(data, x_test=np.full_like(data.x_test, np.nan), y_test=np.full_like(data.y_test, -1))

    monkeypatch.setattr(build, "load_dataset", poisoned)
    on = RunConfig.from_run_config({**defaults(), KEY.dataset: "iris", KEY.validation_fraction: 0.2})
    off = RunConfig.from_run_config({**defaults(), KEY.dataset: "iris"})
    # Act / Assert: what the server evaluates on holds no poisoned row with the split on, and all of them off
    assert np.isfinite(build_dataset(on).x_test).all() and (build_dataset(on).y_test >= 0).all()
    assert np.isnan(build_dataset(off).x_test).all()
    from qfl.task.train import evaluate

    model = build.build_model(on, build_dataset(on))
    assert math.isfinite(evaluate(model, build_dataset(on).x_test, build_dataset(on).y_test)["loss"])


def test_a_node_file_carves_its_validation_rows_from_its_own_training_rows(tmp_path):
    from qfl.task.local_data import node_dataset

    rng = np.random.default_rng(0)
    path = tmp_path / "site.csv"
    path.write_text("a,b,label\n" + "\n".join(f"{rng.normal():.4f},{rng.normal():.4f},{'yes' if i % 2 else 'no'}"
                                              for i in range(40)) + "\n")
    run = {**defaults(), KEY.dataset: "file", KEY.data_classes: "no,yes", KEY.data_num_features: 2, KEY.n_qubits: 2,
           KEY.fraction_evaluate: 1.0}
    node = NodeConfig.from_node_config({"partition-id": 0, "num-partitions": 1, "data-path": str(path)})
    plain = node_dataset(RunConfig.from_run_config(run), node)
    tuned = node_dataset(RunConfig.from_run_config({**run, KEY.validation_fraction: 0.2}), node)
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert len(plain.y_train) == 30 and len(tuned.y_test) == 6 and len(tuned.y_train) == 24
    assert rows(tuned.x_test) <= rows(plain.x_train) and not rows(tuned.x_test) & rows(plain.x_test)


# --- tuning, freezing and using the choices ---------------------------------------------------------

class CurveSession:
    """Writes what the ServerApp would (metrics.json): a validation curve that rises with the learning
    rate up to 0.1 and falls beyond; records what it ran and that every run had the validation split on."""

    def __init__(self) -> None:
        self.ran: list[dict] = []

    def __enter__(self) -> CurveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, config: dict, clients: int, client_app: str | None = None) -> float:
        folder = provenance.Path(config[KEY.output_dir]) / config[KEY.run_name]
        folder.mkdir(parents=True, exist_ok=True)
        lr, rounds = config.get(KEY.learning_rate, 0.05), config[KEY.num_server_rounds]
        quality = 0.9 - abs(math.log10(lr / 0.1)) / 4 + 0.001 * config[KEY.seed]
        rows = [{"round": r, "test_accuracy": quality * r / rounds, "test_loss": 1.0} for r in range(rounds + 1)]
        (folder / "metrics.json").write_text(json.dumps({"rounds": rows}))
        self.ran.append(dict(config))
        return 0.1


def test_the_frozen_file_round_trips_and_the_experiment_runs_the_choices(tmp_path):
    # Arrange: two arms, four rates each, tuned on seeds 1-2 (the code's identity kept: others edit the tree)
    code = provenance.code_identity()
    exp = _tiny(rates=(0.01, 0.1, 0.3, 1.0), seeds=(1, 2))
    session = CurveSession()
    # Act
    path = tune(exp, tmp_path, "qfl experiment tiny --tune", session_factory=lambda: session, say=print, code=code)
    # Assert: 2 arms x 4 rates x 2 seeds, every one on the validation split; 0.1 chosen, every score kept
    assert path == tmp_path.resolve() / "tiny" / FILE and len(session.ran) == 16
    assert all(c[KEY.validation_fraction] == 0.2 and c[KEY.seed] in (1, 2) for c in session.ran)
    record = json.loads(path.read_text())
    assert record["arms"]["fedavg"]["chosen"] == {KEY.learning_rate: 0.1}
    assert [c["settings"][KEY.learning_rate] for c in record["arms"]["fedmedian"]["configurations"]] == [0.01, 0.1, 0.3, 1.0]
    assert record["declaration"] == declaration(exp) and record["declaration"]["seeds"] == [1, 2]
    assert record["code"]["code_sha256"] == code.sha256 and record["budget"] == 4
    assert all(len(c["runs"]) == 2 and all(c["runs"].values()) for c in record["arms"]["fedavg"]["configurations"])
    assert "VALIDATION accuracy" in (tmp_path / "tiny" / "tuning" / "summary.md").read_text()

    # the experiment then runs each arm with its choice, and its summary says where it came from
    used = frozen(exp, tmp_path)
    assert [a.config[KEY.learning_rate] for a in used.arms] == [0.1, 0.1] and "Tuned settings" in used.tuned
    runs = CurveSession()
    out = run_experiment(used, tmp_path, "qfl experiment tiny", session_factory=lambda: runs, say=print, code=code)
    assert {c[KEY.learning_rate] for c in runs.ran} == {0.1} and KEY.validation_fraction not in runs.ran[0]
    assert "**Tuned settings.**" in (out / "summary.md").read_text()

    # a file made for another declaration (here: other rates) is refused, not applied
    with pytest.raises(TuningError, match="another declaration of tiny .*arm fedavg"):
        frozen(_tiny(rates=(0.01, 0.1, 0.3, 3.0), seeds=(1, 2)), tmp_path)
    with pytest.raises(TuningError, match="rounds"):
        frozen(_tiny(rates=(0.01, 0.1, 0.3, 1.0), seeds=(1, 2), rounds=3), tmp_path)
    # no file: the catalogue's settings, and the summary says the declared tuning was not run
    assert frozen(exp, tmp_path / "elsewhere").arms == exp.arms
    assert frozen(exp, tmp_path / "elsewhere").tuned.startswith("**Not tuned.**")
    assert scores(np.array([[0.0, 0.2, 0.4, 0.9]]), 2).tolist() == [0.65]  # the last two rounds, never round 0


def test_the_tuning_seeds_are_refused_as_confirmatory(monkeypatch, tmp_path, capsys):
    # seeds outside the catalogue's 1-10: only the tuning saw them
    exp = _tiny(seeds=(21, 22), name="tiny-seeds")
    monkeypatch.setitem(EXPERIMENTS, exp.name, exp)
    status = classify(exp.name, list(range(21, 31)))
    assert status.kind == "mixed" and status.confirmatory == tuple(range(23, 31))
    assert "qfl experiment tiny-seeds --tune: 21-22" in status.refusal()
    assert classify(exp.name, list(range(23, 31))).kind == "confirmatory"
    assert main(["experiment", exp.name, "--out", str(tmp_path), "--seeds", "21..30", "--confirmatory"]) == 2
    assert "seeds 21-22 of 21-30 were seen before (qfl experiment tiny-seeds --tune: 21-22)" in capsys.readouterr().err
    # --tune takes the declared seeds only, and an experiment must declare a tuning
    assert main(["experiment", exp.name, "--out", str(tmp_path), "--tune", "--seeds", "3"]) == 2
    assert "no --seeds" in capsys.readouterr().err
    assert main(["experiment", "qcn", "--out", str(tmp_path), "--tune"]) == 2
    assert "qcn declares no tuning" in capsys.readouterr().err


class InProcessSession:
    """Each run as a federation in this process (:class:`qfl.inprocess.InProcessFederation`: the real
    ClientApp, strategies and central evaluation), its central accuracy per round written as
    metrics.json: the runner's fast path for a test."""

    def __enter__(self) -> InProcessSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, config: dict, clients: int, client_app: str | None = None) -> float:
        from qfl.inprocess import InProcessFederation, task_identity

        assert client_app is None
        with task_identity():
            fed = InProcessFederation({**defaults(), **config}, clients=clients).run(config[KEY.num_server_rounds])
        folder = provenance.Path(config[KEY.output_dir]) / config[KEY.run_name]
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"round": r, "test_accuracy": a, "test_loss": float("nan")} for r, a in enumerate(fed.accuracy)]
        (folder / "metrics.json").write_text(json.dumps({"rounds": rows}))
        return 0.0


def test_a_tiny_real_tuning_picks_the_better_learning_rate_without_reading_a_test_row(tmp_path, monkeypatch):
    # Arrange: iris, 2 clients, 2 rounds, 1 seed, learning rate 1e-4 (hardly moves) against 0.3; the test
    # split poisoned, and the in-process clients' task cache fresh (it must not keep a poisoned data set)
    import client.runtime

    monkeypatch.setattr(client.runtime, "_IN_PROCESS", None)

    def poisoned(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        from dataclasses import replace

        data = load_dataset(*args, **kwargs)
        return replace(data, x_test=np.full_like(data.x_test, np.nan), y_test=np.full_like(data.y_test, -1))

    monkeypatch.setattr(build, "load_dataset", poisoned)
    exp = _tiny(rates=(0.0001, 0.3), seeds=(1,))
    # Act
    path = tune(exp, tmp_path, "qfl experiment tiny --tune", session_factory=InProcessSession, say=print,
                code=provenance.code_identity())
    # Assert: finite validation scores (a poisoned row would give NaN or fail), and the better one chosen
    record = json.loads(path.read_text())
    for arm in ("fedavg", "fedmedian"):
        low, high = (c["score"] for c in record["arms"][arm]["configurations"])
        assert math.isfinite(low) and high > low + 0.1, (arm, low, high)
        assert record["arms"][arm]["chosen"] == {KEY.learning_rate: 0.3}


def test_the_launcher_refuses_frozen_choices_made_for_another_declaration_before_running_anything(tmp_path, capsys):
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / FILE).write_text(json.dumps({"declaration": {**declaration(EXPERIMENTS["noise"]), "rounds": 99}}))
    assert main(["experiment", "noise", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "was made for another declaration of noise (differs in rounds)" in err and "--tune" in err
    assert not (tmp_path / "noise" / "runs").exists()
