"""SecAgg+ (Bell et al., CCS 2020): the server learns the sum of the clients' inputs, not one of them.

The protocol's pure parts, one function each (the message stages that carry them are not
built yet; ``docs/transport.md`` says what exists). For a round with clients
:math:`i \\in U`, each with an input :math:`x_i \\in \\mathbb Z_{2^{32}}^d` (its quantised,
weighted update):

1. **Advertise keys.** Each client makes two X25519 key pairs: :math:`(c_i^{sk}, c_i^{pk})`
   for encrypting shares, :math:`(s_i^{sk}, s_i^{pk})` for pairwise masks. The server relays
   the public keys to each client's neighbours :math:`N(i)` in a sparse graph
   (:func:`neighbours`: a random ring, each client joined to its ``k`` nearest, so a client
   talks to :math:`O(\\log n)` others, not :math:`n`).
2. **Share keys.** Each client draws a self-mask seed :math:`b_i` and splits :math:`b_i` and
   :math:`s_i^{sk}` into Shamir shares with threshold :math:`t` among :math:`N(i)` (Flower's
   ``create_shares``), each share encrypted for its holder with Flower's share encryption
   (Fernet) under :math:`\\mathrm{HKDF}(\\mathrm{X25519}(c_i^{sk}, c_j^{pk}))`.
3. **Masked input.** :math:`y_i = x_i + \\mathrm{PRG}(b_i) + \\sum_{j \\in N(i), j > i}
   \\mathrm{PRG}(s_{ij}) - \\sum_{j \\in N(i), j < i} \\mathrm{PRG}(s_{ij}) \\pmod{2^{32}}`, with
   :math:`s_{ij} = \\mathrm{HKDF}(\\mathrm{X25519}(s_i^{sk}, s_j^{pk}))` (:func:`masked_input`).
4. **Unmask.** For the survivors :math:`V \\subseteq U`, each survivor hands the server its
   shares of :math:`b_j` for :math:`j \\in V` and of :math:`s_j^{sk}` for the dropped
   :math:`j \\in U \\setminus V`; with :math:`t` shares of each the server removes every mask
   (:func:`unmask`): the pairwise masks between survivors cancel in the sum, the dropped
   clients' pairwise masks are recomputed from their reconstructed keys, and the survivors'
   self-masks are subtracted. Below :math:`t` shares the round fails (:class:`SecAggError`).

The PRG is AES-256 in counter mode (``cryptography``) keyed by the 32-byte seed. Flower's own
``pseudo_rand_gen`` is not used: it folds its seed to 32 bits, which a server can search.
"""

from __future__ import annotations

import base64
import random

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qfl.common.flower_internals import secagg_primitives

FIELD = np.uint32  # inputs and masks live in Z_{2^32}: numpy's uint32 arithmetic wraps mod 2^32
SEED_BYTES = 32
PAIR_MASK, PAIR_SHARES = "pairwise-mask", "share-key"  # what an HKDF output of a pair is for (its info)


class SecAggError(RuntimeError):
    """A round that cannot be unmasked (too few shares); the message says which client and why."""


def neighbours(nodes: list[int], k: int, seed: int) -> dict[int, set[int]]:
    """A sparse, symmetric communication graph: ``nodes`` on a ring in an order drawn from
    ``seed`` (the round's, known to all), each joined to its ``k // 2`` nearest on each side.

    ``k >= len(nodes) - 1`` gives the complete graph (SecAgg proper).
    """
    order = sorted(nodes)
    random.Random(seed).shuffle(order)
    n, half = len(order), max(1, k // 2)
    graph: dict[int, set[int]] = {v: set() for v in order}
    if k >= n - 1:
        return {v: set(order) - {v} for v in order}
    for pos, v in enumerate(order):
        for step in range(1, half + 1):
            for other in (order[(pos + step) % n], order[(pos - step) % n]):
                graph[v].add(other)
                graph[other].add(v)
    return graph


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()  # OS entropy: never seeded


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def agree(private: X25519PrivateKey | bytes, peer_public: bytes, info: bytes) -> bytes:
    """32 bytes both ends derive: HKDF-SHA256 of the X25519 shared secret, bound to ``info``."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(shared)


def seed_from_key(key: bytes, info: bytes) -> bytes:
    """32 bytes from a key both ends already share (a QKD key), bound to ``info`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(key)


def pair_info(round_id: str, i: int, j: int, what: str) -> bytes:
    """The HKDF ``info`` of the pair ``{i, j}`` in one round: the same from both ends."""
    low, high = sorted((i, j))
    return f"qfl-secagg/{what}|{round_id}|{low}|{high}".encode()


def prg(seed: bytes, size: int) -> np.ndarray:
    """``size`` elements of Z_{2^32}, AES-256-CTR keystream of ``seed`` (32 bytes)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    stream = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor().update(b"\0" * (4 * size))
    return np.frombuffer(stream, dtype="<u4").astype(FIELD)


def quantize(vector: np.ndarray, clip: float, levels: int) -> np.ndarray:
    """Each coordinate clipped to ``[-clip, clip]`` and rounded stochastically onto
    ``0 .. levels`` (unbiased: the expectation of the dequantised value is the clipped one)."""
    scaled = (np.clip(vector, -clip, clip) + clip) * (levels / (2 * clip))
    low = np.floor(scaled)
    up = np.random.default_rng().random(scaled.shape) < (scaled - low)  # OS entropy, like the masks
    return (low + up).astype(np.uint64).astype(FIELD)


def dequantize_sum(total: np.ndarray, count: int, clip: float, levels: int) -> np.ndarray:
    """The float sum of ``count`` inputs from the sum of their quantised values."""
    return total.astype(np.float64) * (2 * clip / levels) - count * clip


def masked_input(x: np.ndarray, me: int, self_seed: bytes, pair_seeds: dict[int, bytes]) -> np.ndarray:
    """:math:`y_i` of step 3: ``x`` (in Z_{2^32}) plus the self mask and the signed pairwise masks."""
    y = x.astype(FIELD) + prg(self_seed, x.size)
    for j, seed in pair_seeds.items():
        mask = prg(seed, x.size)
        y = y + mask if j > me else y - mask
    return y


def encrypt_share(key: bytes, share: bytes) -> bytes:
    """A share for its holder, in Flower's share encryption (Fernet) under a 32-byte pair key."""
    return secagg_primitives().encrypt(base64.urlsafe_b64encode(key), share)


def decrypt_share(key: bytes, token: bytes) -> bytes:
    return secagg_primitives().decrypt(base64.urlsafe_b64encode(key), token)


def split(secret: bytes, threshold: int, holders: list[int]) -> dict[int, bytes]:
    """Shamir shares of ``secret``, one per holder (any ``threshold`` of them rebuild it)."""
    if not 1 < threshold <= len(holders):
        raise ValueError(f"threshold {threshold} needs 2 <= t <= {len(holders)} holders")
    return dict(zip(sorted(holders), secagg_primitives().create_shares(secret, threshold, len(holders)), strict=True))


def rebuild(shares: list[bytes], threshold: int, whose: int, what: str) -> bytes:
    """The secret from ``shares``; :class:`SecAggError` naming ``whose`` below ``threshold``."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} share(s) of client {whose}'s {what}, the threshold is {threshold}")
    return secagg_primitives().combine_shares(shares[:threshold])


def unmask(masked: dict[int, np.ndarray], graph: dict[int, set[int]], round_id: str, self_seeds: dict[int, bytes],
           dropped_keys: dict[int, bytes], public_keys: dict[int, bytes]) -> np.ndarray:
    """The sum of the survivors' inputs from their masked inputs (step 4).

    Parameters
    ----------
    masked : {survivor: y_i}
    graph : the round's neighbour graph over every client that shared keys
    self_seeds : {survivor: b_i}, rebuilt from the survivors' shares
    dropped_keys : {dropped client: its mask private key s_j^sk}, rebuilt from shares
    public_keys : {client: s_i^pk}
    """
    total = np.zeros(next(iter(masked.values())).size, dtype=FIELD)
    for i, y in masked.items():
        total = total + y - prg(self_seeds[i], y.size)
    for j, key in dropped_keys.items():  # a dropped client's masks with survivors stayed in their y_i
        for i in graph[j] & set(masked):
            mask = prg(agree(key, public_keys[i], pair_info(round_id, i, j, PAIR_MASK)), total.size)
            total = total - mask if j > i else total + mask  # i added +mask when j > i
    return total


def unmask_with_pair_seeds(masked: dict[int, np.ndarray], self_seeds: dict[int, bytes],
                           pair_seeds: dict[tuple[int, int], bytes]) -> np.ndarray:
    """As :func:`unmask`, where each survivor ``i`` revealed its pair seed with each dropped
    neighbour ``j`` (``pair_seeds[(i, j)]``), as with QKD-keyed masks, which no key of the
    dropped client's can rebuild."""
    total = np.zeros(next(iter(masked.values())).size, dtype=FIELD)
    for i, y in masked.items():
        total = total + y - prg(self_seeds[i], y.size)
    for (i, j), seed in pair_seeds.items():
        mask = prg(seed, total.size)
        total = total - mask if j > i else total + mask  # i added +mask when j > i
    return total


def play_round(updates: dict[int, np.ndarray], k: int, t: int, clip: float, levels: int,
               drop: frozenset[int] = frozenset(), round_id: str = "r1") -> tuple[np.ndarray, dict[int, np.ndarray], dict[str, int]]:
    """Every stage of one round, every client honest, in this process (tests, benchmarks).

    Returns the server's unmasked float sum of the survivors' ``updates``, the masked inputs
    it received, and the bytes each stage moved between a client and the server (summed over
    clients): ``keys``, ``shares``, ``masked``, ``unmask``.
    """
    nodes = sorted(updates)
    graph = neighbours(nodes, k, seed=7)
    c_keys, s_keys = {i: new_key() for i in nodes}, {i: new_key() for i in nodes}
    c_pub, s_pub = {i: public_bytes(c_keys[i]) for i in nodes}, {i: public_bytes(s_keys[i]) for i in nodes}
    moved = {"keys": 64 * len(nodes), "shares": 0, "masked": 0, "unmask": 0}
    self_seeds = {i: np.random.default_rng().bytes(SEED_BYTES) for i in nodes}
    inbox: dict[int, dict[int, tuple[bytes, bytes]]] = {i: {} for i in nodes}  # holder -> {owner: tokens}
    for i in nodes:
        holders = sorted(graph[i])
        b_shares, sk_shares = split(self_seeds[i], t, holders), split(private_bytes(s_keys[i]), t, holders)
        moved["shares"] += 64 * len(holders)  # the neighbours' public keys, down
        for j in holders:
            key = agree(c_keys[i], c_pub[j], pair_info(round_id, i, j, PAIR_SHARES))
            inbox[j][i] = (encrypt_share(key, b_shares[j]), encrypt_share(key, sk_shares[j]))
            moved["shares"] += sum(map(len, inbox[j][i]))
    masked = {}
    for i in nodes:
        if i in drop:
            continue
        pair = {j: agree(s_keys[i], s_pub[j], pair_info(round_id, i, j, PAIR_MASK)) for j in graph[i]}
        masked[i] = masked_input(quantize(updates[i], clip, levels), i, self_seeds[i], pair)
        moved["masked"] += masked[i].nbytes
    survivors = set(masked)
    b_of: dict[int, list[bytes]] = {i: [] for i in survivors}
    sk_of: dict[int, list[bytes]] = {j: [] for j in drop}
    for holder in survivors:
        for owner, (b_token, sk_token) in inbox[holder].items():
            moved["unmask"] += len(b_token)  # the token down (either one), the share up
            key = agree(c_keys[holder], c_pub[owner], pair_info(round_id, holder, owner, PAIR_SHARES))
            share = decrypt_share(key, b_token if owner in survivors else sk_token)
            (b_of if owner in survivors else sk_of)[owner].append(share)
            moved["unmask"] += len(share)
    seeds = {i: rebuild(s, t, i, "self-mask seed") for i, s in b_of.items()}
    lost = {j: rebuild(s, t, j, "mask key") for j, s in sk_of.items() if j in drop}
    total = unmask(masked, graph, round_id, seeds, lost, s_pub)
    return dequantize_sum(total, len(survivors), clip, levels), masked, moved
