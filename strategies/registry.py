"""Strategies chosen by name in the run config.

``strategy = "fedavg"`` names a built-in strategy; ``strategy = "package.module:Class"``
imports any subclass of Flower's :class:`flwr.serverapp.strategy.Strategy` from the
user's own module, without editing this project.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy

# Built-in names -> classes. Every class accepts FedAvg's sampling keyword arguments.
BUILTIN_STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": FedAvg,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
}


def resolve_strategy(name: str) -> Callable[..., Strategy]:
    """Return the strategy class a name refers to.

    Raises
    ------
    ValueError
        If the name is neither built in nor an importable ``module:Class`` path to a
        :class:`~flwr.serverapp.strategy.Strategy` subclass.
    """
    if name in BUILTIN_STRATEGIES:
        return BUILTIN_STRATEGIES[name]
    if ":" not in name:
        raise ValueError(
            f"unknown strategy {name!r}: use one of {', '.join(sorted(BUILTIN_STRATEGIES))} "
            "or a 'package.module:Class' path"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"strategy {name!r}: cannot import module {module_name!r}: {err}") from err
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"strategy {name!r}: {attr!r} is not a flwr Strategy subclass")
    return cls


def load_strategy(name: str, **options: Any) -> Strategy:
    """Instantiate the strategy ``name`` with ``options`` passed through."""
    return resolve_strategy(name)(**options)
