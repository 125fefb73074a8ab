"""Benchmark: what secure aggregation costs, against the plain transport in the same run.

1. The protocol at n simulated clients (default 10, 50, 200), every stage of a round in
   this process (:func:`transport.secagg.play_round`) on an update the size of the default
   model: seconds to make the run's hybrid X25519 + ML-KEM-768 pair keys, certified and
   signed with each node's ML-DSA-65 identity and verified by each end (once a run), and
   seconds a round (every survivor signs the survivor set, with its masked input when every
   input arrives, every unmask holder verifies its neighbours' signatures), bytes per client in the first round
   (with the keys) and in a later one,
   against plain FedAvg's (each client's float64 update up, the model down), and a later
   round's bytes per client over log2(n) x model bytes.
2. A real deployment (SuperLink + 4 SuperNodes on loopback, Wine, 5 rounds): mean round
   time of ``secagg`` against ``plain`` (rounds 2-5, after the cold start); with
   ``--repeat N`` each arm N times, interleaved, and the ratio of their medians.

Run: ``python bench/secagg_cost.py [--part 1 2] [--clients 10 50 200] [--repeat N]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # the project's packages first
    sys.path.append(str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers, after the packages
OUT = ROOT / "bench" / "results" / "secagg"


def model_size() -> int:
    from qfl.common.config import RunConfig
    from qfl.launch.config import app_defaults
    from qfl.task.build import build_dataset, build_model

    cfg = RunConfig.from_run_config(app_defaults(ROOT))
    return sum(p.numel() for p in build_model(cfg, build_dataset(cfg)).parameters())


def part_protocol(clients: list[int]) -> None:
    from qfl.common.config import RunConfig
    from qfl.launch.config import app_defaults
    from transport import secagg
    from transport.secagg_flower import STEPS_PER_CLIP, sizes

    cfg = RunConfig.from_run_config(app_defaults(ROOT))
    d = model_size() + 1  # the weighted update and its weight
    step = cfg.secagg_clip / STEPS_PER_CLIP
    print(f"1. protocol in process, update of {d} coordinates (the default model + its weight); pair keys hybrid "
          "X25519 + ML-KEM-768 signed by certified ML-DSA-65 identities, made once a run (first round) and reused "
          "(later rounds); every survivor signs the survivor set (ML-DSA-65), with its masked input when none is missing")
    print(f"{'clients':>8} {'k':>4} {'t':>4} {'keys s':>7} {'s/round':>8} {'plain s':>8} {'B/client 1st':>13} "
          f"{'B/client later':>15} {'plain B':>8} {'ratio later':>12} {'later/(log2n*model)':>20}")
    rng = np.random.default_rng(0)
    for n in clients:
        updates = {i: rng.uniform(-0.5, 0.5, d) for i in range(1, n + 1)}
        k, t = sizes(n, cfg)
        nodes = sorted(updates)
        begin = time.perf_counter()
        keys, first = secagg.pair_keys(nodes, secagg.neighbours(nodes, k, seed=7))  # play_round's graph
        keys_s = time.perf_counter() - begin
        begin = time.perf_counter()
        _, _, later = secagg.play_round(updates, k, t, step, keys=keys)
        took = time.perf_counter() - begin
        begin = time.perf_counter()
        np.mean(np.stack(list(updates.values())), axis=0)  # what the plain server computes
        plain_s = time.perf_counter() - begin
        per_later = (sum(later.values()) + 8 * d) / n  # + the model down, as plain sends it
        per_first = per_later + sum(first.values()) / n
        plain_b = 2 * 8 * d  # float64 update up, model down
        model_b = 8 * d
        print(f"   n={n}: a later round's bytes per client by stage: "
              + ", ".join(f"{stage} {b / n:.0f}" for stage, b in later.items() if b), flush=True)
        print(f"{n:>8} {k:>4} {t:>4} {keys_s:>7.3f} {took:>8.3f} {plain_s:>8.5f} {per_first:>13.0f} {per_later:>15.0f} "
              f"{plain_b:>8} {per_later / plain_b:>12.2f} {per_later / (math.log2(n) * model_b):>20.2f}")


def launch(name: str, *args: str) -> list[dict]:
    from federation import launch_rows

    return launch_rows(name, OUT, list(args))


def part_deployment(repeat: int = 1) -> None:
    """Each arm ``repeat`` times, interleaved (plain, secagg, plain, ...), so that a change in
    the machine's load falls on both arms; the ratio is of the arms' medians."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"2. deployment, 4 clients, Wine, 5 rounds (mean of rounds 2-5), {repeat} interleaved call(s) an arm")
    common = ("--clients", "4", "--rounds", "5", "--dataset", "wine", "--set", "robust-direction=false")
    times: dict[str, list[float]] = {"plain": [], "secagg": []}
    for call in range(repeat):
        for transport in times:
            rows = launch(f"{transport}-{stamp}-{call + 1}", *common, "--transport", transport)
            times[transport].append(float(np.mean([r["round_time_s"] for r in rows if r["round"] >= 2])))
    medians = {transport: float(np.median(s)) for transport, s in times.items()}
    print(f"{'transport':>10} {'median s/round':>15} {'ratio':>6}  each call")
    for transport, s in times.items():
        print(f"{transport:>10} {medians[transport]:>15.2f} {medians[transport] / medians['plain']:>6.2f}  "
              + " ".join(f"{x:.2f}" for x in s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--repeat", type=int, default=1, help="part 2: calls an arm, interleaved (default 1)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if 1 in args.part:
        part_protocol(args.clients)
    if 2 in args.part:
        part_deployment(args.repeat)


if __name__ == "__main__":
    main()
