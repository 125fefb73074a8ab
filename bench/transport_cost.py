"""Benchmark: what the transports cost, what the QKD link yields, what DP costs in accuracy.

Three parts, each measured in the same run as its baseline:

1. ``plain`` vs ``qkd`` vs ``dp`` vs ``qkd+dp``: mean round time and bytes per round of a
   real deployment (SuperLink + 2 SuperNodes on loopback), ratio against ``plain``.
2. BB84: estimated QBER and finite-size secret-key rate against fiber length, without and
   with an intercept-resend eavesdropper, next to the standard asymptotic decoy-state
   rate; raw pulse throughput. Plot: ``bench/results/bb84.png``.
3. Local DP on Wine (simulation engine, 8 clients, half sampled per round): final
   accuracy against the reported epsilon for several noise multipliers.

Run: ``python bench/transport_cost.py [--part 1 2 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the `transport` package: put the project root there instead.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
    sys.path.append(str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers, after the packages
OUT = ROOT / "bench" / "results" / "transport"


def launch(name: str, *args: str) -> list[dict]:
    from federation import launch_rows

    return launch_rows(name, OUT, list(args))


def part_transports(rounds: int) -> None:
    print(f"\n1. transports in a real deployment (2 SuperNodes, wine, {rounds} rounds; mean over rounds 2..{rounds})")
    header = f"{'transport':>10} {'round_s':>8} {'time_ratio':>10} {'bytes/round':>12} {'bytes_ratio':>11} {'extra_B/msg':>11}"
    print(header)
    print("-" * len(header))
    base = None
    for transport in ("plain", "qkd", "dp", "qkd+dp"):
        rows = launch(f"transport-{transport.replace('+', '-')}", "--clients", "2", "--rounds", str(rounds),
                      "--dataset", "wine", "--transport", transport)
        later = rows[2:]  # round 1 includes start-up
        t = float(np.mean([r["round_time_s"] for r in later]))
        b = float(np.mean([r["bytes_down"] + r["bytes_up"] for r in later]))
        base = base or (t, b)
        extra = (b - base[1]) / 4  # 4 messages a round: 2 down, 2 up
        print(f"{transport:>10} {t:>8.2f} {t / base[0]:>10.3f} {b:>12.0f} {b / base[1]:>11.3f} {extra:>11.0f}")


def part_bb84(pulses: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transport.qkd.bb84 import BB84Config, InsecureSeededBB84Link, QKDAbort, asymptotic_key_rate

    lengths = [0, 10, 25, 50, 75, 100]
    print(f"\n2. BB84 (decoy-state WCP, {pulses:,} pulses per point): QBER and key rate vs fiber length")
    header = f"{'km':>4} {'eve':>4} {'qber':>7} {'key_bits':>9} {'rate/pulse':>11} {'asymptotic':>11} {'ratio':>6} {'Mpulse/s':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for eve in (0.0, 1.0):
        for km in lengths:
            cfg = BB84Config(length_km=km, eve_fraction=eve)
            link = InsecureSeededBB84Link(cfg, seed=km)
            start = time.perf_counter()
            sifted = link.transmit(pulses)
            speed = pulses / (time.perf_counter() - start) / 1e6
            link = InsecureSeededBB84Link(cfg, seed=km)
            try:
                key = len(link.generate_key(pulses).key)
            except QKDAbort:
                key = 0
            asym = 0.0 if eve else asymptotic_key_rate(cfg)
            rate = key / pulses
            results[(eve, km)] = (sifted.qber_estimate, rate, asym)
            ratio = f"{rate / asym:.2f}" if asym > 0 else "-"
            print(f"{km:>4} {eve:>4.1f} {sifted.qber_estimate:>7.4f} {key:>9} {rate:>11.2e} {asym:>11.2e} {ratio:>6} {speed:>9.2f}")
    fig, (ax_q, ax_r) = plt.subplots(1, 2, figsize=(10, 3.8))
    for eve, style in ((0.0, "o-"), (1.0, "s--")):
        ax_q.plot(lengths, [results[(eve, km)][0] for km in lengths], style, label=f"eavesdropper on {eve:.0%} of pulses")
        ax_r.semilogy(lengths, [max(results[(eve, km)][1], 1e-9) for km in lengths], style, label=f"simulated, eve {eve:.0%}")
    ax_r.semilogy(lengths, [results[(0.0, km)][2] for km in lengths], "k:", label="asymptotic formula")
    ax_q.axhline(0.11, color="r", lw=0.8, label="abort bound 11%")
    ax_q.set(xlabel="fiber length (km)", ylabel="estimated QBER", title="QBER")
    ax_r.set(xlabel="fiber length (km)", ylabel="secret bits per pulse", title="Key rate", ylim=(1e-7, 1e-1))
    for ax in (ax_q, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT.parent / "bb84.png", dpi=110)
    print(f"plot: {OUT.parent / 'bb84.png'}")


def part_dp(rounds: int) -> None:
    print(f"\n3. local DP on wine (simulation, 8 clients, fraction-train 0.5, clip 0.5, {rounds} rounds, delta 1e-5)")
    header = f"{'sigma':>6} {'epsilon':>9} {'final_acc':>9} {'acc_vs_no_dp':>12}"
    print(header)
    print("-" * len(header))
    common = ["--simulation", "--clients", "8", "--rounds", str(rounds), "--dataset", "wine",
              "--set", "fraction-train=0.5", "--set", "dp-clip=0.5"]
    base = launch("dp-none", *common)[-1]["test_accuracy"]
    print(f"{'none':>6} {'inf':>9} {base:>9.3f} {0.0:>+12.3f}")
    for sigma in (0.3, 0.7, 1.5):
        last = launch(f"dp-{sigma}", *common, "--transport", "dp", "--set", f"dp-noise-multiplier={sigma}")[-1]
        print(f"{sigma:>6} {last['dp_epsilon']:>9.2f} {last['test_accuracy']:>9.3f} {last['test_accuracy'] - base:>+12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pulses", type=int, default=4_000_000)
    parser.add_argument("--dp-rounds", type=int, default=10)
    args = parser.parse_args()
    if 1 in args.part:
        part_transports(args.rounds)
    if 2 in args.part:
        part_bb84(args.pulses)
    if 3 in args.part:
        part_dp(args.dp_rounds)


if __name__ == "__main__":
    main()
