"""Register SuperNode public keys with the SuperLink, as many times as it is run.

``python scripts/compose/register.py KEY.pub [KEY.pub ...]`` runs ``flwr supernode register``
for each key on the ``compose`` connection (``$FLWR_HOME/config.toml``, copied from
``scripts/compose/config.toml``). A key the SuperLink knows already counts as registered,
so ``docker compose run submit`` (which runs this service again) and adding a client work
on a running federation; any other failure stops it with Flower's own words.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ALREADY = "already in use"  # what the SuperLink answers for a key it has


def main(keys: list[str]) -> int:
    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("config.toml"), home / "config.toml")
    for key in keys:
        done = subprocess.run(["flwr", "supernode", "register", key, "compose"], capture_output=True, text=True)
        words = done.stdout + done.stderr
        if done.returncode == 0:
            print(f"{key}: registered")
        elif ALREADY in words:
            print(f"{key}: registered already")
        else:
            print(f"{key}: registration failed:\n{words}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
