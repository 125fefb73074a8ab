"""SecAgg+ in Flower's Message API: a ClientApp query handler, a transport, and a Grid wrapper.

``transport = "secagg"`` (or ``"qkd+secagg"``): the server learns the sum of the round's
updates and never one of them (the protocol and why it is safe: :mod:`transport.secagg`).
A training round is two exchanges with the nodes that train, where plain FedAvg has one:

1. **the training message** itself, with the node's neighbours and their public keys: the
   node checks the instructions against its own configuration (:meth:`SecAggTransport.checked`),
   trains, and on the way out :class:`SecAggTransport` replaces its reply by its masked input
   and the Shamir shares of its self-mask seed, each encrypted for its holder. Nothing else
   of the reply leaves: no metric, no claim;
2. **unmask** (query :data:`SECAGG_TYPE`): each node that sent an input gets the survivors
   and the dropped, and the encrypted shares its neighbours made for it; it answers the
   survivors' self-mask shares and its own pair seeds with the dropped neighbours.

Keys (once a run, kept in the node's Flower state): an X25519 key pair and an ML-KEM-768 key
pair per node. The X25519 public key comes with the node's warm-up answer
(:func:`node_public_key`); both public keys come in a ``keys`` query the first time the
server needs them. For each pair of neighbours the server then asks the lower node, in a
``keys`` query, to encapsulate to the higher one's ML-KEM key; it relays the ciphertext to
the higher one in its next training message, and both hold the pair's hybrid key
(:mod:`transport.hybrid_kem`) for the run. A ``keys`` query is therefore sent in round 1 and
in any later round whose graph has a pair of neighbours never keyed (a node that joined, or
a sparse graph drawn anew). With ``qkd+secagg`` the pairwise masks come from QKD keys
instead, one per pair of neighbours for the run: the lower node asks the key manager for it
in the ``keys`` query (master SAE), the higher one fetches it by its ID when it first trains
with that neighbour (slave SAE); the shares stay encrypted under the hybrid pair key.

What a node sends: without DP, its update :math:`\\Delta_i` clipped to ``secagg-clip`` per
coordinate and weighted by :math:`a_i = \\min(n_i, B)/B` (``B`` a public bound on examples),
and :math:`a_i` itself; the server's aggregate is :math:`\\sum a_i \\Delta_i / \\sum a_i`, which
FedAvg and the strategies that average (:data:`~qfl.common.config.SECAGG_STRATEGIES`)
aggregate as they would the clients' replies. With ``dp`` (``dp-mode = "central"``) it is
distributed DP: each node clips its whole update to L2 norm ``C`` and adds its share of the
noise, :math:`\\mathcal N(0, \\sigma^2 C^2 / m_{\\min})`, so that the sum of any
:math:`m_{\\min}` honest survivors carries the noise :math:`\\sigma C` central DP adds; the
server divides the sum by the number of nodes sampled (``docs/transport.md``: the trust this
needs). Clip, step, noise multiplier and split are the node's own run config's: the server's
values are checked against them, never used.

:class:`SecAggGrid` runs the exchanges around the strategy's training messages and gives the
strategy the aggregate, with the error replies of the nodes that refused (their reasons go
to ``clients.csv``). A node that fails after training leaves the sum of the others; below
the threshold, or with an unmasked sum no honest bounded inputs can make, the round fails,
named in the log, and the run goes on with the model unchanged.

What a node checks still leaves the server trusted for the rest: a server that told
different nodes different survivor lists could collect a client's self-mask shares from some
and its pair seeds from others (each node answers one unmask stage a round and needs a
majority of its neighbours listed as survivors, which stops that for one client's honest
neighbours, but nothing stops invented ones); Bell et al.'s malicious-server variant adds
signed keys and a consistency round, not built here. The public keys it relays are not
authenticated either, so an active server could stand in the middle of two nodes; with
``qkd`` the mask keys come from the key manager, which hands each only to the two SAEs'
certificates.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import secrets
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING

import numpy as np
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
from transport.base import Envelope, Transport, TransportError
from transport.delegating_grid import DelegatingGrid

SECAGG_TYPE = f"query.{SECAGG_ACTION}"
KEYS = "qfl-secagg-keys"  # the node's ConfigRecord in its Flower state: the run's key pairs and pair keys
ROUND = "qfl-secagg"  # the node's ConfigRecord in its Flower state: the round in flight
ANSWERED = "qfl-secagg-answered"  # the node's ConfigRecord in its Flower state: the last round it sent an input for
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


def _run_keys(state: RecordDict) -> ConfigRecord:
    """This node's keys for the run (X25519 and ML-KEM-768, OS entropy), made and kept in its
    Flower state the first time they are needed."""
    keys = state.config_records.get(KEYS)
    if keys is None:
        keys = ConfigRecord({"sk": secagg.private_bytes(secagg.new_key()),
                             "kem": hybrid_kem.kem_seed(hybrid_kem.new_kem_key()),
                             "qkd-with": [], "qkd-ids": [], "qkd-keys": [], "hyb-with": [], "hyb-cts": [], "hyb-keys": []})
        state[KEYS] = keys
    return keys


def node_public_key(state: RecordDict) -> bytes:
    """This node's X25519 public key for the run."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return secagg.public_bytes(X25519PrivateKey.from_private_bytes(bytes(_run_keys(state)["sk"])))


def node_kem_key(state: RecordDict) -> bytes:
    """This node's ML-KEM-768 encapsulation key for the run (1,184 bytes)."""
    return hybrid_kem.kem_public_bytes(bytes(_run_keys(state)["kem"]))


def secagg_stage(msg: Message, context: Context) -> Message:
    """The ClientApp's handler for :data:`SECAGG_TYPE`: the ``keys`` and ``unmask`` stages."""
    ask = msg.content.config_records[SECAGG_RECORD]
    stage = ask.get("stage")
    try:
        if stage == "keys":
            answer = ConfigRecord({"pk": node_public_key(context.state), "ek": node_kem_key(context.state)})
            if ask.get("kem-with"):  # this node is the lower end of these pairs: it encapsulates
                answer["kem-cts"] = _encapsulate(_run_keys(context.state), context.node_id, ask)
            if ask.get("pair-with"):  # qkd: this node is the lower end (master SAE) of these pairs
                answer["qkd-key-ids"] = _qkd_pair_keys(context, [int(j) for j in ask["pair-with"]],
                                                       [str(s) for s in ask["pair-saes"]])
        elif stage == "unmask":
            answer = _unmask_answer(ask, context)
            del context.state[ROUND]  # the round is done: nothing of it is needed again
        else:
            raise TransportError(f"secagg: unknown stage {stage!r}")
    except (TransportError, KeyError, ValueError, TypeError) as err:
        why = str(err).removeprefix("secagg: ")
        log(WARNING, "secagg: refused stage %r: %s", stage, why)
        return Message(Error(SECAGG_ERROR_CODE, f"secagg: refused stage {stage!r}: {why}"), reply_to=msg)
    return Message(RecordDict({SECAGG_RECORD: answer}), reply_to=msg)


def _encapsulate(keys: ConfigRecord, me: int, ask: ConfigRecord) -> list[bytes]:
    """For each neighbour above this node, its half of the hybrid pair key: the key kept in
    the node state for the run, the ML-KEM ciphertexts returned (aligned with ``kem-with``)."""
    cts = []
    for j, pk, ek in zip(ask["kem-with"], ask["kem-pks"], ask["kem-eks"], strict=True):
        j = int(j)
        if j <= me:
            raise TransportError(f"secagg: instruction kem-with: this node encapsulates only to neighbours above it, "
                                 f"not to {j}")
        key, ct = hybrid_kem.encapsulate_pair(bytes(keys["sk"]), me, j, bytes(pk), bytes(ek))
        _keep_pair_key(keys, j, hashlib.sha256(ct).digest(), key)
        cts.append(ct)
    return cts


def _pair_keys(keys: ConfigRecord) -> dict[int, tuple[bytes, bytes]]:
    """``{neighbour: (SHA-256 of the pair's ML-KEM ciphertext, hybrid pair key)}`` this node holds."""
    return {int(j): (bytes(c), bytes(k)) for j, c, k in zip(keys["hyb-with"], keys["hyb-cts"], keys["hyb-keys"])}


def _keep_pair_key(keys: ConfigRecord, j: int, ct_digest: bytes, key: bytes) -> None:
    pairs = _pair_keys(keys)
    pairs[j] = (ct_digest, key)
    keys["hyb-with"], keys["hyb-cts"], keys["hyb-keys"] = list(pairs), [c for c, _ in pairs.values()], [k for _, k in pairs.values()]


def _qkd_pair_keys(context: Context, higher: list[int], saes: list[str]) -> list[str]:
    """For each neighbour above this node, a key from the key manager (this node the master
    SAE), kept in the node state for the run; the key IDs, aligned with ``higher``. A pair key
    shared with the server's SAE would hand it the masks: a neighbour named by the server's
    SAE is refused."""
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.qkd_server_sae in saes:
        raise TransportError(f"secagg: the server named its own SAE {cfg.qkd_server_sae!r} as a neighbour's")
    from transport.qkd.client import KeyManagerClient

    keys = _run_keys(context.state)
    kms = KeyManagerClient.of_this_sae(cfg.kms_url)
    try:
        ids = []
        for j, sae in zip(higher, saes, strict=True):
            if j <= context.node_id:
                raise TransportError(f"secagg: this node makes the pair key only with neighbours above it, not {j}")
            key_id, key = kms.enc_key(sae)
            ids.append(key_id)
            _keep_qkd_key(keys, j, key_id, key)
        return ids
    finally:
        kms.close()


def _qkd_keys(keys: ConfigRecord) -> dict[int, tuple[str, bytes]]:
    """``{neighbour: (key ID, key)}`` of the run's QKD pair keys this node holds."""
    return {int(j): (str(i), bytes(k)) for j, i, k in zip(keys["qkd-with"], keys["qkd-ids"], keys["qkd-keys"])}


def _keep_qkd_key(keys: ConfigRecord, j: int, key_id: str, key: bytes) -> None:
    pairs = _qkd_keys(keys)
    pairs[j] = (key_id, key)
    keys["qkd-with"], keys["qkd-ids"], keys["qkd-keys"] = list(pairs), [i for i, _ in pairs.values()], [k for _, k in pairs.values()]


def _pair_seed(keys: ConfigRecord, me: int, j: int, round_id: str, what: str) -> bytes:
    """This round's seed with neighbour ``j`` for ``what``: the mask seed from the pair's QKD
    key when the run keeps one, else (and the share key always) from the hybrid pair key."""
    info = secagg.pair_info(round_id, me, j, what)
    qkd = _qkd_keys(keys)
    if what == secagg.PAIR_MASK and j in qkd:
        return secagg.seed_from_key(qkd[j][1], info)
    hybrid = _pair_keys(keys)
    if j not in hybrid:
        raise TransportError(f"secagg: this node holds no hybrid pair key with node {j}")
    return secagg.seed_from_key(hybrid[j][1], info)


def _unmask_answer(ask: ConfigRecord, context: Context) -> ConfigRecord:
    state, me = context.state.config_records.get(ROUND), context.node_id
    round_id = str(ask.get("round-id"))
    if state is None or state.get("round-id") != round_id:
        raise TransportError(f"secagg: this node sent no masked input in round {round_id!r}")
    survivors, dropped = {int(j) for j in ask["survivors"]}, {int(j) for j in ask["dropped"]}
    if survivors & dropped or me not in survivors:
        raise TransportError("secagg: a client cannot both survive and drop (this node will not reveal both "
                             "its self-mask share and its pair seed)")
    mine = {int(j) for j in state["neighbours"]}
    threshold = int(state["threshold"])
    if len(survivors & mine) < threshold:
        raise TransportError(f"secagg: {len(survivors & mine)} of this node's neighbours survived, fewer than "
                             f"the threshold {threshold}: revealing its pair seeds could expose its own input")
    keys = context.state[KEYS]
    out: dict[str, list] = {"b-owners": [], "b-shares": [], "pair-owners": [], "pair-seeds": []}
    for owner, token in zip([int(j) for j in ask["owners"]], ask["b-tokens"], strict=True):
        if owner not in mine or owner not in survivors:
            raise TransportError(f"secagg: client {owner} is not a surviving neighbour of this node")
        key = _pair_seed(keys, me, owner, round_id, secagg.PAIR_SHARES)
        out["b-owners"].append(owner)
        out["b-shares"].append(secagg.decrypt_share(key, bytes(token)))
    for j in sorted(dropped & mine):
        out["pair-owners"].append(j)
        out["pair-seeds"].append(_pair_seed(keys, me, j, round_id, secagg.PAIR_MASK))
    return ConfigRecord(out)


@dataclass(frozen=True)
class Instructions:
    """A training message's secure-aggregation instructions, as the node has checked them."""

    round_id: str
    participants: int
    neighbours: list[int]
    pks: list[bytes]
    threshold: int


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

    ``state`` is the node's Flower state (``context.state``), where the run's keys, the round
    in flight and the last round answered are kept; ``kms`` the key manager client
    (``qkd+secagg``); ``cfg`` and ``node`` the node's own run and node config, against which
    it checks every instruction of the server (:meth:`checked`). On the server the transport
    does nothing (:class:`SecAggGrid` unmasks the sum).
    """

    name = "secagg"

    def __init__(self, state: RecordDict | None = None, kms=None, server_sae: str = "server",  # noqa: ANN001
                 cfg: RunConfig | None = None, node: NodeConfig | None = None) -> None:
        self.state, self.kms, self.server_sae, self.cfg, self.node = state, kms, server_sae, cfg, node  # kms: a KeyManagerClient

    def checked(self, ask: ConfigRecord | None, me: int) -> Instructions:
        """The server's instructions, each checked against this node's own configuration.

        Refused by name (:class:`TransportError`): a participant count ``n`` outside
        ``[2, min(num-partitions, max_participants)]`` (``num-partitions``, this node's node
        config, is the most clients the run can have until a signed survivor set exists); a
        neighbour list that is not ``k`` distinct others, ``k`` what the run config gives for
        ``n`` (:func:`sizes`); a threshold other than the run config's ``t`` for ``k`` (a
        majority, at least 2); a quantisation step, clip, noise multiplier or noise split
        other than the run config's; distributed DP (``l2-clip``) asked of a node whose run
        config does not say it, or not asked of one whose run config does; a weight bound
        that is not a positive finite number.
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
        pks = [bytes(p) for p in ask["pks"]]
        if len(pks) != k or any(len(p) != secagg.KEY_BYTES for p in pks):
            raise TransportError(f"secagg: instruction pks: {k} X25519 keys of {secagg.KEY_BYTES} bytes expected")
        threshold = _integer(ask, "threshold")
        if threshold != t:
            raise TransportError(f"secagg: instruction threshold = {threshold}: this node's run config gives t = {t} "
                                 f"for k = {k} neighbours (a majority, at least 2)")
        dp = distributed_dp(cfg)
        clip = cfg.dp_clip if dp else cfg.secagg_clip
        _same(ask, "step", clip / STEPS_PER_CLIP, "clip / 2^19")
        if dp:
            if "l2-clip" not in ask:
                raise TransportError("secagg: instruction l2-clip missing: this node's run config says distributed DP "
                                     "(secagg with dp, dp-mode central) and it sends nothing without its noise")
            _same(ask, "l2-clip", cfg.dp_clip, KEY.dp_clip)
            _same(ask, "sigma", cfg.dp_noise_multiplier, KEY.dp_noise_multiplier)
            _same(ask, "noise-split", min_survivors(n, cfg), f"run's threshold for {n} participants")
        else:
            if "l2-clip" in ask:
                raise TransportError("secagg: instruction l2-clip: the server asks for distributed DP, which this "
                                     "run's config does not")
            _same(ask, "clip", cfg.secagg_clip, KEY.secagg_clip)
            if _number(ask, "weight-bound") <= 0:
                raise TransportError(f"secagg: instruction weight-bound = {ask['weight-bound']}: a positive bound is required")
        return Instructions(str(ask["round-id"]), n, neighbours, pks, threshold)

    def _check_round(self, envelope: Envelope) -> None:
        """One masked input per (run, round), rounds strictly increasing: a server that sums the
        same round over S and over S minus X would learn X's update from the difference."""
        last = self.state.config_records.get(ANSWERED) if self.state is not None else None
        if last is not None and int(last["run-id"]) == envelope.run_id and envelope.server_round <= int(last["round"]):
            raise TransportError(f"secagg: a training message for round {envelope.server_round}: this node sent its "
                                 f"masked input for round {int(last['round'])} already and sends one a round, rounds "
                                 "increasing")

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        """On the node, a training message's instructions are checked before it trains."""
        if envelope.direction == "down" and envelope.message_type == "train" and self.state is not None:
            self._check_round(envelope)
            self.checked(content.config_records.get(SECAGG_RECORD), envelope.node_id)
        return content

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if envelope.direction != "up" or request is None or envelope.message_type != "train" or not content.array_records:
            return content
        if self.state is None:
            raise TransportError("secagg: a node without its Flower state cannot keep the run's keys")
        self._check_round(envelope)
        ask = request.config_records.get(SECAGG_RECORD)
        told, me = self.checked(ask, envelope.node_id), envelope.node_id
        keys = _run_keys(self.state)
        self._fetch_qkd_keys(ask, keys, me)
        self._receive_pair_keys(ask, keys, me, told)
        x = secagg.quantize(*self._release(content, request, ask, told.participants))
        b = os.urandom(secagg.SEED_BYTES)
        shares = secagg.split(b, told.threshold, told.neighbours)
        tokens = [secagg.encrypt_share(_pair_seed(keys, me, j, told.round_id, secagg.PAIR_SHARES), shares[j])
                  for j in told.neighbours]
        pairs = {j: _pair_seed(keys, me, j, told.round_id, secagg.PAIR_MASK) for j in told.neighbours}
        y = secagg.masked_input(x, me, b, pairs)
        self.state[ROUND] = ConfigRecord({"round-id": told.round_id, "neighbours": told.neighbours,
                                          "threshold": told.threshold})
        self.state[ANSWERED] = ConfigRecord({"run-id": envelope.run_id, "round": envelope.server_round})
        return RecordDict({SECAGG_MASKED: ArrayRecord({MASKED: Array(y)}),
                           SECAGG_RECORD: ConfigRecord({"b-tokens": tokens})})

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

    def _receive_pair_keys(self, ask: ConfigRecord, keys: ConfigRecord, me: int, told: Instructions) -> None:
        """The hybrid pair keys with the neighbours below this node, from the ML-KEM ciphertexts
        they made for it (relayed by the server; one per pair for the run: a second, other one
        is refused); then every neighbour must have one."""
        held = _pair_keys(keys)
        pks = dict(zip(told.neighbours, told.pks))
        for j, ct in zip(ask.get("kem-from", []), ask.get("kem-cts", []), strict=True):
            j, ct = int(j), bytes(ct)
            digest = hashlib.sha256(ct).digest()
            if j in held and held[j][0] == digest:
                continue
            if j >= me or j not in pks:
                raise TransportError(f"secagg: instruction kem-from: node {j} cannot have encapsulated for this node")
            if j in held:
                raise TransportError(f"secagg: instruction kem-cts: a second ML-KEM ciphertext for the pair with node {j}")
            try:
                key = hybrid_kem.decapsulate_pair(bytes(keys["sk"]), bytes(keys["kem"]), me, j, pks[j], ct)
            except ValueError as err:
                raise TransportError(f"secagg: instruction kem-cts: {err}") from err
            _keep_pair_key(keys, j, digest, key)
        missing = sorted(set(told.neighbours) - set(_pair_keys(keys)))
        if missing:
            raise TransportError(f"secagg: no hybrid pair key with neighbour(s) {missing}: the server relayed no "
                                 "ML-KEM ciphertext for them")

    def _fetch_qkd_keys(self, ask: ConfigRecord, keys: ConfigRecord, me: int) -> None:
        """The pair keys neighbours below this node made with it (master SAEs), fetched by the
        IDs the server relays (the key manager hands each out once: a key held is not fetched again)."""
        held = _qkd_keys(keys)
        for j, key_id, sae in zip(ask.get("qkd-from", []), ask.get("qkd-key-ids-from", []), ask.get("qkd-saes-from", [])):
            j = int(j)
            if held.get(j, ("",))[0] == str(key_id):
                continue
            if j >= me or j not in [int(n) for n in ask["neighbours"]]:
                raise TransportError(f"secagg: node {j} cannot have made a pair key for this node")
            if sae == self.server_sae:
                raise TransportError(f"secagg: the server named its own SAE {sae!r} as a neighbour's")
            if self.kms is None:
                raise TransportError("secagg: QKD-keyed masks need the key manager (transport qkd)")
            _keep_qkd_key(keys, j, str(key_id), self.kms.dec_key(str(sae), str(key_id)))


# --- the server's side ----------------------------------------------------------------------


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
        ``{node: X25519 public key}`` the nodes gave at the warm-up.

    Attributes
    ----------
    failures : list of str
        Why rounds could not be unmasked, or were rejected (an unmasked sum out of bounds).
    last_sample : tuple or None
        ``(nodes available, nodes sampled)`` of the last round under distributed DP, for the ledger.
    """

    def __init__(self, grid: Grid, cfg: RunConfig, weight_bound: float, keys: dict[int, bytes] | None = None) -> None:
        super().__init__(grid)
        self.cfg, self.weight_bound = cfg, float(weight_bound)
        self.keys = {n: bytes(k) for n, k in (keys or {}).items() if len(bytes(k)) == secagg.KEY_BYTES}
        self.kem_keys: dict[int, bytes] = {}  # node -> its ML-KEM-768 encapsulation key
        self.pair_cts: dict[tuple[int, int], bytes] = {}  # (lower, higher) -> the ciphertext the lower one made
        self.delivered: set[tuple[int, int]] = set()  # pairs whose higher node used the ciphertext
        self.qkd_pairs: dict[tuple[int, int], str] = {}  # (lower, higher) -> the key ID the lower one got
        self.failures: list[str] = []
        self.last_sample: tuple[int, int] | None = None
        self._refused: list[Message] = []  # this round's training replies that are errors (a node refused)
        self._stage_refusals: list[str] = []  # this round's keys / unmask stages a node refused

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
        self._refused, self._stage_refusals = [], []
        try:
            return self._round(messages, timeout) + self._refused
        except secagg.SecAggError as err:
            why = str(err) + ("; refused: " + "; ".join(self._stage_refusals) if self._stage_refusals else "")
            self.failures.append(why)
            if isinstance(err, secagg.SumOutOfBounds):
                log(ERROR, "secure aggregation: %s; the round is rejected, the model stays as it was", why)
            else:
                log(ERROR, "secagg: the round cannot be unmasked, the model stays as it was: %s", why)
            return list(self._refused)

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
                continue
            out[node] = reply.content.config_records[SECAGG_RECORD]
        return out

    def _public_keys(self, nodes: list[int], timeout: float | None) -> set[int]:
        """Ask the nodes whose X25519 or ML-KEM key is not on record for both; the nodes that failed."""
        asks: dict[int, dict] = {n: {} for n in nodes if n not in self.keys or n not in self.kem_keys}
        if not asks:
            return set()
        for i, answer in self._ask("keys", asks, timeout).items():
            pk, ek = bytes(answer.get("pk", b"")), bytes(answer.get("ek", b""))
            if len(pk) == secagg.KEY_BYTES and len(ek) == hybrid_kem.EK_BYTES:
                self.keys[i], self.kem_keys[i] = pk, ek
        return {n for n in asks if n not in self.keys or n not in self.kem_keys}

    def _pair_asks(self, nodes: list[int], graph: dict[int, set[int]], saes: dict[int, str] | None) -> dict[int, dict]:
        """For each node, the neighbours above it it has no hybrid pair key with yet (it
        encapsulates to their ML-KEM keys), and under qkd no QKD pair key with yet."""
        asks: dict[int, dict] = {}
        for i in nodes:
            new = sorted(j for j in graph[i] if j > i and (i, j) not in self.pair_cts)
            if new:
                asks[i] = {"kem-with": new, "kem-pks": [self.keys[j] for j in new],
                           "kem-eks": [self.kem_keys[j] for j in new]}
            if saes is not None:
                new = sorted(j for j in graph[i] if j > i and (i, j) not in self.qkd_pairs)
                if new:
                    asks.setdefault(i, {}).update({"pair-with": new, "pair-saes": [saes.get(j, "") for j in new]})
        return asks

    def _participants(self, nodes: list[int], timeout: float | None) -> tuple[list[int], dict[int, set[int]]]:
        """The nodes that can take part (both public keys on record; a hybrid pair key, and
        under qkd a QKD pair key, with each neighbour) and the round's graph over them: ``keys``
        queries first to the nodes that lack either (round 1, a node that joined later, a pair
        of neighbours never keyed)."""
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
                cts = [bytes(c) for c in answer.get("kem-cts", [])]
                if len(cts) == len(asks[i].get("kem-with", [])) and all(len(c) == hybrid_kem.CT_BYTES for c in cts):
                    for j, ct in zip(asks[i].get("kem-with", []), cts):
                        self.pair_cts[(i, j)] = ct
                        self.delivered.discard((i, j))
                for j, key_id in zip(asks[i].get("pair-with", []), answer.get("qkd-key-ids", [])):
                    self.qkd_pairs[(i, j)] = str(key_id)
            failed = {i for i in asks if i not in answers or any((i, j) not in self.pair_cts for j in asks[i].get("kem-with", []))}
            if not failed:
                return nodes, graph
            nodes = [n for n in nodes if n not in failed]
        raise secagg.SecAggError("nodes kept failing the key exchange")

    def _instructions(self, round_id: str, n: int, t: int, floor: int) -> dict:
        dp = distributed_dp(self.cfg)
        clip = self.cfg.dp_clip if dp else self.cfg.secagg_clip
        instructions: dict = {"round-id": round_id, "threshold": t, "step": clip / STEPS_PER_CLIP, "participants": n}
        if dp:
            instructions.update({"l2-clip": clip, "sigma": self.cfg.dp_noise_multiplier, "noise-split": floor})
        else:
            instructions.update({"clip": clip, "weight-bound": self.weight_bound})
        return instructions

    def _training_messages(self, messages: list[Message], graph: dict[int, set[int]], instructions: dict,
                           saes: dict[int, str] | None) -> list[Message]:
        train = []
        for msg in messages:
            i = msg.metadata.dst_node_id
            if i not in graph:
                continue
            mine = sorted(graph[i])
            below = [j for j in mine if j < i and (j, i) not in self.delivered]
            ask = {**instructions, "neighbours": mine, "pks": [self.keys[j] for j in mine],
                   "kem-from": below, "kem-cts": [self.pair_cts[(j, i)] for j in below]}
            if saes is not None:  # the pair keys its neighbours below it made for it, by ID
                below = [j for j in mine if j < i]
                ask.update({"qkd-from": below, "qkd-key-ids-from": [self.qkd_pairs[(j, i)] for j in below],
                            "qkd-saes-from": [saes[j] for j in below]})
            content = RecordDict(dict(msg.content.items()))
            content[SECAGG_RECORD] = ConfigRecord(ask)
            train.append(Message(content, dst_node_id=i, message_type=msg.metadata.message_type))
        return train

    def _masked_inputs(self, train: list[Message], graph: dict[int, set[int]], size: int,
                       timeout: float | None) -> dict[int, tuple[Message, np.ndarray, list[bytes]]]:
        """The well-formed masked inputs by node; error replies are kept for the strategy."""
        replies = {}
        for reply in self._grid.send_and_receive(train, timeout=timeout):
            i = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "secagg: node %d sent no masked input: %s", i, reply.error.reason)
                self._refused.append(reply)
                continue
            record = reply.content.array_records.get(SECAGG_MASKED)
            y = record[MASKED].numpy() if record is not None and MASKED in record else None
            tokens = reply.content.config_records.get(SECAGG_RECORD, {}).get("b-tokens")
            if y is not None and y.dtype == secagg.FIELD and y.shape == (size,) and tokens is not None \
                    and len(tokens) == len(graph.get(i, ())):
                replies[i] = (reply, y, [bytes(tok) for tok in tokens])
                self.delivered.update((j, i) for j in graph[i] if j < i)
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
        instructions = self._instructions(round_id, len(nodes), t, floor)
        saes = self._saes(nodes, timeout)
        train = self._training_messages(messages, graph, instructions, saes)
        log(INFO, "secagg: %d of %d nodes take part (k = %d, t = %d; pairwise masks from %s)%s", len(nodes),
            len(sampled), k, t, "hybrid X25519 + ML-KEM-768 keys" if saes is None else "QKD keys",
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

    def _unmasked_sum(self, round_id: str, graph: dict[int, set[int]], replies: dict, dropped: list[int], t: int,
                      timeout: float | None) -> np.ndarray:
        """The unmask stage, then the float sum, checked against what the survivors could
        honestly make (:func:`transport.secagg.check_weighted_sum` / ``check_noised_sum``)."""
        survivors = sorted(replies)
        b_of: dict[int, list[bytes]] = {i: [] for i in survivors}
        pair_seeds: dict[tuple[int, int], bytes] = {}
        asked: set[int] = set()
        while holders := unmask_holders(graph, survivors, dropped, t, b_of, asked):
            # the fewest survivors whose answers unmask the round; more only where one fails to answer
            asked |= holders
            asks = {}
            for h in sorted(holders):
                owners = sorted(j for j in graph[h] if j in replies)
                asks[h] = {"round-id": round_id, "survivors": survivors, "dropped": dropped, "owners": owners,
                           "b-tokens": [replies[j][2][sorted(graph[j]).index(h)] for j in owners]}
            for h, answer in self._ask("unmask", asks, timeout).items():
                for owner, share in zip(answer.get("b-owners", []), answer.get("b-shares", [])):
                    if int(owner) in b_of:
                        b_of[int(owner)].append(bytes(share))
                for j, seed in zip(answer.get("pair-owners", []), answer.get("pair-seeds", [])):
                    if int(j) in dropped:
                        pair_seeds[(h, int(j))] = bytes(seed)
        seeds = {i: secagg.rebuild(b_of[i], t, i, "self-mask seed") for i in survivors}
        total = secagg.unmask({i: y for i, (_, y, _) in replies.items()}, graph, seeds, pair_seeds)
        steps = quantisation_steps(self.cfg, total.size)
        summed = secagg.dequantize(total, steps)
        n = len(survivors)
        if distributed_dp(self.cfg):
            secagg.check_noised_sum(summed, n, self.cfg.dp_clip, self.cfg.dp_noise_multiplier,
                                    min_survivors(len(survivors) + len(dropped), self.cfg), float(steps))
        else:
            secagg.check_weighted_sum(summed, n, self.cfg.secagg_clip, float(steps[0]), WEIGHT_STEP)
        return summed
