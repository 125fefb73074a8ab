"""The parts ``qfl launch`` is made of, each with one job.

- :mod:`server.launch.config`: run-config values from defaults, a file, ``--set`` and flags;
- :mod:`server.launch.runs`: run folders: names, the ``latest`` link, one launch at a time;
- :mod:`server.launch.commands`: the Flower and key-manager commands (docker-compose.yml and
  the separate-machine tests run the same ones);
- :mod:`server.launch.processes`: starting, watching and stopping every process (psutil);
- :mod:`server.launch.console`: what a person sees: live progress, causes, the final table.

:mod:`server.launcher` puts them together.
"""
