"""BB84 link, ETSI 014 key manager (real HTTPS with client certificates on loopback) and AES-GCM transport."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from helpers import key_manager

from transport.base import Envelope, TransportError
from transport.qkd.bb84 import BB84Config, InsecureSeededBB84Link, QKDAbort, asymptotic_key_rate, toeplitz_hash
from transport.qkd.transport import QKDTransport

# --- BB84 ----------------------------------------------------------------------------


@pytest.mark.parametrize("misalignment", [0.01, 0.03, 0.06])
def test_qber_matches_misalignment_without_eavesdropper(misalignment):
    link = InsecureSeededBB84Link(BB84Config(source="single-photon", misalignment=misalignment, dark_count=0.0), seed=1)
    sifted = link.transmit(1_000_000)
    assert sifted.qber_estimate == pytest.approx(misalignment, abs=0.006)
    assert sifted.qber_true == pytest.approx(misalignment, abs=0.003)


def test_eavesdropper_on_every_pulse_gives_a_quarter_and_aborts():
    link = InsecureSeededBB84Link(BB84Config(source="single-photon", eve_fraction=1.0, misalignment=0.0, dark_count=0.0), seed=2)
    sifted = link.transmit(2_000_000)
    assert sifted.qber_estimate == pytest.approx(0.25, abs=0.015)  # ~3 standard errors
    assert sifted.qber_true == pytest.approx(0.25, abs=0.006)
    with pytest.raises(QKDAbort, match="above the 0.11 bound"):
        link.generate_key(400_000)


@pytest.mark.parametrize("source", ["single-photon", "wcp"])
def test_key_is_shared_secret_and_below_the_asymptotic_rate(source):
    cfg = BB84Config(length_km=10, source=source)
    batch = InsecureSeededBB84Link(cfg, seed=3).generate_key(4_000_000)
    assert len(batch.key) > 500 and set(np.unique(batch.key)) == {0, 1}
    assert 0 < batch.key_rate <= asymptotic_key_rate(cfg)  # finite size costs key


def test_reconciliation_removes_all_errors():
    link = InsecureSeededBB84Link(BB84Config(), seed=4)
    rng = np.random.default_rng(0)
    alice = rng.integers(0, 2, 8192, dtype=np.uint8)
    bob = alice ^ (rng.random(8192) < 0.03).astype(np.uint8)
    a, b, leak = link.reconcile(alice, bob, 0.03)
    assert len(a) >= 6144 and np.array_equal(a, b) and 0 < leak < 8192


def test_toeplitz_hash_matches_the_matrix_product():
    rng = np.random.default_rng(5)
    x, seed = rng.integers(0, 2, 50, dtype=np.uint8), rng.integers(0, 2, 50 + 20 - 1, dtype=np.uint8)
    t = np.array([[seed[i - j + 49] for j in range(50)] for i in range(20)])
    np.testing.assert_array_equal(toeplitz_hash(x, seed, 20), (t @ x) % 2)


def test_longer_fiber_lowers_the_asymptotic_rate():
    rates = [asymptotic_key_rate(BB84Config(length_km=km)) for km in (0, 25, 50, 100, 200)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


# --- key manager over real HTTPS (mutual TLS) ------------------------------------------


@pytest.fixture
def kms(tmp_path):
    with key_manager(tmp_path, ["server", "node-1"], link_config=BB84Config(length_km=5, source="single-photon")) as km:
        yield km


def test_etsi_014_keys_are_shared_and_used_once(kms):
    alice, bob = kms.client("server"), kms.client("node-1")
    key_id, key = alice.enc_key("node-1")
    assert len(key) == 32
    assert bob.dec_key("server", key_id) == key
    with pytest.raises(TransportError, match="400"):
        bob.dec_key("server", key_id)  # each key once
    status = alice.status("node-1")
    assert status["key_size"] == 256 and status["slave_SAE_ID"] == "node-1" and status["master_SAE_ID"] == "server"
    assert status["pulses_sent"] > 0


def _content() -> RecordDict:
    rng = np.random.default_rng(0)
    return RecordDict(
        {"arrays": ArrayRecord({"w": Array(rng.normal(size=(3, 4)))}), "config": ConfigRecord({"server-round": 2})}
    )


def _down_envelope(round_=2, node_id=11, message_type="train"):
    return Envelope(run_id=9, server_round=round_, node_id=node_id, src="server", dst="node-1", direction="down",
                    message_type=message_type)


def test_same_plaintext_in_and_out(kms):
    sender, receiver = QKDTransport(kms.client("server")), QKDTransport(kms.client("node-1"))
    wire = sender.encode(_content(), _down_envelope())
    assert "arrays" not in wire.array_records and "ciphertext" in wire.config_records["qkd"]
    back = receiver.decode(wire, _down_envelope())
    np.testing.assert_array_equal(back["arrays"]["w"].numpy(), _content()["arrays"]["w"].numpy())
    assert back["config"]["server-round"] == 2


@pytest.mark.parametrize("attack", ["flip", "wrong-key-id", "replay", "other-round", "other-node", "other-type", "short-nonce"])
def test_tampering_is_rejected(kms, attack):
    sender, receiver = QKDTransport(kms.client("server")), QKDTransport(kms.client("node-1"))
    wire = sender.encode(_content(), _down_envelope())
    record = wire.config_records["qkd"]
    envelope = _down_envelope()
    if attack == "flip":
        ct = bytearray(record["ciphertext"])
        ct[len(ct) // 2] ^= 0x01
        record["ciphertext"] = bytes(ct)
        expected = "authentication failed"
    elif attack == "wrong-key-id":
        record["key-id"] = "00000000-0000-0000-0000-000000000000"
        expected = "unknown, expired or already used"
    elif attack == "replay":
        receiver.decode(wire, envelope)  # delivered once ...
        expected = "unknown, expired or already used"  # ... a second delivery finds its key spent
    elif attack == "other-round":
        envelope = _down_envelope(round_=3)  # an old message presented in a later round
        expected = "authentication failed"
    elif attack == "other-node":
        envelope = _down_envelope(node_id=12)  # the same SAE, but another Flower node relays it
        expected = "authentication failed"
    elif attack == "other-type":
        envelope = _down_envelope(message_type="evaluate")  # this round's train message, relabelled
        expected = "authentication failed"
    else:
        record["nonce"] = b"\x00" * 4
        expected = "malformed"
    with pytest.raises(TransportError, match=expected):
        receiver.decode(wire, envelope)


def test_eavesdropped_link_sends_nothing(tmp_path):
    link = BB84Config(source="single-photon", eve_fraction=1.0)
    with key_manager(tmp_path, ["server", "node-1"], link_config=link) as km:
        sender = QKDTransport(km.client("node-1"))
        with pytest.raises(TransportError, match="QKD link aborted: QBER 0.2"):
            sender.encode(_content(), Envelope(9, 1, 11, "node-1", "server", "up"))
