"""What the shared quantum network's scheduler costs (an experiment of speed, not a test).

Part 1, the planner alone (``transport/qcn_schedule.py``): for 6 to 100 clients on
``metro-ring:clients=N`` and ``star-overloaded:clients=N`` (1 s deadline, price 0.001 per
1,000 pairs, 40 values x 100 copies), the seconds of the first plan (association and the
Monte Carlo predictions of every route and setting, cached for the run) and of a later one
(median of 10), the solver (exact integer program up to 200 client-options, else the
Lagrangian heuristic) and its gap to its own upper bound.

Part 2, the same run on Flower's simulation engine, 50 clients on ``metro-ring:clients=50``
(breast-cancer, fidelity-weighted, 1 s deadline, ``--rounds`` rounds, one simulation session):
**baseline** the ``qcn`` transport on per-partition paths (no shared network, no scheduler),
then **fixed** (the shared network, one setting for all: association and admission only) and
**joint** (the full schedule). Per run: mean wall-clock seconds of a round (rounds 2 on; round
1 pays the warm-up), the scheduler's own seconds per round (``qcn_schedule_s``, round 1 apart:
it fills the prediction cache) and its share of the round, and the ratio of round times to the
baseline's. The bar: the scheduler adds at most 10 % to a round's time at 50 clients.

Run: ``python bench/qcn_resources.py [--rounds 4] [--clients 50] [--planner-only]``; prints
the tables and writes ``bench/results/qcn_resources.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from federation import ROOT

sys.path.insert(0, str(ROOT))
from transport.qcn_compress import Encoding  # noqa: E402
from transport.qcn_network import TOPOLOGIES, QCNNetwork  # noqa: E402
from transport.qcn_schedule import Planner  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VALUES = 40  # the breast-cancer PQC's parameters


def planner_table(sizes: list[int]) -> list[dict]:
    rows = []
    for topology in ("metro-ring", "star-overloaded"):
        for n in sizes:
            network = QCNNetwork(TOPOLOGIES[topology](clients=n))  # a fresh one: no route cached yet
            planner = Planner(network, Encoding(100), deadline_s=1.0, pair_price=0.001)
            weights = {p: 70.0 for p in range(n)}
            start = time.perf_counter()
            first = planner.plan(1, weights, VALUES)
            first_s = time.perf_counter() - start
            later = []
            for r in range(2, 12):
                start = time.perf_counter()
                plan = planner.plan(r, weights, VALUES)
                later.append(time.perf_counter() - start)
            gap = (plan.bound - plan.objective) / abs(plan.bound) if plan.bound == plan.bound and plan.bound else 0.0
            rows.append({"topology": topology, "clients": n, "first_s": first_s, "later_s": statistics.median(later),
                         "solver": plan.solver, "served": plan.served, "gap_to_bound": gap, "first_served": first.served})
    return rows


def federation_table(clients: int, rounds: int, out: Path) -> list[dict]:
    from qfl.experiments.catalogue import study
    from qfl.experiments.engine import SimulationSession

    base = {**study(dataset="breast-cancer", transport="qcn", strategy="fidelity-weighted", learning_rate=0.1,
                    round_deadline=1.0, qcn_pair_price=0.001),
            "num-server-rounds": rounds, "min-nodes": clients, "seed": 1, "output-dir": str(out)}
    plan = [("baseline", {"qcn-paths": "metro;regional"}),
            ("fixed", {"qcn-topology": f"metro-ring:clients={clients}", "qcn-schedule": "fixed"}),
            ("joint", {"qcn-topology": f"metro-ring:clients={clients}", "qcn-schedule": "joint"})]
    rows = []
    with SimulationSession() as session:
        for name, extra in plan:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run = f"{name}-{stamp}"
            session.run({**base, **extra, "run-name": run}, clients=clients)
            metrics = json.loads((out / run / "metrics.json").read_text())["rounds"][1:]
            round_s = statistics.mean(r["round_time_s"] for r in metrics[1:])
            sched = [r.get("qcn_schedule_s") for r in metrics]
            later = [s for s in sched[1:] if s is not None and s == s]
            rows.append({"run": name, "round_s": round_s, "first_round_s": metrics[0]["round_time_s"],
                         "schedule_first_s": sched[0] if sched[0] == sched[0] else None,
                         "schedule_s": statistics.mean(later) if later else 0.0,
                         "served": statistics.mean(r["qcn_served"] for r in metrics),
                         "network_s": statistics.mean(r["qcn_network_s"] for r in metrics)})
    base_round = rows[0]["round_s"]
    for row in rows:
        row["ratio_to_baseline"] = row["round_s"] / base_round
        row["scheduler_share"] = row["schedule_s"] / (row["round_s"] - row["schedule_s"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--planner-only", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    planner = planner_table([6, 12, 25, 50, 100])
    print("planner alone: seconds of the first plan (predictions cached) and of a later one (median of 10)")
    print(f"{'topology':>16} {'clients':>7} {'first (s)':>9} {'later (ms)':>10} {'solver':>11} {'served':>6} {'gap':>7}")
    for r in planner:
        print(f"{r['topology']:>16} {r['clients']:>7} {r['first_s']:>9.2f} {1e3 * r['later_s']:>10.1f} "
              f"{r['solver']:>11} {r['served']:>6} {100 * max(0.0, r['gap_to_bound']):>6.2f}%")
    result = {"args": vars(args), "planner": planner}
    if not args.planner_only:
        rows = federation_table(args.clients, args.rounds, RESULTS / "qcn_resources_runs")
        print(f"\n{args.clients} clients on the simulation engine, {args.rounds} rounds (round 1 apart), same run:")
        print(f"{'run':>9} {'round (s)':>9} {'ratio':>6} {'scheduler (ms)':>14} {'share':>6} "
              f"{'1st-round sched (s)':>19} {'served':>6} {'network (s)':>11}")
        for r in rows:
            first = "-" if r["schedule_first_s"] is None else f"{r['schedule_first_s']:.2f}"
            print(f"{r['run']:>9} {r['round_s']:>9.2f} {r['ratio_to_baseline']:>6.3f} {1e3 * r['schedule_s']:>14.1f} "
                  f"{100 * r['scheduler_share']:>5.2f}% {first:>19} {r['served']:>6.1f} {r['network_s']:>11.3f}")
        result["federation"] = rows
    (RESULTS / "qcn_resources.json").write_text(json.dumps(result, indent=1))
    print(f"\n{RESULTS / 'qcn_resources.json'}")


if __name__ == "__main__":
    main()
