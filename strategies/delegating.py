"""The one base for strategy wrappers: it forwards every hook to the inner strategy.

A wrapper (a round deadline, the server's guard) overrides only the hooks it changes, as
Flower's DP wrappers do. What a strategy learned about each client in a round does not
travel through wrapper attributes: a strategy that has something to say implements
:class:`ReportsRound`, and :func:`round_report` collects the reports of a whole chain of
wrappers through their ``strategy`` attribute (Flower's convention for wrappers, so its
own DP wrappers are crossed too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


@dataclass
class RoundReport:
    """What strategies concluded about a round's training replies.

    Attributes
    ----------
    clients : dict[int, dict[str, object]]
        Per node ID, columns of ``clients.csv`` (e.g. ``noise_var``, ``weight``, ``trimmed``, ``late``).
    stats : dict[str, float]
        Round totals for ``metrics.csv`` (e.g. ``stragglers``).
    """

    clients: dict[int, dict[str, object]] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)

    def merge(self, other: RoundReport) -> RoundReport:
        for node, columns in other.clients.items():
            self.clients.setdefault(node, {}).update(columns)
        self.stats.update(other.stats)
        return self


@runtime_checkable
class ReportsRound(Protocol):
    """A strategy that reports on the training round it aggregated last."""

    def round_report(self) -> RoundReport: ...


def round_report(strategy: Strategy) -> RoundReport:
    """The merged reports of ``strategy`` and every strategy it wraps."""
    report, seen = RoundReport(), set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        if isinstance(strategy, ReportsRound):
            report.merge(strategy.round_report())
        strategy = getattr(strategy, "strategy", None)  # Flower's wrappers hold the inner one here  # not a contract name
    return report


class DelegatingStrategy(Strategy):
    """A strategy that forwards everything to ``strategy``; subclasses override what they change."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
