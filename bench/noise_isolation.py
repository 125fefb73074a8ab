"""Experiment: aggregation under heterogeneous NISQ noise (an experiment, not a test).

The same seeded federation (8 Wine clients, IID partitions) is run on Flower's
simulation engine through ``qfl launch --simulation``:

- *heterogeneous*: 5 clients on good devices (IBM Heron / Eagle, IonQ Aria, Quantinuum
  H1 classes) and 3 on the much noisier ``noisy-nisq`` profile, with FedAvg, Flower's
  FedMedian and FedTrimmedAvg, and NoiseIsolatingFedAvg;
- *control*: all 8 clients on good devices, with FedAvg and NoiseIsolatingFedAvg.

It prints central test accuracy per round for each, a summary table (final accuracy,
accuracy at equal rounds, rounds to reach FedAvg's final accuracy) and saves
``bench/results/noise_isolation.png`` and ``.json``.

Run: ``python bench/noise_isolation.py [--rounds 15] [--clients 8] [--seed 42]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from federation import ROOT, launch_accuracy, plot_accuracy, print_accuracy_table, rounds_to
GOOD = ["ibm-heron", "ibm-eagle", "ionq-aria", "quantinuum-h1", "ibm-heron"]
NOISY = "noisy-nisq"


def profiles(clients: int, noisy: int, noisy_profile: str = NOISY) -> str:
    good = [GOOD[i % len(GOOD)] for i in range(clients - noisy)]
    return ";".join(good + [noisy_profile] * noisy)


def run(name: str, strategy: str, device_profiles: str, args: argparse.Namespace, out: Path) -> list[float]:
    return launch_accuracy(name, out, [
        "--clients", str(args.clients), "--rounds", str(args.rounds), "--dataset", args.dataset,
        "--strategy", strategy, "--seed", str(args.seed), "--set", f'device-profiles="{device_profiles}"',
        "--partitioner", args.partitioner,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--noisy", type=int, default=3)
    parser.add_argument("--noisy-profile", default=NOISY, help="profile spec of the noisy clients")
    parser.add_argument("--dataset", default="wine")
    parser.add_argument("--partitioner", default="iid")
    parser.add_argument("--tag", default="", help="suffix of the output names, to keep several settings")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    stem = "noise_isolation" + (f"-{args.tag}" if args.tag else "")
    out = ROOT / "bench" / "results" / stem
    hetero = profiles(args.clients, args.noisy, args.noisy_profile)
    clean = profiles(args.clients, 0)
    plan = [
        ("hetero-fedavg", "fedavg", hetero),
        ("hetero-fedmedian", "fedmedian", hetero),
        ("hetero-fedtrimmedavg", "fedtrimmedavg", hetero),
        ("hetero-noise-isolating", "noise-isolating", hetero),
        ("control-fedavg", "fedavg", clean),
        ("control-noise-isolating", "noise-isolating", clean),
    ]
    results: dict[str, list[float]] = {}
    for name, strategy, device_profiles in plan:
        print(f"running {name} ...", flush=True)
        results[name] = run(name, strategy, device_profiles, args, out)

    print(f"\ntest accuracy per round ({args.clients} {args.dataset} clients; heterogeneous: {args.noisy} on {args.noisy_profile})")
    print_accuracy_table(results, args.rounds)

    print("\nsummary (ratio and differences against FedAvg of the same setting, same run)")
    print(f"{'run':>24} {'final_acc':>9} {'diff_pts':>9} {'rounds_to_fedavg_final':>23} {'round_ratio':>11}")
    summary = {}
    for name, acc in results.items():
        base = results["control-fedavg" if name.startswith("control") else "hetero-fedavg"]
        reach = rounds_to(acc, base[-1])
        ratio = None if reach is None else reach / args.rounds
        summary[name] = {"final": acc[-1], "diff_points": 100 * (acc[-1] - base[-1]), "rounds_to_fedavg_final": reach, "round_ratio": ratio}
        print(f"{name:>24} {acc[-1]:>9.3f} {100 * (acc[-1] - base[-1]):>+9.1f} {str(reach):>23} {('-' if ratio is None else f'{ratio:.2f}'):>11}")

    plot_accuracy(results, f"{args.dataset}: {args.noisy}/{args.clients} clients on {args.noisy_profile}", out.parent / f"{stem}.png")
    (out.parent / f"{stem}.json").write_text(json.dumps({"args": vars(args), "accuracy": results, "summary": summary}, indent=1))
    print(f"\nplot: {out.parent / f'{stem}.png'}")


if __name__ == "__main__":
    main()
