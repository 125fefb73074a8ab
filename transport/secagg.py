"""SecAgg+ (Bell et al., CCS 2020) in two exchanges a round (three when an input is missing):
the server learns the sum of the clients' inputs, not one of them.

The protocol's pure parts, one function each; :mod:`transport.secagg_flower` carries them in
Flower messages. For a round with participants :math:`i \\in U`, each with an input
:math:`x_i \\in \\mathbb Z_{2^{32}}^d` (its quantised update):

0. **Keys, once a run.** Each client makes one X25519 key pair and one ML-KEM-768 key pair
   and the server keeps their public halves. For each pair of neighbours the lower client
   encapsulates to the higher one's ML-KEM key, and both derive a run-long pair key
   :math:`K_{ij}` by HKDF over the X25519 secret and the ML-KEM secret
   (:mod:`transport.hybrid_kem`: secret while either holds; :func:`pair_keys`). Every
   secret of a round is an HKDF-SHA256 output of :math:`K_{ij}` *bound to the round*
   (:func:`pair_info`, :func:`seed_from_key`): the pairwise mask seed
   :math:`s_{ij}^{(r)}` and the key :math:`e_{ij}^{(r)}` that encrypts shares between them.
   Nothing derived for one round tells anything of another round's, so the keys serve the
   whole run and the protocol needs no key exchange per round.
1. **Masked input** (the training exchange). The server sends each client its neighbours
   :math:`N(i)` in a sparse graph (:func:`neighbours`: a random ring, each client joined to
   its ``k`` nearest, so a client talks to :math:`O(\\log n)` others, not :math:`n`) with their
   public keys. The client draws a self-mask seed :math:`b_i` and answers

   .. math:: y_i = x_i + \\mathrm{PRG}(b_i) + \\sum_{j \\in N(i), j > i} \\mathrm{PRG}(s_{ij})
             - \\sum_{j \\in N(i), j < i} \\mathrm{PRG}(s_{ij}) \\pmod{2^{32}}

   (:func:`masked_input`) together with Shamir shares of :math:`b_i`, threshold :math:`t`,
   one per neighbour, each encrypted for its holder under :math:`e_{ij}` (Flower's
   ``create_shares`` and share encryption).
2. **Consistency** (Bell et al.'s malicious-server variant). Each survivor signs the survivor
   set :math:`V` it is given, with the round's public parameters it was given (participants,
   threshold, step, clip and weight bound, or the DP clip, noise multiplier and split), with
   its certified identity; it then answers step 3 only for that same set, and only once at
   least :math:`t` of its neighbours' valid signatures on that set *and its own parameters*
   came with the request (:mod:`transport.secagg_flower`, :mod:`transport.secagg_identity`).
   The key :math:`e_{ij}` that encrypts a share is bound to the parameters too, so a holder
   given other parameters than the share's owner cannot open the share.
3. **Unmask.** With the survivors :math:`V \\subseteq U` (those whose :math:`y_i` arrived)
   and the dropped :math:`D = U \\setminus V`, each survivor hands the server its shares of
   :math:`b_j` for :math:`j \\in V` and its own pair seeds :math:`s_{ij}` with its dropped
   neighbours :math:`j \\in D`, never both of one client. The server rebuilds every survivor's
   :math:`b_j` from :math:`t` shares, subtracts the self masks and the dropped clients' pair
   masks (:func:`unmask`); the masks between survivors cancel in the sum. Below :math:`t`
   shares, or with a dropped client's pair seed unrevealed, the round fails
   (:class:`SecAggError`).

Why it is safe for an honest-but-curious server. A dropped client's :math:`y_j` that arrives
late still holds :math:`\\mathrm{PRG}(b_j)`, and no honest client reveals a share of
:math:`b_j` once :math:`j` is listed as dropped. A survivor's :math:`y_i` minus its self mask
still holds the masks with its surviving neighbours (at least :math:`t \\ge 2` of them, or its
seed could not be rebuilt), whose seeds are never revealed. A client reveals pair seeds only
with clients listed as dropped, and answers only when at least :math:`t` of its neighbours
are listed as survivors. Against a server that lies, every key is signed by a certified
identity (no key swap, no invented neighbour), and a client reveals only for a survivor set
at least :math:`t` of its neighbours signed with it. Bell et al.'s protocol shares the mask
key itself, so that any :math:`t` neighbours can remove a dropped client's masks; here each
survivor removes its own, which saves two exchanges a round, and a round in which a dropped
client's neighbour also fails to answer the unmask stage fails (named) instead. That also
lets the survivor set be signed with the masked input when every input arrives (the
participants; a consistency round only when one is missing): the server may then hold
signatures on two sets of one round, the participants and one subset, but to strip a
client's pair masks it needs the pair seed of *every* honest neighbour, each of which then
revealed for a set without that client and so none of its self-mask shares, of which it
needs :math:`t` (``docs/transport.md``).

**Bounded inputs** (the server's check, :func:`check_weighted_sum`, :func:`check_noised_sum`).
Masks hide every input, so the server cannot check one; it checks the unmasked sum against
what :math:`|V|` honest, bounded inputs can make. Without DP each honest input is
:math:`(a_i \\mathrm{clip}(\\Delta_i, c), a_i)` with :math:`a_i \\in [0, 1]`, so the weight sum
:math:`W` lies in :math:`[0, |V|]` and every coordinate of the sum in :math:`[-cW, cW]`. Under
distributed DP each input is an update of L2 norm at most :math:`C` plus Gaussian noise, so
the sum's norm is at most :math:`|V| C + s(\\sqrt d + \\tau)` with
:math:`s = \\sigma C \\sqrt{|V|/m_{\\min}}`, except with probability
:math:`e^{-\\tau^2/2} = 2^{-40}` (the norm of a standard Gaussian vector exceeds
:math:`\\sqrt d + \\tau` with at most that probability: it is 1-Lipschitz with mean at most
:math:`\\sqrt d`). Each bound adds the rounding slack of :math:`|V|` quantised inputs. A sum
outside fails the round (:class:`SumOutOfBounds`); one inside passes, whoever made it.

The PRG is AES-256 in counter mode (``cryptography``) keyed by the 32-byte seed. Flower's own
``pseudo_rand_gen`` is not used: it folds its seed to 32 bits, which a server can search.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qfl.common.flower_internals import secagg_primitives
from transport import hybrid_kem

FIELD = np.uint32  # inputs and masks live in Z_{2^32}: numpy's uint32 arithmetic wraps mod 2^32
FIELD_MAX = 2**31 - 1  # a sum decodes exactly while every coordinate stays within +-FIELD_MAX steps (signed)
NOISE_TAIL = math.sqrt(2 * 40 * math.log(2))  # tau: a Gaussian vector's norm exceeds s(sqrt(d) + tau) w.p. <= 2^-40
SEED_BYTES = 32
KEY_BYTES = 32  # an X25519 public key
PAIR_MASK, PAIR_SHARES = "pairwise-mask", "share-key"  # what an HKDF output of a pair is for (its info)


class SecAggError(RuntimeError):
    """A round that cannot be unmasked (too few shares, a pair seed missing); the message says which client and why."""


class SumOutOfBounds(SecAggError):
    """An unmasked sum that no set of honest, bounded inputs can produce: some input was not bounded."""


def max_summands(steps_per_input: float) -> int:
    """How many inputs of at most ``steps_per_input`` quantisation steps a coordinate may sum
    without leaving the signed field (``FIELD_MAX`` steps)."""
    return int(FIELD_MAX // steps_per_input)


def _outside(n: int, detail: str) -> SumOutOfBounds:
    return SumOutOfBounds(f"the unmasked sum is outside what {n} honest clients can produce: {detail}")


def check_weighted_sum(total: np.ndarray, n: int, clip: float, step: float, weight_step: float) -> None:
    """Raise :class:`SumOutOfBounds` unless ``total`` (floats: the weighted updates' sum, then
    the weights' sum :math:`W`) is what ``n`` honest inputs make: :math:`W \\in [0, n]` and
    :math:`|\\sum_i a_i x_{ic}| \\le c\\,W` on every coordinate, each up to the rounding
    of ``n`` quantised inputs (less than one ``step``, one ``weight_step`` each)."""
    if not np.all(np.isfinite(total)):
        raise _outside(n, "it is not finite")
    weight, summed = float(total[-1]), np.abs(total[:-1])
    slack_w = n * weight_step
    if not -slack_w <= weight <= n + slack_w:
        raise _outside(n, f"the weights sum to {weight:.6g}, outside [0, {n}]")
    bound = clip * (weight + slack_w) + n * step
    worst = int(np.argmax(summed)) if summed.size else 0
    if summed.size and summed[worst] > bound:
        raise _outside(n, f"coordinate {worst} sums to {total[worst]:.6g}, beyond clip {clip:g} x total weight "
                          f"{weight:.6g} (+ {n * (clip * weight_step + step):.2g} rounding) = {bound:.6g}")


def noise_norm_bound(n: int, clip: float, sigma: float, m_min: int, d: int) -> float:
    """:math:`s(\\sqrt d + \\tau)`: the noise of ``n`` shares of :math:`N(0, \\sigma^2 C^2/m_{\\min})`
    per coordinate has a larger L2 norm with probability at most :math:`2^{-40}`."""
    return sigma * clip * math.sqrt(n / m_min) * (math.sqrt(d) + NOISE_TAIL)


def check_noised_sum(total: np.ndarray, n: int, clip: float, sigma: float, m_min: int, step: float) -> None:
    """Raise :class:`SumOutOfBounds` unless the L2 norm of ``total`` (the distributed-DP sum)
    is at most :math:`nC` (``n`` updates clipped to ``clip``) plus :func:`noise_norm_bound`
    plus the rounding of ``n`` quantised inputs (:math:`n \\cdot step \\sqrt d`)."""
    if not np.all(np.isfinite(total)):
        raise _outside(n, "it is not finite")
    d = total.size
    noise = noise_norm_bound(n, clip, sigma, m_min, d)
    bound = n * clip + noise + n * step * math.sqrt(d)
    norm = float(np.linalg.norm(total))
    if norm > bound:
        raise _outside(n, f"its L2 norm is {norm:.6g}, beyond {n} x clip {clip:g} + the noise's 1 - 2^-40 bound "
                          f"{noise:.4g} (+ rounding) = {bound:.6g}")


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


def pair_info(round_id: str, i: int, j: int, what: str, parameters: bytes = b"") -> bytes:
    """The HKDF ``info`` of the pair ``{i, j}`` in one round: the same from both ends.

    ``parameters``, when given, binds the derived secret to the round's public parameters as
    this end was given them (their SHA-256): the other end derives the same secret only if it
    was given the same (:mod:`transport.secagg_flower` binds the share keys so).
    """
    low, high = sorted((i, j))
    info = f"qfl-secagg/{what}|{round_id}|{low}|{high}".encode()
    return info + b"|" + hashlib.sha256(parameters).hexdigest().encode() if parameters else info


def seed_from_key(key: bytes, info: bytes) -> bytes:
    """32 bytes from a key both ends already share (a QKD key), bound to ``info`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(key)


def prg(seed: bytes, size: int) -> np.ndarray:
    """``size`` elements of Z_{2^32}, AES-256-CTR keystream of ``seed`` (32 bytes)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    stream = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor().update(b"\0" * (4 * size))
    return np.frombuffer(stream, dtype="<u4").astype(FIELD)


def quantize(vector: np.ndarray, step: float) -> np.ndarray:
    r"""``vector`` in units of ``step``, rounded stochastically, as elements of Z_{2^32}
    (two's complement: a negative value :math:`v` is :math:`2^{32} + v`).

    Unbiased: :math:`\mathbb E[\mathrm{dequantize}(q)] = v`. Nothing is clipped here: the
    caller bounds what it sends, and a sum decodes exactly while it stays within
    :math:`\pm 2^{31}` steps (:func:`dequantize`). The rounding draws from OS entropy, as the
    masks do (a seeded draw would tell the server part of the rounding).
    """
    scaled = np.asarray(vector, dtype=np.float64) / step
    if not np.all(np.abs(scaled) < 2.0**31):
        raise ValueError("a value beyond 2^31 quantisation steps cannot be carried in Z_2^32")
    low = np.floor(scaled)
    up = np.random.default_rng().random(scaled.shape) < (scaled - low)
    return (low + up).astype(np.int64).astype(FIELD)  # int64 -> uint32 wraps mod 2^32


def dequantize(total: np.ndarray, step: float) -> np.ndarray:
    """The float value of a sum of :func:`quantize` outputs (read as signed 32-bit integers)."""
    return total.astype(FIELD).view(np.int32).astype(np.float64) * step


def masked_input(x: np.ndarray, me: int, self_seed: bytes, pair_seeds: dict[int, bytes]) -> np.ndarray:
    """:math:`y_i` of step 1: ``x`` (in Z_{2^32}) plus the self mask and the signed pairwise masks."""
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


def unmask(masked: dict[int, np.ndarray], graph: dict[int, set[int]], self_seeds: dict[int, bytes],
           pair_seeds: dict[tuple[int, int], bytes]) -> np.ndarray:
    """The sum of the survivors' inputs from their masked inputs (step 2).

    Parameters
    ----------
    masked : {survivor i: y_i}
    graph : the round's neighbour graph over every participant
    self_seeds : {survivor i: b_i}, rebuilt from the survivors' shares
    pair_seeds : {(survivor i, dropped j): s_ij}, as survivor i revealed them

    Raises
    ------
    SecAggError
        A survivor's mask with a dropped neighbour is not among ``pair_seeds``.
    """
    total = np.zeros(next(iter(masked.values())).size, dtype=FIELD)
    for i, y in masked.items():
        total = total + y - prg(self_seeds[i], y.size)
    for i in masked:
        for j in graph[i] - set(masked):
            if (i, j) not in pair_seeds:
                raise SecAggError(f"survivor {i} did not reveal its pair seed with dropped client {j}")
            mask = prg(pair_seeds[(i, j)], total.size)
            total = total - mask if j > i else total + mask  # i added +mask when j > i
    return total


def _identities(nodes: list[int]) -> tuple[dict, dict]:
    """Each node's certified ML-DSA-65 identity (a throwaway P-384 CA of this process, as
    ``qfl.pki`` makes the deployment's): ``{node: (key, certificate DER)}`` and the CA."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from transport.secagg_identity import make_identity

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _self_signed(ca_key)
    out = {}
    for i in nodes:
        key, cert = make_identity(ca, ca_key, f"node-{i}")
        out[i] = (key, cert.public_bytes(serialization.Encoding.DER))
    return out, {"ca": ca}


def _self_signed(key):  # noqa: ANN001, ANN202
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-ca")])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA384()))


def pair_keys(nodes: list[int], graph: dict[int, set[int]], run_id: int = 1) -> tuple[dict[tuple[int, int], bytes], dict[str, int]]:
    """Every node's run keys and the hybrid X25519 + ML-KEM-768 key of every pair of
    neighbours (:mod:`transport.hybrid_kem`), authenticated as the nodes do it
    (:mod:`transport.secagg_identity`: each node signs its keys with its certified ML-DSA-65
    identity, each lower node its ciphertext; each end verifies the other's certificate and
    signatures before it uses a key), made in this process; ``{(i, j): key}`` for both
    orders, and the bytes each step moved between the nodes and the server: ``keys`` (each
    node's X25519 and ML-KEM public keys up), ``pair-keys`` (to each pair's lower node the
    higher one's keys, its ciphertext up and down to the higher one), ``identity`` (each
    node's certificate and signature up; each end's certificate, signature, X25519 key and
    ML-KEM key hash down to the other; the ciphertext's signature up and down)."""
    from transport import secagg_identity as ident

    ids, ca = _identities(nodes)
    x = {i: new_key() for i in nodes}
    kem = {i: hybrid_kem.new_kem_key() for i in nodes}
    pub = {i: (public_bytes(x[i]), hybrid_kem.kem_public_bytes(kem[i])) for i in nodes}
    sig = {i: ids[i][0].sign(ident.key_statement(run_id, i, f"node-{i}", pub[i][0], ident.ek_hash(pub[i][1])), ident.KEYS)
           for i in nodes}
    moved = {"keys": (KEY_BYTES + hybrid_kem.EK_BYTES) * len(nodes), "pair-keys": 0,
             "identity": sum(len(ids[i][1]) + len(sig[i]) for i in nodes)}
    keys: dict[tuple[int, int], bytes] = {}
    for low in nodes:
        for high in sorted(j for j in graph[low] if j > low):
            peer_high = ident.verify_peer(ca["ca"], ids[high][1], sig[high], run_id, high, pub[high][0],
                                          ident.ek_hash(pub[high][1]))
            key, ct = hybrid_kem.encapsulate_pair(x[low], low, high, peer_high.x25519, pub[high][1])
            ct_sig = ids[low][0].sign(ident.ciphertext_statement(run_id, low, high, ct), ident.CIPHERTEXT)
            peer_low = ident.verify_peer(ca["ca"], ids[low][1], sig[low], run_id, low, pub[low][0],
                                         ident.ek_hash(pub[low][1]))
            peer_low.verify(ident.CIPHERTEXT, ident.ciphertext_statement(run_id, low, high, ct), ct_sig, "ct")
            keys[(low, high)] = key
            keys[(high, low)] = hybrid_kem.decapsulate_pair(x[high], kem[high], high, low, peer_low.x25519, ct)
            moved["pair-keys"] += KEY_BYTES + hybrid_kem.EK_BYTES + 2 * len(ct)
            moved["identity"] += sum(len(ids[e][1]) + len(sig[e]) + KEY_BYTES + 32 for e in (low, high)) + 2 * len(ct_sig)
    return keys, moved


def play_round(updates: dict[int, np.ndarray], k: int, t: int, step: float, drop: frozenset[int] = frozenset(),
               silent: frozenset[int] = frozenset(), round_id: str = "r1",
               keys: dict[tuple[int, int], bytes] | None = None) -> tuple[np.ndarray, dict[int, np.ndarray], dict[str, int]]:
    """Every stage of one round, every client honest, in this process (tests, benchmarks).

    ``drop``: clients whose masked input never arrives; ``silent``: survivors that do not
    answer the unmask stage; ``keys``: the run's pair keys of an earlier round (made here,
    :func:`pair_keys`, when ``None``: the first round). Returns the server's unmasked float
    sum of the survivors' ``updates``, the masked inputs it received, and the bytes each
    stage moved between a client and the server (summed over clients): ``keys``,
    ``pair-keys`` and ``identity`` (once a run; 0 with ``keys`` given), ``masked`` (the
    neighbours' X25519 keys down, the masked input and the encrypted shares up),
    ``consistency`` (the survivor set down, each survivor's ML-DSA-65 signature on it up; in
    the deployment these ride on the training message and the masked input when no input is
    missing),
    ``unmask`` (with the neighbours' signatures each holder verifies).
    """
    nodes = sorted(updates)
    graph = neighbours(nodes, k, seed=7)
    if keys is None:
        keys, moved = pair_keys(nodes, graph)
    else:
        moved = {"keys": 0, "pair-keys": 0, "identity": 0}
    moved.update({"masked": 0, "consistency": 0, "unmask": 0})

    from transport import secagg_identity as ident

    # the round's public parameters, which the consistency round signs and the share keys are bound to
    parameters = ident.parameters_statement([("participants", len(nodes)), ("threshold", t), ("step", float(step))])

    def seed(i: int, j: int, what: str) -> bytes:
        return seed_from_key(keys[(i, j)], pair_info(round_id, i, j, what, parameters if what == PAIR_SHARES else b""))

    masked: dict[int, np.ndarray] = {}
    inbox: dict[int, dict[int, bytes]] = {i: {} for i in nodes}  # holder -> {owner: encrypted share of b_owner}
    for i in nodes:
        moved["masked"] += KEY_BYTES * len(graph[i])
        if i in drop:
            continue
        b = np.random.default_rng().bytes(SEED_BYTES)
        for j, share in split(b, t, sorted(graph[i])).items():
            inbox[j][i] = encrypt_share(seed(i, j, PAIR_SHARES), share)
            moved["masked"] += len(inbox[j][i])
        pairs = {j: seed(i, j, PAIR_MASK) for j in graph[i]}
        masked[i] = masked_input(quantize(updates[i], step), i, b, pairs)
        moved["masked"] += masked[i].nbytes
    # the consistency round: each survivor signs the survivor set (the set down, a signature
    # up); each holder verifies its surviving neighbours' signatures (down with the unmask stage)
    from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey

    identity = {i: MLDSA65PrivateKey.generate() for i in masked}  # certified with the run's keys (pair_keys)
    survivors = sorted(masked)
    signed = {i: identity[i].sign(ident.survivors_statement(1, round_id, i, survivors, parameters), ident.SURVIVORS)
              for i in survivors}
    moved["consistency"] = sum(8 * len(survivors) + len(signed[i]) for i in survivors)
    for holder in sorted(set(masked) - silent):
        for j in sorted(graph[holder] & set(masked)):
            identity[j].public_key().verify(signed[j], ident.survivors_statement(1, round_id, j, survivors, parameters),
                                            ident.SURVIVORS)
            moved["unmask"] += len(signed[j])
        moved["unmask"] += 8 * len(survivors)
    b_of: dict[int, list[bytes]] = {i: [] for i in masked}
    revealed: dict[tuple[int, int], bytes] = {}
    for holder in sorted(set(masked) - silent):
        for owner, token in inbox[holder].items():
            if owner in masked:
                moved["unmask"] += len(token)  # the token down, the share up
                share = decrypt_share(seed(holder, owner, PAIR_SHARES), token)
                b_of[owner].append(share)
                moved["unmask"] += len(share)
        for j in graph[holder] - set(masked):
            revealed[(holder, j)] = seed(holder, j, PAIR_MASK)
            moved["unmask"] += SEED_BYTES
    seeds = {i: rebuild(s, t, i, "self-mask seed") for i, s in b_of.items()}
    return dequantize(unmask(masked, graph, seeds, revealed), step), masked, moved
