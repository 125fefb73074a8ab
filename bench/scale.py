"""Benchmark: 10,000 simulated clients against 1,000, in the same run, on Flower's simulation engine.

Each federation is the ``scale`` experiment's (TFIM, 4 qubits, three training states per
client, FedAvg, batch 4, seed 1) at N clients with K sampled a round, run by
:class:`qfl.experiments.engine.SimulationSession` in a fresh process of its own (its own Ray,
so that each peak is its own). Per federation: the peak memory (PSS summed over the process,
its Ray processes and actors, sampled every 0.5 s, :class:`~qfl.experiments.engine.PeakMemory`;
also the driver alone, where the runtime's link state and nodes live), the seconds from the
run's start to round 1 (node registration, the warm-up), the mean seconds a round over
rounds 2 on (``round_time_s`` of ``metrics.json``), and those seconds per sampled client;
each row's ratios are to the first row's, measured in the same run.

``--baseline`` adds a first row at 1,000 clients with Flower 1.42's own message extractor
and the warm-up's roll call (what the engine did before: a sweep of the link state per node;
every node asked its partition), the baseline of the first 1,000-client row. Flower's
extractor at 10,000 nodes is not run (a sweep costs seconds with a round's 100 messages and
minutes with a roll call's 10,000); part 2 times one sweep of each extractor on a link state of
N registered nodes and a round's K stored messages, without Ray.

Run: ``python bench/scale.py [--sizes 1000:50 10000:100] [--rounds 5] [--baseline]``
(under ``flock /tmp/qfl-heavy.lock`` on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # the project's packages first
OUT = ROOT / "bench" / "results" / "scale"
STATES_PER_CLIENT = 4  # tfim-samples per client: 3 training states after the 25 % test split
GIB = 2**30


def scale_config(clients: int, sampled: int, rounds: int, seed: int, out: Path, name: str) -> dict[str, object]:
    """The ``scale`` experiment's settings at ``clients`` clients, ``sampled`` of them a round."""
    from qfl.common.config import KEY
    from qfl.experiments.catalogue import EXPERIMENTS

    base = EXPERIMENTS["scale"]
    return {**base.config, **base.arms[0].config, KEY.tfim_samples: STATES_PER_CLIENT * clients,
            KEY.fraction_train: sampled / clients, KEY.seed: seed, KEY.num_server_rounds: rounds,
            KEY.min_nodes: clients, KEY.output_dir: str(out), KEY.run_name: name}


def child(clients: int, sampled: int, rounds: int, seed: int, out: Path, name: str, flower: bool) -> None:
    """One federation in this process; prints its figures as one JSON line."""
    from qfl.experiments.engine import SimulationSession

    config = scale_config(clients, sampled, rounds, seed, out, name)
    with SimulationSession(engine_node_map=not flower, linear_extractor=not flower) as session:
        seconds = session.run(config, clients=clients)
        memory = session.memory
    rows = json.loads((out / name / "metrics.json").read_text())["rounds"]
    events = [json.loads(line) for line in (out / name / "progress.jsonl").read_text().splitlines()]
    entered = next(e for e in events if e["event"] == "serverapp")["entered"]
    ready = next(e for e in events if e["event"] == "ready")
    print(json.dumps({
        "clients": clients, "sampled": sampled, "flower": flower, "run_s": seconds,
        "peak_bytes": memory.peak_bytes, "peak_driver_bytes": memory.peak_driver_bytes,
        # from the ServerApp's start to round 1: the nodes registered, then the warm-up
        "to_ready_s": ready["t"] - entered, "warm_up_s": ready["warm_up_s"],
        "round_1_s": rows[1]["round_time_s"], "round_times": [r["round_time_s"] for r in rows if r["round"] >= 2],
        "clients_ok": [r["clients_ok"] for r in rows[1:]], "accuracy": rows[-1]["test_accuracy"],
    }), flush=True)


def measure(clients: int, sampled: int, rounds: int, seed: int, flower: bool) -> dict:
    name = f"n{clients}-k{sampled}" + ("-flower" if flower else "")
    out = OUT / "runs"
    run_dir = out / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(clients), str(sampled), str(rounds), str(seed),
           str(out), name, *(["--flower"] if flower else [])]
    begin = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - begin
    return result


def sweep_seconds(nodes: int, messages: int, flower: bool) -> float:
    """One sweep of the runtime's message extractor over ``nodes`` registered nodes with
    ``messages`` stored instructions: Flower's (``get_message_ins`` per node) or the engine's."""
    from flwr.app import Message, RecordDict

    from qfl.common.flower_internals import _first_undelivered, simulated_link_state

    link = simulated_link_state(nodes)
    state, mapping, grid = link.state, link.nodes, link.grid
    grid.push_messages([Message(RecordDict(), dst_node_id=n, message_type="query.bench")
                        for n in list(mapping)[:messages]])
    begin = time.perf_counter()
    if flower:
        got = sum(len(state.get_message_ins(node_id=n, limit=1)) for n in mapping)
    else:
        got = len(_first_undelivered(state, frozenset(mapping)))
    took = time.perf_counter() - begin
    assert got == messages, (got, messages)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1000:50", "10000:100"], help="CLIENTS:SAMPLED, the first is the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="first, the first size with Flower's extractor and the roll call")
    parser.add_argument("--part", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--flower", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        clients, sampled, rounds, seed, out, name = args.child
        child(int(clients), int(sampled), int(rounds), int(seed), Path(out), name, args.flower)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes]
    results: dict[str, object] = {"rounds": args.rounds, "seed": args.seed}
    if 1 in args.part:
        plan = ([(*sizes[0], True)] if args.baseline else []) + [(n, k, False) for n, k in sizes]
        rows = []
        for n, k, flower in plan:
            print(f"... {n} clients, {k} a round{' (Flower extractor, roll call)' if flower else ''}", flush=True)
            rows.append(measure(n, k, args.rounds, args.seed, flower))
        results["federations"] = rows
        print_federations(rows, args.rounds)
    if 2 in args.part:
        sweeps = []
        for n, k in sizes:
            for m in (k, n):
                flower = sweep_seconds(n, m, True) if n * m <= 10_000 * 1_000 else None  # 10k x 10k: minutes
                ours = sweep_seconds(n, m, False)
                sweeps.append({"nodes": n, "messages": m, "flower_s": flower, "linear_s": ours})
        results["sweeps"] = sweeps
        print_sweeps(sweeps)
    (OUT / "scale.json").write_text(json.dumps(results, indent=1))
    print(f"-> {OUT / 'scale.json'}")


def print_federations(rows: list[dict], rounds: int) -> None:
    import numpy as np

    print(f"\n1. federations, {rounds} rounds each, mean seconds a round over rounds 2-{rounds}; ratios to the first row")
    print("| clients | sampled a round | extractor, warm-up | peak memory (GiB) | driver (GiB) | ratio | "
          "start to round 1 (s) | round 1 (s) | s a round | s a round per sampled client | ratio | replies a round | "
          "final accuracy | run (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = None
    for r in rows:
        per_round = float(np.mean(r["round_times"]))
        per_client = per_round / r["sampled"]
        base = base or (r["peak_bytes"], per_client)
        how = "Flower's, roll call" if r["flower"] else "linear, engine's node map"
        print(f"| {r['clients']:,} | {r['sampled']} | {how} | {r['peak_bytes'] / GIB:.2f} | {r['peak_driver_bytes'] / GIB:.2f} | "
              f"{r['peak_bytes'] / base[0]:.2f}x | {r['to_ready_s']:.1f} | {r['round_1_s']:.2f} | {per_round:.2f} | "
              f"{per_client:.4f} | {per_client / base[1]:.2f}x | {min(r['clients_ok'])}-{max(r['clients_ok'])} | "
              f"{r['accuracy']:.3f} | {r['run_s']:.0f} |")


def print_sweeps(sweeps: list[dict]) -> None:
    print("\n2. one sweep of the runtime's message extractor (no Ray)")
    print("| nodes | stored messages | Flower's (s) | linear (s) | speed-up |")
    print("|---|---|---|---|---|")
    for s in sweeps:
        flower = "-" if s["flower_s"] is None else f"{s['flower_s']:.3f}"
        ratio = "-" if s["flower_s"] is None else f"{s['flower_s'] / s['linear_s']:.0f}x"
        print(f"| {s['nodes']:,} | {s['messages']:,} | {flower} | {s['linear_s']:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
