"""The project's own package, beside the four the design card names.

- :mod:`qfl.common`: the shared core every package may import (the run configuration, the
  contract of names, record helpers, presets, atomic files, the one seam to Flower's
  internals); it imports nothing of the project.
- :mod:`qfl.task`: the learning task both apps build (data, model, device noise, training).
- the tooling around the apps: the ``qfl`` command (:mod:`qfl.launcher`, :mod:`qfl.launch`),
  the experiments (:mod:`qfl.experiments`), certificates (:mod:`qfl.pki`) and an in-process
  federation for tests and studies (:mod:`qfl.inprocess`). Nothing of the four packages
  imports the tooling.
"""
