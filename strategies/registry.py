"""Strategies chosen by name in the run config.

``strategy = "fedavg"`` names a built-in strategy; ``strategy = "package.module:Class"``
imports any subclass of Flower's :class:`flwr.serverapp.strategy.Strategy` from the
user's own module, without editing this project.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from strategies.fidelity_weighted import FidelityWeightedFedAvg
from strategies.inverse_variance import InverseVarianceFedAvg
from strategies.nested_fedavg import NestedFedAvg
from strategies.noise_isolating import NoiseIsolatingFedAvg
from strategies.noise_isolating_median import MedianNoiseIsolatingFedAvg
from strategies.oracle import NoisyDeviceOracle
from strategies.scaffold import Scaffold

# Built-in names -> classes. Every class accepts FedAvg's sampling keyword arguments.
BUILTIN_STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": FedAvg,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "noise-isolating": NoiseIsolatingFedAvg,  # clients' own noise claims, random effects (DerSimonian-Laird)
    "noise-isolating-median": MedianNoiseIsolatingFedAvg,  # the first one: distance to the median, for comparison
    # references for experiments (qfl experiment noise-dose): the textbook weight, and selection told the truth
    "inverse-variance": InverseVarianceFedAvg,  # n_k / the claimed update-noise-var, nothing else
    "oracle-drop-noisy": NoisyDeviceOracle,  # FedAvg without the clients on devices it is told are noisy
    "fidelity-weighted": FidelityWeightedFedAvg,
    # clients on nested circuit depths: each layer averaged over the clients that hold it (HeteroFL, Quorus)
    "nested-fedavg": NestedFedAvg,
    # client drift on non-IID data: a proximal term, control variates, server optimisers
    "fedprox": FedProx,  # the client adds (proximal-mu / 2) ||w - w_global||^2 (Li et al. 2020)
    "scaffold": Scaffold,  # control variates (Karimireddy et al. 2020)
    "fedavgm": FedAvgM,  # server momentum (Hsu et al. 2019)
    "fedadam": FedAdam,  # adaptive server optimisers (Reddi et al., ICLR 2021)
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
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
    """Instantiate the strategy ``name`` with ``options`` passed through as keywords.

    Raises
    ------
    ValueError
        If the strategy is unknown or rejects an option (the message names both).
    """
    cls = resolve_strategy(name)
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"strategy {name!r} does not accept these options {sorted(options)}: {err}") from err


def parse_strategy_options(text: str) -> dict[str, Any]:
    """Parse the ``strategy-options`` run-config string: a TOML inline table.

    Keys may use dashes or underscores (``{ weight-cap = 3.0 }``); they are passed
    to the strategy's constructor with underscores.

    >>> parse_strategy_options("{ weight-cap = 3.0, uncorrected-parameters = [] }")
    {'weight_cap': 3.0, 'uncorrected_parameters': []}
    """
    import tomllib

    text = text.strip() or "{}"
    try:
        table = tomllib.loads(f"options = {text}")["options"]
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"not a TOML inline table like '{{ key = 1.0 }}': {err}") from err
    if not isinstance(table, dict):
        raise ValueError(f"must be a TOML inline table like '{{ key = 1.0 }}', got {text!r}")
    return {k.replace("-", "_"): v for k, v in table.items()}
