"""Study: final accuracy under in-bound attacks, per defence, over seeds.

Each cell is an in-process federation (:class:`qfl.inprocess.InProcessFederation`: the
real ClientApp, the real strategy behind the server's real guard, central evaluation on the
test split) of ``--clients`` clients on ``--dataset`` for ``--rounds`` rounds, repeated over
``--seeds``. Attacks (each attacker trains honestly, then replaces its reply):

- ``clean``: nobody attacks;
- ``sign-flip``: partition 0 sends the global model minus 3 times its honest update (inside
  the guard's 4x norm bar);
- ``colluders``: partitions 0 and 1 both do;
- ``absent``: the control for ``colluders``: partitions 0 and 1 answer with an error, so
  the round has their data as little as a perfect defence would leave it.

Defences: ``fedavg`` (the guard with ``robust-direction = false``: what the issue measured),
``guard`` (the default: FedAvg behind the guard with its direction rule), ``fedmedian`` and
``fedtrimmedavg`` (Flower's, ``beta = 0.2``, both without the direction rule). The table gives
mean and standard deviation of the final accuracy, the difference to the same defence's
clean run, the mean first round at 0.8 accuracy (one past the last where never), the fraction of attacker replies the guard named (any status but ``ok``), and
the fractions of honest replies it rejected and named.

Run: ``python bench/attacks.py [--seeds 0 1 2 3 4] [--defences guard fedavg]``
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

from qfl.experiments import attack_app  # noqa: E402 (after the path fix above)

ATTACKERS = {"clean": (), **attack_app.ATTACKERS}  # partitions; the attacks are the attack ClientApp's own
DEFENCES = {
    "fedavg": {"strategy": "fedavg", "robust-direction": False},
    "guard": {"strategy": "fedavg", "robust-direction": True},
    "fedmedian": {"strategy": "fedmedian", "robust-direction": False},
    "fedtrimmedavg": {"strategy": "fedtrimmedavg", "strategy-options": "{ beta = 0.2 }", "robust-direction": False},
}


def absent(request):  # noqa: ANN001, ANN201 (Messages)
    """An error reply, as from a node that crashed: it is counted as failed, not aggregated."""
    from flwr.app import Error, Message

    return Message(Error(code=0, reason="absent (bench/attacks.py control)"), reply_to=request)


def run_cell(base: dict, defence: str, attack: str, seed: int, clients: int, rounds: int) -> dict:
    from qfl.inprocess import InProcessFederation

    attackers = {p + 1 for p in ATTACKERS[attack]}  # node IDs: partition + 1
    fed: InProcessFederation

    def corrupt(node: int, reply):  # noqa: ANN001, ANN202
        if node not in attackers:
            return reply
        request = fed.requests[reply.metadata.reply_to_message_id]
        return absent(request) if attack == "absent" else attack_app.sign_flipped(reply, request)

    config = {**base, **DEFENCES[defence], "seed": seed}
    fed = InProcessFederation(config, clients, corrupt)
    fed.run(rounds)
    named = [r for r in fed.rows if r["node_id"] in attackers]
    honest = [r for r in fed.rows if r["node_id"] not in attackers]
    return {
        "defence": defence, "attack": attack, "seed": seed, "accuracy": fed.accuracy[-1], "curve": fed.accuracy,
        "named": sum(r["status"] != "ok" for r in named) / len(named) if named else None,
        "honest_rejected": sum(str(r["status"]).startswith("rejected") for r in honest) / len(honest),
        "honest_named": sum(r["status"] != "ok" for r in honest) / len(honest),
    }


def rounds_to(curve: list[float], level: float) -> float:
    """The first round whose accuracy reaches ``level`` (``len(curve)``, one past the last, if none)."""
    return float(next((r for r, acc in enumerate(curve) if acc >= level), len(curve)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="wine")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    p.add_argument("--attacks", nargs="+", default=list(ATTACKERS), choices=list(ATTACKERS))
    args = p.parse_args()

    import torch

    from qfl.inprocess import task_identity
    from qfl.launch.config import app_defaults

    torch.set_num_threads(1)
    base = {**app_defaults(ROOT), "dataset": args.dataset}
    cells, started = [], time.monotonic()
    with task_identity():
        for defence in args.defences:
            for attack in args.attacks:
                for seed in args.seeds:
                    cells.append(run_cell(base, defence, attack, seed, args.clients, args.rounds))
                    print(json.dumps(cells[-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "cells": cells}, indent=1))
    print(f"\n{args.dataset}, {args.clients} clients, {args.rounds} rounds, seeds {args.seeds} "
          f"({time.monotonic() - started:.0f} s; cells in {OUT.relative_to(ROOT)})\n")
    print(table(cells, args.defences, args.attacks))
    base = {c["seed"]: c["accuracy"] for c in cells if c["defence"] == "fedavg" and c["attack"] == "clean"}
    for defence in args.defences:
        paired = [c["accuracy"] - base[c["seed"]] for c in cells
                  if c["defence"] == defence != "fedavg" and c["attack"] == "clean" and c["seed"] in base]
        if paired:
            print(f"\nclean-run cost of {defence} against fedavg, paired by seed: {np.mean(paired):+.3f} "
                  f"(min {min(paired):+.3f}, max {max(paired):+.3f})", end="")
    print()


def table(cells: list[dict], defences: list[str], attacks: list[str]) -> str:
    """A markdown table: per defence and attack, the final accuracy against the same defence's
    clean run (paired by seed), rounds to 0.8, and who was named or rejected."""
    lines = ["| defence | attack | final accuracy (mean ± sd) | vs clean | seeds > 0.10 below clean | rounds to 0.8 "
             "| attackers named | honest rejected | honest named |", "|---|---|---|---|---|---|---|---|---|"]
    for defence in defences:
        clean = {c["seed"]: c["accuracy"] for c in cells if c["defence"] == defence and c["attack"] == "clean"}
        for attack in attacks:
            got = [c for c in cells if c["defence"] == defence and c["attack"] == attack]
            if not got:
                continue
            acc = np.array([c["accuracy"] for c in got])
            paired = [c["accuracy"] - clean[c["seed"]] for c in got if c["seed"] in clean]
            named = [c["named"] for c in got if c["named"] is not None]
            lines.append(
                f"| {defence} | {attack} | {acc.mean():.3f} ± {acc.std():.3f} | "
                + (f"{np.mean(paired):+.3f} | {sum(d < -0.10 for d in paired)}/{len(paired)}" if paired else "— | —")
                + f" | {np.mean([rounds_to(c['curve'], 0.8) for c in got]):.1f} | "
                + (f"{np.mean(named):.2f}" if named else "—")
                + f" | {np.mean([c['honest_rejected'] for c in got]):.3f} | {np.mean([c['honest_named'] for c in got]):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
