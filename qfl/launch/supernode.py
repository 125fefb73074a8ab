"""``qfl-supernode``: Flower's SuperNode, polling an idle link every ``--poll-interval`` s.

Flower 1.42's ``flower-supernode`` sleeps 3 s after every pull that finds no message and
0.5 s between looks for a ClientApp's reply, with no option to change either. Every
exchange of a round starts with idle nodes, so the round waits out those sleeps: for four
nodes about 2.4 s per exchange, on top of the ClientApp's own work, and one extra exchange
per round costs secure aggregation (or any multi-stage protocol) that much again.
``qfl-supernode`` runs Flower's own SuperNode, unchanged but for those two sleeps, capped
at ``--poll-interval`` (default :data:`POLL_INTERVAL_S`); every other argument is Flower's::

    qfl-supernode --poll-interval 0.2 --insecure --superlink 127.0.0.1:9092 --node-config '...'

A shorter poll costs the SuperLink one pull per node per interval while the node is idle
(``bench/deployment_round.py`` measures both; ``--poll-interval 3`` is Flower's own).

Its SuperExec forks each message's ClientApp process from a process that imported flwr once,
instead of starting ``flwr-clientapp`` afresh (:mod:`qfl.launch.superexec`);
``--fresh-clientapps`` keeps Flower's fresh processes.
"""

from __future__ import annotations

import argparse
import math
import sys

from qfl.common.flower_internals import supernode_main

POLL_INTERVAL_S = 0.2
POLL_FLAG = "--poll-interval"
FRESH_FLAG = "--fresh-clientapps"


def poll_interval(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0.01 <= value <= 3.0:
        raise argparse.ArgumentTypeError(f"{POLL_FLAG} must be between 0.01 and 3 s (Flower's own), got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qfl-supernode", add_help=False)
    parser.add_argument(POLL_FLAG, type=poll_interval, default=POLL_INTERVAL_S)
    parser.add_argument(FRESH_FLAG, action="store_true")
    ours, flowers = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    sys.argv = ["flower-supernode", *flowers]
    sys.exit(supernode_main(ours.poll_interval, fork_clientapps=not ours.fresh_clientapps)())


if __name__ == "__main__":
    main()
