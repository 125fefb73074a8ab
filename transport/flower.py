"""Where transports meet Flower: a ClientApp mod on the nodes, a Grid wrapper on the server.

Data flow: strategy -> :class:`TransportGrid` (encode) -> wire -> :func:`transport_mod`
(decode) -> ClientApp -> :func:`transport_mod` (encode) -> wire -> :class:`TransportGrid`
(decode) -> strategy. The round travels in the clear beside the protected content (in a
``transport-envelope`` record) and is bound into the protection by the transports.
A message a transport refuses becomes an error reply with the reason, so the strategy
counts that client as failed for the round and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import WARNING

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from transport.base import SERVER_SAE, Envelope, TransportError, TransportStack, node_sae
from transport.registry import TRANSPORT_KEY, build_transport

ENVELOPE_RECORD = "transport-envelope"
TRANSPORT_ERROR_CODE = 4201


def _with_envelope(content: RecordDict, server_round: int) -> RecordDict:
    wire = RecordDict(dict(content.items()))
    wire[ENVELOPE_RECORD] = ConfigRecord({"round": server_round})
    return wire


def _without_envelope(content: RecordDict) -> tuple[RecordDict, int]:
    if ENVELOPE_RECORD not in content.config_records:
        raise TransportError("message has no transport envelope")
    server_round = int(content.config_records[ENVELOPE_RECORD]["round"])
    return RecordDict({k: v for k, v in content.items() if k != ENVELOPE_RECORD}), server_round


def transport_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: decode what arrives, encode the reply, per the run's ``transport``."""
    stack = build_transport(
        str(context.run_config[TRANSPORT_KEY]), context.run_config, node_sae(context.node_id), context.node_config
    )
    if not stack.transports:
        return call_next(msg, context)
    me = node_sae(context.node_id)
    try:
        content, server_round = _without_envelope(msg.content)
        request = stack.decode(content, Envelope(context.run_id, server_round, SERVER_SAE, me, "down"))
        msg.content = request
    except TransportError as err:
        log(WARNING, "transport %s: refused the server's message: %s", stack.name, err)
        return Message(Error(TRANSPORT_ERROR_CODE, f"transport {stack.name}: refused incoming message: {err}"), reply_to=msg)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    try:
        wire = stack.encode(reply.content, Envelope(context.run_id, server_round, me, SERVER_SAE, "up"), request)
    except TransportError as err:
        # nothing goes out in the clear: the server learns why, not the update
        log(WARNING, "transport %s: reply not sent: %s", stack.name, err)
        return Message(Error(TRANSPORT_ERROR_CODE, f"transport {stack.name}: reply not sent: {err}"), reply_to=msg)
    reply.content = _with_envelope(wire, server_round)
    return reply


class DelegatingGrid(Grid):
    """A Grid that forwards everything to ``grid``; subclasses override what they change."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self._grid.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self._grid.run

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self):  # type: ignore[no-untyped-def]
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class TransportGrid(DelegatingGrid):
    """Delegate to ``grid``; encode outgoing content and decode replies with ``stack``.

    Parameters
    ----------
    grid : Grid
    stack : TransportStack
    run_id : int
    round_fn : callable
        Returns the round being configured (the strategy's ``server_round``).
    """

    def __init__(self, grid: Grid, stack: TransportStack, run_id: int, round_fn: Callable[[], int]) -> None:
        super().__init__(grid)
        self.stack = stack
        self.run_id = run_id
        self.round_fn = round_fn
        self.unsent = 0  # messages a transport refused to send (e.g. no key)
        self._sent: dict[str, tuple[Message, int]] = {}

    def _encode(self, messages: Iterable[Message]) -> list[Message]:
        server_round = self.round_fn()
        out = []
        for msg in messages:
            dst = msg.metadata.dst_node_id
            try:
                content = self.stack.encode(msg.content, Envelope(self.run_id, server_round, SERVER_SAE, node_sae(dst), "down"))
            except TransportError as err:
                self.unsent += 1
                log(WARNING, "transport %s: nothing sent to node %d this round: %s", self.stack.name, dst, err)
                continue
            out.append(Message(content=_with_envelope(content, server_round), dst_node_id=dst, message_type=msg.metadata.message_type))
        return out

    def _decode(self, replies: Iterable[Message]) -> list[Message]:
        out = []
        for reply in replies:
            request, server_round = self._sent.pop(reply.metadata.reply_to_message_id, (None, self.round_fn()))
            if reply.has_error():
                out.append(reply)
                continue
            src = node_sae(reply.metadata.src_node_id)
            try:
                content, claimed = _without_envelope(reply.content)
                if claimed != server_round:
                    raise TransportError(f"reply claims round {claimed}, expected {server_round}")
                reply.content = self.stack.decode(content, Envelope(self.run_id, server_round, src, SERVER_SAE, "up"))
                out.append(reply)
            except TransportError as err:
                log(WARNING, "transport %s: rejected the reply of node %d: %s", self.stack.name, reply.metadata.src_node_id, err)
                if request is not None:
                    out.append(Message(Error(TRANSPORT_ERROR_CODE, f"transport {self.stack.name}: {err}"), reply_to=request))
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        server_round = self.round_fn()
        encoded = self._encode(messages)
        ids = list(self._grid.push_messages(encoded))
        for i, msg in zip(ids, encoded):
            if i is not None:
                self._sent[i] = (msg, server_round)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._decode(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        server_round = self.round_fn()
        encoded = self._encode(messages)
        replies = list(self._grid.send_and_receive(encoded, timeout=timeout))
        ids = [msg.metadata.message_id for msg in encoded]  # set by the inner grid's push
        for i, msg in zip(ids, encoded):
            self._sent[i] = (msg, server_round)
        decoded = self._decode(replies)
        for i in ids:  # requests that got no reply (a node died or timed out): forget them
            self._sent.pop(i, None)
        return decoded

    def take_unsent(self) -> int:
        out, self.unsent = self.unsent, 0
        return out
