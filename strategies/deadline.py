"""A round deadline on the simulated network clock, with a policy for stragglers.

Over a quantum network each client's update needs a different, random time to arrive
(Chehimi et al., Sec. III: "QFL de-synchronization and training latency"). A reply
reports its arrival time as the metric ``latency-s`` (the ``qcn`` transport sets it; a
reply without it is on time). With a deadline :math:`D`:

- **drop**: an update with latency :math:`\\ell > D` is discarded;
- **stale**: it is held and folded into round :math:`t + s`, :math:`s = \\lceil \\ell/D \\rceil - 1`
  (the round in which it arrives, every round lasting :math:`D` once a client is late),
  with its weight :math:`n_k` multiplied by :math:`\\gamma^s` (``staleness_discount``);
  the inner strategy then averages it with that round's fresh updates, as in
  staleness-discounted asynchronous FL (Xie, Koyejo & Gupta, "Asynchronous Federated
  Optimization", 2019).

Simplifications, on purpose: the clock is the simulated network latency only (local
training time is not added, so runs are reproducible), a late client still trains in
the next round, and held updates are not checkpointed (a resumed run starts without).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from qfl.common.contract import LATENCY_S as LATENCY_KEY
from qfl.common.contract import NUM_EXAMPLES, REPORT_LATE, ROUND_STALE_FOLDED, ROUND_STRAGGLERS
from strategies.delegating import DelegatingStrategy, RoundReport

POLICIES = ("drop", "stale")


class RoundDeadline(DelegatingStrategy):
    """Delegate to ``strategy``; apply a deadline to its training replies.

    Parameters
    ----------
    strategy : Strategy
        The strategy that aggregates the updates that count.
    deadline_s : float
        :math:`D`, on the simulated network clock (s), > 0.
    policy : str
        ``"drop"`` or ``"stale"``.
    staleness_discount : float
        :math:`\\gamma \\in (0, 1]`, per round late.
    weighted_by_key : str
        The metric holding :math:`n_k` (``num-examples`` by default).
    """

    def __init__(
        self,
        strategy: Strategy,
        deadline_s: float,
        policy: str = "drop",
        staleness_discount: float = 0.5,
        weighted_by_key: str | None = None,
    ) -> None:
        if not deadline_s > 0:
            raise ValueError(f"deadline must be > 0 s, got {deadline_s}")
        if policy not in POLICIES:
            raise ValueError(f"straggler policy must be one of {POLICIES}, got {policy!r}")
        if not 0 < staleness_discount <= 1:
            raise ValueError(f"staleness discount must be in (0, 1], got {staleness_discount}")
        super().__init__(strategy)
        self.deadline_s, self.policy, self.staleness_discount = deadline_s, policy, staleness_discount
        self.weighted_by_key = weighted_by_key or NUM_EXAMPLES
        self._held: dict[int, list[Message]] = {}
        self.last_stats: dict[str, float] = {ROUND_STRAGGLERS: 0, ROUND_STALE_FOLDED: 0}
        self.last_late_nodes: set[int] = set()

    def round_report(self) -> RoundReport:
        """Which nodes were late in the last round, and the round's straggler counts."""
        return RoundReport({node: {REPORT_LATE: 1} for node in self.last_late_nodes}, dict(self.last_stats))

    def summary(self) -> None:
        log(INFO, "\t├──> Round deadline %.3g s, stragglers: %s (discount %.3g per round late)",
            self.deadline_s, self.policy, self.staleness_discount)
        self.strategy.summary()

    def latency(self, msg: Message) -> float:
        """A reply's arrival time on the network clock (0 if it reports none)."""
        for metrics in msg.content.metric_records.values():
            if LATENCY_KEY in metrics:
                return float(metrics[LATENCY_KEY])  # type: ignore[arg-type]
        return 0.0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        on_time: list[Message] = []
        late = 0
        self.last_late_nodes = set()
        for msg in replies:
            latency = 0.0 if msg.has_error() else self.latency(msg)
            if latency <= self.deadline_s:
                on_time.append(msg)
                continue
            late += 1
            self.last_late_nodes.add(msg.metadata.src_node_id)
            if self.policy == "drop":
                log(WARNING, "Straggler: node %d's update arrived at %.3g s, after the %.3g s deadline: dropped",
                    msg.metadata.src_node_id, latency, self.deadline_s)
                continue
            rounds_late = max(1, math.ceil(latency / self.deadline_s) - 1)
            self._held.setdefault(server_round + rounds_late, []).append(self._discounted(msg, rounds_late))
            log(INFO, "Straggler: node %d's update (%.3g s > %.3g s) is folded into round %d with weight x%.3g",
                msg.metadata.src_node_id, latency, self.deadline_s, server_round + rounds_late,
                self.staleness_discount**rounds_late)
        folded = self._held.pop(server_round, [])
        self.last_stats = {ROUND_STRAGGLERS: late, ROUND_STALE_FOLDED: len(folded)}
        return self.strategy.aggregate_train(server_round, on_time + folded)

    def _discounted(self, msg: Message, rounds_late: int) -> Message:
        """``msg`` with its weight :math:`n_k` times :math:`\\gamma^s`."""
        factor = self.staleness_discount**rounds_late
        content = RecordDict(dict(msg.content.items()))
        for key, metrics in msg.content.metric_records.items():
            if self.weighted_by_key in metrics:
                scaled = dict(metrics)
                scaled[self.weighted_by_key] = float(metrics[self.weighted_by_key]) * factor  # type: ignore[arg-type]
                content[key] = MetricRecord(scaled)
        held = copy.copy(msg)  # the reply itself stays as it came (it is logged per client)
        held.content = content
        return held

    def pending(self) -> int:
        """Late updates held for later rounds."""
        return sum(len(v) for v in self._held.values())

