"""QKD-keyed encryption of message content: AES-256-GCM with keys from a QKD key manager."""

from __future__ import annotations

import os
from logging import WARNING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import ConfigRecord, RecordDict
from flwr.supercore import log

from qfl.common.flower_internals import record_bytes, record_from_bytes
from transport.base import Envelope, Transport, TransportError
from transport.qkd.client import KeyManagerClient

RECORD = "qkd"
HKDF_INFO = b"qfl/qkd/aes-256-gcm/v1"
NONCE_BYTES = 12


def derive_key(qkd_key: bytes) -> bytes:
    """AES-256 key from a QKD key: HKDF-SHA256 (RFC 5869), no salt, fixed info."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(qkd_key)


class QKDTransport(Transport):
    """Encrypt each message's content with a fresh QKD key (one key per message).

    The sender asks the key manager for a new key shared with the receiver
    (``enc_keys``), derives an AES-256 key with HKDF, and encrypts the serialised
    content with AES-GCM under a random 96-bit nonce; the associated data binds the key
    ID, run, round, the Flower node, both ends, the direction and the message type
    (:meth:`Envelope.associated_data`). The
    message carries only ``{key-id, nonce, ciphertext}``. The receiver fetches the key by
    ID (``dec_keys``: the key manager hands it out once), rebuilds the associated data
    from what *it* expects, and decrypts. A flipped byte, a wrong key ID, a key used
    before (a replayed message) or a message from another round, node or of another type
    (a train message presented as an evaluate one) are rejected.
    If no key can be had (link aborted, key manager down), nothing is sent.

    Parameters
    ----------
    kms : KeyManagerClient
        This end's key manager client; its certificate is this end's identity.
    server_sae : str
        The server's SAE ID (run config ``qkd-server-sae``): a node accepts the server's
        messages only from it; on the server it must be the server's own identity.
    on_server : bool
    """

    name = "qkd"

    def __init__(self, kms: KeyManagerClient, server_sae: str = "server", on_server: bool = False) -> None:
        self.kms = kms
        self.sae_id = kms.sae_id  # proven by the certificate the key manager checks
        self.server_sae = server_sae
        if on_server and self.sae_id != server_sae:
            raise ValueError(f"this server's SAE certificate is {self.sae_id!r}, but qkd-server-sae is {server_sae!r}")

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        key_id, qkd_key = self.kms.enc_key(envelope.dst)
        nonce = os.urandom(NONCE_BYTES)
        plaintext = record_bytes(content)
        ciphertext = AESGCM(derive_key(qkd_key)).encrypt(nonce, plaintext, envelope.associated_data(key_id))
        return RecordDict({RECORD: ConfigRecord({"key-id": key_id, "nonce": nonce, "ciphertext": ciphertext})})

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        if envelope.direction == "down" and envelope.src != self.server_sae:
            raise TransportError(f"a message for the server's SAE {self.server_sae!r} claims to come from {envelope.src!r}")
        if RECORD not in content.config_records:
            raise TransportError("expected a QKD-encrypted message, got plaintext")
        record = content.config_records[RECORD]
        try:
            key_id, nonce, ciphertext = record["key-id"], record["nonce"], record["ciphertext"]
        except KeyError as err:
            raise TransportError(f"QKD envelope lacks {err}") from err
        if not (isinstance(key_id, str) and isinstance(nonce, bytes) and len(nonce) == NONCE_BYTES and isinstance(ciphertext, bytes)):
            raise TransportError(f"QKD envelope malformed: key-id str, a {NONCE_BYTES}-byte nonce and ciphertext bytes expected")
        qkd_key = self.kms.dec_key(envelope.src, key_id)  # TransportError if unknown/used
        try:
            plaintext = AESGCM(derive_key(qkd_key)).decrypt(nonce, ciphertext, envelope.associated_data(key_id))
        except InvalidTag as err:
            log(WARNING, "QKD: authentication failed for key ID %s (%s -> %s, round %d)", key_id, envelope.src, envelope.dst, envelope.server_round)
            raise TransportError("authentication failed: tampered, replayed or misaddressed message") from err
        try:
            return record_from_bytes(plaintext)
        except Exception as err:  # authenticated, yet not a record: the peer itself is faulty
            raise TransportError(f"decrypted content is not a Flower RecordDict: {type(err).__name__}") from err
