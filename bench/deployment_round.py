"""Benchmark: seconds per deployed round, qfl warm and cold against Flower's own floor.

In one run, on loopback, at 2 and 4 clients:

(a) ``bench/floor_app``: a numpy-only FedAvg app (Flower's floor: SuperNode poll, ClientApp
    process start, message handling; it polls replies as fast as qfl's ServerApp does), on
    the SuperNodes qfl launches (``qfl-supernode``: a 0.2 s idle poll, forked ClientApp
    processes); with ``--arms stock`` also (s), the same app on ``flower-supernode`` as shipped;
(b) qfl with the warm runtime (``warm-runtime = true``, the default);
(c) qfl cold (``warm-runtime = false``: every message imports torch and PennyLane and builds
    the data and the model, the reference path).

s/round is the mean of rounds 2..R (round 1 includes start-up). The table gives each ratio
to (a), the clients' compute (the slowest client's ``train_time_s``, mean over the same
rounds) and the target (b) <= (a) + compute + 1 s; and for every arm the time from the launch
to the end of round 1, with its ratio to (a)'s. For (b) it prints the start-up timeline, from
the launch's logs (each line stamped when it came) and the ServerApp's progress events.

Run: ``python bench/deployment_round.py [--rounds 6] [--clients 2 4] [--dataset iris] [--arms stock floor warm cold]``
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


def floor(clients: int, rounds: int, stock: bool = False) -> dict[str, float]:
    """Mean s/round of rounds 2..R of the numpy-only app on a real loopback deployment, and
    the seconds from the launch to the end of round 1; on ``qfl-supernode`` as qfl launches
    it, or with ``stock`` on ``flower-supernode`` as Flower ships it."""
    from qfl.launch.commands import flwr_env, superlink_command, supernode_command, write_flower_config
    from qfl.launch.processes import ProcessGroup, free_port, wait_for_port

    start = time.time()
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
            node = group.start(f"supernode-{i}", supernode_command(f"127.0.0.1:{port}", node_port, i, clients,
                                                                          **({"poll_interval": None} if stock else {})),
                               cwd=work)
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
    return {"s_per_round": sum(gaps[1:]) / len(gaps[1:]), "to_round1": stamps[1] - start}


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
    first = {e["event"]: e for e in reversed(events)}  # the first of each kind
    round1 = next(e["t"] for e in events if e["event"] == "round" and e["round"] == 1)
    logs = run / "logs"
    timeline = {
        "SuperLink's first log line": log_time(logs / "superlink.log", start),
        "last SuperNode's first log line": max(log_time(p, start) for p in logs.glob("supernode-*.log")),
        "ServerApp entered": first["serverapp"]["entered"],
        "all nodes connected, warm-up sent": first["serverapp"]["warm_up_pushed"],
        "server's data and model built": first["start"]["t"],
        "last node's worker ready": first["ready"]["last_node_ready"],
        "round 1 done": round1,
    }
    return {
        "s_per_round": sum(later) / len(later),
        "compute": sum(per_round.values()) / max(1, len(per_round)),
        "to_round1": round1 - start,
        "timeline": {k: v - start for k, v in timeline.items() if v is not None},
    }


def log_time(path: Path, day_of: float) -> float:
    """When ``path``'s first line came (its ``HH:MM:SS.mmm`` stamp, on the day of ``day_of``)."""
    stamp = path.read_text().split(" ", 1)[0]
    clock = time.strptime(time.strftime("%Y-%m-%d ", time.localtime(day_of)) + stamp.split(".")[0], "%Y-%m-%d %H:%M:%S")
    return time.mktime(clock) + int(stamp.split(".")[1]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--dataset", default="iris")
    parser.add_argument("--arms", nargs="+", default=["floor", "warm", "cold"], choices=["stock", "floor", "warm", "cold"])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"deployed rounds on loopback ({args.dataset}, {args.rounds} rounds, mean of rounds 2..{args.rounds})")
    head = (f"{'clients':>7} {'arm':>10} {'s/round':>8} {'ratio':>6} {'compute':>8} {'target':>7} {'met':>4} "
            f"{'to round 1':>10} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for clients in args.clients:
        arms = {"(a) floor": floor(clients, args.rounds)} if "floor" in args.arms else {}
        if "stock" in args.arms:  # the same app on Flower's SuperNode as shipped
            arms["(s) stock"] = floor(clients, args.rounds, stock=True)
        for arm in ("warm", "cold"):
            if arm in args.arms:
                arms[f"({'b' if arm == 'warm' else 'c'}) {arm}"] = qfl(clients, args.rounds, args.dataset, warm=arm == "warm")
        base = arms.get("(a) floor", {"s_per_round": float("nan"), "to_round1": float("nan")})
        for name, arm in arms.items():
            line = f"{clients:>7} {name:>10} {arm['s_per_round']:>8.2f} {arm['s_per_round'] / base['s_per_round']:>6.2f} "
            if "compute" in arm:
                target = base["s_per_round"] + arm["compute"] + 1.0
                line += f"{arm['compute']:>8.2f} {target:>7.2f} {'yes' if arm['s_per_round'] <= target else 'no':>4} "
            else:
                line += f"{'':>8} {'':>7} {'':>4} "
            print(line + f"{arm['to_round1']:>10.1f} {arm['to_round1'] / base['to_round1']:>6.2f}")
        if "(b) warm" in arms:
            print(f"{'':>7} start-up timeline of (b), seconds after the launch command:")
            for what, at in sorted(arms["(b) warm"]["timeline"].items(), key=lambda kv: kv[1]):
                print(f"{'':>9} {at:6.1f}  {what}")


if __name__ == "__main__":
    main()
