"""The guard's former single module, kept for the import sites outside the strategies package
(``server/app.py``, transport tests): everything now lives in :mod:`strategies.guard`."""

from strategies.guard import *  # noqa: F403
from strategies.guard import __all__  # noqa: F401
