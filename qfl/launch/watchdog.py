"""The launch's dead-man switch: stops every process a launch started once the launcher is gone.

``qfl launch`` stops its federation itself on success, on error, on Ctrl-C, SIGTERM and
SIGHUP. Killed outright (SIGKILL, the OOM killer), it runs no code: its SuperLink,
SuperNodes and what they started (Flower detaches the SuperExec into a session of its own)
would live on, finish the run and hold its ports. So every launch starts this small process
in a session of its own, with a pipe from the launcher on its standard input and the
launch's token (:data:`MARKER`, a random value every process of the launch inherits in its
environment). The pipe closes however the launcher ends; the watchdog then ends every
process whose environment holds the token: SIGTERM, and SIGKILL after a grace period.

Run: ``python -m qfl.launch.watchdog TOKEN`` (the launcher does it).
"""

from __future__ import annotations

import os
import signal
import sys

import psutil

MARKER = "QFL_LAUNCH_TOKEN"  # in the environment of every process a launch starts
GRACE_S = 5.0


def marked(token: str) -> list[psutil.Process]:
    """Every live process (but this one) whose environment holds ``MARKER=token``."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARKER) == token:
                found.append(proc)
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    return found


def stop_marked(token: str, grace_s: float = GRACE_S) -> int:
    """SIGTERM the launch's processes, SIGKILL those left after ``grace_s``; how many there were."""
    procs = marked(token)
    terminate(procs, grace_s)
    return len(procs)


def terminate(procs: list[psutil.Process], grace_s: float = GRACE_S) -> None:
    """SIGTERM ``procs``, SIGKILL those left after ``grace_s``, and wait for them."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m qfl.launch.watchdog TOKEN", file=sys.stderr)
        return 2
    for sig in (signal.SIGHUP, signal.SIGINT):  # the terminal's signals are the launcher's to handle
        signal.signal(sig, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at EOF: the launcher closed the pipe or died
    stopped = stop_marked(argv[0])
    if stopped:
        print(f"[qfl] watchdog: the launcher was gone; stopped {stopped} process(es) it had started", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
