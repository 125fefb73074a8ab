"""Search for a federation where device noise costs FedAvg, then see why a strategy helps or not.

Two modes, both on the experiments' runtime (:func:`qfl.experiments.runner.run_experiment`
on Flower's simulation engine, the real ServerApp, guard and ClientApp), so a setting found
here runs the same way in ``qfl experiment noise``:

``search``
    For each candidate setting (:data:`SETTINGS`: which clients sit on which published
    device, shots, circuit depth), FedAvg on the heterogeneous federation against FedAvg with
    every client on a good device (the control), over a few seeds. It prints per setting the
    gap in final accuracy (points) and in rounds to the target, seed by seed and on average.
    The issue's bar for a setting: FedAvg loses at least 5 points or 3 rounds to the control.
    ``--arms`` adds strategies (e.g. ``noise-isolating,fedmedian,multikrum``) to see whether
    any of them closes the gap, each against FedAvg on the same seeds.

``diagnose``
    For the runs of one setting and arm, per client and round: what the client claimed
    (``update-noise-var``, ``noise-contraction``, from ``clients.csv``), what is true, and what
    the strategy made of it (the variance it used, its source, the contraction it divided by,
    the weight). The truth is measured from the round's global model (the run's checkpoint
    of the round before) by rebuilding the client's own task (same partition, profile,
    mitigation, data order) and training it ``--repeats`` times with independent device
    seeds, and once on the noiseless device:

    - ``true_var``: the per-coordinate variance of the update over the repeats (the
      quantity ``update-noise-var`` estimates from 3 replicas);
    - ``gain``: the least-squares slope of the mean update on the noiseless update, i.e.
      how much of the noiseless step survives the device on average (the strategy's model
      says this is the client's contraction ``c_k``);
    - ``bias2``: the mean update's squared distance per coordinate from ``gain`` times the
      noiseless update: a systematic deviation the device causes that is neither signal nor
      variance;
    - ``signal2``: the noiseless update's power per coordinate.

Commands (each takes minutes; run under the shared lock)::

    flock /tmp/qfl-heavy.lock .venv/bin/python bench/noise_search.py search \\
        --settings melbourne-128-l3,cusco-128-l3 --seeds 3
    flock /tmp/qfl-heavy.lock .venv/bin/python bench/noise_search.py search \\
        --settings melbourne-128-l3 --seeds 3 --arms noise-isolating,noise-isolating-median,fedmedian,multikrum
    flock /tmp/qfl-heavy.lock .venv/bin/python bench/noise_search.py diagnose \\
        --setting melbourne-128-l3 --arm noise-isolating --seeds 1 --rounds-to-check 1,6,12

Output under ``bench/results/noise_search/<setting>/`` (the runner's files per setting:
``summary.md``, ``results.csv``, ``runs/``) and ``diagnose-<arm>.csv``. Everything is seeded
(seed, partition, round: :mod:`client.local`), so a rerun prints the same figures.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qfl.common.config import KEY  # noqa: E402
from qfl.experiments import stats  # noqa: E402
from qfl.experiments.catalogue import Arm, Experiment, settings, study  # noqa: E402

OUT = ROOT / "bench" / "results" / "noise_search"
GOOD = ("ibm-heron", "quantinuum-h1", "ionq-aria")  # the catalogue's good devices (docs/noise.md)
STRATEGIES = {
    "fedavg": settings(strategy="fedavg"),
    "fedmedian": settings(strategy="fedmedian"),
    "multikrum": settings(strategy="multikrum", strategy_options="{ num-malicious-nodes = 2, num-nodes-to-select = 3 }"),
    "noise-isolating": settings(strategy="noise-isolating"),
    "noise-isolating-median": settings(strategy="noise-isolating-median"),
    # variants of the new strategy's bounds, to see which one binds (docs/strategies.md)
    "ni-nocap": settings(strategy="noise-isolating", strategy_options="{ weight-cap = 1000.0 }"),
    "ni-nofloor": settings(strategy="noise-isolating", strategy_options="{ min-contraction = 0.001 }"),
    "ni-nocap-nofloor": settings(strategy="noise-isolating",
                                 strategy_options="{ weight-cap = 1000.0, min-contraction = 0.001 }"),
}


def mix(good: int, noisy: int, device: str) -> str:
    """``good`` clients on the good devices (cycled), then ``noisy`` on ``device``."""
    return ";".join([GOOD[i % len(GOOD)] for i in range(good)] + [device] * noisy)


def setting(good: int, noisy: int, device: str, layers: int = 3, dataset: str = "breast-cancer",
            mitigation: str = "none") -> dict[str, object]:
    return {"clients": good + noisy, "good": good, "device": device,
            "config": study(dataset=dataset, learning_rate=0.1, n_layers=layers, mitigation=mitigation,
                            device_profiles=mix(good, noisy, device)),
            "control": mix(good + noisy, 0, device)}


# candidate settings: more noisy clients than good ones, the worst published devices
# (docs/noise.md: ibm-cusco, ibmq-melbourne with its biased read-out), 64-256 shots, 3-5 layers
SETTINGS: dict[str, dict[str, object]] = {
    "nisq-64-l3-3of6": setting(3, 3, "noisy-nisq:readout_error=0.2,shots=64"),  # the old experiment's federation
    "cusco-128-l3": setting(2, 4, "ibm-cusco:shots=128"),
    "cusco-64-l5": setting(2, 4, "ibm-cusco:shots=64", layers=5),
    "melbourne-256-l3": setting(2, 4, "ibmq-melbourne:shots=256"),
    "melbourne-128-l3": setting(2, 4, "ibmq-melbourne:shots=128"),
    "melbourne-64-l3": setting(2, 4, "ibmq-melbourne:shots=64"),
    "melbourne-128-l5": setting(2, 4, "ibmq-melbourne:shots=128", layers=5),
    "melbourne-128-l3-3of8": setting(3, 5, "ibmq-melbourne:shots=128"),
    "melbourne-128-l3-wine": setting(2, 4, "ibmq-melbourne:shots=128", dataset="wine"),
    "cusco-128-l3-wine": setting(2, 4, "ibm-cusco:shots=128", dataset="wine"),
}


def experiment_for(name: str, arms: list[str], seeds: int, rounds: int, target: float) -> Experiment:
    s = SETTINGS[name]
    arm_list = [Arm(a, STRATEGIES[a]) for a in ["fedavg", *[a for a in arms if a != "fedavg"]]]
    arm_list.append(Arm("control", {**STRATEGIES["fedavg"], KEY.device_profiles: s["control"]}))
    return Experiment(name=name, claim="search: does device noise cost FedAvg", clients=int(s["clients"]),
                      rounds=rounds, config=dict(s["config"]), arms=tuple(arm_list), baseline="fedavg",
                      target=target, seeds=seeds)


def search(args: argparse.Namespace) -> None:
    from qfl.experiments.engine import SimulationSession
    from qfl.experiments.runner import collect, run_experiment

    arms = [a for a in args.arms.split(",") if a]
    exps = [experiment_for(n, arms, args.seeds, args.rounds, args.target) for n in args.settings.split(",")]
    session = SimulationSession()

    class Kept:  # one Ray session for every setting
        def __enter__(self):  # noqa: ANN204
            return session

        def __exit__(self, *exc: object) -> None:
            return None

    with session:
        for exp in exps:
            out = run_experiment(exp, OUT, " ".join(["bench/noise_search.py", *sys.argv[1:]]),
                                 session_factory=Kept, say=lambda line: print(line, flush=True))
            results = collect(exp, out / "runs", list(range(1, exp.seeds + 1)))
            report(exp, results)


def report(exp: Experiment, results: dict) -> None:
    from qfl.experiments.runner import _rounds

    base, control = results["fedavg"], results["control"]
    rb, rc = _rounds(base, exp)[0], _rounds(control, exp)[0]
    gap = control.accuracy[:, -1] - base.accuracy[:, -1]
    print(f"\n== {exp.name}: {exp.clients} clients, {exp.config[KEY.device_profiles]}, "
          f"{exp.config.get(KEY.n_layers)} layers, {exp.config[KEY.dataset]}, {exp.rounds} rounds, seeds 1-{exp.seeds}")
    print(f"  FedAvg final {base.accuracy[:, -1].mean():.3f}, control {control.accuracy[:, -1].mean():.3f}: "
          f"gap {100 * gap.mean():+.1f} points (per seed {', '.join(f'{100 * g:+.1f}' for g in gap)})")
    print(f"  rounds to {exp.target:g}: FedAvg {rb.mean():.1f}, control {rc.mean():.1f}: gap {(rb - rc).mean():+.1f} "
          f"(per seed {', '.join(f'{d:+.0f}' for d in rb - rc)}; censored at {exp.rounds + 1})")
    verdict = "yes" if 100 * gap.mean() >= 5 or (rb - rc).mean() >= 3 else "no"
    print(f"  noise costs FedAvg >= 5 points or >= 3 rounds: {verdict}")
    for name, res in results.items():
        if name in ("fedavg", "control"):
            continue
        r = _rounds(res, exp)[0]
        closed = ((res.accuracy[:, -1] - base.accuracy[:, -1]).mean() / gap.mean()) if gap.mean() > 0 else float("nan")
        closed_r = ((rb - r).mean() / (rb - rc).mean()) if (rb - rc).mean() > 0 else float("nan")
        test = stats.paired_test(res.accuracy[:, -1], base.accuracy[:, -1])
        print(f"  {name:>24}: final {res.accuracy[:, -1].mean():.3f} ({100 * (res.accuracy[:, -1] - base.accuracy[:, -1]).mean():+.1f} "
              f"vs FedAvg, raw p {test.t_p:.2g}; closes {closed:.0%} of the gap), rounds {r.mean():.1f} "
              f"(closes {closed_r:.0%})")
    curves = "  mean curves: " + "; ".join(f"{n} " + " ".join(f"{v:.2f}" for v in res.accuracy.mean(axis=0))
                                          for n, res in results.items())
    print(curves, flush=True)


def diagnose(args: argparse.Namespace) -> None:
    """Per client and round: claimed vs true noise, gain, bias, and the strategy's weights."""
    import torch

    from client.local import LocalTask
    from qfl.common.config import NodeConfig, RunConfig, defaults
    from qfl.experiments.runner import run_folder_name
    from qfl.task.build import build_model
    from qfl.task.train import train_local
    from server.recorder import _read_checkpoint

    torch.set_num_threads(1)
    exp = experiment_for(args.setting, [args.arm], args.seeds, args.rounds, args.target)
    arm = next(a for a in exp.arms if a.name == args.arm)
    rows = []
    for seed in range(1, args.seeds + 1):
        run_dir = OUT / exp.name / "runs" / run_folder_name(arm, seed)
        with (run_dir / "clients.csv").open() as fh:
            recorded = {(int(r["round"]), int(r["partition_id"])): r for r in csv.DictReader(fh)}
        cfg = RunConfig.from_run_config({**defaults(), **exp.config, **arm.config, KEY.seed: seed,
                                         KEY.num_server_rounds: exp.rounds})
        for rnd in [int(r) for r in args.rounds_to_check.split(",")]:
            problem, loaded = _read_checkpoint(run_dir / "checkpoints" / f"round-{rnd - 1:04d}.npz", None)
            if problem:
                raise SystemExit(f"{run_dir}: round {rnd - 1}: {problem}")
            arrays = loaded[1]
            for part in range(exp.clients):
                task = LocalTask(cfg, NodeConfig(partition_id=part, num_partitions=exp.clients))
                shuffle = cfg.seed * 1_000_003 + rnd * 1009 + part  # client.local's data order

                def update(model, noise_seed: int | None) -> np.ndarray:  # noqa: ANN001
                    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
                    if noise_seed is not None:
                        model.reseed_noise(noise_seed)
                    start = torch.cat([p.detach().flatten() for p in model.parameters()])
                    train_local(model, task.x, task.y, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                                learning_rate=cfg.learning_rate, seed=shuffle)
                    return (torch.cat([p.detach().flatten() for p in model.parameters()]) - start).numpy()

                ideal = update(build_model(cfg, _data(cfg), None), None)
                noisy = np.array([update(task.model, 10_000 * seed + 100 * rnd + part * 7 + k) if task.model.is_noisy
                                  else ideal for k in range(args.repeats)])
                mean = noisy.mean(axis=0)
                gain = float(mean @ ideal / (ideal @ ideal))
                rec = recorded[(rnd, part)]
                rows.append({
                    "seed": seed, "round": rnd, "partition": part, "profile": task.spec,
                    "claimed_var": float(rec["update_noise_var"]),
                    "true_var": float(noisy.var(axis=0, ddof=1).mean()) if task.model.is_noisy else 0.0,
                    "claimed_contraction": float(rec["noise_contraction"]), "gain": gain,
                    "bias2": float(np.mean((mean - gain * ideal) ** 2)), "signal2": float(np.mean(ideal**2)),
                    "used_var": _float(rec.get("noise_var")), "source": rec.get("noise_source", ""),
                    "divided_by": _float(rec.get("contraction")), "weight": _float(rec.get("weight")),
                    "fedavg_share": float(rec["num_examples"]) / sum(
                        float(recorded[(rnd, p)]["num_examples"]) for p in range(exp.clients)),
                })
                r = rows[-1]
                print(f"s{seed} r{rnd:>2} p{part} {r['profile']:<26} var claimed {r['claimed_var']:.3g} true "
                      f"{r['true_var']:.3g} | contraction claimed {r['claimed_contraction']:.3g} gain {gain:+.3f} | "
                      f"bias2 {r['bias2']:.3g} signal2 {r['signal2']:.3g} | used var {r['used_var']:.3g} "
                      f"({r['source']}), /c {r['divided_by']:.3g}, weight {r['weight']:.3f} "
                      f"(FedAvg {r['fedavg_share']:.3f})", flush=True)
    path = OUT / exp.name / f"diagnose-{args.arm}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


_DATA: dict = {}


def _data(cfg):  # noqa: ANN001, ANN202
    from qfl.task.build import build_dataset

    key = (cfg.dataset, cfg.seed, cfg.n_qubits)
    if key not in _DATA:
        _DATA[key] = build_dataset(cfg)
    return _DATA[key]


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("search", help="FedAvg against the good-device control per candidate setting")
    s.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}")
    s.add_argument("--arms", default="", help=f"strategies to add, comma-separated, of: {', '.join(STRATEGIES)}")
    d = sub.add_parser("diagnose", help="claimed vs true noise, gain, bias and weights of one arm's runs")
    d.add_argument("--setting", required=True, choices=list(SETTINGS))
    d.add_argument("--arm", default="noise-isolating", choices=list(STRATEGIES))
    d.add_argument("--rounds-to-check", default="1,6,12")
    d.add_argument("--repeats", type=int, default=16, help="independent device seeds per client and round")
    for p in (s, d):
        p.add_argument("--seeds", type=int, default=3)
        p.add_argument("--rounds", type=int, default=12)
        p.add_argument("--target", type=float, default=0.9)
    args = parser.parse_args()
    search(args) if args.mode == "search" else diagnose(args)


if __name__ == "__main__":
    main()
