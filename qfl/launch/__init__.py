"""The parts ``qfl launch`` is made of, each with one job.

- :mod:`qfl.launch.config`: run-config values from defaults, a file, ``--set`` and flags;
- :mod:`qfl.launch.runs`: run folders: names, the ``latest`` link, one launch at a time;
- :mod:`qfl.launch.commands`: the Flower and key-manager commands (docker-compose.yml and
  the separate-machine tests run the same ones);
- :mod:`qfl.launch.processes`: starting, watching and stopping every process (psutil);
- :mod:`qfl.launch.console`: what a person sees: live progress, causes, the final table.

:mod:`qfl.launcher` puts them together.
"""
