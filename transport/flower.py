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
from logging import ERROR, INFO, WARNING

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from qfl.common.config import NodeConfig, RunConfig
from qfl.common.contract import SERVER_ROUND, WARM_UP_ACTION
from transport.base import SERVER_SAE, Envelope, TransportError, TransportStack, node_sae
from transport.delegating_grid import DelegatingGrid  # noqa: F401 (also imported from here)
from transport.qkd.identity import SAE_ID_RE
from transport.registry import build_transport

ENVELOPE_RECORD = "transport-envelope"
HELLO_RECORD = "transport-hello"
HELLO_ACTION = "qfl_transport_hello"
HELLO_TYPE = f"query.{HELLO_ACTION}"
WARM_UP_TYPE = f"query.{WARM_UP_ACTION}"
TRANSPORT_ERROR_CODE = 4201


def _with_envelope(content: RecordDict, server_round: int, sender: str) -> RecordDict:
    wire = RecordDict(dict(content.items()))
    wire[ENVELOPE_RECORD] = ConfigRecord({"round": server_round, "sae": sender})
    return wire


def _without_envelope(content: RecordDict) -> tuple[RecordDict, int, str]:
    """``(content, round, sender's SAE ID)``; :class:`TransportError` if the envelope is bad.

    The round and the SAE ID are claims; the transports bind both into their protection,
    so a false claim fails there (e.g. the key manager has no such key for that sender).
    """
    record = content.config_records.get(ENVELOPE_RECORD)
    if record is None:
        raise TransportError("message has no transport envelope")
    server_round, sender = record.get("round"), record.get("sae")
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise TransportError(f"transport envelope: round must be a non-negative integer, got {server_round!r}")
    if not isinstance(sender, str) or not SAE_ID_RE.match(sender):
        raise TransportError(f"transport envelope: sender SAE ID malformed: {sender!r}")
    return RecordDict({k: v for k, v in content.items() if k != ENVELOPE_RECORD}), server_round, sender


def answer_hello(msg: Message, context: Context) -> Message:
    """The ClientApp's handler for :data:`HELLO_TYPE`; :func:`transport_mod` fills in the
    node's identity before this is reached, so this answers only without transports."""
    return Message(RecordDict(), reply_to=msg)


ClientAppMod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def stack_mod(build: Callable[[Context], TransportStack]) -> ClientAppMod:
    """A ClientApp mod (Flower's ``(msg, context, call_next)``) that decodes what arrives and
    encodes the reply with the transports ``build(context)`` returns.

    The server side is :class:`TransportGrid` over the same transports. A ``ValueError``
    from ``build`` (no SAE certificate on this node, a bad node config) becomes an error
    reply that says why; nothing is sent in the clear when a transport refuses.
    """

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        try:
            stack = build(context)
        except ValueError as err:
            log(ERROR, "transport: cannot start on this node: %s", err)
            return Message(Error(TRANSPORT_ERROR_CODE, f"transport unavailable on this node: {err}"), reply_to=msg)
        return _through(stack, msg, context, call_next)

    return mod


def _stack_of_run(context: Context) -> TransportStack:
    return build_transport(RunConfig.from_run_config(context.run_config), NodeConfig.from_node_config(context.node_config),
                           context.state)


# the project's ClientApp mod: the transports the run config's ``transport`` names
transport_mod = stack_mod(_stack_of_run)


def _through(stack: TransportStack, msg: Message, context: Context,
             call_next: Callable[[Message, Context], Message]) -> Message:
    if not stack.transports or msg.metadata.message_type == WARM_UP_TYPE:
        return call_next(msg, context)  # nothing to protect (a warm-up carries nothing)
    me = stack.sae_id or node_sae(context.node_id)
    if msg.metadata.message_type == HELLO_TYPE:  # the server asks who we are (once a run)
        return Message(RecordDict({HELLO_RECORD: ConfigRecord({"sae": me})}), reply_to=msg)
    try:
        content, server_round, server = _without_envelope(msg.content)
        kind = msg.metadata.message_type
        request = stack.decode(content, Envelope(context.run_id, server_round, context.node_id, server, me, "down", kind))
        msg.content = request
    except TransportError as err:
        log(WARNING, "transport %s: refused the server's message: %s", stack.name, err)
        return Message(Error(TRANSPORT_ERROR_CODE, f"transport {stack.name}: refused incoming message: {err}"), reply_to=msg)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    try:
        envelope = Envelope(context.run_id, server_round, context.node_id, me, server, "up", kind)
        wire = stack.encode(reply.content, envelope, request)
    except TransportError as err:
        # nothing goes out in the clear: the server learns why, not the update
        log(WARNING, "transport %s: reply not sent: %s", stack.name, err)
        return Message(Error(TRANSPORT_ERROR_CODE, f"transport {stack.name}: reply not sent: {err}"), reply_to=msg)
    reply.content = _with_envelope(wire, server_round, me)
    return reply


class TransportGrid(DelegatingGrid):
    """Delegate to ``grid``; encode outgoing content and decode replies with ``stack``.

    When the stack identifies its ends by certificate (``qkd``), the server first asks each
    node it has not heard from who it is (a :data:`HELLO_TYPE` query, once per node and
    run) and then encrypts for that SAE only. A node's claim cannot steal anything: keys
    for an SAE are handed only to the holder of its certificate, and the Flower node ID and
    the message type are bound into every ciphertext. One SAE stands behind one node per
    run: a second node claiming an SAE that a connected node already is gets nothing, and
    the reason is logged and counted as the message it was not sent.

    Parameters
    ----------
    grid : Grid
    stack : TransportStack
    run_id : int
    round_fn : callable, optional
        Returns the round being configured (the strategy's ``server_round``); ``None``: the
        ``server-round`` that Flower's strategies write into every message's config.
    hello_timeout : float
        Seconds to wait for the nodes' identities.
    """

    def __init__(self, grid: Grid, stack: TransportStack, run_id: int, round_fn: Callable[[], int] | None = None,
                 hello_timeout: float = 120.0) -> None:
        super().__init__(grid)
        self.stack = stack
        self.run_id = run_id
        self.round_fn = round_fn
        self._last_round = 0
        self.hello_timeout = hello_timeout
        self.sae_id = stack.sae_id or SERVER_SAE
        self.peers: dict[int, str] = {}  # node ID -> its SAE ID (one node per SAE)
        self.not_peers: dict[int, str] = {}  # node ID -> why its SAE claim was refused
        self.unsent: list[tuple[int, str]] = []  # (node, why) of messages a transport refused to send
        self.refused: list[tuple[int, str]] = []  # (node, reason) of replies a transport refused
        self._sent: dict[str, tuple[Message, int]] = {}

    def _peer(self, node_id: int) -> str | None:
        if not self.stack.identifies_peers:
            return node_sae(node_id)
        return self.peers.get(node_id)

    def introduce(self, node_ids: set[int], timeout: float | None) -> None:
        """Learn the SAE IDs of ``node_ids`` we do not know yet (one query round trip)."""
        unknown = sorted(n for n in node_ids if self._peer(n) is None)
        if not unknown:
            return
        hellos = [
            Message(RecordDict({HELLO_RECORD: ConfigRecord({"sae": self.sae_id})}), dst_node_id=n, message_type=HELLO_TYPE)
            for n in unknown
        ]
        wait = self.hello_timeout if timeout is None else min(timeout, self.hello_timeout)
        for reply in self._grid.send_and_receive(hellos, timeout=wait):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "transport %s: node %d cannot take part: %s", self.stack.name, node, reply.error.reason)
                continue
            record = reply.content.config_records.get(HELLO_RECORD)
            sae = record.get("sae") if record is not None else None
            if not (isinstance(sae, str) and SAE_ID_RE.match(sae)):
                log(WARNING, "transport %s: node %d answered no valid SAE ID", self.stack.name, node)
                continue
            holder = self._holder(sae)
            if holder is not None and holder != node:
                self.not_peers[node] = f"SAE {sae} already stands behind node {holder} in this run (one node per SAE)"
                log(WARNING, "transport %s: node %d refused: %s", self.stack.name, node, self.not_peers[node])
                continue
            self.peers[node] = sae
            self.not_peers.pop(node, None)
            log(INFO, "transport %s: node %d is SAE %s", self.stack.name, node, sae)

    def _holder(self, sae: str) -> int | None:
        """The node that is ``sae`` in this run, if it is still connected (a node that left,
        e.g. restarted under a new node ID, frees its SAE)."""
        holder = next((n for n, s in self.peers.items() if s == sae), None)
        if holder is not None and holder not in set(self._grid.get_node_ids()):
            del self.peers[holder]
            return None
        return holder

    def _round(self, messages: list[Message]) -> int:
        """The round these messages belong to: ``round_fn()``, else the ``server-round`` a
        Flower strategy wrote into their config."""
        if self.round_fn is not None:
            self._last_round = self.round_fn()
            return self._last_round
        for msg in messages:
            for record in msg.content.config_records.values():
                value = record.get(SERVER_ROUND)
                if isinstance(value, int) and not isinstance(value, bool):
                    self._last_round = value
                    return value
        return self._last_round

    def _encode(self, messages: list[Message], server_round: int, timeout: float | None = None) -> list[Message]:
        self.introduce({m.metadata.dst_node_id for m in messages}, timeout)
        out = []
        for msg in messages:
            dst = msg.metadata.dst_node_id
            peer = self._peer(dst)
            try:
                if peer is None:
                    raise TransportError(self.not_peers.get(dst, "it never said which SAE it is"))
                envelope = Envelope(self.run_id, server_round, dst, self.sae_id, peer, "down", msg.metadata.message_type)
                content = self.stack.encode(msg.content, envelope)
            except TransportError as err:
                self.unsent.append((dst, str(err)))
                log(WARNING, "transport %s: nothing sent to node %d this round: %s", self.stack.name, dst, err)
                continue
            out.append(Message(content=_with_envelope(content, server_round, self.sae_id), dst_node_id=dst,
                               message_type=msg.metadata.message_type))
        return out

    def _decode(self, replies: Iterable[Message]) -> list[Message]:
        out = []
        for reply in replies:
            request, server_round = self._sent.pop(reply.metadata.reply_to_message_id, (None, self._last_round))
            if reply.has_error():
                out.append(reply)
                continue
            node = reply.metadata.src_node_id
            try:
                content, claimed_round, claimed_sae = _without_envelope(reply.content)
                if claimed_round != server_round:
                    raise TransportError(f"reply claims round {claimed_round}, expected {server_round}")
                peer = self._peer(node)
                if claimed_sae != peer:
                    raise TransportError(f"reply claims SAE {claimed_sae!r}, the node is {peer!r}")
                kind = (request or reply).metadata.message_type  # what we asked for, not what it says
                envelope = Envelope(self.run_id, server_round, node, peer, self.sae_id, "up", kind)
                reply.content = self.stack.decode(content, envelope)
                out.append(reply)
            except Exception as err:  # noqa: BLE001 - one bad reply is dropped and named, never fatal
                reason = str(err) if isinstance(err, TransportError) else f"{type(err).__name__} while decoding"
                self.refused.append((node, reason))
                log(WARNING, "transport %s: rejected the reply of node %d: %s", self.stack.name, node, reason)
                if request is not None:
                    out.append(Message(Error(TRANSPORT_ERROR_CODE, f"transport {self.stack.name}: {reason}"), reply_to=request))
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        server_round = self._round(messages)
        encoded = self._encode(messages, server_round)
        ids = list(self._grid.push_messages(encoded))
        for i, msg in zip(ids, encoded):
            if i is not None:
                self._sent[i] = (msg, server_round)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._decode(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        server_round = self._round(messages)
        encoded = self._encode(messages, server_round, timeout)
        replies = list(self._grid.send_and_receive(encoded, timeout=timeout))
        ids = [msg.metadata.message_id for msg in encoded]  # set by the inner grid's push
        for i, msg in zip(ids, encoded):
            self._sent[i] = (msg, server_round)
        decoded = self._decode(replies)
        for i in ids:  # requests that got no reply (a node died or timed out): forget them
            self._sent.pop(i, None)
        return decoded

    def take_unsent(self) -> list[tuple[int, str]]:
        """Return and reset the ``(node, why)`` of messages not sent since the last call."""
        out, self.unsent = self.unsent, []
        return out
