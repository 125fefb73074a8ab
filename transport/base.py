"""The transport interface: what wraps a message's content between strategy and wire.

A :class:`Transport` encodes the content of a message that leaves (on the server: the
instructions to a node; on a node: its reply) and decodes the content of one that
arrives. It sees the :class:`Envelope` of the exchange (run, round, the two ends and the
direction), which it may bind into its protection (e.g. as AEAD associated data).

Transports compose: ``"a+b"`` means *a* is nearest the wire: outgoing content passes
through *b* then *a*; incoming through *a* then *b* (:class:`TransportStack`).
A transport signals a message it must not deliver (tampered, replayed, no key) with
:class:`TransportError`; nothing is ever sent in the clear instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from flwr.app import RecordDict

SERVER_SAE = "server"


class TransportError(RuntimeError):
    """A message was refused by a transport (the reason says why)."""


@dataclass(frozen=True)
class Envelope:
    """Who sends what to whom, for a transport to bind.

    Attributes
    ----------
    run_id : int
    server_round : int
    node_id : int
        The Flower node at the node's end of the exchange (as the SuperLink names it).
    src, dst : str
        SAE identities of the two ends: with ``qkd``, the common names of their
        certificates; otherwise ``"server"`` and ``"node-<node_id>"``.
    direction : str
        ``"down"`` (server to node) or ``"up"`` (node to server).
    message_type : str
        The Flower message type of the exchange (``"train"``, ``"evaluate"``, ...; a reply
        has its request's), so one round's train and evaluate messages are not interchangeable.
    """

    run_id: int
    server_round: int
    node_id: int
    src: str
    dst: str
    direction: str
    message_type: str = ""

    def associated_data(self, key_id: str) -> bytes:
        """Bytes that bind a ciphertext to this exchange and to its key."""
        return (
            f"qfl/v3|{key_id}|run={self.run_id}|round={self.server_round}|node={self.node_id}"
            f"|{self.src}->{self.dst}|{self.direction}|type={self.message_type}"
        ).encode()


def node_sae(node_id: int) -> str:
    """The SAE name of a node when no transport proves identities (no ``qkd``)."""
    return f"node-{node_id}"


class Transport(ABC):
    """Encode what leaves, decode what arrives. Subclasses are small and stateless
    between messages (a node runs each message in a fresh process)."""

    name = "unnamed"
    #: This end's proven identity (e.g. the key manager's view of it), or ``None`` when the
    #: transport does not identify ends; then ``"server"`` / ``"node-<id>"`` are used.
    sae_id: str | None = None
    #: Metric keys this transport adds to a node's training reply, and ConfigRecords with
    #: the keys they may hold (``None``: any); the server accepts replies with exactly these.
    reply_metrics: tuple[str, ...] = ()
    reply_configs: dict[str, frozenset[str] | None] = {}
    #: Metric keys this transport removes from a node's replies (local DP sends no number it
    #: has not noised); the server then expects replies without them.
    withheld_metrics: tuple[str, ...] = ()

    @abstractmethod
    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        """Content to put on the wire instead of ``content``.

        ``request`` is the (decoded) message a reply answers, e.g. the global model a
        node's update is measured against; ``None`` for the server's messages.
        """

    @abstractmethod
    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        """The original content; raise :class:`TransportError` to refuse it."""


class PlainTransport(Transport):
    """No protection: content travels as it is."""

    name = "plain"

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        return content

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        return content


class TransportStack(Transport):
    """Transports composed in a declared order; the first is nearest the wire."""

    def __init__(self, transports: list[Transport]) -> None:
        self.transports = list(transports)
        self.name = "+".join(t.name for t in self.transports) or "plain"
        identities = {t.sae_id for t in self.transports if t.sae_id is not None}
        if len(identities) > 1:
            raise ValueError(f"transports {self.name} disagree on this end's identity: {sorted(identities)}")
        self.sae_id = identities.pop() if identities else None
        self.reply_metrics = tuple(m for t in self.transports for m in t.reply_metrics)
        self.reply_configs = {k: v for t in self.transports for k, v in t.reply_configs.items()}
        self.withheld_metrics = tuple(m for t in self.transports for m in t.withheld_metrics)

    @property
    def identifies_peers(self) -> bool:
        """Whether ends are certificates: the server must learn each node's SAE ID."""
        return self.sae_id is not None

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        for t in reversed(self.transports):
            content = t.encode(content, envelope, request)
        return content

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        for t in self.transports:
            content = t.decode(content, envelope)
        return content
