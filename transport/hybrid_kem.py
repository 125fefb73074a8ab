"""Hybrid X25519 + ML-KEM-768 pair keys for secure aggregation: a pair key stays secret while
either of the two holds (X25519 against today's computers, ML-KEM-768, FIPS 203, against a
quantum one that records the traffic now and breaks X25519 later).

For a pair of nodes :math:`l < h` (by node ID), with X25519 key pairs
:math:`(x_l, X_l), (x_h, X_h)` and :math:`h`'s ML-KEM-768 key pair :math:`(dk_h, ek_h)`:

1. :math:`l` encapsulates to :math:`ek_h`: :math:`(K_{\\mathrm{kem}}, c) = \\mathrm{Encaps}(ek_h)`,
   and sends :math:`c` (1,088 bytes) to :math:`h` (through the server);
2. :math:`h` decapsulates: :math:`K_{\\mathrm{kem}} = \\mathrm{Decaps}(dk_h, c)`;
3. both derive the pair key

   .. math:: K_{lh} = \\mathrm{HKDF\\text{-}SHA256}\\big(K_{x} \\,\\|\\, K_{\\mathrm{kem}},\\;
             \\mathit{info} = \\mathrm{label} \\| l \\| h \\| X_l \\| X_h \\| ek_h \\| c\\big)

   with :math:`K_x = \\mathrm{X25519}(x_l, X_h) = \\mathrm{X25519}(x_h, X_l)`. The info binds
   the pair, both X25519 keys, the encapsulation key and the ciphertext (each length-prefixed),
   as X-Wing and the TLS hybrid drafts bind theirs: a ciphertext or key that differs at one
   end gives a different key, never the same one.

ML-KEM decapsulation rejects implicitly: a tampered ciphertext gives a pseudorandom
:math:`K_{\\mathrm{kem}}`, not an error, so the two ends then hold different pair keys and
the round's masks do not cancel (the server's bound check, :mod:`transport.secagg`, names
the round). Every primitive is ``cryptography``'s (X25519, ML-KEM-768, HKDF); keys come from
OS entropy.

Authentication is not this module's: the public keys travel through the server, which
could substitute its own. Secure aggregation signs them (each node its X25519 key and the
hash of its encapsulation key, the lower node its ciphertext) with the node's certified
ML-DSA-65 identity, and each end verifies before it calls these functions
(:mod:`transport.secagg_identity`).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LABEL = b"qfl-secagg/hybrid-x25519-mlkem768/v1"
X25519_BYTES = 32
EK_BYTES = 1184  # an ML-KEM-768 encapsulation key
CT_BYTES = 1088  # an ML-KEM-768 ciphertext
SEED_BYTES = 64  # an ML-KEM-768 decapsulation key, in its seed form
KEY_BYTES = 32  # the pair key


def new_kem_key() -> MLKEM768PrivateKey:
    return MLKEM768PrivateKey.generate()  # OS entropy: never seeded


def kem_seed(key: MLKEM768PrivateKey) -> bytes:
    """The decapsulation key's 64-byte seed (what a node keeps in its state)."""
    return key.private_bytes_raw()


def kem_public_bytes(key: MLKEM768PrivateKey | bytes) -> bytes:
    """The encapsulation key (1,184 bytes) of a decapsulation key or of its seed."""
    return _kem_private(key).public_key().public_bytes_raw()


def _kem_private(key: MLKEM768PrivateKey | bytes) -> MLKEM768PrivateKey:
    if isinstance(key, MLKEM768PrivateKey):
        return key
    if len(key) != SEED_BYTES:
        raise ValueError(f"an ML-KEM-768 key seed is {SEED_BYTES} bytes, got {len(key)}")
    return MLKEM768PrivateKey.from_seed_bytes(key)


def _x_private(key: X25519PrivateKey | bytes) -> X25519PrivateKey:
    return key if isinstance(key, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(key)


def _x_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check(name: str, value: bytes, size: int) -> bytes:
    value = bytes(value)
    if len(value) != size:
        raise ValueError(f"{name} is {size} bytes, got {len(value)}")
    return value


def transcript(low: int, high: int, x_low: bytes, x_high: bytes, ek_high: bytes, ct: bytes) -> bytes:
    """The HKDF info of the pair ``low < high``: the label and every public value, each length-prefixed."""
    if not low < high:
        raise ValueError(f"a pair is named lower node first, got {low} and {high}")
    fields = (struct.pack(">QQ", low, high), x_low, x_high, ek_high, ct)
    return LABEL + b"".join(struct.pack(">I", len(f)) + f for f in fields)


def combine(x_secret: bytes, kem_secret: bytes, info: bytes) -> bytes:
    """The pair key: HKDF-SHA256 over the X25519 secret then the ML-KEM secret, bound to ``info``."""
    ikm = _check("the X25519 secret", x_secret, 32) + _check("the ML-KEM secret", kem_secret, 32)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(ikm)


def encapsulate_pair(x_private: X25519PrivateKey | bytes, me: int, peer: int, peer_x: bytes,
                     peer_ek: bytes) -> tuple[bytes, bytes]:
    """The lower node's half: ``(pair key, ciphertext for the peer)``.

    Raises
    ------
    ValueError
        ``me`` is not below ``peer``, or a key has the wrong size or is not a valid key.
    """
    if not me < peer:
        raise ValueError(f"the lower node of a pair encapsulates: {me} is not below {peer}")
    x_private = _x_private(x_private)
    peer_x, peer_ek = _check("an X25519 public key", peer_x, X25519_BYTES), _check("an ML-KEM-768 key", peer_ek, EK_BYTES)
    x_secret = x_private.exchange(X25519PublicKey.from_public_bytes(peer_x))
    kem_secret, ct = MLKEM768PublicKey.from_public_bytes(peer_ek).encapsulate()
    return combine(x_secret, kem_secret, transcript(me, peer, _x_public(x_private), peer_x, peer_ek, ct)), ct


def decapsulate_pair(x_private: X25519PrivateKey | bytes, kem_private: MLKEM768PrivateKey | bytes, me: int,
                     peer: int, peer_x: bytes, ct: bytes) -> bytes:
    """The higher node's half: the pair key from the lower node's ciphertext.

    Raises
    ------
    ValueError
        ``me`` is not above ``peer``, or a key or the ciphertext has the wrong size.
    """
    if not peer < me:
        raise ValueError(f"the higher node of a pair decapsulates: {me} is not above {peer}")
    x_private, kem_private = _x_private(x_private), _kem_private(kem_private)
    peer_x, ct = _check("an X25519 public key", peer_x, X25519_BYTES), _check("an ML-KEM-768 ciphertext", ct, CT_BYTES)
    x_secret = x_private.exchange(X25519PublicKey.from_public_bytes(peer_x))
    kem_secret = kem_private.decapsulate(ct)
    info = transcript(peer, me, peer_x, _x_public(x_private), kem_public_bytes(kem_private), ct)
    return combine(x_secret, kem_secret, info)
