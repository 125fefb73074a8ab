"""Transports chosen by name in the run config: ``"plain"``, ``"qkd"``, ``"dp"``, ``"qcn"``,
compositions such as ``"qkd+qcn+dp"`` (the first nearest the wire), or
``"package.module:Class"``.

``dp`` is always the innermost part, whatever its place in the spec: a node's update is
clipped and noised before anything else touches it (encrypted by ``qkd``, sent over the
``qcn`` channel), so ``"dp+qkd"`` is ``"qkd+dp"``; noise added to a ciphertext would protect
nothing and leave the server the raw update.
"""

from __future__ import annotations

import importlib

from flwr.app import RecordDict

from qfl.common.config import NodeConfig, RunConfig
from transport.base import PlainTransport, Transport, TransportStack

BUILTIN_TRANSPORTS = ("plain", "qkd", "dp", "qcn", "secagg")


def _user_class(part: str) -> type[Transport]:
    module_name, _, attr = part.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"transport {part!r}: cannot import: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise ValueError(f"transport {part!r} is not a transport.base.Transport subclass")
    return cls


def transport_parts(spec: str) -> list[str]:
    """The names ``spec`` composes, in the order they are stacked (``dp`` moved innermost),
    checked (user classes imported) but nothing built.

    Raises
    ------
    ValueError
        An empty part, an unknown name, or a path that is not a :class:`~transport.base.Transport`.
    """
    parts = [p.strip() for p in spec.split("+")]
    if not all(parts):
        raise ValueError(f"transport {spec!r}: empty part (use e.g. 'qkd' or 'qkd+dp')")
    for part in parts:
        if ":" in part:
            _user_class(part)
        elif part not in BUILTIN_TRANSPORTS:
            raise ValueError(f"unknown transport {part!r} (use {', '.join(BUILTIN_TRANSPORTS)} or 'package.module:Class')")
    inner = ("secagg", "dp")  # dp innermost, secure aggregation around it: see the module doc
    return [p for p in parts if p not in inner] + [p for p in inner if p in parts]


def build_transport(cfg: RunConfig, node: NodeConfig | None = None, state: RecordDict | None = None) -> TransportStack:
    """The transport stack ``cfg.transport`` names, for this end of the federation.

    ``node`` is the SuperNode's node config on a node, ``None`` on the server; ``state`` the
    node's Flower state (``context.state``; ``secagg`` keeps nothing there, its secrets live in the node's
    own store: :mod:`transport.secagg_store`). A user class
    is built with ``Class.from_run_config(cfg, node)`` if it has that classmethod, else
    ``Class()``. ``qkd`` reads this end's SAE certificate from the environment
    (:class:`~transport.qkd.identity.SaeCredentials`).

    Raises
    ------
    ValueError
        As :func:`transport_parts`, or a transport that cannot be built here (the message
        says why, e.g. a missing SAE certificate).
    """
    parts = transport_parts(cfg.transport)
    if node is not None:
        from transport.dp import check_node_floor

        check_node_floor(cfg, node, local_dp="dp" in parts and cfg.dp_mode == "local")
    stack: list[Transport] = []
    for part in parts:
        if part == "plain":
            stack.append(PlainTransport())
        elif part == "qkd":
            from transport.qkd.client import KeyManagerClient
            from transport.qkd.transport import QKDTransport

            kms = KeyManagerClient.of_this_sae(cfg.kms_url)
            stack.append(QKDTransport(kms, cfg.qkd_server_sae, on_server=node is None))
        elif part == "dp":
            from transport.dp import LocalDPTransport

            stack.append(LocalDPTransport.from_run_config(cfg, node))
        elif part == "secagg":
            from transport.secagg_flower import SecAggTransport

            kms = None
            if node is not None and "qkd" in parts:  # the pairwise masks are keyed by QKD keys
                from transport.qkd.client import KeyManagerClient

                kms = KeyManagerClient.of_this_sae(cfg.kms_url)
            stack.append(SecAggTransport(kms, cfg.qkd_server_sae, cfg, node))
        elif part == "qcn":
            from transport.qcn_transport import QCNTransport

            stack.append(QCNTransport.from_run_config(cfg, node, state))
        else:
            cls = _user_class(part)
            factory = getattr(cls, "from_run_config", None)
            stack.append(factory(cfg, node) if factory else cls())
    return TransportStack([t for t in stack if not isinstance(t, PlainTransport)])
