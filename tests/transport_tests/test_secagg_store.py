"""A node's secure-aggregation secrets are out of reach of Flower's runtime API (issue 39, item 5).

Flower hands a ClientApp its Context (node state included) through the SuperNode's loopback
ClientAppIo API, unauthenticated in subprocess isolation: a second local process that pulls
the node's task gets that Context as Flower serialises it. Nothing of secure aggregation is
in it; the secrets live in the node's store (mode 0600 in a 0700 directory, this user's),
and a store that is not so is refused, named. A node without its certified identity refuses
secure aggregation, named.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from test_secagg_flower import Federation, _config, secagg_certs, use_identities  # noqa: F401

from client.app import app
from qfl.common.contract import SECAGG_RECORD, SECAGG_SUMMED
from qfl.common.flower_internals import stamp
from transport.flower import WARM_UP_TYPE
from transport.secagg_flower import SECAGG_TYPE, secagg_stage
from transport.secagg_identity import CERTS_ENV
from transport.secagg_store import NodeStore, bytes_of

# a second process, as a local user who reached the ClientAppIo port: it parses the Context
# Flower would hand out and prints every byte string and string in its node state, hex
PULL = """
import sys
from flwr.common.serde import context_from_proto
from flwr.proto.message_pb2 import Context as ProtoContext

proto = ProtoContext()
proto.ParseFromString(open(sys.argv[1], "rb").read())
state = context_from_proto(proto).state
for record in state.config_records.values():
    for value in record.values():
        for v in value if isinstance(value, list) else [value]:
            print(v.hex() if isinstance(v, bytes) else str(v).encode().hex())
for record in state.array_records.values():
    for array in record.values():
        print(array.data.hex())
print("records", len(state), file=sys.stderr)
"""


@pytest.fixture(autouse=True)
def _identity(task_identity, secagg_certs, tmp_path, monkeypatch):  # noqa: F811
    use_identities(secagg_certs, tmp_path, monkeypatch)


def _secrets(fed: Federation, node: int) -> list[bytes]:
    """Every secret the node keeps for secure aggregation: its private keys and its pair keys."""
    with NodeStore.of(fed.run_id, node).open() as data:
        return [bytes_of(data["sk"]), bytes_of(data["kem"]), *(bytes_of(v[1]) for v in data["hyb"].values())]


def test_a_second_process_that_pulls_the_nodes_context_finds_no_secret(defaults, tmp_path):
    from flwr.common.serde import context_to_proto

    fed = Federation(_config(defaults))
    (aggregate,) = fed.train()
    assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
    for node, context in fed.loop.contexts.items():
        dump = tmp_path / f"context-{node}.bin"
        dump.write_bytes(context_to_proto(context).SerializeToString())  # what the ClientAppIo API hands out
        pulled = subprocess.run([sys.executable, "-c", PULL, str(dump)], capture_output=True, text=True, check=True)
        found = pulled.stdout
        secrets = _secrets(fed, node)
        assert len(secrets) == 5  # X25519, ML-KEM seed, three hybrid pair keys
        assert not any(secret.hex() in found for secret in secrets)
        assert not any(secret in dump.read_bytes() for secret in secrets)
        assert "records 0" in pulled.stderr  # secure aggregation keeps nothing in the node state


def test_the_store_is_0600_in_a_0700_directory_and_refused_otherwise(defaults):
    fed = Federation(_config(defaults))
    fed.train()
    store = NodeStore.of(fed.run_id, 12).path
    assert oct(store.stat().st_mode & 0o777) == "0o600" and oct(store.parent.stat().st_mode & 0o777) == "0o700"

    def refusal() -> str:
        msg = stamp(Message(RecordDict({SECAGG_RECORD: ConfigRecord({"stage": "consistency", "round-id": "r",
                                                                     "survivors": [11, 12, 13]})}),
                            dst_node_id=12, message_type=SECAGG_TYPE), message_id="c")
        return secagg_stage(msg, fed.loop.contexts[12]).error.reason

    store.chmod(0o644)  # readable by others
    assert "refused this node's secret store" in refusal() and "mode 0o644" in refusal()
    store.chmod(0o600)
    os.chown(store, 65534, 65534)  # another user's ("nobody")
    assert "is owned by uid 65534" in refusal()
    os.chown(store, os.getuid(), os.getgid())
    store.parent.chmod(0o755)  # a directory others can list
    assert "secret store is unusable" in refusal() and "mode 0o755" in refusal()
    store.parent.chmod(0o700)
    store.unlink()
    store.symlink_to(store.parent / "elsewhere.json")  # a link it could follow
    assert "cannot be opened" in refusal()
    # a node that still works: its store in order, it answers (and refuses only what the protocol refuses)
    store.unlink()
    assert "sent no masked input in round 'r'" in refusal()


def test_a_node_without_its_identity_refuses_secure_aggregation_named(defaults, monkeypatch):
    fed = Federation(_config(defaults))
    monkeypatch.delenv(CERTS_ENV)
    warm = stamp(Message(RecordDict(), dst_node_id=11, message_type=WARM_UP_TYPE), message_id="w")
    reply = app(warm, fed.loop.contexts[11])
    assert reply.has_error() and "no secure-aggregation identity certificate: set QFL_SECAGG_CERTS" in reply.error.reason
    replies = fed.train()  # the round fails; each node's refusal comes back as its error reply (clients.csv)
    assert sorted(r.metadata.src_node_id for r in replies) == sorted(fed.loop.contexts)
    assert all(r.has_error() and "no secure-aggregation identity certificate" in r.error.reason for r in replies)
    (why,) = fed.grid.failures
    assert why.startswith("0 of 4 nodes can take part"), why
    assert "refused: node 11: secagg: refused stage 'keys': this node has no secure-aggregation identity " \
           "certificate: set QFL_SECAGG_CERTS to the folder holding ca.crt and secagg/node-0.pem / .key" in why
