"""Aggregation strategies for quantum federated learning, selectable by name."""

from strategies.registry import BUILTIN_STRATEGIES, load_strategy, resolve_strategy

__all__ = ["BUILTIN_STRATEGIES", "load_strategy", "resolve_strategy"]
