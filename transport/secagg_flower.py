"""SecAgg+ in Flower's Message API: a ClientApp query handler, a transport, and a Grid wrapper.

``transport = "secagg"`` (or ``"qkd+secagg"``): the server learns the sum of the round's
updates and never one of them (the protocol and why it is safe: :mod:`transport.secagg`).
A training round is two exchanges with the nodes that train, where plain FedAvg has one:

1. **the training message** itself, with the node's neighbours and their public keys: the
   node trains as always; on the way out :class:`SecAggTransport` replaces its reply by its
   masked input and the Shamir shares of its self-mask seed, each encrypted for its holder.
   Nothing else of the reply leaves: no metric, no claim;
2. **unmask** (query :data:`SECAGG_TYPE`): each node that sent an input gets the survivors
   and the dropped, and the encrypted shares its neighbours made for it; it answers the
   survivors' self-mask shares and its own pair seeds with the dropped neighbours.

Each node's X25519 key pair lasts the run, kept in its Flower node state: its public half
comes with the node's warm-up answer (:func:`node_public_key`), or, for a node the server
has not heard of, in a ``keys`` query before its first round. With ``qkd+secagg`` the
pairwise masks come from QKD keys instead, one per pair of neighbours for the run: the
lower node asks the key manager for it in the ``keys`` query (master SAE), the higher one
fetches it by its ID when it first trains with that neighbour (slave SAE).

What a node sends: without DP, its update :math:`\\Delta_i` clipped to ``secagg-clip`` per
coordinate and weighted by :math:`a_i = \\min(n_i, B)/B` (``B`` a public bound on examples),
and :math:`a_i` itself; the server's aggregate is :math:`\\sum a_i \\Delta_i / \\sum a_i`, which
FedAvg and the strategies that average (:data:`~qfl.common.config.SECAGG_STRATEGIES`)
aggregate as they would the clients' replies. With ``dp`` (``dp-mode = "central"``) it is
distributed DP: each node clips its whole update to L2 norm ``C`` and adds its share of the
noise, :math:`\\mathcal N(0, \\sigma^2 C^2 / m_{\\min})`, so that the sum of any
:math:`m_{\\min}` honest survivors carries the noise :math:`\\sigma C` central DP adds; the
server divides the sum by the number of nodes sampled (``docs/transport.md``: the trust this
needs).

:class:`SecAggGrid` runs the exchanges around the strategy's training messages and gives the
strategy one reply, the aggregate. A node that fails after training leaves the sum of the
others; below the threshold the round fails, named in the log, and the run goes on with the
model unchanged.

The server is trusted to follow the protocol (honest but curious): a server that told
different nodes different survivor lists could collect a client's self-mask shares from some
and its pair seeds from others; Bell et al.'s malicious-server variant adds a signed
consistency round, not built here. The public keys it relays are not authenticated either,
so an active server could stand in the middle of two nodes; with ``qkd`` the pair keys come
from the key manager, which hands each only to the two SAEs' certificates.
"""

from __future__ import annotations

import copy
import math
import os
import secrets
from logging import ERROR, INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from qfl.common.config import RunConfig
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
from transport import secagg
from transport.base import Envelope, Transport, TransportError
from transport.delegating_grid import DelegatingGrid

SECAGG_TYPE = f"query.{SECAGG_ACTION}"
KEYS = "qfl-secagg-keys"  # the node's ConfigRecord in its Flower state: the run's key pair and QKD pair keys
ROUND = "qfl-secagg"  # the node's ConfigRecord in its Flower state: the round in flight
STEPS_PER_CLIP = 2**19  # quantisation steps per clipping norm: sums of up to 4,095 clipped inputs fit in Z_2^32
MASKED = "y"  # not a contract name: the one array of a masked reply
SECAGG_ERROR_CODE = 4401  # an error reply: a stage this node refused (out of order, both secrets of one client asked)


def sizes(n: int, cfg: RunConfig) -> tuple[int, int]:
    """``(k neighbours, threshold t)`` for ``n`` clients: every other one up to 8 clients (or
    ``secagg-neighbours``), else the even number nearest :math:`2 \\log_2 n`; ``t`` the
    ``secagg-threshold`` share of ``k``, at least 2."""
    if cfg.secagg_neighbours:
        k = min(cfg.secagg_neighbours, n - 1)
    else:
        k = n - 1 if n <= 8 else min(n - 1, 2 * round(math.log2(n)))
    return k, max(2, math.ceil(cfg.secagg_threshold * k))


def min_survivors(n: int, cfg: RunConfig) -> int:
    """The fewest of ``n`` participants whose sum the server may unmask: the ``secagg-threshold``
    share of them, at least 2 (with distributed DP, the noise is split among that many)."""
    return max(2, math.ceil(cfg.secagg_threshold * n))


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


# --- the node's side ------------------------------------------------------------------------


def node_public_key(state: RecordDict) -> bytes:
    """This node's X25519 public key for the run, made (OS entropy) and kept in its Flower
    state the first time it is asked for."""
    keys = state.config_records.get(KEYS)
    if keys is None:
        key = secagg.new_key()
        keys = ConfigRecord({"sk": secagg.private_bytes(key), "qkd-with": [], "qkd-ids": [], "qkd-keys": []})
        state[KEYS] = keys
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return secagg.public_bytes(X25519PrivateKey.from_private_bytes(bytes(keys["sk"])))


def secagg_stage(msg: Message, context: Context) -> Message:
    """The ClientApp's handler for :data:`SECAGG_TYPE`: the ``keys`` and ``unmask`` stages."""
    ask = msg.content.config_records[SECAGG_RECORD]
    stage = ask.get("stage")
    try:
        if stage == "keys":
            answer = ConfigRecord({"pk": node_public_key(context.state)})
            if ask.get("pair-with"):  # qkd: this node is the lower end (master SAE) of these pairs
                answer["qkd-key-ids"] = _qkd_pair_keys(context, [int(j) for j in ask["pair-with"]],
                                                       [str(s) for s in ask["pair-saes"]])
        elif stage == "unmask":
            answer = _unmask_answer(ask, context)
            del context.state[ROUND]  # the round is done: nothing of it is needed again
        else:
            raise TransportError(f"secagg: unknown stage {stage!r}")
    except (TransportError, KeyError, ValueError, TypeError) as err:
        log(WARNING, "secagg: refused stage %r: %s", stage, err)
        return Message(Error(SECAGG_ERROR_CODE, str(err)), reply_to=msg)
    return Message(RecordDict({SECAGG_RECORD: answer}), reply_to=msg)


def _qkd_pair_keys(context: Context, higher: list[int], saes: list[str]) -> list[str]:
    """For each neighbour above this node, a key from the key manager (this node the master
    SAE), kept in the node state for the run; the key IDs, aligned with ``higher``. A pair key
    shared with the server's SAE would hand it the masks: a neighbour named by the server's
    SAE is refused."""
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.qkd_server_sae in saes:
        raise TransportError(f"secagg: the server named its own SAE {cfg.qkd_server_sae!r} as a neighbour's")
    from transport.qkd.client import KeyManagerClient

    node_public_key(context.state)
    keys = context.state[KEYS]
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


def _pair_seed(keys: ConfigRecord, me: int, j: int, peer_pk: bytes, round_id: str) -> bytes:
    """This round's mask seed with neighbour ``j``: from the pair's QKD key when the run
    keeps one, else from the X25519 agreement."""
    info = secagg.pair_info(round_id, me, j, secagg.PAIR_MASK)
    qkd = _qkd_keys(keys)
    if j in qkd:
        return secagg.seed_from_key(qkd[j][1], info)
    return secagg.agree(bytes(keys["sk"]), peer_pk, info)


def _unmask_answer(ask: ConfigRecord, context: Context) -> ConfigRecord:
    state, me = context.state.config_records.get(ROUND), context.node_id
    round_id = str(ask.get("round-id"))
    if state is None or state.get("round-id") != round_id:
        raise TransportError(f"secagg: this node sent no masked input in round {round_id!r}")
    survivors, dropped = {int(j) for j in ask["survivors"]}, {int(j) for j in ask["dropped"]}
    if survivors & dropped or me not in survivors:
        raise TransportError("secagg: a client cannot both survive and drop (this node will not reveal both "
                             "its self-mask share and its pair seed)")
    mine = [int(j) for j in state["neighbours"]]
    pks = dict(zip(mine, [bytes(k) for k in state["pks"]]))
    threshold = int(state["threshold"])
    if len(survivors & set(mine)) < threshold:
        raise TransportError(f"secagg: {len(survivors & set(mine))} of this node's neighbours survived, fewer than "
                             f"the threshold {threshold}: revealing its pair seeds could expose its own input")
    keys = context.state[KEYS]
    out: dict[str, list] = {"b-owners": [], "b-shares": [], "pair-owners": [], "pair-seeds": []}
    for owner, token in zip([int(j) for j in ask["owners"]], ask["b-tokens"], strict=True):
        if owner not in pks or owner not in survivors:
            raise TransportError(f"secagg: client {owner} is not a surviving neighbour of this node")
        key = secagg.agree(bytes(keys["sk"]), pks[owner], secagg.pair_info(round_id, owner, me, secagg.PAIR_SHARES))
        out["b-owners"].append(owner)
        out["b-shares"].append(secagg.decrypt_share(key, bytes(token)))
    for j in sorted(dropped & set(mine)):
        out["pair-owners"].append(j)
        out["pair-seeds"].append(_pair_seed(keys, me, j, pks[j], round_id))
    return ConfigRecord(out)


class SecAggTransport(Transport):
    """The node's masked input: its training reply leaves as that and nothing else.

    ``state`` is the node's Flower state (``context.state``), where the run's key pair and
    the round in flight are kept; ``kms`` the key manager client (``qkd+secagg``). On the
    server the transport does nothing (:class:`SecAggGrid` unmasks the sum).
    """

    name = "secagg"

    def __init__(self, state: RecordDict | None = None, kms=None, server_sae: str = "server",  # noqa: ANN001
                 cfg: RunConfig | None = None) -> None:
        self.state, self.kms, self.server_sae, self.cfg = state, kms, server_sae, cfg  # kms: a KeyManagerClient

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if envelope.direction != "up" or request is None or envelope.message_type != "train" or not content.array_records:
            return content
        ask = request.config_records.get(SECAGG_RECORD)
        if ask is None or self.state is None or self.state.config_records.get(KEYS) is None:
            raise TransportError("secagg: a training message without this round's secure-aggregation instructions, "
                                 "or to a node that made no key")
        me, round_id = envelope.node_id, str(ask["round-id"])
        neighbours, pks = [int(j) for j in ask["neighbours"]], [bytes(k) for k in ask["pks"]]
        threshold = int(ask["threshold"])
        keys = self.state[KEYS]
        self._fetch_qkd_keys(ask, keys, me)
        x = secagg.quantize(self._release(content, request, ask), float(ask["step"]))
        b = os.urandom(secagg.SEED_BYTES)
        shares = secagg.split(b, threshold, neighbours)
        tokens = [secagg.encrypt_share(secagg.agree(bytes(keys["sk"]), pk, secagg.pair_info(round_id, me, j, secagg.PAIR_SHARES)),
                                       shares[j]) for j, pk in zip(neighbours, pks)]
        pairs = {j: _pair_seed(keys, me, j, pk, round_id) for j, pk in zip(neighbours, pks)}
        y = secagg.masked_input(x, me, b, pairs)
        self.state[ROUND] = ConfigRecord({"round-id": round_id, "neighbours": neighbours, "pks": pks,
                                          "threshold": threshold})
        return RecordDict({SECAGG_MASKED: ArrayRecord({MASKED: Array(y)}),
                           SECAGG_RECORD: ConfigRecord({"b-tokens": tokens})})

    def _release(self, content: RecordDict, request: RecordDict, ask: ConfigRecord) -> np.ndarray:
        """What this node adds to the sum: its weighted, clipped update and its weight, or,
        under distributed DP, its update clipped to L2 norm C plus its share of the noise."""
        names = list(request[ARRAYS].keys())
        delta = flatten(content[ARRAYS], names) - flatten(request[ARRAYS], names)
        if "l2-clip" in ask:
            clip, sigma, m_min = float(ask["l2-clip"]), float(ask["sigma"]), int(ask["noise-split"])
            self._check_dp(sigma, m_min, int(ask["participants"]))
            noise = np.random.default_rng().normal(0.0, sigma * clip / math.sqrt(m_min), delta.shape)  # OS entropy
            return clip_update(delta, clip) + noise
        bound, clip = float(ask["weight-bound"]), float(ask["clip"])
        metrics = content.metric_records.get(METRICS, {})
        if NUM_EXAMPLES not in metrics:
            raise TransportError("secagg: the training reply names no example count to weigh it by")
        a = min(max(float(metrics[NUM_EXAMPLES]), 0.0), bound) / bound
        return np.concatenate([a * np.clip(delta, -clip, clip), [a]])

    def _check_dp(self, sigma: float, m_min: int, participants: int) -> None:
        """This node's own reading of the server's DP instructions: the noise multiplier is the
        run config's, and the noise is split among as many clients as the run's threshold lets
        the server unmask (a larger split would leave the sum with less noise than sigma C)."""
        if self.cfg is None or not distributed_dp(self.cfg):
            raise TransportError("secagg: the server asks for distributed DP, which this run's config does not")
        if sigma != self.cfg.dp_noise_multiplier:
            raise TransportError(f"secagg: the server asks for noise multiplier {sigma:g}, the run's is "
                                 f"{self.cfg.dp_noise_multiplier:g}")
        if m_min != min_survivors(participants, self.cfg):
            raise TransportError(f"secagg: the server splits the noise among {m_min} clients; with {participants} "
                                 f"taking part the run's threshold says {min_survivors(participants, self.cfg)}")

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

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        return content


# --- the server's side ----------------------------------------------------------------------


class SecAggGrid(DelegatingGrid):
    """Around the strategy's training messages, the exchanges of the module doc; the strategy
    gets one reply, the unmasked aggregate (other messages pass through).

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
        Why rounds could not be unmasked.
    last_sample : tuple or None
        ``(nodes available, nodes sampled)`` of the last round under distributed DP, for the ledger.
    """

    def __init__(self, grid: Grid, cfg: RunConfig, weight_bound: float, keys: dict[int, bytes] | None = None) -> None:
        super().__init__(grid)
        self.cfg, self.weight_bound = cfg, float(weight_bound)
        self.keys = {n: bytes(k) for n, k in (keys or {}).items() if len(bytes(k)) == secagg.KEY_BYTES}
        self.qkd_pairs: dict[tuple[int, int], str] = {}  # (lower, higher) -> the key ID the lower one got
        self.failures: list[str] = []
        self.last_sample: tuple[int, int] | None = None

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
        try:
            return self._round(messages, timeout)
        except secagg.SecAggError as err:
            self.failures.append(str(err))
            log(ERROR, "secagg: the round cannot be unmasked, the model stays as it was: %s", err)
            return []

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
                log(WARNING, "secagg: node %d left at stage %s: %s", node, stage,
                    reply.error.reason if reply.has_error() else "no answer")
                continue
            out[node] = reply.content.config_records[SECAGG_RECORD]
        return out

    def _participants(self, nodes: list[int], timeout: float | None) -> tuple[list[int], dict[int, set[int]]]:
        """The nodes that can take part (a key on record; under qkd, a pair key with each
        neighbour) and the round's graph over them: a ``keys`` query first to the nodes that
        lack either (round 1 under qkd, a node that joined later)."""
        saes = self._saes(nodes, timeout)
        if saes is not None:
            nodes = [n for n in nodes if n in saes]
        for _ in range(3):  # a node that fails the keys query changes the graph: draw it again
            k, _ = sizes(len(nodes), self.cfg)
            graph = secagg.neighbours(nodes, k, secrets.randbits(32))
            asks: dict[int, dict] = {n: {} for n in nodes if n not in self.keys}
            if saes is not None:
                for i in nodes:
                    new = sorted(j for j in graph[i] if j > i and (i, j) not in self.qkd_pairs)
                    if new:
                        asks.setdefault(i, {}).update({"pair-with": new, "pair-saes": [saes.get(j, "") for j in new]})
            if not asks:
                return nodes, graph
            answers = self._ask("keys", asks, timeout)
            for i, answer in answers.items():
                if len(bytes(answer.get("pk", b""))) == secagg.KEY_BYTES:
                    self.keys[i] = bytes(answer["pk"])
                for j, key_id in zip(asks[i].get("pair-with", []), answer.get("qkd-key-ids", [])):
                    self.qkd_pairs[(i, j)] = str(key_id)
            failed = set(asks) - set(answers)
            if not failed:
                return nodes, graph
            nodes = [n for n in nodes if n not in failed]
        raise secagg.SecAggError("nodes kept failing the key exchange")

    def _round(self, messages: list[Message], timeout: float | None) -> list[Message]:
        round_id = secrets.token_hex(8)
        sampled = sorted(m.metadata.dst_node_id for m in messages)
        nodes, graph = self._participants(sampled, timeout)
        k, t = sizes(len(nodes), self.cfg)
        floor = min_survivors(len(nodes), self.cfg)
        if len(nodes) < max(floor, t + 1):
            raise secagg.SecAggError(f"{len(nodes)} of {len(sampled)} nodes can take part, fewer than the "
                                     f"{max(floor, t + 1)} the threshold needs")
        dp = distributed_dp(self.cfg)
        clip = self.cfg.dp_clip if dp else self.cfg.secagg_clip
        instructions: dict = {"round-id": round_id, "threshold": t, "step": clip / STEPS_PER_CLIP}
        if dp:
            instructions.update({"l2-clip": clip, "sigma": self.cfg.dp_noise_multiplier, "noise-split": floor,
                                 "participants": len(nodes)})
        else:
            instructions.update({"clip": clip, "weight-bound": self.weight_bound})
        saes = self._saes(nodes, timeout)
        train = []
        for msg in messages:
            i = msg.metadata.dst_node_id
            if i not in graph:
                continue
            mine = sorted(graph[i])
            ask = {**instructions, "neighbours": mine, "pks": [self.keys[j] for j in mine]}
            if saes is not None:  # the pair keys its neighbours below it made for it, by ID
                below = [j for j in mine if j < i]
                ask.update({"qkd-from": below, "qkd-key-ids-from": [self.qkd_pairs[(j, i)] for j in below],
                            "qkd-saes-from": [saes[j] for j in below]})
            content = RecordDict(dict(msg.content.items()))
            content[SECAGG_RECORD] = ConfigRecord(ask)
            train.append(Message(content, dst_node_id=i, message_type=msg.metadata.message_type))
        log(INFO, "secagg: %d of %d nodes take part (k = %d, t = %d; pairwise masks from %s)%s", len(nodes),
            len(sampled), k, t, "X25519" if saes is None else "QKD keys",
            f"; distributed DP, noise split among {floor}" if dp else "")
        size = sum(v.numpy().size for v in messages[0].content[ARRAYS].values()) + (0 if dp else 1)
        replies = {}
        for reply in self._grid.send_and_receive(train, timeout=timeout):
            i = reply.metadata.src_node_id
            record = None if reply.has_error() else reply.content.array_records.get(SECAGG_MASKED)
            y = record[MASKED].numpy() if record is not None and MASKED in record else None
            tokens = None if reply.has_error() else reply.content.config_records.get(SECAGG_RECORD, {}).get("b-tokens")
            if y is not None and y.dtype == secagg.FIELD and y.shape == (size,) and tokens is not None \
                    and len(tokens) == len(graph.get(i, ())):
                replies[i] = (reply, y, [bytes(tok) for tok in tokens])
            else:
                log(WARNING, "secagg: node %d sent no masked input: %s", i,
                    reply.error.reason if reply.has_error() else "malformed")
        survivors = sorted(replies)
        if len(survivors) < floor:
            raise secagg.SecAggError(f"{len(survivors)} masked input(s), the threshold is {floor}")
        dropped = sorted(set(nodes) - set(survivors))
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
        summed = secagg.dequantize(total, clip / STEPS_PER_CLIP)
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
            len(dropped))
        aggregate = copy.copy(replies[survivors[0]][0])  # its metadata: a reply to this round's request
        aggregate.content = RecordDict({
            ARRAYS: unflatten(moved, start, names),
            METRICS: MetricRecord({NUM_EXAMPLES: weight, SECAGG_SUMMED: len(survivors),
                                   SECAGG_DROPPED: len(sampled) - len(survivors)}),
        })
        return [aggregate]
