"""Flower's ``flower-superexec`` whose ClientApp processes are forked, not started afresh.

``qfl-supernode`` starts its SuperExec as ``python -m qfl.launch.superexec`` with Flower's
own arguments. Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message a
node gets, and each imports flwr before it pulls the message (about 0.5 s of CPU on the
2-core machine: four nodes spend two core-seconds an exchange on it). Here each one is forked
from a server process that imported flwr once, then runs ``flwr-clientapp``'s own entry
point with the arguments Flower gave it: the same process per message, the same token,
the same isolation from the SuperNode (:func:`qfl.common.flower_internals.superexec_main`).
"""

from __future__ import annotations

import sys

from qfl.common.flower_internals import SUPEREXEC_COMMAND, superexec_main


def main() -> None:
    sys.argv = [SUPEREXEC_COMMAND, *sys.argv[1:]]
    sys.exit(superexec_main()())


if __name__ == "__main__":
    main()
