"""SecAgg+ in Flower's Message API: a ClientApp query handler, a transport, and a Grid wrapper.

``transport = "secagg"`` (or ``"qkd+secagg"``): the server learns the weighted sum of the
round's updates and never one of them. One training round becomes four exchanges, each a
Flower message to every node taking part (the protocol and its math: :mod:`transport.secagg`):

1. ``keys`` (query :data:`SECAGG_TYPE`): each node makes its two X25519 key pairs, keeps
   the private halves in its Flower node state, answers the public ones;
2. ``shares``: each node gets its neighbours' public keys, draws its self-mask seed and
   answers Shamir shares of that seed and of its mask key, each encrypted for its holder;
3. the training message itself, with the survivors of step 2: the node trains as always;
   on the way out :class:`SecAggTransport` replaces its reply by the masked input of
   :math:`(a_i \\Delta_i, a_i)`, its update weighted by :math:`a_i = \\min(n_i, B)/B`
   (``B`` a public bound on examples), quantised; nothing else of the reply leaves;
4. ``unmask``: each node that sent an input gets the lists of survivors and of the dropped,
   and the encrypted shares its neighbours made for it; it answers the self-mask shares of
   survivors and the mask-key shares of the dropped, never both of one client.

:class:`SecAggGrid` runs the four exchanges around the strategy's training messages and
gives the strategy one reply, the aggregate: the parameters moved by
:math:`\\sum a_i \\Delta_i / \\sum a_i` and the example weight :math:`B \\sum a_i`, so FedAvg
and the strategies that average (:data:`~qfl.common.config.SECAGG_STRATEGIES`) aggregate
it as they would the clients' replies. A node that fails after step 2 leaves the sum of
the others (its masks are rebuilt from its neighbours' shares); below the threshold the
round fails, named in the log, and the run goes on with the model unchanged.

The server is trusted to follow the protocol (honest but curious): a server that told
different nodes different survivor lists could collect both shares of one client; Bell et
al.'s malicious-server variant adds a signed consistency round, not built here. The
public keys it relays are not authenticated either, so an active server could also stand
in the middle of two nodes; with ``qkd`` every exchange travels encrypted and bound to the
node's certificate, but the relayed keys are still the server's to swap.
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
from qfl.common.records import flatten, unflatten
from transport import secagg
from transport.base import Envelope, Transport, TransportError
from transport.delegating_grid import DelegatingGrid

SECAGG_TYPE = f"query.{SECAGG_ACTION}"
STATE = "qfl-secagg"  # the node's ConfigRecord in its Flower state: this round's secrets
LEVELS = 2**20  # quantisation levels per coordinate: sums of up to 4,096 inputs fit in Z_2^32
MASKED = "y"  # not a contract name: the one array of a masked reply
KEY_BYTES = 32
SECAGG_ERROR_CODE = 4401  # an error reply: a stage this node refused (out of order, both shares asked)


def sizes(n: int, cfg: RunConfig) -> tuple[int, int]:
    """``(k neighbours, threshold t)`` for ``n`` clients: every other one up to 8 clients (or
    ``secagg-neighbours``), else the even number nearest :math:`2 \\log_2 n`; ``t`` the
    ``secagg-threshold`` share of ``k``, at least 2."""
    if cfg.secagg_neighbours:
        k = min(cfg.secagg_neighbours, n - 1)
    else:
        k = n - 1 if n <= 8 else min(n - 1, 2 * round(math.log2(n)))
    return k, max(2, math.ceil(cfg.secagg_threshold * k))


# --- the node's side ------------------------------------------------------------------------


def _mine(context: Context, round_id: str, stage: str) -> ConfigRecord:
    state = context.state.config_records.get(STATE)
    if state is None or state.get("round-id") != round_id or state.get("stage") != stage:
        raise TransportError(f"secagg: out of order (this node is at {None if state is None else state.get('stage')!r} "
                             f"of round {None if state is None else state.get('round-id')!r})")
    return state


def secagg_stage(msg: Message, context: Context) -> Message:
    """The ClientApp's handler for :data:`SECAGG_TYPE`: steps 1, 2 and 4 of the module doc."""
    ask = msg.content.config_records[SECAGG_RECORD]
    stage, round_id, me = ask.get("stage"), str(ask.get("round-id")), context.node_id
    try:
        if stage == "keys":
            c, s = secagg.new_key(), secagg.new_key()
            context.state[STATE] = ConfigRecord({"round-id": round_id, "stage": "keys", "c-sk": secagg.private_bytes(c),
                                                 "s-sk": secagg.private_bytes(s)})
            answer = ConfigRecord({"c-pk": secagg.public_bytes(c), "s-pk": secagg.public_bytes(s)})
        elif stage == "shares":
            state = _mine(context, round_id, "keys")
            holders, c_pks = [int(j) for j in ask["neighbours"]], list(ask["c-pks"])
            threshold = int(ask["threshold"])
            seed = os.urandom(secagg.SEED_BYTES)
            b_shares = secagg.split(seed, threshold, holders)
            sk_shares = secagg.split(bytes(state["s-sk"]), threshold, holders)
            keys = [secagg.agree(bytes(state["c-sk"]), pk, secagg.pair_info(round_id, me, j, secagg.PAIR_SHARES))
                    for j, pk in zip(holders, c_pks)]
            answer = ConfigRecord({"b-tokens": [secagg.encrypt_share(k, b_shares[j]) for j, k in zip(holders, keys)],
                                   "sk-tokens": [secagg.encrypt_share(k, sk_shares[j]) for j, k in zip(holders, keys)]})
            kept = {**dict(state), "stage": "shares", "b": seed, "neighbours": holders, "c-pks": c_pks,
                    "s-pks": list(ask["s-pks"])}
            if "saes" in ask:  # qkd: the pairwise seeds come from keys the key manager issues per pair
                ids, seeds = _qkd_pair_keys(context, round_id, me, holders, [str(s) for s in ask["saes"]])
                answer["qkd-key-ids"], kept["qkd-seeds"] = ids, seeds
            context.state[STATE] = ConfigRecord(kept)
        elif stage == "unmask":
            answer = _unmask_answer(ask, _mine(context, round_id, "masked"), round_id, me)
            del context.state[STATE]  # the round's secrets are spent
        else:
            raise TransportError(f"secagg: unknown stage {stage!r}")
    except (TransportError, KeyError, ValueError, TypeError) as err:
        log(WARNING, "secagg: refused stage %r: %s", stage, err)
        return Message(Error(SECAGG_ERROR_CODE, f"secagg: {err}"), reply_to=msg)
    return Message(RecordDict({SECAGG_RECORD: answer}), reply_to=msg)


def _qkd_pair_keys(context: Context, round_id: str, me: int, holders: list[int], saes: list[str]) -> tuple[list, list]:
    """For each neighbour above this node, a key from the key manager (this node the master
    SAE): ``(key IDs, seeds)`` aligned with ``holders`` (empty below this node, whose keys it
    will take as the slave). A pair key shared with the server's SAE would hand it the mask:
    a neighbour named by the server's SAE is refused."""
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.qkd_server_sae in saes:
        raise TransportError(f"secagg: the server named its own SAE {cfg.qkd_server_sae!r} as a neighbour's")
    from transport.qkd.client import KeyManagerClient

    kms = KeyManagerClient.of_this_sae(cfg.kms_url)
    try:
        ids, seeds = [], []
        for j, sae in zip(holders, saes):
            if j > me:
                key_id, key = kms.enc_key(sae)
                ids.append(key_id)
                seeds.append(secagg.seed_from_key(key, secagg.pair_info(round_id, me, j, secagg.PAIR_MASK)))
            else:
                ids.append("")
                seeds.append(b"")
        return ids, seeds
    finally:
        kms.close()


def _unmask_answer(ask: ConfigRecord, state: ConfigRecord, round_id: str, me: int) -> ConfigRecord:
    survivors, dropped = {int(j) for j in ask["survivors"]}, {int(j) for j in ask["dropped"]}
    if survivors & dropped or me not in survivors:
        raise TransportError("secagg: a client cannot both survive and drop (this node will not reveal both shares)")
    pks = dict(zip([int(j) for j in state["neighbours"]], state["c-pks"]))
    out: dict[str, list] = {"b-owners": [], "b-shares": [], "sk-owners": [], "sk-shares": []}
    for owner, b_token, sk_token in zip([int(j) for j in ask["owners"]], ask["b-tokens"], ask["sk-tokens"]):
        if owner not in pks:
            raise TransportError(f"secagg: client {owner} is not this node's neighbour")
        key = secagg.agree(bytes(state["c-sk"]), pks[owner], secagg.pair_info(round_id, owner, me, secagg.PAIR_SHARES))
        if owner in survivors:
            out["b-owners"].append(owner)
            out["b-shares"].append(secagg.decrypt_share(key, b_token))
        elif owner in dropped:
            out["sk-owners"].append(owner)
            out["sk-shares"].append(secagg.decrypt_share(key, sk_token))
    if "pair-seeds" in state:  # qkd: a dropped neighbour's mask with this node is their pair seed
        seeds = dict(zip([int(j) for j in state["neighbours"]], state["pair-seeds"]))
        out["pair-owners"] = [j for j in sorted(dropped) if j in seeds]
        out["pair-seeds"] = [seeds[j] for j in out["pair-owners"]]
    return ConfigRecord(out)


class SecAggTransport(Transport):
    """Step 3 on the node: the training reply leaves as its masked input, nothing else.

    ``state`` is the node's Flower state (``context.state``), where :func:`secagg_stage`
    keeps the round's secrets; on the server the transport does nothing (the
    :class:`SecAggGrid` unmasks the sum).
    """

    name = "secagg"

    def __init__(self, state: RecordDict | None = None, kms=None, server_sae: str = "server") -> None:  # noqa: ANN001
        self.state, self.kms, self.server_sae = state, kms, server_sae  # kms: a KeyManagerClient (qkd)

    def encode(self, content: RecordDict, envelope: Envelope, request: RecordDict | None = None) -> RecordDict:
        if envelope.direction != "up" or request is None or envelope.message_type != "train" or not content.array_records:
            return content
        ask = request.config_records.get(SECAGG_RECORD)
        if ask is None or self.state is None:
            raise TransportError("secagg: a training message without this round's secure-aggregation instructions")
        state = self.state.config_records.get(STATE)
        round_id = str(ask.get("round-id"))
        if state is None or state.get("round-id") != round_id or state.get("stage") != "shares":
            raise TransportError(f"secagg: this node holds no shared keys for round {round_id!r}")
        names = list(request[ARRAYS].keys())
        delta = flatten(content[ARRAYS], names) - flatten(request[ARRAYS], names)
        bound, clip = float(ask["weight-bound"]), float(ask["clip"])
        metrics = content.metric_records.get(METRICS, {})
        if NUM_EXAMPLES not in metrics:
            raise TransportError("secagg: the training reply names no example count to weigh it by")
        n = float(metrics[NUM_EXAMPLES])
        a = min(max(n, 0.0), bound) / bound
        x = secagg.quantize(np.concatenate([a * delta, [a * clip]]), clip, int(ask["levels"]))
        survivors = {int(j) for j in ask["survivors"]}
        me = envelope.node_id
        s_sk = bytes(state["s-sk"])
        neighbours = [int(j) for j in state["neighbours"]]
        if "qkd-seeds" in state:
            pairs = self._qkd_pairs(ask, state, round_id, me, neighbours, survivors)
        else:
            pairs = {j: secagg.agree(s_sk, pk, secagg.pair_info(round_id, me, j, secagg.PAIR_MASK))
                     for j, pk in zip(neighbours, state["s-pks"]) if j in survivors}
        y = secagg.masked_input(x, me, bytes(state["b"]), pairs)
        kept = {**dict(state), "stage": "masked"}
        if "qkd-seeds" in state:
            kept["pair-seeds"] = [pairs.get(j, b"") for j in neighbours]
        self.state[STATE] = ConfigRecord(kept)
        return RecordDict({SECAGG_MASKED: ArrayRecord({MASKED: Array(y)})})

    def _qkd_pairs(self, ask: ConfigRecord, state: ConfigRecord, round_id: str, me: int, neighbours: list[int],
                   survivors: set[int]) -> dict[int, bytes]:
        """Pair seeds from QKD keys: those this node made (neighbours above it) and those its
        neighbours below it made for it, fetched from the key manager by the IDs they sent."""
        pairs = {j: bytes(s) for j, s in zip(neighbours, state["qkd-seeds"]) if j > me and j in survivors}
        if self.kms is None:
            raise TransportError("secagg: QKD-keyed masks need the key manager (transport qkd)")
        for j, key_id, sae in zip(ask.get("qkd-from", []), ask.get("qkd-key-ids-from", []), ask.get("qkd-saes-from", [])):
            j = int(j)
            if j < me and j in survivors and j in neighbours:
                if sae == self.server_sae:
                    raise TransportError(f"secagg: the server named its own SAE {sae!r} as a neighbour's")
                pairs[j] = secagg.seed_from_key(self.kms.dec_key(str(sae), str(key_id)),
                                                secagg.pair_info(round_id, j, me, secagg.PAIR_MASK))
        missing = sorted(j for j in neighbours if j in survivors and j not in pairs)
        if missing:
            raise TransportError(f"secagg: no QKD pair key with neighbour(s) {missing}")
        return pairs

    def decode(self, content: RecordDict, envelope: Envelope) -> RecordDict:
        return content


# --- the server's side ----------------------------------------------------------------------


class SecAggGrid(DelegatingGrid):
    """Around the strategy's training messages, the four exchanges of the module doc; the
    strategy gets one reply, the unmasked aggregate (other messages pass through).

    Parameters
    ----------
    grid : Grid
        The grid below (the transport grid, so that every exchange is protected as the
        training messages are).
    cfg : RunConfig
    weight_bound : float
        ``B``: the most examples one client's weight may count for (public).
    """

    def __init__(self, grid: Grid, cfg: RunConfig, weight_bound: float) -> None:
        super().__init__(grid)
        self.cfg, self.weight_bound = cfg, float(weight_bound)
        self.failures: list[str] = []  # why rounds could not be unmasked

    def send_and_receive(self, messages, *, timeout: float | None = None):  # noqa: ANN001, ANN201
        messages = list(messages)
        if not messages or any(m.metadata.message_type != "train" for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        try:
            return self._round(messages, timeout)
        except secagg.SecAggError as err:
            self.failures.append(str(err))
            log(ERROR, "secagg: the round cannot be unmasked, the model stays as it was: %s", err)
            return []

    def _saes(self) -> dict[int, str] | None:
        """Each node's SAE ID when the grid below identifies them by certificate (qkd), else ``None``."""
        grid = self._grid
        stack = getattr(grid, "stack", None)
        return dict(grid.peers) if stack is not None and stack.identifies_peers else None

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

    def _round(self, messages: list[Message], timeout: float | None) -> list[Message]:
        round_id = secrets.token_hex(8)
        nodes = sorted(m.metadata.dst_node_id for m in messages)
        keys = {n: r for n, r in self._ask("keys", {n: {"round-id": round_id} for n in nodes}, timeout).items()
                if len(bytes(r.get("c-pk", b""))) == KEY_BYTES and len(bytes(r.get("s-pk", b""))) == KEY_BYTES}
        k, t = sizes(len(keys), self.cfg)
        if len(keys) <= t:
            raise secagg.SecAggError(f"{len(keys)} of {len(nodes)} nodes sent keys, more than the threshold {t} must")
        graph = secagg.neighbours(sorted(keys), k, secrets.randbits(32))
        asks = {i: {"round-id": round_id, "threshold": t, "neighbours": sorted(graph[i]),
                    "c-pks": [bytes(keys[j]["c-pk"]) for j in sorted(graph[i])],
                    "s-pks": [bytes(keys[j]["s-pk"]) for j in sorted(graph[i])]} for i in graph}
        saes = self._saes()
        if saes is not None:  # qkd: the nodes key their pairwise masks with QKD keys
            for i, ask in asks.items():
                ask["saes"] = [saes.get(j, "") for j in ask["neighbours"]]
        shares = {i: r for i, r in self._ask("shares", asks, timeout).items()
                  if len(r.get("b-tokens", [])) == len(r.get("sk-tokens", [])) == len(graph[i])}
        shared = sorted(shares)
        log(INFO, "secagg: %d of %d nodes shared their keys (k = %d, t = %d; pairwise masks from %s); training",
            len(shared), len(nodes), k, t, "X25519" if saes is None else "QKD keys")
        instructions = {"round-id": round_id, "survivors": shared, "clip": self.cfg.secagg_clip, "levels": LEVELS,
                        "weight-bound": self.weight_bound}
        train = []
        for msg in messages:
            i = msg.metadata.dst_node_id
            if i in shares:
                content = RecordDict(dict(msg.content.items()))
                mine = dict(instructions)
                if saes is not None:  # the key IDs its neighbours below it got for it, and who they are
                    below = [j for j in sorted(graph[i]) if j < i and j in shares]
                    mine["qkd-from"] = below
                    mine["qkd-key-ids-from"] = [shares[j]["qkd-key-ids"][sorted(graph[j]).index(i)] for j in below]
                    mine["qkd-saes-from"] = [saes[j] for j in below]
                content[SECAGG_RECORD] = ConfigRecord(mine)
                train.append(Message(content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type))
        size = sum(v.numpy().size for v in messages[0].content[ARRAYS].values()) + 1
        replies = {}
        for reply in self._grid.send_and_receive(train, timeout=timeout):
            record = None if reply.has_error() else reply.content.array_records.get(SECAGG_MASKED)
            y = record[MASKED].numpy() if record is not None and MASKED in record else None
            if y is not None and y.dtype == secagg.FIELD and y.shape == (size,):
                replies[reply.metadata.src_node_id] = (reply, y)
            else:
                log(WARNING, "secagg: node %d sent no masked input: %s", reply.metadata.src_node_id,
                    reply.error.reason if reply.has_error() else "malformed")
        survivors = sorted(replies)
        if len(survivors) < t:
            raise secagg.SecAggError(f"{len(survivors)} masked input(s), the threshold is {t}")
        dropped = sorted(set(shared) - set(survivors))
        asks = {}
        for h in survivors:
            owners = sorted(j for j in graph[h] if j in shares)
            asks[h] = {"round-id": round_id, "survivors": survivors, "dropped": dropped, "owners": owners,
                       "b-tokens": [shares[j]["b-tokens"][sorted(graph[j]).index(h)] for j in owners],
                       "sk-tokens": [shares[j]["sk-tokens"][sorted(graph[j]).index(h)] for j in owners]}
        answers = self._ask("unmask", asks, timeout)
        b_of: dict[int, list[bytes]] = {i: [] for i in survivors}
        sk_of: dict[int, list[bytes]] = {j: [] for j in dropped}
        for answer in answers.values():
            for owner, share in zip(answer.get("b-owners", []), answer.get("b-shares", [])):
                b_of.setdefault(int(owner), []).append(bytes(share))
            for owner, share in zip(answer.get("sk-owners", []), answer.get("sk-shares", [])):
                sk_of.setdefault(int(owner), []).append(bytes(share))
        seeds = {i: secagg.rebuild(b_of[i], t, i, "self-mask seed") for i in survivors}
        masked = {i: y for i, (_, y) in replies.items()}
        if saes is None:
            lost = {j: secagg.rebuild(sk_of[j], t, j, "mask key") for j in dropped}
            total = secagg.unmask(masked, graph, round_id, seeds, lost, {j: bytes(keys[j]["s-pk"]) for j in keys})
        else:  # QKD-keyed masks: each survivor reveals its pair seed with a dropped neighbour
            pair_seeds = {(int(h), int(j)): bytes(s) for h, answer in answers.items()
                          for j, s in zip(answer.get("pair-owners", []), answer.get("pair-seeds", []))}
            for j in dropped:
                for i in graph[j] & set(survivors):
                    if (i, j) not in pair_seeds:
                        raise secagg.SecAggError(f"survivor {i} did not reveal its pair seed with dropped client {j}")
            total = secagg.unmask_with_pair_seeds(masked, seeds, {p: s for p, s in pair_seeds.items() if p[1] in dropped})
        summed = secagg.dequantize_sum(total, len(survivors), self.cfg.secagg_clip, LEVELS)
        weight = summed[-1] / self.cfg.secagg_clip
        if not weight > 0:
            raise secagg.SecAggError(f"the survivors' weights sum to {weight:.3g}")
        start = messages[0].content[ARRAYS]
        names = list(start.keys())
        moved = flatten(start, names) + summed[:-1] / weight
        log(INFO, "secagg: the sum of %d client(s) unmasked (%d dropped after sharing keys)", len(survivors), len(dropped))
        aggregate = copy.copy(replies[survivors[0]][0])  # its metadata: a reply to this round's request
        aggregate.content = RecordDict({
            ARRAYS: unflatten(moved, start, names),
            METRICS: MetricRecord({NUM_EXAMPLES: weight * self.weight_bound, SECAGG_SUMMED: len(survivors),
                                   SECAGG_DROPPED: len(nodes) - len(survivors)}),
        })
        return [aggregate]
