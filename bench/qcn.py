"""Experiment: QFL over a simulated quantum network (an experiment, not a test).

Part 1, the channel alone (``transport/qcn.py``): mean end-to-end fidelity, time per
pair and carrier loss (copies whose pair took longer than the memory cutoff) against
distance, for 0, 1, 3 and 7 repeaters, with and without one round of DEJMPS
distillation. Saves ``bench/results/qcn_channel.png``.

Part 2, a seeded federation over heterogeneous paths (``qfl launch --simulation
--transport qcn``): clients near the server on metro/regional links, the others far,
on poor memories. FedAvg, FidelityWeightedFedAvg and NoiseIsolatingFedAvg on the same
seeds; a control with every client on an ideal link. Prints accuracy per round and
the rounds each needs to reach FedAvg's final accuracy (ratio to FedAvg's rounds in the
same run); saves ``bench/results/qcn_federation.png`` and ``.json``.

Run: ``python bench/qcn.py [--rounds 15] [--clients 8] [--far 3] [--far-path poor-memory]``
(``--channel-only`` skips part 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from federation import ROOT, launch_accuracy, plot_accuracy, print_accuracy_table, rounds_to

sys.path.insert(0, str(ROOT))
from transport.qcn import QCNPath, sample_pairs  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NEAR = ["metro", "regional"]


def channel_table(samples: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for distillation in (0, 1):
        for hops in (0, 1, 3, 7):
            for km in (10, 25, 50, 100, 200, 400):
                path = QCNPath(distance_km=km, hops=hops, p_gen=0.5, link_fidelity=0.97, coherence_time_s=0.1,
                               cutoff_s=0.05, swap_fidelity=0.98, distillation_rounds=distillation, protocol="dejmps")
                try:
                    f, t = sample_pairs(path, samples, rng)
                except ValueError:  # the cutoff never lets all segments finish
                    rows.append({"km": km, "hops": hops, "distill": distillation, "fidelity": None, "ms_per_pair": None, "loss": 1.0})
                    continue
                rows.append({"km": km, "hops": hops, "distill": distillation, "fidelity": float(f.mean()),
                             "ms_per_pair": float(1e3 * t.mean()), "loss": float((t > path.cutoff_s).mean())})
    return rows


def plot_channel(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for distill, style in ((0, "-"), (1, "--")):
        for hops in (0, 1, 3, 7):
            sel = [r for r in rows if r["hops"] == hops and r["distill"] == distill]
            km = [r["km"] for r in sel]
            label = f"{hops} hops" + (", 1x DEJMPS" if distill else "")
            axes[0].plot(km, [np.nan if r["fidelity"] is None else r["fidelity"] for r in sel], style, marker="o", ms=3, label=label)
            axes[1].plot(km, [np.nan if r["ms_per_pair"] is None else r["ms_per_pair"] for r in sel], style, marker="o", ms=3)
            axes[2].plot(km, [r["loss"] for r in sel], style, marker="o", ms=3)
    axes[0].set(xlabel="distance (km)", ylabel="mean end-to-end fidelity", xscale="log")
    axes[1].set(xlabel="distance (km)", ylabel="time per pair (ms)", xscale="log", yscale="log")
    axes[2].set(xlabel="distance (km)", ylabel="carrier loss (wait > cutoff)", xscale="log")
    axes[0].axhline(0.5, color="grey", lw=0.5)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("QCN path: 0.2 dB/km, p_gen 0.5, link F 0.97, BSM F 0.98, T 0.1 s, cutoff 0.05 s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(name: str, strategy: str, paths: str, args: argparse.Namespace, out: Path) -> list[float]:
    return launch_accuracy(name, out, [
        "--clients", str(args.clients), "--rounds", str(args.rounds), "--dataset", args.dataset,
        "--strategy", strategy, "--seed", str(args.seed), "--transport", "qcn", "--partitioner", args.partitioner,
        "--set", f'qcn-paths="{paths}"', "--set", f"qcn-copies={args.copies}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--far", type=int, default=3, help="clients on the far path")
    parser.add_argument("--far-path", default="poor-memory", help="path spec of the far clients")
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--dataset", default="wine")
    parser.add_argument("--partitioner", default="iid")
    parser.add_argument("--samples", type=int, default=4000, help="pairs per point of the channel table")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--channel-only", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    rows = channel_table(args.samples, args.seed)
    print("channel alone: mean fidelity / ms per pair / carrier loss (0.05 s cutoff)")
    print(f"{'km':>5} {'hops':>4} {'distill':>7} {'fidelity':>8} {'ms/pair':>9} {'loss':>6}")
    for r in rows:
        f = "-" if r["fidelity"] is None else f"{r['fidelity']:.3f}"
        t = "-" if r["ms_per_pair"] is None else f"{r['ms_per_pair']:.3g}"
        print(f"{r['km']:>5} {r['hops']:>4} {r['distill']:>7} {f:>8} {t:>9} {r['loss']:>6.3f}")
    plot_channel(rows, RESULTS / "qcn_channel.png")
    (RESULTS / "qcn_channel.json").write_text(json.dumps(rows, indent=1))
    print(f"plot: {RESULTS / 'qcn_channel.png'}")
    if args.channel_only:
        return

    out = RESULTS / "qcn"
    near = [NEAR[i % len(NEAR)] for i in range(args.clients - args.far)]
    hetero = ";".join(near + [args.far_path] * args.far)
    plan = [
        ("hetero-fedavg", "fedavg", hetero),
        ("hetero-fidelity-weighted", "fidelity-weighted", hetero),
        ("hetero-noise-isolating", "noise-isolating", hetero),
        ("control-fedavg", "fedavg", "ideal"),
    ]
    results: dict[str, list[float]] = {}
    for name, strategy, paths in plan:
        print(f"running {name} ...", flush=True)
        results[name] = run(name, strategy, paths, args, out)

    print(f"\ntest accuracy per round ({args.clients} {args.dataset} clients; {args.far} on {args.far_path}, the rest on {'/'.join(NEAR)})")
    print_accuracy_table(results, args.rounds)

    base = results["hetero-fedavg"]
    base_reach = rounds_to(base, base[-1])
    print(f"\nsummary: target = FedAvg's final accuracy {base[-1]:.3f} (FedAvg first reaches it in round {base_reach})")
    print(f"{'run':>26} {'final_acc':>9} {'diff_pts':>9} {'rounds_to_target':>16} {'ratio_to_fedavg':>15}")
    summary = {}
    for name, acc in results.items():
        reach = rounds_to(acc, base[-1])
        ratio = None if reach is None or not base_reach else reach / base_reach
        summary[name] = {"final": acc[-1], "diff_points": 100 * (acc[-1] - base[-1]), "rounds_to_target": reach, "ratio": ratio}
        print(f"{name:>26} {acc[-1]:>9.3f} {100 * (acc[-1] - base[-1]):>+9.1f} {str(reach):>16} {('-' if ratio is None else f'{ratio:.2f}'):>15}")

    plot_accuracy(results, f"{args.dataset}: {args.far}/{args.clients} clients on {args.far_path}", RESULTS / "qcn_federation.png")
    (RESULTS / "qcn_federation.json").write_text(json.dumps({"args": vars(args), "accuracy": results, "summary": summary}, indent=1))
    print(f"plot: {RESULTS / 'qcn_federation.png'}")


if __name__ == "__main__":
    main()
