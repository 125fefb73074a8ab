"""Study: final accuracy under in-bound attacks, per defence, over seeds.

Each cell is an in-process federation (:class:`qfl.inprocess.InProcessFederation`: the
real ClientApp, the real strategy behind the server's real guard, central evaluation on the
test split) of ``--clients`` clients on ``--dataset`` for ``--rounds`` rounds, repeated over
``--seeds``. The attacks are the shared harness's (:mod:`qfl.experiments.attacks`, the same
the tests and the experiment's attack ClientApp use): each attacker trains honestly, then its
reply is replaced, knowing every honest update of the round (full knowledge):

- ``clean``: nobody attacks;
- ``sign-flip``: partition 0 sends the global model minus 3 times its honest update;
- ``colluders``: partitions 0 and 1 both do;
- ``sideways``, ``sideways-edge``, ``alie``, ``ipm``, ``min-max``, ``min-sum``: partitions 0 and 1 send the
  harness's crafted updates, each with noise of its own;
- ``absent``: the control for two attackers: partitions 0 and 1 answer with an error, so
  the round has their data as little as a perfect defence would leave it.

Defences: ``fedavg`` (the guard with ``robust-direction = false``), ``direction`` (FedAvg
behind the guard's direction rule without the sideways bound: the guard before issue 42),
``guard`` (the default: the direction rule and the sideways bound), ``fedmedian`` and
``fedtrimmedavg`` (Flower's, ``beta = 0.2``, both without the direction rule).

The table gives, per defence and attack, the final accuracy (mean and 95 % t interval over
seeds, ``ddof = 1``), the paired difference to the same defence's clean run with its exact
sign-flip (permutation) p, Holm-adjusted over every comparison in the table, the seeds more
than 0.10 below clean, the mean first round after round 0 at 0.8 accuracy (``rounds + 1``
where never: censored), the drift of the final model along the sideways attack's direction
(every attack's, against the clean run's), the share of attacker replies the guard named
(any status but ``ok``) and of honest replies it rejected and named. Below it, the clean-run
cost of each defence against ``fedavg``, and of the sideways bound (``guard`` against
``direction``), paired by seed.

Run: ``python bench/attacks.py [--seeds 0 1 2 3 4] [--defences guard direction] [--attacks clean alie]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # this folder first on sys.path would shadow the project's packages
OUT = ROOT / "bench" / "results" / "attacks.json"

from qfl.experiments import attacks, stats  # noqa: E402 (after the path fix above)

ATTACKS = ("clean", "sign-flip", "colluders", "sideways", "sideways-edge", "alie", "ipm", "min-max", "min-sum", "absent")
DEFENCES = {  # run config, and whether the guard bounds the sideways part
    "fedavg": ({"strategy": "fedavg", "robust-direction": False}, False),
    "direction": ({"strategy": "fedavg", "robust-direction": True}, False),
    "guard": ({"strategy": "fedavg", "robust-direction": True}, True),
    "fedmedian": ({"strategy": "fedmedian", "robust-direction": False}, False),
    "fedtrimmedavg": ({"strategy": "fedtrimmedavg", "strategy-options": "{ beta = 0.2 }", "robust-direction": False}, False),
}
TARGET = 0.8
WORSE = 0.10  # a seed this much below its clean run is counted


def run_cell(base: dict, defence: str, attack: str, seed: int, clients: int, rounds: int) -> dict:
    """One federation: ``defence`` under ``attack`` with ``seed``; its curve and who was named."""
    from qfl.common.records import flatten
    from qfl.inprocess import InProcessFederation

    config, sideways_bound = DEFENCES[defence]
    fed = InProcessFederation({**base, **config, "seed": seed}, clients)
    fed.guard.sideways = sideways_bound
    attackers = [p + 1 for p in attacks.ATTACKERS.get(attack, ())]  # node IDs: partition + 1
    names = list(fed.arrays.keys())
    start = flatten(fed.arrays, names)
    direction = attacks.sideways_direction(start.size, seed)
    rng = np.random.default_rng([seed, 42])
    aggregate = fed.guard.aggregate_train

    def attacked(server_round: int, replies):  # noqa: ANN001, ANN202 (the guard's hook, with the attack before it)
        replies = list(replies)
        by_node = {m.metadata.src_node_id: m for m in replies}
        requests = {n: fed.requests[m.metadata.reply_to_message_id] for n, m in by_node.items()}
        if attackers:
            by_node = attacks.corrupt_round(attack, by_node, requests, attackers, rng, direction)
        return aggregate(server_round, [by_node[m.metadata.src_node_id] for m in replies])

    fed.guard.aggregate_train = attacked  # the bench's hostile round: every attacker sees every honest update
    fed.run(rounds)
    named = [r for r in fed.rows if r["node_id"] in attackers]
    honest = [r for r in fed.rows if r["node_id"] not in attackers]
    return {
        "defence": defence, "attack": attack, "seed": seed, "accuracy": fed.accuracy[-1], "curve": fed.accuracy,
        "drift": float((flatten(fed.arrays, names) - start) @ direction),
        "named": sum(r["status"] != "ok" for r in named) / len(named) if named else None,
        "honest_rejected": sum(str(r["status"]).startswith("rejected") for r in honest) / len(honest),
        "honest_named": sum(r["status"] != "ok" for r in honest) / len(honest),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="wine")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()

    import torch

    from qfl.inprocess import task_identity
    from qfl.launch.config import app_defaults

    torch.set_num_threads(1)
    base = {**app_defaults(ROOT), "dataset": args.dataset}
    attack_list = ["clean", *[a for a in args.attacks if a != "clean"]]  # every comparison needs the clean run
    cells, started = [], time.monotonic()
    with task_identity():
        for defence in args.defences:
            for attack in attack_list:
                for seed in args.seeds:
                    cells.append(run_cell(base, defence, attack, seed, args.clients, args.rounds))
                    print(json.dumps(cells[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "cells": cells}, indent=1))
    print(f"\n{args.dataset}, {args.clients} clients, {args.rounds} rounds, seeds {args.seeds} "
          f"({time.monotonic() - started:.0f} s; cells in {args.out})\n")
    print(table(cells, args.defences, attack_list, args.rounds))
    print()
    print(clean_costs(cells, args.defences))


def _sign_flip(arm: list[float], other: list[float]) -> tuple[float, float]:
    """``(mean difference, exact sign-flip p)`` of paired values (p NaN under two seeds)."""
    if len(arm) < 2:
        return (float(np.mean(np.subtract(arm, other))) if arm else float("nan")), float("nan")
    test = stats.paired_sign_flip(arm, other)
    return test.mean_difference, test.p


def _paired(cells: list[dict], defence: str, attack: str, versus: tuple[str, str]) -> tuple[list[float], list[float]]:
    """Final accuracies of ``defence/attack`` and of ``versus`` on the seeds both ran."""
    mine = {c["seed"]: c for c in cells if c["defence"] == defence and c["attack"] == attack}
    other = {c["seed"]: c for c in cells if (c["defence"], c["attack"]) == versus}
    seeds = sorted(set(mine) & set(other))
    return [mine[s]["accuracy"] for s in seeds], [other[s]["accuracy"] for s in seeds]


def table(cells: list[dict], defences: list[str], attack_list: list[str], rounds: int) -> str:
    """A markdown table: per defence and attack, the final accuracy against the same defence's
    clean run (paired by seed; exact sign-flip p, Holm over the table), rounds to 0.8, the
    drift along the sideways direction, and who was named or rejected."""
    rows = [(d, a) for d in defences for a in attack_list
            if any(c["defence"] == d and c["attack"] == a for c in cells)]
    tests = {(d, a): _sign_flip(*_paired(cells, d, a, (d, "clean"))) for d, a in rows if a != "clean"}
    known = [k for k, (_, p) in tests.items() if not np.isnan(p)]
    adjusted = {**{k: float("nan") for k in tests}, **dict(zip(known, stats.holm([tests[k][1] for k in known])))}
    lines = ["| defence | attack | final accuracy [95 % CI] | vs clean (Holm p) | seeds > 0.10 below clean | rounds to 0.8 "
             "| drift along v | attackers named | honest rejected | honest named |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for defence, attack in rows:
        got = [c for c in cells if c["defence"] == defence and c["attack"] == attack]
        ci = stats.mean_ci([c["accuracy"] for c in got])
        arm, clean = _paired(cells, defence, attack, (defence, "clean"))
        versus = "—" if attack == "clean" else (f"{tests[defence, attack][0]:+.3f} "
                                                f"({stats.format_p(adjusted[defence, attack])})")
        worse = "—" if attack == "clean" else f"{sum(a - c < -WORSE for a, c in zip(arm, clean))}/{len(arm)}"
        reached = stats.censored_rounds([stats.rounds_to_target(c["curve"], TARGET) for c in got], rounds)
        named = [c["named"] for c in got if c["named"] is not None]
        lines.append(
            f"| {defence} | {attack} | {ci} | {versus} | {worse} | {reached.mean():.1f} | "
            f"{np.mean([c['drift'] for c in got]):+.2f} | " + (f"{np.mean(named):.2f}" if named else "—")
            + f" | {np.mean([c['honest_rejected'] for c in got]):.3f} | {np.mean([c['honest_named'] for c in got]):.3f} |")
    return "\n".join(lines)


def clean_costs(cells: list[dict], defences: list[str]) -> str:
    """The clean-run cost of each defence against ``fedavg``, and of the sideways bound
    (``guard`` against ``direction``), paired by seed, with the exact sign-flip p."""
    pairs = [(d, "fedavg") for d in defences if d != "fedavg"] + [("guard", "direction")]
    out = []
    for defence, versus in pairs:
        arm, other = _paired(cells, defence, "clean", (versus, "clean"))
        if arm:
            d = np.subtract(arm, other)
            out.append(f"clean-run cost of {defence} against {versus}, paired by seed: {d.mean():+.3f} "
                       f"(min {d.min():+.3f}, max {d.max():+.3f}; sign-flip p {stats.format_p(_sign_flip(arm, other)[1])}, "
                       f"n = {len(d)})")
    return "\n".join(out)


if __name__ == "__main__":
    main()
