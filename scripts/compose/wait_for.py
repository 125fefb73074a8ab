"""Wait until each ``host:port`` accepts a TCP connection; the compose file's readiness probe.

``python scripts/compose/wait_for.py superlink:8000 [host:port ...] [--timeout 60]`` exits 0
once every address has accepted a connection, 1 (naming the address) if one has not within
the timeout. It runs in a one-shot container of its own, beside the service it waits for,
in place of a Docker healthcheck: a healthcheck is a ``docker exec`` into the service's
container, and every exec starts there as root (runc's ``runc init``, which joins the
container, then drops to the service's user and runs the probe), so a check of who runs in
the container could catch a root process every 2 s (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

PAUSE_S = 0.5


def reachable(address: str, timeout_s: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout_s):
            return True
    except OSError:  # not listening yet, or its name not resolvable yet
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addresses", nargs="+", metavar="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each (default 60)")
    args = parser.parse_args(argv)
    for address in args.addresses:
        deadline = time.monotonic() + args.timeout
        while not reachable(address):
            if time.monotonic() > deadline:
                print(f"{address}: not accepting connections after {args.timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(PAUSE_S)
        print(f"{address}: up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
