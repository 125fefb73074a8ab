"""SecAgg+ in Flower's Message API, malicious-server variant: a ClientApp query handler, a transport, and a Grid wrapper.

``transport = "secagg"`` (or ``"qkd+secagg"``): the server learns the sum of the round's
updates and never one of them, even if it lies (the protocol and why it is safe:
:mod:`transport.secagg`; Bell et al. 2020, Sec. 5). A training round is two exchanges
with the nodes that train when every one of them sends its masked input, three when one
does not, where plain FedAvg has one:

1. **the training message** itself, with the round's participants and the node's neighbours
   among them (and, the first time, each neighbour's signed key record): the node checks
   the instructions against its own configuration (:meth:`SecAggTransport.checked`) and
   every neighbour's certificate and signatures (:mod:`transport.secagg_identity`), trains,
   and on the way out :class:`SecAggTransport` replaces its reply by its masked input, the
   Shamir shares of its self-mask seed, each encrypted for its holder, and its signature on
   the participant set as the survivor set should every participant send its input, with
   the round's public parameters as it was given them (participants, threshold, step, clip
   and weight bound ``B``, or the DP clip, noise multiplier and split). Nothing else of the
   reply leaves;
2. **consistency** (query :data:`SECAGG_TYPE`), only when a participant's input did not
   arrive: each node that sent an input gets the survivor set, a subset of the
   participants, and signs it, with the same parameters, with its certified identity, once
   a round;
3. **unmask**: the holders the server needs get the same survivor set, their neighbours'
   signatures on it and the encrypted shares their neighbours made for them; a node that
   verifies at least ``t`` neighbours' signatures on the set it signed *and its own
   parameters* (the participants, or the one set it signed in the consistency round)
   answers the survivors' self-mask shares and its own pair seeds with its neighbours
   outside the set. Each share is encrypted under a key bound to its owner's
   parameters, so a holder given other parameters cannot open it: a server that gave one
   node another ``B`` than its neighbours (to weigh its update up against theirs) gets its
   self-mask seed from no one.

Keys (once a run, kept in the node's own store, :mod:`transport.secagg_store`, never in
Flower's node state): an X25519 key pair and an ML-KEM-768 key pair per node, signed with
the node's ML-DSA-65 identity, which the deployment's CA certifies. The signed record comes
with the node's warm-up answer (:func:`node_key_record`), or in a ``keys`` query. For each
pair of neighbours the server then asks the lower node, in a ``keys`` query, to encapsulate
to the higher one's certified ML-KEM key; the lower node signs the ciphertext, the server
relays both to the higher one in its next training message, and both hold the pair's
hybrid key (:mod:`transport.hybrid_kem`) for the run. With ``qkd+secagg`` the pairwise masks
come from QKD keys instead, one per pair of neighbours for the run, with the SAE each
neighbour's certificate names; the shares stay encrypted under the certified hybrid key.

What a node sends: without DP, its update :math:`\\Delta_i` clipped to ``secagg-clip`` per
coordinate and weighted by :math:`a_i = \\min(n_i, B)/B` (``B`` a public bound on examples),
and :math:`a_i` itself; the server's aggregate is :math:`\\sum a_i \\Delta_i / \\sum a_i`, which
FedAvg and the strategies that average (:data:`~qfl.common.config.SECAGG_STRATEGIES`)
aggregate as they would the clients' replies. With ``dp`` (``dp-mode = "central"``) it is
distributed DP: each node clips its whole update to L2 norm ``C`` and adds its share of the
noise, :math:`\\mathcal N(0, \\sigma^2 C^2 / m_{\\min})`. Clip, step, noise multiplier and
split are the node's own run config's: the server's values are checked against them, never used.

:class:`SecAggGrid` runs the exchanges around the strategy's training messages and gives the
strategy the aggregate, with the error replies of the nodes that refused (their reasons go
to ``clients.csv``). A node that fails after training leaves the sum of the others; below
the threshold, or with an unmasked sum no honest bounded inputs can make, the round fails,
named in the log, and the run goes on with the model unchanged. What a lying server can
still do, and what it cannot: ``docs/transport.md``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING

import numpy as np
from cryptography.fernet import InvalidToken
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.contract import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    SECAGG_ACTION,
    SECAGG_DROPPED,
    SECAGG_MASKED,
    SECAGG_RECORD,
    SECAGG_SUMMED,
)
from qfl.common.records import clip_update, flatten, unflatten
from transport import hybrid_kem, secagg
from transport.secagg_identity import CIPHERTEXT as CIPHERTEXT_CONTEXT
from transport.secagg_identity import KEYS as KEYS_CONTEXT
from transport.secagg_identity import SURVIVORS as SURVIVORS_CONTEXT
from transport.secagg_identity import (
    IdentityError,
    NodeIdentity,
    Peer,
    ciphertext_statement,
    ek_hash,
    key_statement,
    parameters_statement,
    survivors_statement,
    verify_peer,
)
from transport.secagg_store import NodeStore, StoreError, bytes_of, hex_of
from transport.base import Envelope, Transport, TransportError
from transport.delegating_grid import DelegatingGrid

SECAGG_TYPE = f"query.{SECAGG_ACTION}"
ROUND = "round"  # in the node's store: the round in flight
ANSWERED = "answered"  # in the node's store: the last round it sent a masked input for
STEPS_PER_CLIP = 2**19  # quantisation steps per clipping norm (and per unit of weight)
WEIGHT_STEP = 1.0 / STEPS_PER_CLIP  # the weight a in [0, 1] has its own step, whatever the clip
MAX_SUMMANDS = secagg.max_summands(STEPS_PER_CLIP)  # 4,095: inputs of at most 2^19 steps a coordinate holds
DP_FIELD_SIGMAS = 10.0  # under DP, the summed noise may reach this many standard deviations without overflow
MASKED = "y"  # not a contract name: the one array of a masked reply
SECAGG_ERROR_CODE = 4401  # an error reply: a stage this node refused (out of order, both secrets of one client asked)


def sizes(n: int, cfg: RunConfig) -> tuple[int, int]:
    """``(k neighbours, threshold t)`` for ``n`` clients.

    ``k``: every other client up to 8 clients (or ``secagg-neighbours``), else the even
    number nearest :math:`2 \\log_2 n`; below ``n - 1`` it is the ring's real degree (even:
    :func:`transport.secagg.neighbours` joins ``k // 2`` on each side). ``t``: the
    ``secagg-threshold`` share of ``k``, and always a majority of ``k`` and at least 2:
    :math:`t = \\max(2, \\lfloor k/2 \\rfloor + 1, \\lceil \\theta k \\rceil)` (Bell et al.'s
    malicious setting needs :math:`t > k/2`: no two disjoint sets of ``t`` neighbours, so a
    server that tells one set a client survived and another that it dropped cannot collect
    both its self-mask shares and its pair seeds).
    """
    if cfg.secagg_neighbours:
        k = min(cfg.secagg_neighbours, n - 1)
    else:
        k = n - 1 if n <= 8 else min(n - 1, 2 * round(math.log2(n)))
    if k < n - 1:
        k = 2 * max(1, k // 2)
    return k, max(2, k // 2 + 1, math.ceil(cfg.secagg_threshold * k))


def min_survivors(n: int, cfg: RunConfig) -> int:
    """The fewest of ``n`` participants whose sum the server may unmask: the ``secagg-threshold``
    share of them, at least 2 (with distributed DP, the noise is split among that many)."""
    return max(2, math.ceil(cfg.secagg_threshold * n))


def max_participants(cfg: RunConfig) -> int:
    """The most participants whose sum the field holds (signed :math:`\\mathbb Z_{2^{32}}`,
    :data:`STEPS_PER_CLIP` steps per clip and per unit of weight): 4,095 without DP; under
    distributed DP the largest ``n`` with :math:`n + 10\\,\\sigma\\sqrt{n/m_{\\min}}` clips within
    the field (the clipped updates and ten standard deviations of the summed noise)."""
    if not distributed_dp(cfg):
        return MAX_SUMMANDS
    n = MAX_SUMMANDS
    while n > 2 and n + DP_FIELD_SIGMAS * cfg.dp_noise_multiplier * math.sqrt(n / min_survivors(n, cfg)) > MAX_SUMMANDS:
        n -= 1
    return n


def unmask_holders(graph: dict[int, set[int]], survivors: list[int], dropped: list[int], t: int,
                   shares: dict[int, list[bytes]], asked: set[int]) -> set[int]:
    """Survivors not yet ``asked`` whose unmask answers the round still needs, few as can be.

    Every surviving neighbour of a dropped client must reveal its pair seed with it; beyond
    them, survivors are added greedily (the one holding shares for the most survivors still
    short of ``t``) until each survivor can count on ``t`` shares. Empty when nothing more can
    help: every need is met, or no survivor is left to ask.
    """
    candidates = set(survivors) - asked
    chosen = {h for j in dropped for h in graph[j] & candidates}
    short = {i: t - len(shares[i]) - len(graph[i] & chosen) for i in survivors}
    while any(v > 0 for v in short.values()):
        gain = {h: sum(1 for i in graph[h] if short.get(i, 0) > 0) for h in candidates - chosen}
        best = max(gain, key=lambda h: (gain[h], -h), default=None)
        if best is None or gain[best] == 0:
            break
        chosen.add(best)
        for i in graph[best]:
            short[i] = short.get(i, 0) - 1 if i in short else 0
    return chosen


def distributed_dp(cfg: RunConfig) -> bool:
    """Central DP on top of secure aggregation: each node adds its share of the noise."""
    return cfg.uses_transport("dp") and cfg.dp_mode == "central"


def quantisation_steps(cfg: RunConfig, d: int) -> np.ndarray | float:
    """The step of each of the ``d`` coordinates a node sends: ``clip / 2^19`` (``dp-clip``
    under distributed DP, else ``secagg-clip``), the last one, the weight, ``2^-19`` without DP."""
    if distributed_dp(cfg):
        return cfg.dp_clip / STEPS_PER_CLIP
    steps = np.full(d, cfg.secagg_clip / STEPS_PER_CLIP)
    steps[-1] = WEIGHT_STEP
    return steps


# --- the node's side ------------------------------------------------------------------------


def _refuse(err: Exception) -> TransportError:
    """A store or identity failure as the transport's refusal, named."""
    why = str(err)
    return TransportError(why if why.startswith("secagg: ") else f"secagg: {why}")


def _store(run_id: int, node_id: int) -> NodeStore:
    try:
        return NodeStore.of(run_id, node_id)
    except StoreError as err:
        raise _refuse(err) from err


@contextmanager
def _opened(run_id: int, node_id: int) -> Iterator[dict]:
    """This node's secure-aggregation store for the run (:mod:`transport.secagg_store`), its
    run keys made on first use (X25519 and ML-KEM-768, OS entropy)."""
    try:
        with _store(run_id, node_id).open() as data:
            if "sk" not in data:
                data.update({"sk": hex_of(secagg.private_bytes(secagg.new_key())),
                             "kem": hex_of(hybrid_kem.kem_seed(hybrid_kem.new_kem_key())),
                             "peers": {}, "hyb": {}, "qkd": {}})
            yield data
    except StoreError as err:
        raise _refuse(err) from err


def _identity(node: NodeConfig) -> NodeIdentity:
    """This node's certified identity (``$QFL_SECAGG_CERTS``); without it secure aggregation is refused."""
    try:
        return NodeIdentity.load(node.partition_id)
    except IdentityError as err:
        raise _refuse(err) from err


def _public(data: dict) -> tuple[bytes, bytes]:
    """This node's X25519 public key and ML-KEM-768 encapsulation key for the run."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    sk = X25519PrivateKey.from_private_bytes(bytes_of(data["sk"]))
    return secagg.public_bytes(sk), hybrid_kem.kem_public_bytes(bytes_of(data["kem"]))


def _key_record(data: dict, identity: NodeIdentity, run_id: int, me: int) -> dict:
    """This node's keys for the run with its certificate and its signature over them."""
    pk, ek = _public(data)
    sig = identity.sign(KEYS_CONTEXT, key_statement(run_id, me, identity.name, pk, ek_hash(ek)))
    return {"pk": pk, "ek": ek, "cert": identity.cert_der, "sig": sig}


def node_key_record(context: Context) -> ConfigRecord:
    """This node's signed keys for the run (the warm-up answer under ``secagg``).

    Raises
    ------
    TransportError
        The node has no identity certificate (``$QFL_SECAGG_CERTS``) or no usable store, named.
    """
    identity = _identity(NodeConfig.from_node_config(context.node_config))
    with _opened(context.run_id, context.node_id) as data:
        return ConfigRecord(_key_record(data, identity, context.run_id, context.node_id))


def _peer(data: dict, j: int) -> Peer:
    entry = data["peers"].get(str(j))
    if entry is None:
        raise TransportError(f"secagg: node {j} has shown this node no certified key (no unauthenticated key is used)")
    return Peer(entry["name"], bytes_of(entry["id"]), bytes_of(entry["pk"]), bytes_of(entry["ekh"]))


def _admit(ask: ConfigRecord, data: dict, identity: NodeIdentity, run_id: int, me: int) -> None:
    """Each neighbour the server introduces (``intro-*``): its certificate must chain to this
    node's own CA as a secure-aggregation identity, its signature must cover this run, the
    node ID it is introduced as and the keys relayed, its name must be neither this node's
    nor another node ID's; a node keeps the first statement of each neighbour for the run."""
    names = {p["name"]: int(j) for j, p in data["peers"].items()}
    fields = [ask.get(f"intro-{k}", []) for k in ("nodes", "certs", "sigs", "pks", "ekhs")]
    try:
        rows = list(zip(*fields, strict=True))
    except ValueError as err:
        raise TransportError("secagg: instruction intro: the introductions' lists differ in length") from err
    for j, cert, sig, pk, ekh in rows:
        j = int(j)
        try:
            peer = verify_peer(identity.ca, bytes(cert), bytes(sig), run_id, j, bytes(pk), bytes(ekh))
        except IdentityError as err:
            raise TransportError(f"secagg: neighbour {j} refused: {err}") from err
        if peer.name == identity.name or j == me:
            raise TransportError(f"secagg: neighbour {j} refused: it presents this node's own name {peer.name!r}")
        if names.get(peer.name, j) != j:
            raise TransportError(f"secagg: neighbour {j} refused: {peer.name!r} is node {names[peer.name]} in this run")
        entry = {"name": peer.name, "id": hex_of(peer.identity), "pk": hex_of(peer.x25519), "ekh": hex_of(peer.ek_hash)}
        known = data["peers"].get(str(j))
        if known is not None and known != entry:
            raise TransportError(f"secagg: neighbour {j} refused: other keys than those it signed earlier in this run")
        data["peers"][str(j)] = entry
        names[peer.name] = j


def secagg_stage(msg: Message, context: Context) -> Message:
    """The ClientApp's handler for :data:`SECAGG_TYPE`: the ``keys``, ``consistency`` and ``unmask`` stages."""
    ask = msg.content.config_records[SECAGG_RECORD]
    stage = ask.get("stage")
    run_id, me = context.run_id, context.node_id
    try:
        node = NodeConfig.from_node_config(context.node_config)
        identity = _identity(node)
        with _opened(run_id, me) as data:
            if stage == "keys":
                _admit(ask, data, identity, run_id, me)
                answer = ConfigRecord(_key_record(data, identity, run_id, me))
                if ask.get("kem-with"):  # this node is the lower end of these pairs: it encapsulates
                    answer["kem-cts"], answer["kem-ct-sigs"] = _encapsulate(data, identity, run_id, me, ask)
                if ask.get("pair-with"):  # qkd: this node is the lower end (master SAE) of these pairs
                    answer["qkd-key-ids"] = _qkd_pair_keys(context, data, [int(j) for j in ask["pair-with"]],
                                                           [str(s) for s in ask["pair-saes"]])
            elif stage == "consistency":
                cfg = RunConfig.from_run_config(context.run_config)
                answer = _consistency_answer(ask, data, identity, run_id, me, cfg)
            elif stage == "unmask":
                answer = _unmask_answer(ask, data, run_id, me)
                del data[ROUND]  # the round is done: nothing of it is needed again, nothing is answered twice
            else:
                raise TransportError(f"secagg: unknown stage {stage!r}")
    except (TransportError, KeyError, ValueError, TypeError) as err:
        why = str(err).removeprefix("secagg: ")
        log(WARNING, "secagg: refused stage %r: %s", stage, why)
        return Message(Error(SECAGG_ERROR_CODE, f"secagg: refused stage {stage!r}: {why}"), reply_to=msg)
    return Message(RecordDict({SECAGG_RECORD: answer}), reply_to=msg)


def _encapsulate(data: dict, identity: NodeIdentity, run_id: int, me: int, ask: ConfigRecord) -> tuple[list, list]:
    """For each neighbour above this node, its half of the hybrid pair key, made to the
    neighbour's *certified* keys (its encapsulation key must hash to what it signed): the key
    kept in the store for the run, the ML-KEM ciphertexts returned with this node's
    signature over each (aligned with ``kem-with``)."""
    cts, sigs = [], []
    for j, ek in zip(ask["kem-with"], ask["kem-eks"], strict=True):
        j, ek = int(j), bytes(ek)
        if j <= me:
            raise TransportError(f"secagg: instruction kem-with: this node encapsulates only to neighbours above it, "
                                 f"not to {j}")
        peer = _peer(data, j)
        if ek_hash(ek) != peer.ek_hash:
            raise TransportError(f"secagg: instruction kem-eks: node {j}'s ML-KEM key is not the one {peer.name} signed")
        key, ct = hybrid_kem.encapsulate_pair(bytes_of(data["sk"]), me, j, peer.x25519, ek)
        data["hyb"][str(j)] = [hex_of(hashlib.sha256(ct).digest()), hex_of(key)]
        cts.append(ct)
        sigs.append(identity.sign(CIPHERTEXT_CONTEXT, ciphertext_statement(run_id, me, j, ct)))
    return cts, sigs


def _qkd_pair_keys(context: Context, data: dict, higher: list[int], saes: list[str]) -> list[str]:
    """For each neighbour above this node, a key from the key manager (this node the master
    SAE), kept in the store for the run; the key IDs, aligned with ``higher``. The SAE the
    server names for a neighbour must be the name its certificate carries: a pair key with
    any other SAE (the server's own, say) would hand the masks to it."""
    cfg = RunConfig.from_run_config(context.run_config)
    for j, sae in zip(higher, saes, strict=True):
        if j <= context.node_id:
            raise TransportError(f"secagg: this node makes the pair key only with neighbours above it, not {j}")
        if sae != _peer(data, j).name:
            raise TransportError(f"secagg: the server named SAE {sae!r} for node {j}, whose certificate names "
                                 f"{_peer(data, j).name!r}")
    from transport.qkd.client import KeyManagerClient

    kms = KeyManagerClient.of_this_sae(cfg.kms_url)
    try:
        ids = []
        for j, sae in zip(higher, saes, strict=True):
            key_id, key = kms.enc_key(sae)
            ids.append(key_id)
            data["qkd"][str(j)] = [key_id, hex_of(key)]
        return ids
    finally:
        kms.close()


def _pair_seed(data: dict, me: int, j: int, round_id: str, what: str, parameters: bytes = b"") -> bytes:
    """This round's seed with neighbour ``j`` for ``what``: the mask seed from the pair's QKD
    key when the run keeps one, else (and the share key always) from the certified hybrid pair
    key; bound to ``parameters`` (:func:`parameters_statement`) where given: the share key is,
    so that only a holder given the owner's parameters opens the owner's share."""
    info = secagg.pair_info(round_id, me, j, what, parameters)
    if what == secagg.PAIR_MASK and str(j) in data["qkd"]:
        return secagg.seed_from_key(bytes_of(data["qkd"][str(j)][1]), info)
    if str(j) not in data["hyb"]:
        raise TransportError(f"secagg: this node holds no hybrid pair key with node {j}")
    return secagg.seed_from_key(bytes_of(data["hyb"][str(j)][1]), info)


def _round_of(data: dict, ask: ConfigRecord) -> tuple[dict, str]:
    state, round_id = data.get(ROUND), str(ask.get("round-id"))
    if state is None or state.get("round-id") != round_id:
        raise TransportError(f"secagg: this node sent no masked input in round {round_id!r} (or answered it already)")
    return state, round_id


def _parameters(state: dict) -> tuple[bytes, str]:
    """The round's public parameters this node was given (kept with the round in flight) as the
    bytes it signs and binds its share keys to, and as words for a refusal (the step, its clip
    / 2^19, left out of the words)."""
    if "parameters" not in state:
        raise TransportError("secagg: the round in flight holds no round parameters (a store of an earlier version): "
                             "this node signs and reveals nothing for it")
    pairs = [(str(k), v) for k, v in state["parameters"]]
    return parameters_statement(pairs), ", ".join(f"{k} {v:g}" for k, v in pairs if k != "step")


def _survivor_set(ask: ConfigRecord) -> list[int]:
    survivors = [int(j) for j in ask["survivors"]]
    if len(set(survivors)) != len(survivors):
        raise TransportError("secagg: instruction survivors: a node listed twice")
    return sorted(survivors)


def _consistency_answer(ask: ConfigRecord, data: dict, identity: NodeIdentity, run_id: int, me: int,
                        cfg: RunConfig) -> ConfigRecord:
    """The consistency round (Bell et al. 2020, Sec. 5): this node signs the survivor set it
    was given, with the round's public parameters it was given (:func:`_parameters`), once a
    round (a second, different set is refused), and only one that lists
    it, at least ``t`` of its neighbours and at least the run's threshold share of the
    participants (the fewest whose sum may be unmasked), no one outside the participants it
    signed with its masked input, and, where every participant is its neighbour
    (``k = n - 1``), no one else."""
    state, round_id = _round_of(data, ask)
    survivors = _survivor_set(ask)
    mine, threshold = {int(j) for j in state["neighbours"]}, int(state["threshold"])
    if me not in survivors:
        raise TransportError("secagg: a survivor set without this node, which sent its masked input")
    if "presigned" in state and not set(survivors) <= set(state["presigned"]):
        raise TransportError(f"secagg: survivors {sorted(set(survivors) - set(state['presigned']))} were not among "
                             f"the round's participants {state['presigned']}")
    if len(mine) == int(state["participants"]) - 1 and not set(survivors) <= mine | {me}:
        raise TransportError(f"secagg: survivors {sorted(set(survivors) - mine - {me})} took no part: every "
                             "participant is this node's neighbour")
    if len(set(survivors) & mine) < threshold:
        raise TransportError(f"secagg: {len(set(survivors) & mine)} of this node's neighbours survived, fewer than "
                             f"the threshold {threshold}: revealing its pair seeds could expose its own input")
    floor = min_survivors(int(state["participants"]), cfg)
    if len(survivors) < floor:
        raise TransportError(f"secagg: a survivor set of {len(survivors)}, fewer than the {floor} of "
                             f"{state['participants']} participants whose sum the run unmasks")
    if state.get("signed", survivors) != survivors:
        raise TransportError(f"secagg: a second, different survivor set for round {round_id!r}: this node signed "
                             f"{state['signed']} and signs one set a round")
    parameters, _ = _parameters(state)
    state["signed"] = survivors
    return ConfigRecord({"sig": identity.sign(SURVIVORS_CONTEXT,
                                              survivors_statement(run_id, round_id, me, survivors, parameters))})


def _unmask_answer(ask: ConfigRecord, data: dict, run_id: int, me: int) -> ConfigRecord:
    """The unmask stage: only for the survivor set this node signed (in the consistency round,
    else with its masked input: the participants), at most once a round, and only once at least
    ``t`` distinct neighbours' valid signatures on that same set and the same round
    parameters this node was given came with it. Then the self-mask shares of its surviving
    neighbours and its pair seeds with the others (its neighbours outside the set): never both
    of one client, since both follow from one set. A share opens only under the key bound to
    this node's parameters: one whose owner was given others is refused, and nothing is revealed."""
    state, round_id = _round_of(data, ask)
    signed = state.get("signed", state.get("presigned"))  # the set of a consistency round, else the participants
    if signed is None:
        raise TransportError(f"secagg: the consistency round was skipped: this node signed no survivor set for "
                             f"round {round_id!r} and reveals nothing")
    survivors = _survivor_set(ask)
    if survivors != signed:
        raise TransportError(f"secagg: the survivor set {survivors} is not the one this node signed "
                             f"({signed}): it reveals nothing")
    mine, threshold = {int(j) for j in state["neighbours"]}, int(state["threshold"])
    parameters, words = _parameters(state)
    valid, bad = set(), []
    for j, sig in zip([int(j) for j in ask.get("sig-from", [])], ask.get("sigs", []), strict=True):
        if j not in mine or j not in survivors or j in valid:
            bad.append(j)
            continue
        try:
            _peer(data, j).verify(SURVIVORS_CONTEXT, survivors_statement(run_id, round_id, j, survivors, parameters),
                                  bytes(sig), f"node {j}'s survivor set")
            valid.add(j)
        except (IdentityError, TransportError):
            bad.append(j)
    if len(valid) < threshold:
        raise TransportError(f"secagg: {len(valid)} valid signature(s) of surviving neighbours on the survivor set "
                             f"and round parameters this node signed ({words}), fewer than the threshold {threshold}"
                             + (f" (not valid: {sorted(bad)}: another set or other parameters)" if bad else "")
                             + ": it reveals nothing")
    out: dict[str, list] = {"b-owners": [], "b-shares": [], "pair-owners": [], "pair-seeds": []}
    for owner, token in zip([int(j) for j in ask["owners"]], ask["b-tokens"], strict=True):
        if owner not in mine or owner not in survivors:
            raise TransportError(f"secagg: client {owner} is not a surviving neighbour of this node")
        key = _pair_seed(data, me, owner, round_id, secagg.PAIR_SHARES, parameters)
        try:
            share = secagg.decrypt_share(key, bytes(token))
        except InvalidToken as err:
            raise TransportError(f"secagg: the self-mask share from node {owner} does not open under the round "
                                 f"parameters this node was given ({words}): node {owner} was given other parameters "
                                 "(or the share is not its): it reveals nothing") from err
        out["b-owners"].append(owner)
        out["b-shares"].append(share)
    for j in sorted(mine - set(survivors)):
        out["pair-owners"].append(j)
        out["pair-seeds"].append(_pair_seed(data, me, j, round_id, secagg.PAIR_MASK))
    return ConfigRecord(out)


@dataclass(frozen=True)
class Instructions:
    """A training message's secure-aggregation instructions, as the node has checked them."""

    round_id: str
    participants: int
    neighbours: list[int]
    threshold: int
    parameters: list[tuple[str, int | float]]  # the round's public parameters, as the consistency round signs them
    members: list[int] | None = None  # the round's participants (the survivor set it signs with its masked input)


def _integer(ask: ConfigRecord, key: str) -> int:
    value = ask.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TransportError(f"secagg: instruction {key} = {value!r}: an integer is required")
    return value


def _number(ask: ConfigRecord, key: str) -> float:
    value = ask.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TransportError(f"secagg: instruction {key} = {value!r}: a finite number is required")
    return float(value)


def _same(ask: ConfigRecord, key: str, own: float, whose: str) -> None:
    if _number(ask, key) != own:
        raise TransportError(f"secagg: instruction {key} = {_number(ask, key):g}: this node's {whose} says {own:g}")


class SecAggTransport(Transport):
    """The node's masked input: its training reply leaves as that and nothing else.

    ``kms`` is the key manager client (``qkd+secagg``); ``cfg`` and ``node`` the node's own
    run and node config, against which it checks every instruction of the server
    (:meth:`checked`); ``node`` is ``None`` on the server, where the transport does nothing
    (:class:`SecAggGrid` unmasks the sum). The run's keys, the neighbours it verified, the
    round in flight and the last round answered are kept in the node's own store
    (:mod:`transport.secagg_store`), never in Flower's node state.
    """

    name = "secagg"

    def __init__(self, kms=None, server_sae: str = "server", cfg: RunConfig | None = None,  # noqa: ANN001
                 node: NodeConfig | None = None) -> None:
        self.kms, self.server_sae, self.cfg, self.node = kms, server_sae, cfg, node  # kms: a KeyManagerClient

    def checked(self, ask: ConfigRecord | None, me: int) -> Instructions:
        """The server's instructions, each checked against this node's own configuration.

        Refused by name (:class:`TransportError`): a participant count ``n`` outside
        ``[2, min(num-partitions, max_participants)]`` (``num-partitions``, this node's node
        config, is the most clients the run can have: each needs a certified identity); a
        neighbour list that is not ``k`` distinct others, ``k`` what the run config gives for
        ``n`` (:func:`sizes`); a threshold other than the run config's ``t`` for ``k`` (a
        majority, at least 2); a quantisation step, clip, noise multiplier or noise split
        other than the run config's; distributed DP (``l2-clip``) asked of a node whose run
        config does not say it, or not asked of one whose run config does; a weight bound
        that is not a positive finite number. (Each neighbour's certified keys are checked
        apart, in :meth:`decode`. The participant count and the weight bound, which the node's
        config does not fix, must be the same at every node: the consistency round checks that,
        :func:`_unmask_answer`.)
        """
        if ask is None:
            raise TransportError("secagg: a training message without this round's secure-aggregation instructions")
        if self.cfg is None or self.node is None:
            raise TransportError("secagg: this node has no run and node config to check the server's instructions against")
        try:
            return self._checked(ask, me, self.cfg, self.node)
        except (KeyError, ValueError, TypeError) as err:
            raise TransportError(f"secagg: malformed instructions: {type(err).__name__}: {err}") from err

    def _checked(self, ask: ConfigRecord, me: int, cfg: RunConfig, node: NodeConfig) -> Instructions:
        n = _integer(ask, "participants")
        limit = min(node.num_partitions, max_participants(cfg))
        if not 2 <= n <= limit:
            raise TransportError(f"secagg: instruction participants = {n}: this node takes part in rounds of 2 to "
                                 f"{limit} clients (its num-partitions {node.num_partitions}; the field holds "
                                 f"{max_participants(cfg)})")
        k, t = sizes(n, cfg)
        neighbours = [int(j) for j in ask["neighbours"]]
        if len(set(neighbours)) != len(neighbours) or me in neighbours or len(neighbours) != k:
            raise TransportError(f"secagg: instruction neighbours: {len(neighbours)} listed, this node's run config "
                                 f"gives k = {k} distinct others for {n} participants")
        threshold = _integer(ask, "threshold")
        if threshold != t:
            raise TransportError(f"secagg: instruction threshold = {threshold}: this node's run config gives t = {t} "
                                 f"for k = {k} neighbours (a majority, at least 2)")
        dp = distributed_dp(cfg)
        clip = cfg.dp_clip if dp else cfg.secagg_clip
        _same(ask, "step", clip / STEPS_PER_CLIP, "clip / 2^19")
        parameters: list[tuple[str, int | float]] = [("participants", n), ("threshold", t),
                                                     ("step", float(clip / STEPS_PER_CLIP))]
        if dp:
            if "l2-clip" not in ask:
                raise TransportError("secagg: instruction l2-clip missing: this node's run config says distributed DP "
                                     "(secagg with dp, dp-mode central) and it sends nothing without its noise")
            _same(ask, "l2-clip", cfg.dp_clip, KEY.dp_clip)
            _same(ask, "sigma", cfg.dp_noise_multiplier, KEY.dp_noise_multiplier)
            _same(ask, "noise-split", min_survivors(n, cfg), f"run's threshold for {n} participants")
            parameters += [("l2-clip", float(cfg.dp_clip)), ("sigma", float(cfg.dp_noise_multiplier)),
                           ("noise-split", min_survivors(n, cfg))]
        else:
            if "l2-clip" in ask:
                raise TransportError("secagg: instruction l2-clip: the server asks for distributed DP, which this "
                                     "run's config does not")
            _same(ask, "clip", cfg.secagg_clip, KEY.secagg_clip)
            if _number(ask, "weight-bound") <= 0:
                raise TransportError(f"secagg: instruction weight-bound = {ask['weight-bound']}: a positive bound is required")
            parameters += [("clip", float(cfg.secagg_clip)), ("weight-bound", _number(ask, "weight-bound"))]
        members = None
        if "members" in ask:  # the participants: the survivor set this node signs with its masked input
            members = sorted(int(j) for j in ask["members"])
            if len(members) != n or len(set(members)) != n or me not in members or not set(neighbours) <= set(members):
                raise TransportError(f"secagg: instruction members: {len(set(members))} distinct participants listed "
                                     f"for participants = {n}, which must include this node and its neighbours")
        return Instructions(str(ask["round-id"]), n, neighbours, threshold, parameters, members)

    @staticmethod
    def _check_round(data: dict, envelope: Envelope) -> None:
        """One masked input per (run, round), rounds strictly increasing: a server that sums the
        same round over S and over S minus X would learn X's update from the difference."""
        last = data.get(ANSWERED)
        if last is not None and envelope.server_round <= int(last):
            raise TransportError(f"secagg: a training message for round {envelope.server_round}: this node sent its "
                                 f"masked input for round {int(last)} already and sends one a round, rounds increasing")

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        """On the node, before it trains: the instructions checked, each neighbour's certified
        keys verified (and kept for the run), the pair keys with neighbours below it taken
        from their signed ciphertexts (and under qkd their QKD keys fetched); any failure
        refuses the round, named."""
        if envelope.direction == "down" and envelope.message_type == "train" and self.node is not None:
            ask, me = content.config_records.get(SECAGG_RECORD), envelope.node_id
            identity = _identity(self.node)
            with _opened(envelope.run_id, me) as data:
                self._check_round(data, envelope)
                told = self.checked(ask, me)
                _admit(ask, data, identity, envelope.run_id, me)
                for j in told.neighbours:
                    _peer(data, j)
                self._fetch_qkd_keys(ask, data, me)
                self._receive_pair_keys(ask, data, envelope.run_id, me, told)
        return content

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if envelope.direction != "up" or request is None or envelope.message_type != "train" or not content.array_records:
            return content
        if self.node is None:
            raise TransportError("secagg: only a node sends a masked input")
        ask, me = request.config_records.get(SECAGG_RECORD), envelope.node_id
        with _opened(envelope.run_id, me) as data:
            self._check_round(data, envelope)
            told = self.checked(ask, me)
            missing = [j for j in told.neighbours if str(j) not in data["peers"] or str(j) not in data["hyb"]]
            if missing:
                raise TransportError(f"secagg: no certified pair key with neighbour(s) {missing}")
            x = secagg.quantize(*self._release(content, request, ask, told.participants))
            b = os.urandom(secagg.SEED_BYTES)
            shares = secagg.split(b, told.threshold, told.neighbours)
            bound = parameters_statement(told.parameters)  # a holder given other parameters cannot open a share
            tokens = [secagg.encrypt_share(_pair_seed(data, me, j, told.round_id, secagg.PAIR_SHARES, bound), shares[j])
                      for j in told.neighbours]
            pairs = {j: _pair_seed(data, me, j, told.round_id, secagg.PAIR_MASK) for j in told.neighbours}
            y = secagg.masked_input(x, me, b, pairs)
            state = {"round-id": told.round_id, "neighbours": told.neighbours, "threshold": told.threshold,
                     "participants": told.participants, "parameters": [list(p) for p in told.parameters]}
            answer: dict[str, object] = {"b-tokens": tokens}
            if told.members is not None:
                # the consistency round of a round in which every participant's input arrives,
                # signed now (one exchange fewer): the participants as the survivor set; a later
                # consistency round may still have it sign one subset of them (someone dropped)
                state["presigned"] = told.members
                answer["sig"] = _identity(self.node).sign(
                    SURVIVORS_CONTEXT, survivors_statement(envelope.run_id, told.round_id, me, told.members,
                                                           _parameters(state)[0]))
            data[ROUND] = state
            data[ANSWERED] = envelope.server_round
        return RecordDict({SECAGG_MASKED: ArrayRecord({MASKED: Array(y)}),
                           SECAGG_RECORD: ConfigRecord(answer)})

    def _release(self, content: RecordDict, request: RecordDict, ask: ConfigRecord,
                 participants: int) -> tuple[np.ndarray, np.ndarray | float]:
        """What this node adds to the sum and its quantisation steps: its weighted, clipped
        update and its weight, or, under distributed DP, its update clipped to L2 norm C plus
        its share of the noise; clip, sigma and the split from its own run config."""
        cfg = self.cfg
        names = list(request[ARRAYS].keys())
        delta = flatten(content[ARRAYS], names) - flatten(request[ARRAYS], names)
        if distributed_dp(cfg):
            clip, m_min = cfg.dp_clip, min_survivors(participants, cfg)
            noise = np.random.default_rng().normal(0.0, cfg.dp_noise_multiplier * clip / math.sqrt(m_min), delta.shape)
            return clip_update(delta, clip) + noise, quantisation_steps(cfg, delta.size)  # OS entropy above
        bound, clip = _number(ask, "weight-bound"), cfg.secagg_clip
        metrics = content.metric_records.get(METRICS, {})
        if NUM_EXAMPLES not in metrics:
            raise TransportError("secagg: the training reply names no example count to weigh it by")
        a = min(max(float(metrics[NUM_EXAMPLES]), 0.0), bound) / bound
        return np.concatenate([a * np.clip(delta, -clip, clip), [a]]), quantisation_steps(cfg, delta.size + 1)

    @staticmethod
    def _receive_pair_keys(ask: ConfigRecord, data: dict, run_id: int, me: int, told: Instructions) -> None:
        """The hybrid pair keys with the neighbours below this node, from the ML-KEM ciphertexts
        they made and signed for it (relayed by the server; a ciphertext whose signature is not
        the certified neighbour's is refused, and so is a second, other one for a pair held)."""
        held = data["hyb"]
        for j, ct, sig in zip(ask.get("kem-from", []), ask.get("kem-cts", []), ask.get("kem-ct-sigs", []), strict=True):
            j, ct = int(j), bytes(ct)
            digest = hex_of(hashlib.sha256(ct).digest())
            if str(j) in held and held[str(j)][0] == digest:
                continue
            if j >= me or j not in told.neighbours:
                raise TransportError(f"secagg: instruction kem-from: node {j} cannot have encapsulated for this node")
            if str(j) in held:
                raise TransportError(f"secagg: instruction kem-cts: a second ML-KEM ciphertext for the pair with node {j}")
            peer = _peer(data, j)
            try:
                peer.verify(CIPHERTEXT_CONTEXT, ciphertext_statement(run_id, j, me, ct), bytes(sig),
                            f"the ML-KEM ciphertext from node {j}")
                key = hybrid_kem.decapsulate_pair(bytes_of(data["sk"]), bytes_of(data["kem"]), me, j, peer.x25519, ct)
            except (IdentityError, ValueError) as err:
                raise TransportError(f"secagg: instruction kem-cts: {err}") from err
            held[str(j)] = [digest, hex_of(key)]

    def _fetch_qkd_keys(self, ask: ConfigRecord, data: dict, me: int) -> None:
        """The pair keys neighbours below this node made with it (master SAEs), fetched by the
        IDs the server relays from the SAE the neighbour's certificate names (the key manager
        hands each out once: a key held is not fetched again)."""
        held = data["qkd"]
        for j, key_id, sae in zip(ask.get("qkd-from", []), ask.get("qkd-key-ids-from", []), ask.get("qkd-saes-from", [])):
            j = int(j)
            if held.get(str(j), [""])[0] == str(key_id):
                continue
            if j >= me or j not in [int(n) for n in ask["neighbours"]]:
                raise TransportError(f"secagg: node {j} cannot have made a pair key for this node")
            if sae == self.server_sae or sae != _peer(data, j).name:
                raise TransportError(f"secagg: the server named SAE {sae!r} for node {j}, whose certificate names "
                                     f"{_peer(data, j).name!r}")
            if self.kms is None:
                raise TransportError("secagg: QKD-keyed masks need the key manager (transport qkd)")
            held[str(j)] = [str(key_id), hex_of(self.kms.dec_key(str(sae), str(key_id)))]


# --- the server's side ----------------------------------------------------------------------

RECORD_FIELDS = {"pk": secagg.KEY_BYTES, "ek": hybrid_kem.EK_BYTES}  # a node's key record: sizes checked here


def _key_record_of(record) -> dict[str, bytes] | None:  # noqa: ANN001 (a ConfigRecord or a dict)
    """A node's signed key record as the server keeps it, or ``None`` when malformed (the
    server does not verify it: every node verifies it itself, against its own CA)."""
    try:
        out = {k: bytes(record[k]) for k in ("pk", "ek", "cert", "sig")}
    except (KeyError, TypeError, ValueError):
        return None
    return out if all(len(out[k]) == n for k, n in RECORD_FIELDS.items()) and out["cert"] and out["sig"] else None


class SecAggGrid(DelegatingGrid):
    """Around the strategy's training messages, the exchanges of the module doc; the strategy
    gets the unmasked aggregate and the error replies of the nodes that refused their
    training message (other messages pass through).

    Parameters
    ----------
    grid : Grid
        The grid below (the transport grid, so that every exchange is protected as the
        training messages are).
    cfg : RunConfig
    weight_bound : float
        ``B``: the most examples one client's weight may count for (public).
    keys : dict, optional
        ``{node: its signed key record}`` (``pk``, ``ek``, ``cert``, ``sig``) the nodes gave at the warm-up.

    Attributes
    ----------
    failures : list of str
        Why rounds could not be unmasked, or were rejected (an unmasked sum out of bounds).
    last_sample : tuple or None
        ``(nodes available, nodes sampled)`` of the last round under distributed DP, for the ledger.
    """

    def __init__(self, grid: Grid, cfg: RunConfig, weight_bound: float, keys: dict | None = None) -> None:
        super().__init__(grid)
        self.cfg, self.weight_bound = cfg, float(weight_bound)
        self.records: dict[int, dict[str, bytes]] = {}  # node -> its signed key record (pk, ek, cert, sig)
        for n, record in (keys or {}).items():
            if (kept := _key_record_of(record)) is not None:
                self.records[n] = kept
        self.introduced: set[tuple[int, int]] = set()  # (node, neighbour): the node verified the neighbour's record
        self.pair_cts: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (lower, higher) -> (ciphertext, signature)
        self.delivered: set[tuple[int, int]] = set()  # pairs whose higher node used the ciphertext
        self.qkd_pairs: dict[tuple[int, int], str] = {}  # (lower, higher) -> the key ID the lower one got
        self.failures: list[str] = []
        self.last_sample: tuple[int, int] | None = None
        self._refused: list[Message] = []  # this round's training replies that are errors (a node refused)
        self._stage_refusals: list[str] = []  # this round's keys / consistency / unmask stages a node refused
        self._stage_errors: dict[int, Message] = {}  # the first such refusal of each node, as its error reply

    def take_failures(self) -> list[str]:
        """Return and reset why rounds could not be unmasked since the last call."""
        out, self.failures = self.failures, []
        return out

    def send_and_receive(self, messages, *, timeout: float | None = None):  # noqa: ANN001, ANN201
        messages = list(messages)
        if not messages or any(m.metadata.message_type != "train" for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        if distributed_dp(self.cfg):
            self.last_sample = (max(len(list(self._grid.get_node_ids())), len(messages)), len(messages))
        self._refused, self._stage_refusals, self._stage_errors = [], [], {}
        try:
            return self._round(messages, timeout) + self._refused
        except secagg.SecAggError as err:
            why = str(err) + ("; refused: " + "; ".join(self._stage_refusals) if self._stage_refusals else "")
            self.failures.append(why)
            if isinstance(err, secagg.SumOutOfBounds):
                log(ERROR, "secure aggregation: %s; the round is rejected, the model stays as it was", why)
            else:
                log(ERROR, "secagg: the round cannot be unmasked, the model stays as it was: %s", why)
            # the round failed: the nodes that refused a later stage failed it too, named (clients.csv)
            trained = {r.metadata.src_node_id for r in self._refused}
            return list(self._refused) + [r for n, r in self._stage_errors.items() if n not in trained]

    def _saes(self, nodes: list[int], timeout: float | None) -> dict[int, str] | None:
        """Each node's SAE ID when the grid below identifies them by certificate (qkd: it asks
        the nodes it has not heard from), else ``None``."""
        stack = getattr(self._grid, "stack", None)
        if stack is None or not stack.identifies_peers:
            return None
        self._grid.introduce(set(nodes), timeout)
        return dict(self._grid.peers)

    def _ask(self, stage: str, asks: dict[int, dict], timeout: float | None) -> dict[int, ConfigRecord]:
        msgs = [Message(RecordDict({SECAGG_RECORD: ConfigRecord({"stage": stage, **ask})}), dst_node_id=node,
                        message_type=SECAGG_TYPE) for node, ask in asks.items()]
        out = {}
        for reply in self._grid.send_and_receive(msgs, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error() or SECAGG_RECORD not in reply.content.config_records:
                why = reply.error.reason if reply.has_error() else "no answer"
                log(WARNING, "secagg: node %d left at stage %s: %s", node, stage, why)
                if reply.has_error():
                    self._stage_refusals.append(f"node {node}: {why}")
                    self._stage_errors.setdefault(node, reply)
                continue
            out[node] = reply.content.config_records[SECAGG_RECORD]
        return out

    def _intro(self, i: int, others: list[int]) -> dict:
        """The signed key records of ``others`` that node ``i`` has not verified yet."""
        new = [j for j in others if (i, j) not in self.introduced]
        return {"intro-nodes": new, "intro-certs": [self.records[j]["cert"] for j in new],
                "intro-sigs": [self.records[j]["sig"] for j in new], "intro-pks": [self.records[j]["pk"] for j in new],
                "intro-ekhs": [ek_hash(self.records[j]["ek"]) for j in new]}

    def _public_keys(self, nodes: list[int], timeout: float | None) -> set[int]:
        """Ask the nodes whose signed key record is not on record; the nodes that failed."""
        asks: dict[int, dict] = {n: {} for n in nodes if n not in self.records}
        if not asks:
            return set()
        for i, answer in self._ask("keys", asks, timeout).items():
            if (kept := _key_record_of(answer)) is not None:
                self.records[i] = kept
        return {n for n in asks if n not in self.records}

    def _pair_asks(self, nodes: list[int], graph: dict[int, set[int]], saes: dict[int, str] | None) -> dict[int, dict]:
        """For each node, the neighbours above it it has no hybrid pair key with yet (it
        encapsulates to their certified ML-KEM keys), and under qkd no QKD pair key with yet,
        with the signed key records of those it has not verified."""
        asks: dict[int, dict] = {}
        for i in nodes:
            new = sorted(j for j in graph[i] if j > i and (i, j) not in self.pair_cts)
            if new:
                asks[i] = {"kem-with": new, "kem-eks": [self.records[j]["ek"] for j in new]}
            if saes is not None:
                qkd = sorted(j for j in graph[i] if j > i and (i, j) not in self.qkd_pairs)
                if qkd:
                    asks.setdefault(i, {}).update({"pair-with": qkd, "pair-saes": [saes.get(j, "") for j in qkd]})
                new = sorted(set(new) | set(qkd))
            if i in asks:
                asks[i].update(self._intro(i, new))
        return asks

    def _participants(self, nodes: list[int], timeout: float | None) -> tuple[list[int], dict[int, set[int]]]:
        """The nodes that can take part (a signed key record on record; a hybrid pair key, and
        under qkd a QKD pair key, with each neighbour) and the round's graph over them: ``keys``
        queries first to the nodes that lack either (round 1 without a warm-up, a node that
        joined later, a pair of neighbours never keyed)."""
        saes = self._saes(nodes, timeout)
        if saes is not None:
            nodes = [n for n in nodes if n in saes]
        for _ in range(3):  # a node that fails the keys query changes the graph: draw it again
            failed = self._public_keys(nodes, timeout)
            nodes = [n for n in nodes if n not in failed]
            k, _ = sizes(len(nodes), self.cfg)
            graph = secagg.neighbours(nodes, k, secrets.randbits(32))
            asks = self._pair_asks(nodes, graph, saes)
            if not asks:
                return nodes, graph
            answers = self._ask("keys", asks, timeout)
            for i, answer in answers.items():
                self.introduced.update((i, j) for j in asks[i]["intro-nodes"])
                cts, sigs = [bytes(c) for c in answer.get("kem-cts", [])], [bytes(s) for s in answer.get("kem-ct-sigs", [])]
                wanted = asks[i].get("kem-with", [])
                if len(cts) == len(sigs) == len(wanted) and all(len(c) == hybrid_kem.CT_BYTES for c in cts):
                    for j, ct, sig in zip(wanted, cts, sigs):
                        self.pair_cts[(i, j)] = (ct, sig)
                        self.delivered.discard((i, j))
                for j, key_id in zip(asks[i].get("pair-with", []), answer.get("qkd-key-ids", [])):
                    self.qkd_pairs[(i, j)] = str(key_id)
            failed = {i for i in asks if i not in answers or any((i, j) not in self.pair_cts for j in asks[i].get("kem-with", []))}
            if not failed:
                return nodes, graph
            nodes = [n for n in nodes if n not in failed]
        raise secagg.SecAggError("nodes kept failing the key exchange")

    def _instructions(self, round_id: str, nodes: list[int], t: int, floor: int) -> dict:
        dp = distributed_dp(self.cfg)
        clip = self.cfg.dp_clip if dp else self.cfg.secagg_clip
        instructions: dict = {"round-id": round_id, "threshold": t, "step": clip / STEPS_PER_CLIP,
                              "participants": len(nodes), "members": sorted(nodes)}
        if dp:
            instructions.update({"l2-clip": clip, "sigma": self.cfg.dp_noise_multiplier, "noise-split": floor})
        else:
            instructions.update({"clip": clip, "weight-bound": self.weight_bound})
        return instructions

    def _training_ask(self, i: int, graph: dict[int, set[int]], instructions: dict, saes: dict[int, str] | None) -> dict:
        """Node ``i``'s secure-aggregation record in its training message: the instructions, its
        neighbours (with the signed key records it has not verified), the signed ciphertexts
        its neighbours below it made for it, and under qkd the IDs of their QKD keys."""
        mine = sorted(graph[i])
        below = [j for j in mine if j < i and (j, i) not in self.delivered]
        ask = {**instructions, "neighbours": mine, **self._intro(i, mine), "kem-from": below,
               "kem-cts": [self.pair_cts[(j, i)][0] for j in below], "kem-ct-sigs": [self.pair_cts[(j, i)][1] for j in below]}
        if saes is not None:  # the pair keys its neighbours below it made for it, by ID
            below = [j for j in mine if j < i]
            ask.update({"qkd-from": below, "qkd-key-ids-from": [self.qkd_pairs[(j, i)] for j in below],
                        "qkd-saes-from": [saes[j] for j in below]})
        return ask

    def _training_messages(self, messages: list[Message], graph: dict[int, set[int]], instructions: dict,
                           saes: dict[int, str] | None) -> list[Message]:
        train = []
        for msg in messages:
            i = msg.metadata.dst_node_id
            if i not in graph:
                continue
            content = RecordDict(dict(msg.content.items()))
            content[SECAGG_RECORD] = ConfigRecord(self._training_ask(i, graph, instructions, saes))
            train.append(Message(content, dst_node_id=i, message_type=msg.metadata.message_type))
        return train

    def _masked_inputs(self, train: list[Message], graph: dict[int, set[int]], size: int,
                       timeout: float | None) -> dict[int, tuple[Message, np.ndarray, list[bytes], bytes]]:
        """The well-formed masked inputs by node, with the encrypted shares and the node's
        signature on the participants as the survivor set; error replies are kept for the strategy."""
        replies = {}
        for reply in self._grid.send_and_receive(train, timeout=timeout):
            i = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "secagg: node %d sent no masked input: %s", i, reply.error.reason)
                self._refused.append(reply)
                continue
            record = reply.content.array_records.get(SECAGG_MASKED)
            y = record[MASKED].numpy() if record is not None and MASKED in record else None
            record = reply.content.config_records.get(SECAGG_RECORD, {})
            tokens = record.get("b-tokens")
            if y is not None and y.dtype == secagg.FIELD and y.shape == (size,) and tokens is not None \
                    and len(tokens) == len(graph.get(i, ())):
                replies[i] = (reply, y, [bytes(tok) for tok in tokens], bytes(record.get("sig", b"")))
                self.delivered.update((j, i) for j in graph[i] if j < i)
                self.introduced.update((i, j) for j in graph[i])
            else:
                log(WARNING, "secagg: node %d sent no masked input: malformed", i)
        return replies

    def _round(self, messages: list[Message], timeout: float | None) -> list[Message]:
        round_id = secrets.token_hex(8)
        sampled = sorted(m.metadata.dst_node_id for m in messages)
        limit = max_participants(self.cfg)
        if len(sampled) > limit:
            raise secagg.SecAggError(f"{len(sampled)} nodes sampled, more than the {limit} whose sum the field "
                                     f"Z_2^32 holds at 2^19 steps per clip: sample fewer (fraction-train)")
        nodes, graph = self._participants(sampled, timeout)
        k, t = sizes(len(nodes), self.cfg)
        floor = min_survivors(len(nodes), self.cfg)
        if len(nodes) < max(floor, t + 1):
            raise secagg.SecAggError(f"{len(nodes)} of {len(sampled)} nodes can take part, fewer than the "
                                     f"{max(floor, t + 1)} the threshold needs")
        dp = distributed_dp(self.cfg)
        instructions = self._instructions(round_id, nodes, t, floor)
        saes = self._saes(nodes, timeout)
        train = self._training_messages(messages, graph, instructions, saes)
        log(INFO, "secagg: %d of %d nodes take part (k = %d, t = %d; pairwise masks from %s)%s", len(nodes),
            len(sampled), k, t, "certified hybrid X25519 + ML-KEM-768 keys" if saes is None else "QKD keys",
            f"; distributed DP, noise split among {floor}" if dp else "")
        size = sum(v.numpy().size for v in messages[0].content[ARRAYS].values()) + (0 if dp else 1)
        replies = self._masked_inputs(train, graph, size, timeout)
        survivors = sorted(replies)
        if len(survivors) < floor:
            raise secagg.SecAggError(f"{len(survivors)} masked input(s), the threshold is {floor}")
        summed = self._unmasked_sum(round_id, graph, replies, sorted(set(nodes) - set(survivors)), t, timeout)
        start = messages[0].content[ARRAYS]
        names = list(start.keys())
        if dp:  # the noised sum over the nodes sampled: a node that failed adds zero
            moved, weight = flatten(start, names) + summed / len(sampled), float(len(sampled))
        else:
            weight = summed[-1]
            if not weight > 0:
                raise secagg.SecAggError(f"the survivors' weights sum to {weight:.3g}")
            moved, weight = flatten(start, names) + summed[:-1] / weight, weight * self.weight_bound
        log(INFO, "secagg: the sum of %d client(s) unmasked (%d dropped after the key exchange)", len(survivors),
            len(nodes) - len(survivors))
        aggregate = copy.copy(replies[survivors[0]][0])  # its metadata: a reply to this round's request
        aggregate.content = RecordDict({
            ARRAYS: unflatten(moved, start, names),
            METRICS: MetricRecord({NUM_EXAMPLES: weight, SECAGG_SUMMED: len(survivors),
                                   # the refused come with their own error replies (counted as failed there)
                                   SECAGG_DROPPED: len(sampled) - len(survivors) - len(self._refused)}),
        })
        return [aggregate]

    def _consistency(self, round_id: str, survivors: list[int], timeout: float | None,
                     presigned: dict[int, bytes] | None = None) -> dict[int, bytes]:
        """The consistency round: every survivor signs the survivor set; ``{signer: signature}``.
        ``presigned``: when every participant's input arrived, the signatures on the participants
        that came with them, which are that round's: it is not run."""
        if presigned is not None:
            return presigned
        asks = {i: {"round-id": round_id, "survivors": survivors} for i in survivors}
        return {i: bytes(a.get("sig", b"")) for i, a in self._ask("consistency", asks, timeout).items()}

    def _unmask_ask(self, round_id: str, h: int, graph: dict[int, set[int]], replies: dict, survivors: list[int],
                    signatures: dict[int, bytes]) -> dict:
        """Holder ``h``'s unmask stage: the survivor set, its neighbours' signatures on it, and
        the encrypted shares its surviving neighbours made for it."""
        owners = sorted(j for j in graph[h] if j in replies)
        signers = sorted(j for j in graph[h] if j in signatures)
        return {"round-id": round_id, "survivors": survivors, "owners": owners,
                "b-tokens": [replies[j][2][sorted(graph[j]).index(h)] for j in owners],
                "sig-from": signers, "sigs": [signatures[j] for j in signers]}

    def _unmasked_sum(self, round_id: str, graph: dict[int, set[int]], replies: dict, dropped: list[int], t: int,
                      timeout: float | None) -> np.ndarray:
        """The consistency round, the unmask stage, then the float sum, checked against what
        the survivors could honestly make (:func:`transport.secagg.check_weighted_sum` /
        ``check_noised_sum``)."""
        survivors = sorted(replies)
        presigned = {i: r[3] for i, r in replies.items()}
        everyone = not dropped and all(presigned.values())  # the survivors are the participants, and each signed them
        signatures = self._consistency(round_id, survivors, timeout, presigned if everyone else None)
        b_of: dict[int, list[bytes]] = {i: [] for i in survivors}
        pair_seeds: dict[tuple[int, int], bytes] = {}
        asked = set(survivors) - set(signatures)  # a survivor that did not sign answers nothing more
        while holders := unmask_holders(graph, survivors, dropped, t, b_of, asked):
            # the fewest survivors whose answers unmask the round; more only where one fails to answer
            asked |= holders
            asks = {h: self._unmask_ask(round_id, h, graph, replies, survivors, signatures) for h in sorted(holders)}
            for h, answer in self._ask("unmask", asks, timeout).items():
                for owner, share in zip(answer.get("b-owners", []), answer.get("b-shares", [])):
                    if int(owner) in b_of:
                        b_of[int(owner)].append(bytes(share))
                for j, seed in zip(answer.get("pair-owners", []), answer.get("pair-seeds", [])):
                    if int(j) in dropped:
                        pair_seeds[(h, int(j))] = bytes(seed)
        seeds = {i: secagg.rebuild(b_of[i], t, i, "self-mask seed") for i in survivors}
        total = secagg.unmask({i: r[1] for i, r in replies.items()}, graph, seeds, pair_seeds)
        steps = quantisation_steps(self.cfg, total.size)
        summed = secagg.dequantize(total, steps)
        n = len(survivors)
        if distributed_dp(self.cfg):
            secagg.check_noised_sum(summed, n, self.cfg.dp_clip, self.cfg.dp_noise_multiplier,
                                    min_survivors(len(survivors) + len(dropped), self.cfg), float(steps))
        else:
            secagg.check_weighted_sum(summed, n, self.cfg.secagg_clip, float(steps[0]), WEIGHT_STEP)
        return summed
