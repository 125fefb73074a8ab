"""Certified identities for secure aggregation against a server that lies (Bell et al. 2020, Sec. 5).

Every key a node uses in secure aggregation is bound to an identity the deployment's CA
certifies, so that the server, which relays every key, can neither swap one nor invent a
neighbour:

- **the identity**: an ML-DSA-65 key pair (FIPS 204, ``cryptography``) per node, in an X.509
  certificate the deployment's CA signs (``qfl.pki``: ``<certs>/secagg/node-<i>.pem`` and
  ``.key``), whose subject's single common name is the node's name ``node-<i>`` (``i`` its
  partition) and whose extended key usage is :data:`SECAGG_IDENTITY` (a certificate made for
  TLS or for the key manager is not one);
- **where a node finds it**: ``$QFL_SECAGG_CERTS`` (:data:`CERTS_ENV`), a folder holding the
  CA certificate ``ca.crt`` and the node's own ``secagg/node-<partition-id>.pem`` / ``.key``,
  set by the node's operator (``qfl launch`` and ``docker-compose.yml`` set it), never by the
  server. A node without it refuses secure aggregation, named (:class:`IdentityError`);
- **what is signed** (each with its own ML-DSA context string, so no signature of one kind
  passes for another): the node's key statement (:func:`key_statement`: the run, its Flower
  node ID, its name, its X25519 public key and the SHA-256 of its ML-KEM-768 encapsulation
  key), once a run; each ML-KEM ciphertext it encapsulates for a neighbour
  (:func:`ciphertext_statement`), once a run per pair; and in every round the survivor set it
  was given together with the round's public parameters as it was given them
  (:func:`survivors_statement` over :func:`parameters_statement`, the consistency round): the
  participant count, the threshold, the step, and the clip and weight bound, or under
  distributed DP the L2 clip, the noise multiplier and the noise split. A node then checks its
  neighbours' signatures against the statement of *its own* parameters, so a server that gave
  two nodes different parameters (two weight bounds, say) shows each of them signatures that
  do not verify.

What the certificate names is the partition's name, not the Flower node ID: the SuperLink
assigns node IDs when a node connects, so no CA could certify one beforehand, and the
server could give any ID to anyone. The node binds the two itself: its key statement,
signed with its certified key, says "``node-3`` is node ID ``X`` in run ``R``". A server
can replay such a statement only for the node ID and run it names; it cannot make one for
a name it holds no certified key for, nor present one name twice (a node refuses two
neighbours with one name, and a neighbour with its own name).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey, MLDSA65PublicKey
from cryptography.x509.oid import NameOID

CERTS_ENV = "QFL_SECAGG_CERTS"  # the folder with ca.crt and secagg/node-<i>.pem / .key (the node's own)
IDENTITY_DIR = "secagg"
# the extended key usage of a secure-aggregation identity: an OID of the UUID arc (ITU-T X.667)
SECAGG_IDENTITY = x509.ObjectIdentifier("2.25.264744549919138107471554481351460002863")
NAME_RE = re.compile(r"^node-\d{1,9}$")
PUBLIC_KEY_BYTES = 1952  # an ML-DSA-65 public key
SIGNATURE_BYTES = 3309  # an ML-DSA-65 signature
KEYS, CIPHERTEXT = b"qfl-secagg/keys/v1", b"qfl-secagg/kem-ct/v1"
SURVIVORS = b"qfl-secagg/survivors/v2"  # v2: the survivor set and the round's parameters (v1: the set alone)


class IdentityError(ValueError):
    """A missing or unusable identity of this node, or a peer's certificate or signature that
    does not verify; the message says which and why."""


def node_name(partition_id: int) -> str:
    """The name a node's certificate carries: ``node-<partition id>``."""
    return f"node-{int(partition_id)}"


def _fields(*fields: bytes | str | int) -> bytes:
    out = b""
    for f in fields:
        data = f if isinstance(f, bytes) else str(f).encode()
        out += struct.pack(">I", len(data)) + data
    return out


def key_statement(run_id: int, node_id: int, name: str, x25519: bytes, ek_hash: bytes) -> bytes:
    """What a node signs once a run: its run, node ID, name, X25519 key and SHA-256 of its ML-KEM key."""
    return _fields(run_id, node_id, name, x25519, ek_hash)


def ciphertext_statement(run_id: int, low: int, high: int, ct: bytes) -> bytes:
    """What the lower node of a pair signs with the ML-KEM ciphertext it made for the higher one."""
    return _fields(run_id, low, high, hashlib.sha256(ct).digest())


def parameters_statement(parameters: list[tuple[str, int | float]]) -> bytes:
    """The round's public parameters as a node was given them, one canonical string of bytes:
    ``name=value`` each, in the order given, an integer in decimal and a float as its exact
    hexadecimal form (:meth:`float.hex`), so that two nodes given the same values make the
    same bytes and any other value makes other bytes."""
    out = []
    for name, value in parameters:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"round parameter {name} = {value!r}: an int or a float is required")
        out.append(f"{name}={value if isinstance(value, int) else float(value).hex()}")
    return _fields(*out)


def survivors_statement(run_id: int, round_id: str, signer: int, survivors: list[int], parameters: bytes) -> bytes:
    """What a survivor signs in the consistency round: the round, the round's public parameters
    as it was given them (:func:`parameters_statement`) and the survivor set it was given."""
    return _fields(run_id, round_id, signer, parameters, *sorted(int(v) for v in survivors))


def ek_hash(ek: bytes) -> bytes:
    return hashlib.sha256(bytes(ek)).digest()


@dataclass(frozen=True)
class Peer:
    """A neighbour whose key statement verified: its certified name and keys."""

    name: str
    identity: bytes  # its ML-DSA-65 public key (raw)
    x25519: bytes
    ek_hash: bytes

    def verify(self, context: bytes, statement: bytes, signature: bytes, what: str) -> None:
        """Raise :class:`IdentityError` unless ``signature`` is this peer's over ``statement``."""
        try:
            MLDSA65PublicKey.from_public_bytes(self.identity).verify(bytes(signature), statement, context)
        except (InvalidSignature, ValueError) as err:
            raise IdentityError(f"{what}: the signature is not {self.name}'s") from err


def _check_cert(cert: x509.Certificate, ca: x509.Certificate, now: dt.datetime | None = None) -> str:
    """The certified name of a secure-aggregation identity ``cert`` issued by ``ca``."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        raise IdentityError(f"certificate {cert.subject.rfc4514_string()!r} is not issued by this node's CA") from err
    now = now or dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityError(f"certificate {cert.subject.rfc4514_string()!r} is not valid now")
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise IdentityError("a CA certificate is no node's identity")
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as err:
        raise IdentityError(f"certificate {cert.subject.rfc4514_string()!r} is no secure-aggregation identity "
                            "(no basic constraints or extended key usage)") from err
    if SECAGG_IDENTITY not in usages:
        raise IdentityError(f"certificate {cert.subject.rfc4514_string()!r} is not certified for secure aggregation "
                            f"(extended key usage {SECAGG_IDENTITY.dotted_string} missing)")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not NAME_RE.match(str(names[0].value)):
        raise IdentityError(f"certificate {cert.subject.rfc4514_string()!r} names no node (one common name node-<i>)")
    if not isinstance(cert.public_key(), MLDSA65PublicKey):
        raise IdentityError(f"certificate {cert.subject.rfc4514_string()!r} does not hold an ML-DSA-65 key")
    return str(names[0].value)


def verify_peer(ca: x509.Certificate, cert_der: bytes, signature: bytes, run_id: int, node_id: int, x25519: bytes,
                ek_hash_: bytes) -> Peer:
    """The peer a relayed key statement proves: ``cert_der`` chains to ``ca`` as a
    secure-aggregation identity and ``signature`` is its key's over
    :func:`key_statement` of this run, ``node_id`` and the relayed keys.

    Raises
    ------
    IdentityError
        The certificate or the signature does not verify; the message says which.
    """
    try:
        cert = x509.load_der_x509_certificate(bytes(cert_der))
    except ValueError as err:
        raise IdentityError(f"node {node_id}'s certificate does not parse") from err
    name = _check_cert(cert, ca)
    identity = cert.public_key().public_bytes_raw()  # type: ignore[union-attr]
    peer = Peer(name, identity, bytes(x25519), bytes(ek_hash_))
    peer.verify(KEYS, key_statement(run_id, node_id, name, peer.x25519, peer.ek_hash), signature,
                f"node {node_id}'s keys (run {run_id})")
    return peer


@dataclass(frozen=True)
class NodeIdentity:
    """This node's certified identity: its certificate, its ML-DSA-65 key and the CA it trusts."""

    name: str
    cert_der: bytes
    key: MLDSA65PrivateKey
    ca: x509.Certificate

    @classmethod
    def load(cls, partition_id: int, environ: dict[str, str] | None = None) -> NodeIdentity:
        """``node-<partition_id>``'s identity from ``$QFL_SECAGG_CERTS``.

        Raises
        ------
        IdentityError
            The variable is unset, a file is missing or unreadable, the certificate does not
            chain to the CA, does not name ``node-<partition_id>``, or does not hold the key.
        """
        env = os.environ if environ is None else environ
        name = node_name(partition_id)
        fix = (f"set {CERTS_ENV} to the folder holding ca.crt and {IDENTITY_DIR}/{name}.pem / .key "
               f"(qfl launch and docker compose make them; scripts/gen_certs.py --identity {name})")
        if not env.get(CERTS_ENV):
            raise IdentityError(f"this node has no secure-aggregation identity certificate: {fix}")
        base = Path(env[CERTS_ENV])
        paths = (base / "ca.crt", base / IDENTITY_DIR / f"{name}.pem", base / IDENTITY_DIR / f"{name}.key")
        try:
            ca_pem, cert_pem, key_pem = (p.read_bytes() for p in paths)
        except OSError as err:
            raise IdentityError(f"this node's secure-aggregation identity is unreadable: {err}; {fix}") from err
        try:
            ca, cert = x509.load_pem_x509_certificate(ca_pem), x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as err:
            raise IdentityError(f"this node's secure-aggregation identity in {base} does not parse: {err}") from err
        certified = _check_cert(cert, ca)
        if certified != name:
            raise IdentityError(f"{paths[1]} certifies {certified!r}, not this node's {name!r} (its partition-id)")
        if not isinstance(key, MLDSA65PrivateKey) or key.public_key() != cert.public_key():
            raise IdentityError(f"{paths[2]} is not the ML-DSA-65 key of {paths[1]}")
        return cls(name, cert.public_bytes(serialization.Encoding.DER), key, ca)

    def sign(self, context: bytes, statement: bytes) -> bytes:
        return self.key.sign(statement, context)


def make_identity(ca: x509.Certificate, ca_key, name: str, days: int = 3650):  # noqa: ANN001, ANN201
    """A new ML-DSA-65 key and its secure-aggregation certificate for ``name``, signed by
    ``ca_key`` (``qfl.pki`` writes them; tests make their own)."""
    from cryptography.hazmat.primitives import hashes

    if not NAME_RE.match(name):
        raise ValueError(f"a secure-aggregation identity is named node-<i>, not {name!r}")
    key = MLDSA65PrivateKey.generate()
    now = dt.datetime.now(dt.timezone.utc)
    algorithm = None if isinstance(ca_key, MLDSA65PrivateKey) else hashes.SHA384()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qfl"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([SECAGG_IDENTITY]), critical=False)
            .sign(ca_key, algorithm))
    return key, cert


__all__ = ["CERTS_ENV", "IdentityError", "NodeIdentity", "Peer", "SECAGG_IDENTITY",
           "ciphertext_statement", "ek_hash", "key_statement", "make_identity", "node_name", "parameters_statement",
           "survivors_statement", "verify_peer"]
