"""Transports chosen by name in the run config: ``"plain"``, ``"qkd"``, ``"dp"``, ``"qcn"``,
compositions such as ``"qkd+qcn+dp"`` (the first nearest the wire), or
``"package.module:Class"``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from transport.base import PlainTransport, Transport, TransportStack

TRANSPORT_KEY = "transport"
KMS_URL_KEY = "kms-url"
BUILTIN_TRANSPORTS = ("plain", "qkd", "dp", "qcn")


def build_transport(
    spec: str, run_config: Mapping[str, object], sae_id: str, node_config: Mapping[str, object] | None = None
) -> TransportStack:
    """The transport stack ``spec`` names, for the application ``sae_id``.

    ``node_config`` is the SuperNode's node config on a node, ``None`` on the server.

    A user class is built with ``Class.from_run_config(run_config, sae_id)`` if it has
    that classmethod, else ``Class()``.

    Raises
    ------
    ValueError
        Unknown name, or a path that is not a :class:`~transport.base.Transport`.
    """
    parts = [p.strip() for p in spec.split("+")]
    if not all(parts):
        raise ValueError(f"transport {spec!r}: empty part (use e.g. 'qkd' or 'qkd+dp')")
    stack: list[Transport] = []
    for part in parts:
        if part == "plain":
            stack.append(PlainTransport())
        elif part == "qkd":
            from transport.qkd.client import KeyManagerClient
            from transport.qkd.transport import QKDTransport

            stack.append(QKDTransport(KeyManagerClient(str(run_config[KMS_URL_KEY]), sae_id)))
        elif part == "dp":
            from transport.dp import LocalDPTransport

            stack.append(LocalDPTransport.from_run_config(run_config, sae_id))
        elif part == "qcn":
            from transport.qcn_transport import QCNTransport

            stack.append(QCNTransport.from_run_config(run_config, sae_id, node_config))
        elif ":" in part:
            module_name, _, attr = part.partition(":")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"transport {part!r}: cannot import: {err}") from err
            if not (isinstance(cls, type) and issubclass(cls, Transport)):
                raise ValueError(f"transport {part!r} is not a transport.base.Transport subclass")
            factory = getattr(cls, "from_run_config", None)
            stack.append(factory(run_config, sae_id) if factory else cls())
        else:
            raise ValueError(f"unknown transport {part!r} (use {', '.join(BUILTIN_TRANSPORTS)} or 'package.module:Class')")
    return TransportStack([t for t in stack if not isinstance(t, PlainTransport)])
