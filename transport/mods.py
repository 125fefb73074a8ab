"""The transports as Flower ClientApp mods, for any Flower app.

Flower's idiom for what happens to a message on the client is a mod ``(msg, context,
call_next)`` (``LocalDpMod``, ``fixedclipping_mod``); on the server, a wrapper around the
grid or the strategy. Each factory here returns such a mod; the server side of all of them
is :class:`transport.flower.TransportGrid` over the same transports. This project's own
ClientApp uses :data:`transport.flower.transport_mod`, which builds the stack the run
config's ``transport`` names (``"qkd+dp"`` and the rest stay shorthands for these).

A plain Flower app, encrypted with QKD keys (``docs/extending.md``)::

    from flwr.clientapp import ClientApp
    from transport.mods import HELLO_ACTION, answer_hello, qkd_mod

    app = ClientApp(mods=[qkd_mod("https://key-manager:8443")])  # SAE certificate from QFL_SAE_*
    app.query(HELLO_ACTION)(answer_hello)  # the server asks once a run which SAE this node is

    # ServerApp: grid = TransportGrid(grid, qkd_stack(kms_url), context.run_id)
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context

from transport.base import TransportStack
from transport.flower import HELLO_ACTION, ClientAppMod, answer_hello, stack_mod

__all__ = ["HELLO_ACTION", "answer_hello", "local_dp_mod", "qcn_mod", "qkd_mod", "qkd_stack"]


def _once(build: Callable[[], TransportStack]) -> Callable[[Context], TransportStack]:
    """``build`` called on the first message and kept (Flower may run many in one process)."""
    made: list[TransportStack] = []

    def get(context: Context) -> TransportStack:
        if not made:
            made.append(build())
        return made[0]

    return get


def qkd_stack(kms_url: str, server_sae: str = "server", on_server: bool = False, credentials=None) -> TransportStack:  # noqa: ANN001
    """AES-256-GCM under keys from an ETSI GS QKD 014 key manager at ``kms_url``, as this
    end's SAE (its certificate: ``credentials``, default from the environment,
    :meth:`~transport.qkd.identity.SaeCredentials.from_env`)."""
    from transport.qkd.client import KeyManagerClient
    from transport.qkd.identity import SaeCredentials
    from transport.qkd.transport import QKDTransport

    kms = KeyManagerClient(kms_url, credentials or SaeCredentials.from_env())
    return TransportStack([QKDTransport(kms, server_sae, on_server=on_server)])


def qkd_mod(kms_url: str, server_sae: str = "server", credentials=None) -> ClientAppMod:  # noqa: ANN001
    """A ClientApp mod: every message to and from this node encrypted with QKD keys
    (:func:`qkd_stack`); the server wraps its grid in a
    :class:`~transport.flower.TransportGrid` over ``qkd_stack(kms_url, on_server=True)``."""
    return stack_mod(_once(lambda: qkd_stack(kms_url, server_sae, credentials=credentials)))


def local_dp_mod(clip: float, noise_multiplier: float) -> ClientAppMod:
    """A ClientApp mod: the node's update clipped to ``clip`` and noised with
    ``noise_multiplier * clip`` before it leaves (:class:`~transport.dp.LocalDPTransport`)."""
    from transport.dp import LocalDPTransport

    return stack_mod(_once(lambda: TransportStack([LocalDPTransport(clip, noise_multiplier)])))


def qcn_mod(path: str, copies: int = 100, channels: int = 16, seed: int = 0, partition: int = 0, topology: str = "",
            topk: float = 1.0, bits: int = 0, bit_copies: int = 3) -> ClientAppMod:
    """A ClientApp mod: the node's update sent over the simulated quantum-network ``path``
    (a spec as ``qcn-paths`` takes them; :class:`~transport.qcn_transport.QCNTransport`), or,
    with ``topology``, over the route the server's plan names each round (the server wraps
    its grid in :class:`~transport.qcn_schedule.ScheduleGrid`); ``topk`` < 1 or ``bits`` > 0
    compress the update first (:mod:`transport.qcn_compress`), the error-feedback memory in
    the node's ``context.state``."""
    from transport.qcn import get_path
    from transport.qcn_compress import Encoding
    from transport.qcn_network import load_topology
    from transport.qcn_transport import QCNTransport

    encoding = Encoding(copies, topk, bits, bit_copies)

    def build(context: Context) -> TransportStack:  # per message: the state is the node's
        network = load_topology(topology) if topology else None
        route = None if network is not None else get_path(path)
        return TransportStack([QCNTransport(route, copies, channels, seed, partition, network, encoding, context.state)])

    return stack_mod(build)
