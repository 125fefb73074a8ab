"""Benchmark: seconds per deployed round, qfl warm and cold against Flower's own floor.

In one run, on loopback, at 2 and 4 clients:

(a) ``bench/floor_app``: a numpy-only FedAvg app (Flower's floor: SuperNode poll, ClientApp
    process start, message handling; it polls replies as fast as qfl's ServerApp does);
(b) qfl with the warm runtime (``warm-runtime = true``, the default);
(c) qfl cold (``warm-runtime = false``: every message imports torch and PennyLane and builds
    the data and the model, the reference path).

s/round is the mean of rounds 2..R (round 1 includes start-up). The table gives each ratio
to (a), the clients' compute (the slowest client's ``train_time_s``, mean over the same
rounds) and the target (b) <= (a) + compute + 1 s. For (b) it also splits the time to the
first round: launch -> ServerApp started -> nodes connected -> round 1 done.

Run: ``python bench/deployment_round.py [--rounds 6] [--clients 2 4] [--dataset iris]``
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # this folder would shadow the packages: put the project root first
OUT = ROOT / "bench" / "results" / "deployment_round"


def floor(clients: int, rounds: int) -> float:
    """Mean s/round of rounds 2..R of the numpy-only app on a real loopback deployment."""
    from qfl.launch.commands import flwr_env, superlink_command, supernode_command, write_flower_config
    from qfl.launch.processes import ProcessGroup, free_port, wait_for_port

    work = Path(tempfile.mkdtemp(prefix="floor-", dir=OUT))
    (work / "logs").mkdir()
    env = flwr_env(work / "flwr-home", work / "cache")
    env["PYTHONPATH"] = str(ROOT)
    group = ProcessGroup(env, work / "logs")
    try:
        port = free_port()
        link = group.start("superlink", superlink_command(port), cwd=work)
        wait_for_port(port, link, 30, "superlink", work / "logs")
        for i in range(clients):
            node_port = free_port()
            node = group.start(f"supernode-{i}", supernode_command(f"127.0.0.1:{port}", node_port, i, clients), cwd=work)
            wait_for_port(node_port, node, 30, "supernode", work / "logs")
        write_flower_config(work / "flwr-home", port, None)
        times = work / "times.json"
        config = f'num-server-rounds={rounds} min-nodes={clients} times-file="{times}"'
        subprocess.run(["flwr", "run", str(ROOT / "bench" / "floor_app"), "qfl-local", "--stream", "--run-config", config],
                       env=env, cwd=work, check=True, capture_output=True, timeout=900)
    finally:
        group.stop()
    stamps = json.loads(times.read_text())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return sum(gaps[1:]) / len(gaps[1:])


def qfl(clients: int, rounds: int, dataset: str, warm: bool) -> dict[str, float]:
    """Mean s/round of rounds 2..R, the clients' compute, and the time to round 1, of ``qfl launch``."""
    name = f"{'warm' if warm else 'cold'}-{clients}-{time.strftime('%H%M%S')}"
    start = time.time()
    cmd = [sys.executable, "-m", "qfl.launcher", "launch", "--clients", str(clients), "--rounds", str(rounds),
           "--dataset", dataset, "--run-name", name, "--set", f'output-dir="{OUT}"',
           "--set", f"warm-runtime={'true' if warm else 'false'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    run = OUT / name
    rows = json.loads((run / "metrics.json").read_text())["rounds"]
    later = [r["round_time_s"] for r in rows[2:]]
    with open(run / "clients.csv") as f:
        clients_rows = [r for r in csv.DictReader(f) if int(r["round"]) >= 2]
    per_round: dict[int, float] = {}
    for r in clients_rows:
        per_round[int(r["round"])] = max(per_round.get(int(r["round"]), 0.0), float(r["train_time_s"]))
    events = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    first = {e["event"]: e["t"] for e in reversed(events)}  # the first of each kind
    round1 = next(e["t"] for e in events if e["event"] == "round" and e["round"] == 1)
    return {
        "s_per_round": sum(later) / len(later),
        "compute": sum(per_round.values()) / max(1, len(per_round)),
        "to_server": first["start"] - start,
        "to_nodes": first.get("ready", first["start"]) - first["start"],
        "to_round1": round1 - first.get("ready", first["start"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--dataset", default="iris")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"deployed rounds on loopback ({args.dataset}, {args.rounds} rounds, mean of rounds 2..{args.rounds})")
    head = f"{'clients':>7} {'arm':>10} {'s/round':>8} {'ratio':>6} {'compute':>8} {'target':>7} {'met':>4}"
    print(head)
    print("-" * len(head))
    for clients in args.clients:
        base = floor(clients, args.rounds)
        warm = qfl(clients, args.rounds, args.dataset, warm=True)
        cold = qfl(clients, args.rounds, args.dataset, warm=False)
        target = base + warm["compute"] + 1.0
        print(f"{clients:>7} {'(a) floor':>10} {base:>8.2f} {1.0:>6.2f}")
        print(f"{clients:>7} {'(b) warm':>10} {warm['s_per_round']:>8.2f} {warm['s_per_round'] / base:>6.2f} "
              f"{warm['compute']:>8.2f} {target:>7.2f} {'yes' if warm['s_per_round'] <= target else 'no':>4}")
        print(f"{clients:>7} {'(c) cold':>10} {cold['s_per_round']:>8.2f} {cold['s_per_round'] / base:>6.2f} "
              f"{cold['compute']:>8.2f}")
        print(f"{'':>7} time to round 1, warm: {warm['to_server']:.1f} s to the ServerApp, {warm['to_nodes']:.1f} s "
              f"to the nodes, {warm['to_round1']:.1f} s for round 1 "
              f"(cold: {cold['to_server']:.1f} + {cold['to_nodes']:.1f} + {cold['to_round1']:.1f})")


if __name__ == "__main__":
    main()
