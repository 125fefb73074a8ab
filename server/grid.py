"""A Grid wrapper that meters traffic and polls for replies more often than Flower's.

Flower's ``HttpGrid.send_and_receive`` sleeps 3 s between pulls; with two exchanges
per round that alone can cost up to 6 s a round. :class:`MeteredGrid` keeps the same
push/pull protocol but polls every ``poll_interval`` seconds, and counts the
serialised size of every message's content (what travels in the protobuf) in each
direction. It also notices nodes that went away during a round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import WARNING

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from qfl.common.flower_internals import quick_object_pulls, record_nbytes
from transport.flower import DelegatingGrid


def content_nbytes(message: Message) -> int:
    """Serialised size in bytes of a message's content (0 for an error reply)."""
    if message.has_error():
        return 0
    return record_nbytes(message.content)


class MeteredGrid(DelegatingGrid):
    """Delegate to ``grid``; meter bytes down/up and poll replies every ``poll_interval`` s.

    Attributes
    ----------
    bytes_down : int
        Bytes of message content pushed to nodes since the last :meth:`take_counters`.
    bytes_up : int
        Bytes of reply content pulled from nodes since then.
    """

    def __init__(self, grid: Grid, poll_interval: float = 0.1,
                 on_replies: Callable[[str, int, int], None] | None = None) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        super().__init__(grid)
        quick_object_pulls()  # a reply listed before its arrays arrived: asked again after 20 ms, not 1 s
        self.poll_interval = poll_interval
        self.on_replies = on_replies  # (phase, received, expected), as replies come in
        self.bytes_down = 0
        self.bytes_up = 0
        self.missing_replies: list[int] = []  # nodes that did not answer in time
        self.partition_of: dict[int, int] = {}  # node -> the partition it named (the warm-up's answers)

    def get_node_ids(self) -> Iterable[int]:
        """The nodes by the partition they named, then by ID (those that named none last).

        Flower's strategies sample with ``random.sample(list(grid.get_node_ids()), k)``, which
        picks positions: listed by partition, a seeded sample picks the same partitions in
        every run, whatever random IDs the SuperLink or the simulation engine gave the nodes.
        """
        return sorted(self._grid.get_node_ids(), key=lambda n: (self.partition_of.get(n, float("inf")), n))

    # --- metered ---------------------------------------------------------------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.bytes_down += sum(content_nbytes(m) for m in messages)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        self.bytes_up += sum(content_nbytes(m) for m in replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and pull replies until all arrived or ``timeout`` s passed.

        A node that never replies (it died, or is too slow) does not block the round
        beyond ``timeout``: the round goes on with the replies that came, and the
        missing ones are logged and counted in :attr:`missing_replies`.
        """
        messages = list(messages)
        if not messages:
            return []
        ids = list(self.push_messages(messages))  # same order as ``messages``
        sent = {i: m for i, m in zip(ids, messages) if i is not None}
        dst = {i: m.metadata.dst_node_id for i, m in sent.items()}
        if len(dst) < len(messages):
            log(WARNING, "%d message(s) could not be pushed", len(messages) - len(dst))
        phase = messages[0].metadata.message_type.split(".")[0]
        del messages
        pending = set(dst)
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        if self.on_replies is not None:
            self.on_replies(phase, 0, len(dst))
        while pending:
            got = [_about_its_node(m, sent, dst) for m in self.pull_messages(pending)]
            replies.extend(got)
            if got and self.on_replies is not None:
                self.on_replies(phase, len(replies), len(dst))
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self.poll_interval)
        if pending:
            self.missing_replies += sorted(dst[i] for i in pending)
            log(
                WARNING,
                "No reply from %d node(s) within %.0f s (nodes %s): going on without them",
                len(pending),
                timeout or 0.0,
                sorted(dst[i] for i in pending),
            )
        return replies

    def take_counters(self) -> tuple[int, int, list[int]]:
        """Return and reset ``(bytes_down, bytes_up, nodes that did not reply)``."""
        out = (self.bytes_down, self.bytes_up, self.missing_replies)
        self.bytes_down = self.bytes_up = 0
        self.missing_replies = []
        return out


def _about_its_node(reply: Message, sent: dict[str, Message], dst: dict[str, int]) -> Message:
    """An error the SuperLink wrote for an unavailable node, as a reply from that node
    (Flower sends it under its own ID), so that the round names the node that failed."""
    request_id = reply.metadata.reply_to_message_id
    if reply.has_error() and request_id in dst and reply.metadata.src_node_id != dst[request_id]:
        return Message(reply.error, reply_to=sent[request_id])
    return reply
