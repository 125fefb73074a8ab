"""An oracle for experiments: FedAvg over exactly the clients that are not on a noisy device.

Selection at its best. Robust rules such as MultiKrum try to find, from the updates alone,
which clients to leave out; this one is *told*. It is the reference a noise-handling
strategy is measured against in ``qfl experiment noise-dose`` (docs/experiments.md): where
noise isolation does not beat it, down-weighting noisy clients gains nothing over dropping
them. It is not a defence and cannot be deployed (below).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from qfl.common.contract import DEVICE, DEVICE_PROFILE, REPORT_TRIMMED, REPORT_WEIGHT
from strategies.delegating import RoundReport


def claimed_profile(message: Message) -> str | None:
    """The device-profile spec a reply says it ran on (its ``device`` ConfigRecord), stripped;
    ``None`` for an error reply or one that names none."""
    if message.has_error():
        return None
    said = message.content.config_records.get(DEVICE, {}).get(DEVICE_PROFILE)
    return said.strip() if isinstance(said, str) else None


class NoisyDeviceOracle(FedAvg):
    r"""FedAvg over the replies whose device is not one of ``noisy_profiles``.

    With :math:`N` the set of clients on a noisy device (told, below),

    .. math::

        w^{t+1} = \sum_{k \notin N} \frac{n_k}{\sum_{j \notin N} n_j}\, w_k ,

    FedAvg of the others, in Flower's own arithmetic; every reply is kept when none is on a
    noisy device (then this is FedAvg, bit for bit), and when every sound reply is, there is
    no step (the global model stays; logged).

    **Which clients are noisy.** Each training reply names the device profile its client ran
    on (the ``device`` ConfigRecord's ``profile``: the spec as the run config or the node's own
    ``device-profile`` wrote it, e.g. ``"ibm:marrakesh:shots=128"``); a reply whose spec is one
    of ``noisy_profiles`` is dropped. The claimed profile is read, not the run's
    ``device-profiles`` list by partition, because it is what each client ran on wherever its
    profile came from (a node's own ``device-profile`` overrides the run's list), it needs no
    copy of the run config in the strategy's options, and the experiment that places the noisy
    devices names the same specs.

    **Why it is an oracle.** Two things no real server has: the ground truth of which devices
    are noisy, given by whoever set the experiment up (a deployed server sees claims, updates
    and nothing that says "noisy"); and trust in the device each reply names (a client may
    name any). In simulation both are true by construction, so this is the upper reference
    for selection by device: exactly the noisy clients out, nobody else.

    Parameters
    ----------
    noisy_profiles : list[str] (default: ``[]``)
        The device-profile specs of the noisy devices, exactly as the clients name them (as
        written in ``device-profiles``; compared after stripping spaces). Empty: FedAvg.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (sampling, record keys).

    Notes
    -----
    :meth:`round_report` marks each dropped client ``trimmed`` in ``clients.csv`` (counted in
    the round's ``clients-trimmed``) and gives every client its weight (0 when dropped). A reply
    that names no profile is kept: the oracle knows nothing against it.
    """

    def __init__(self, *, noisy_profiles: Iterable[str] = (), **kwargs) -> None:  # noqa: ANN003 (FedAvg's)
        if isinstance(noisy_profiles, str) or not all(isinstance(p, str) and p.strip() for p in noisy_profiles):
            raise ValueError(f"noisy_profiles must be a list of device-profile specs, got {noisy_profiles!r}")
        super().__init__(**kwargs)
        self.noisy_profiles = frozenset(p.strip() for p in noisy_profiles)
        self.last_report: dict[int, dict[str, object]] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> Oracle: drops every reply from a device it is told is noisy: %s",
            ", ".join(sorted(self.noisy_profiles)) or "none (FedAvg)")
        super().summary()

    def round_report(self) -> RoundReport:
        """Each client of the last round: dropped (``trimmed``) or kept, and its weight."""
        return RoundReport({node: dict(columns) for node, columns in self.last_report.items()})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        dropped = [m for m in replies if claimed_profile(m) in self.noisy_profiles]
        kept = [m for m in replies if not any(m is d for d in dropped)]
        sound = [m for m in kept if not m.has_error()]
        counts = {m.metadata.src_node_id: float(_examples(m, self.weighted_by_key)) for m in sound}
        total = sum(counts.values())
        self.last_report = {m.metadata.src_node_id: {REPORT_TRIMMED: True, REPORT_WEIGHT: 0.0} for m in dropped}
        self.last_report.update({node: {REPORT_TRIMMED: False, REPORT_WEIGHT: n / total if total > 0 else 0.0}
                                 for node, n in counts.items()})
        for m in dropped:
            log(INFO, "\t> oracle: node %d is on the noisy device %s: dropped", m.metadata.src_node_id,
                claimed_profile(m))
        if dropped and not sound:
            log(WARNING, "Oracle, round %d: every sound reply came from a noisy device: no step", server_round)
            return None, None
        return super().aggregate_train(server_round, kept)


def _examples(message: Message, key: str) -> object:
    for record in message.content.metric_records.values():
        if key in record:
            return record[key]
    return 0.0
