"""Secure aggregation against a server that lies (issue 39, item 6; Bell et al. 2020, Sec. 5).

The adversary is the server, in this process: the honest SecAggGrid with a hook that
rewrites what it relays (``LoopbackGrid.tamper``), or a SecAggGrid of its own for the
stages it runs differently. The nodes are the real ClientApp (its transport mod, its query
handler, its store and its certified identity). Each attack is refused by the honest nodes,
by name, and the server learns no single update: from everything it collected (masked
inputs, revealed shares and pair seeds) it tries to rebuild each client's input, and what
it gets is uniform over the field, not a bounded update.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord
from scipy import stats
from test_secagg_flower import NODES, Federation, LoopbackGrid, _config, secagg_certs, use_identities  # noqa: F401

from qfl.common.contract import SECAGG_MASKED, SECAGG_RECORD, SECAGG_SUMMED
from qfl.common.flower_internals import secagg_primitives
from transport import hybrid_kem, secagg
from transport.secagg_flower import MASKED, ROUND, SecAggGrid, quantisation_steps
from transport.secagg_identity import KEYS, ek_hash, key_statement, make_identity, parameters_statement
from transport.secagg_store import NodeStore, bytes_of


@pytest.fixture(autouse=True)
def _identity(task_identity, secagg_certs, tmp_path, monkeypatch):  # noqa: F811
    use_identities(secagg_certs, tmp_path, monkeypatch)


# --- what the adversary collected, and its try at one client's update ------------------------


def _collected(fed: Federation, since: int) -> tuple[dict, dict, dict]:
    """From the replies since ``since``: masked inputs, revealed self-mask shares by owner,
    revealed pair seeds by (revealer, other)."""
    masked, shares, seeds = {}, {}, {}
    for reply in fed.loop.seen[since:]:
        if reply.has_error():
            continue
        node, content = reply.metadata.src_node_id, reply.content
        if SECAGG_MASKED in content.array_records:
            masked[node] = content.array_records[SECAGG_MASKED][MASKED].numpy()
        record = content.config_records.get(SECAGG_RECORD, {})
        for owner, share in zip(record.get("b-owners", []), record.get("b-shares", [])):
            shares.setdefault(int(owner), []).append(bytes(share))
        for j, seed in zip(record.get("pair-owners", []), record.get("pair-seeds", [])):
            seeds[(node, int(j))] = bytes(seed)
    return masked, shares, seeds


def _told(fed: Federation, node: int) -> dict:
    train = [m for m in fed.loop.sent if m.metadata.message_type == "train" and m.metadata.dst_node_id == node]
    return dict(train[-1].content[SECAGG_RECORD].items())


def _recover(fed: Federation, victim: int, since: int, extra: dict[int, bytes] | None = None) -> np.ndarray | None:
    """The adversary's best try at ``victim``'s input: its masked input less every mask whose
    seed it holds (its self mask when t shares of the seed were revealed; each pair mask whose
    seed either end revealed, or ``extra`` gives), decoded. ``None``: no masked input arrived."""
    masked, shares, seeds = _collected(fed, since)
    if victim not in masked:
        return None
    told = _told(fed, victim)
    e = masked[victim].astype(secagg.FIELD)
    if len(shares.get(victim, [])) >= told["threshold"]:
        b = secagg_primitives().combine_shares(shares[victim][:told["threshold"]])
        e = e - secagg.prg(b, e.size)
    for j in told["neighbours"]:
        seed = seeds.get((victim, j)) or seeds.get((j, victim)) or (extra or {}).get(j)
        if seed is not None:
            mask = secagg.prg(seed, e.size)
            e = e - mask if j > victim else e + mask
    return secagg.dequantize(e, quantisation_steps(fed.cfg, e.size))


def _learns_nothing(fed: Federation, since: int) -> None:
    """For every client, what the adversary rebuilds is uniform over Z_2^32: almost no
    coordinate decodes within the clip (an honest input is within it on every one; a uniform
    value is, with probability 2^-12), and the field elements pass a uniformity test."""
    for victim in NODES:
        guess = _recover(fed, victim, since)
        if guess is None:
            continue
        assert np.sum(np.abs(guess) <= fed.cfg.secagg_clip) <= 2, (victim, guess)
        steps = quantisation_steps(fed.cfg, guess.size)
        field = (np.round(guess / steps).astype(np.int64) % 2**32) / 2**32
        assert stats.kstest(field, "uniform").pvalue > 1e-4


def _mask_seeds_of(fed: Federation, victim: int) -> dict[int, bytes]:
    """The victim's own pair-mask seeds of its last round, read from its store (what no
    adversary gets; the positive control of the rebuilding above)."""
    told = _told(fed, victim)
    with NodeStore.of(fed.run_id, victim).open() as data:
        keys = {int(j): bytes_of(v[1]) for j, v in data["hyb"].items()}
    return {j: secagg.seed_from_key(keys[j], secagg.pair_info(told["round-id"], victim, j, secagg.PAIR_MASK))
            for j in told["neighbours"]}


def _refusals(fed: Federation, since: int) -> dict[int, str]:
    return {r.metadata.src_node_id: r.error.reason for r in fed.loop.seen[since:] if r.has_error()}


def _stage_of(msg) -> str:  # noqa: ANN001
    return "train" if msg.metadata.message_type == "train" else LoopbackGrid._stage(msg)


def _lie(fed: Federation, stage: str, nodes: set[int], change) -> None:  # noqa: ANN001
    """From now on the server rewrites the secure-aggregation record of ``stage`` messages to ``nodes``."""
    def tamper(msg):  # noqa: ANN001, ANN202
        if _stage_of(msg) == stage and msg.metadata.dst_node_id in nodes:
            record = dict(msg.content[SECAGG_RECORD].items())
            msg.content[SECAGG_RECORD] = ConfigRecord(change(record, fed))

    fed.loop.tamper = tamper


# --- the server's own keys and certificates: what it can make ---------------------------------


def _own_identity(name: str = "node-5"):  # noqa: ANN202
    """An identity the server certifies itself, with a CA of its own (it holds no ca.key of the deployment's)."""
    from qfl.pki import make_ca

    ca, ca_key = make_ca(Path(tempfile.mkdtemp()))
    return make_identity(ca, ca_key, name)


def _invented(record: dict, fed: Federation, invented: int = 99) -> dict:
    """Node 11 is told its neighbour 14 is node 99, a node the server made, with a certified-looking key statement."""
    key, cert = _own_identity()
    from cryptography.hazmat.primitives import serialization

    pk, ek = secagg.public_bytes(secagg.new_key()), hybrid_kem.kem_public_bytes(hybrid_kem.new_kem_key())
    sig = key.sign(key_statement(fed.run_id, invented, "node-5", pk, ek_hash(ek)), KEYS)
    neighbours = [invented if j == 14 else j for j in record["neighbours"]]
    members = sorted(invented if j == 14 else j for j in record.get("members", []))  # a participant too
    return {**record, "neighbours": neighbours, "members": members, "intro-nodes": [*record["intro-nodes"], invented],
            "intro-certs": [*record["intro-certs"], cert.public_bytes(serialization.Encoding.DER)],
            "intro-sigs": [*record["intro-sigs"], sig], "intro-pks": [*record["intro-pks"], pk],
            "intro-ekhs": [*record["intro-ekhs"], ek_hash(ek)]}


def _replayed(record: dict, fed: Federation) -> dict:
    """Node 14 is told its neighbour 11 is node 99, with node 11's real certificate and signature."""
    return {**record, "neighbours": [99 if j == 11 else j for j in record["neighbours"]],
            "members": sorted(99 if j == 11 else j for j in record.get("members", [])),
            "intro-nodes": [99 if j == 11 else j for j in record["intro-nodes"]]}


def _swapped_x25519(record: dict, fed: Federation) -> dict:
    pks = list(record["intro-pks"])
    pks[0] = secagg.public_bytes(secagg.new_key())  # the server's own key, in the middle
    return {**record, "intro-pks": pks}


def _swapped_mlkem(record: dict, fed: Federation) -> dict:
    if "kem-eks" not in record:  # the keys stage that only asks for the node's own keys
        return record
    eks = list(record["kem-eks"])
    eks[0] = hybrid_kem.kem_public_bytes(hybrid_kem.new_kem_key())
    return {**record, "kem-eks": eks}


def _swapped_ciphertext(record: dict, fed: Federation) -> dict:
    """The server encapsulates to node 14's real ML-KEM key itself and relays its own ciphertext."""
    from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey

    _, ct = MLKEM768PublicKey.from_public_bytes(fed.grid.records[14]["ek"]).encapsulate()
    return {**record, "kem-cts": [ct, *list(record["kem-cts"])[1:]]}


ATTACKS = {
    # (stage, nodes lied to, the lie, what the refusal names)
    "swaps a relayed X25519 key": ("train", {14}, _swapped_x25519,
                                   r"neighbour 11 refused: node 11's keys \(run \d+\): the signature is not node-0's"),
    "swaps a relayed ML-KEM key": ("keys", {11}, _swapped_mlkem,
                                   "instruction kem-eks: node 12's ML-KEM key is not the one node-1 signed"),
    "swaps a relayed ML-KEM ciphertext": ("train", {14}, _swapped_ciphertext,
                                          "instruction kem-cts: the ML-KEM ciphertext from node 11: the signature "
                                          "is not node-0's"),
    "lowers the threshold": ("train", set(NODES), lambda r, f: {**r, "threshold": 1},
                             "instruction threshold = 1: this node's run config gives t = 2"),
    "invents a neighbour": ("train", {11}, _invented,
                            "neighbour 99 refused: certificate 'CN=node-5,O=qfl' is not issued by this node's CA"),
    "passes a real certificate off as an invented neighbour": (
        "train", {14}, _replayed, r"neighbour 99 refused: node 99's keys \(run \d+\): the signature is not node-0's"),
    "omits the clip": ("train", set(NODES), lambda r, f: {k: v for k, v in r.items() if k != "clip"},
                       "instruction clip = None: a finite number is required"),
    "inflates the participant count": ("train", set(NODES), lambda r, f: {**r, "participants": 8},
                                       "instruction neighbours: 3 listed, this node's run config gives k = 7 "
                                       "distinct others for 8 participants"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_lying_servers_relay_is_refused_by_name_and_it_learns_no_update(defaults, attack):
    """Round 1 with the lie: each node lied to refuses, naming the lie; from everything the
    server collected it rebuilds no client's input (round 2 then runs honestly, every node
    taking part: a lie costs a round, never a secret)."""
    stage, targets, change, named = ATTACKS[attack]
    fed = Federation(_config(defaults), num_partitions=8)  # 8 identities certified, 4 nodes running
    _lie(fed, stage, targets, change)
    fed.train()
    refusals = _refusals(fed, 0)
    assert set(refusals) == targets, refusals
    for node in targets:
        assert re.search(named, refusals[node]), refusals[node]
    _learns_nothing(fed, 0)


def test_invented_neighbours_cannot_fill_an_inflated_participant_count(defaults):
    """8 participants claimed with 4 nodes running: each node needs 7 certified neighbours;
    the server's own certificates are refused."""
    fed = Federation(_config(defaults), num_partitions=8)

    def inflate(record: dict, fed: Federation) -> dict:
        for invented in (95, 96, 97, 98):
            record = _invented({**record, "neighbours": [*record["neighbours"], 14]}, fed, invented)
            record["neighbours"] = [j for j in record["neighbours"] if j != 14] + [14]
        return {**record, "participants": 8, "threshold": 4, "neighbours": sorted(set(record["neighbours"])),
                "members": sorted(set(record["neighbours"]) | {11})}

    _lie(fed, "train", {11}, inflate)
    fed.train()
    assert "is not issued by this node's CA" in _refusals(fed, 0)[11]


class SplitsTheSurvivors(SecAggGrid):
    """Tells nodes 11, 12 and the victim 14 that everyone survived (they reveal the victim's
    self-mask shares) and node 13 that the victim dropped (it would reveal its pair seed with
    it); then asks every survivor to unmask with every signature it holds."""

    victim = 14

    def _unmasked_sum(self, round_id, graph, replies, dropped, t, timeout):  # noqa: ANN001, ANN202
        everyone = sorted(replies)
        self.views = {i: everyone if i != 13 else [j for j in everyone if j != self.victim] for i in everyone}
        asks = {i: {"round-id": round_id, "survivors": self.views[i]} for i in everyone}
        signatures = {i: bytes(a["sig"]) for i, a in self._ask("consistency", asks, timeout).items()}
        asks = {}
        for h in everyone:
            ask = self._unmask_ask(round_id, h, graph, replies, everyone, signatures)
            keep = [k for k, o in enumerate(ask["owners"]) if o in self.views[h]]
            asks[h] = {**ask, "survivors": self.views[h], "owners": [ask["owners"][k] for k in keep],
                       "b-tokens": [ask["b-tokens"][k] for k in keep]}
        self._ask("unmask", asks, timeout)
        raise secagg.SecAggError("the adversary has what it could get")


class SkipsTheConsistencyRound(SecAggGrid):
    """Goes from the masked inputs straight to unmask, with no signature (none of those that
    came with the masked inputs, and no consistency round)."""

    def _consistency(self, round_id, survivors, timeout, presigned=None):  # noqa: ANN001, ANN202
        return {i: b"" for i in survivors}


class ReplaysLastRoundsSignatures(SecAggGrid):
    """Keeps round 1's signatures (on its participants, which came with the masked inputs); in
    round 2 relays those instead of round 2's."""

    def _consistency(self, round_id, survivors, timeout, presigned=None):  # noqa: ANN001, ANN202
        if getattr(self, "kept", None) is None:
            self.kept = super()._consistency(round_id, survivors, timeout, presigned)
        return self.kept


class OmitsTheParticipants(SecAggGrid):
    """Leaves the participants out of the training message (no node signs with its masked
    input), then skips the consistency round."""

    def _instructions(self, round_id, nodes, t, floor):  # noqa: ANN001, ANN202
        return {k: v for k, v in super()._instructions(round_id, nodes, t, floor).items() if k != "members"}

    def _consistency(self, round_id, survivors, timeout, presigned=None):  # noqa: ANN001, ANN202
        return {i: b"" for i in survivors}


def test_a_server_that_gives_different_survivor_lists_gets_no_pair_seed_and_no_update(defaults):
    fed = Federation(_config(defaults), grid_class=SplitsTheSurvivors)
    replies = fed.train()  # the round fails: its one refusal comes back as node 13's error reply
    assert [(r.metadata.src_node_id, r.has_error()) for r in replies] == [(13, True)]
    refusals = _refusals(fed, 0)
    # 13 signed the set without 14; nobody else did: its neighbours' signatures are on another set
    assert "0 valid signature(s) of surviving neighbours on the survivor set and round parameters this node signed " \
           "(participants 4, threshold 2, clip 1, weight-bound 40), fewer than the threshold 2 (not valid: " \
           "[11, 12, 14]: another set or other parameters): it reveals nothing" in refusals[13]
    masked, shares, seeds = _collected(fed, 0)
    assert len(shares[14]) >= 2 and not seeds  # the victim's self mask, never a pair seed with it
    _learns_nothing(fed, 0)
    # the rebuilding works where the pair seeds are known (they are not, to the server)
    guess = _recover(fed, 14, 0, extra=_mask_seeds_of(fed, 14))
    assert np.all(np.abs(guess) <= fed.cfg.secagg_clip + 1e-5)


class MixesTheParticipantsAndASubset(SecAggGrid):
    """Everyone's input arrived, and everyone signed the participants with it. Shows node 11
    those signatures (it reveals its neighbours' self-mask shares, the victim's among them)
    and has nodes 12 and 13 sign the set without the victim in a consistency round, then
    asks them to unmask that set (they would reveal their pair seeds with the victim)."""

    victim = 14

    def _unmasked_sum(self, round_id, graph, replies, dropped, t, timeout):  # noqa: ANN001, ANN202
        everyone = sorted(replies)
        without = [j for j in everyone if j != self.victim]
        presigned = {i: r[3] for i, r in replies.items()}
        signed = {i: bytes(a["sig"]) for i, a in self._ask(
            "consistency", {i: {"round-id": round_id, "survivors": without} for i in (12, 13)}, timeout).items()}
        asks = {11: self._unmask_ask(round_id, 11, graph, replies, everyone, presigned)}
        for h in (12, 13):
            ask = self._unmask_ask(round_id, h, graph, replies, without, {**presigned, **signed})
            keep = [k for k, o in enumerate(ask["owners"]) if o in without]
            asks[h] = {**ask, "owners": [ask["owners"][k] for k in keep], "b-tokens": [ask["b-tokens"][k] for k in keep]}
        self._ask("unmask", asks, timeout)
        raise secagg.SecAggError("the adversary has what it could get")


def test_a_server_that_mixes_the_participants_signatures_and_a_subsets_gets_no_update(defaults):
    """The one thing signing the participants in advance adds for a liar: two sets a round, each
    with signatures. Node 11 reveals for the participants (one share of the victim's self-mask
    seed, below t = 2); 12 and 13 signed the subset, which only they did: one valid signature
    each, and they reveal nothing. No pair seed with the victim, no self-mask seed: no update."""
    fed = Federation(_config(defaults), grid_class=MixesTheParticipantsAndASubset)
    fed.train()
    refusals = _refusals(fed, 0)
    assert set(refusals) == {12, 13}
    assert all("1 valid signature(s) of surviving neighbours" in why for why in refusals.values()), refusals
    _, shares, seeds = _collected(fed, 0)
    assert len(shares[14]) == 1 and not seeds  # 11 revealed for the participants, as it should
    _learns_nothing(fed, 0)


@pytest.mark.parametrize(("server", "rounds", "named"), [
    (SkipsTheConsistencyRound, 1, "0 valid signature(s) of surviving neighbours on the survivor set and round "
                                  "parameters this node signed"),
    (ReplaysLastRoundsSignatures, 2, "0 valid signature(s) of surviving neighbours"),
    (OmitsTheParticipants, 1, "the consistency round was skipped: this node signed no survivor set for round"),
])
def test_a_server_that_skips_the_consistency_round_gets_nothing_revealed(defaults, server, rounds, named):
    fed = Federation(_config(defaults), grid_class=server)
    for _ in range(rounds - 1):
        (aggregate,) = fed.train()
        assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
    since = len(fed.loop.seen)
    replies = fed.train()
    refusals = _refusals(fed, since)
    assert refusals and all(named in why for why in refusals.values()), refusals
    assert all(r.has_error() for r in replies) and {r.metadata.src_node_id for r in replies} == set(refusals)
    _, shares, seeds = _collected(fed, since)
    assert not shares and not seeds
    _learns_nothing(fed, since)


def test_a_round_resent_to_a_subset_is_refused(defaults):
    fed = Federation(_config(defaults))
    fed.train()
    since = len(fed.loop.seen)
    assert all(r.has_error() for r in fed.train(nodes=[11, 12, 13], again=True))
    assert all("this node sent its masked input for round 1 already" in why for why in _refusals(fed, since).values())


def test_the_honest_servers_collection_holds_no_update_and_the_rebuilding_finds_one_given_the_seeds(defaults):
    fed = Federation(_config(defaults))
    (aggregate,) = fed.train()
    assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
    _learns_nothing(fed, 0)
    guess = _recover(fed, 12, 0, extra=_mask_seeds_of(fed, 12))  # positive control: with 12's own seeds
    assert np.all(np.abs(guess) <= fed.cfg.secagg_clip + 1e-5) and 0 < guess[-1] <= 1


# --- different weight bounds B to different nodes ---------------------------------------------

VICTIM = 14
BOUNDS = {VICTIM: 1.0, 11: 1e9, 12: 1e9, 13: 1e9}  # the victim's weight 1, every other's below one step (2^-19)


def _different_bounds(fed: Federation) -> None:
    """From now on the server tells each node its own weight bound (:data:`BOUNDS`): if the round
    were unmasked, the sum would be the victim's update alone."""
    def tamper(msg):  # noqa: ANN001, ANN202
        if _stage_of(msg) == "train" and msg.metadata.dst_node_id in BOUNDS:
            record = dict(msg.content[SECAGG_RECORD].items())
            msg.content[SECAGG_RECORD] = ConfigRecord({**record, "weight-bound": BOUNDS[msg.metadata.dst_node_id]})

    fed.loop.tamper = tamper


class WithholdsTheVictimsShares(SecAggGrid):
    """Runs the consistency round, then asks every survivor to unmask without the victim's
    encrypted shares (which its neighbours, given another bound, could not open): the others
    hold two valid signatures each on their own bound and reveal each other's self-mask shares."""

    def _unmasked_sum(self, round_id, graph, replies, dropped, t, timeout):  # noqa: ANN001, ANN202
        everyone = sorted(replies)
        signatures = self._consistency(round_id, everyone, timeout)
        asks = {}
        for h in everyone:
            ask = self._unmask_ask(round_id, h, graph, replies, everyone, signatures)
            keep = [k for k, o in enumerate(ask["owners"]) if o != VICTIM]
            asks[h] = {**ask, "owners": [ask["owners"][k] for k in keep],
                       "b-tokens": [ask["b-tokens"][k] for k in keep]}
        self._ask("unmask", asks, timeout)
        raise secagg.SecAggError("the adversary has what it could get")


def _sum_guess(fed: Federation, since: int, extra: dict[int, bytes] | None = None) -> np.ndarray:
    """The adversary's best try at the round's sum: every masked input less every self mask it
    can rebuild (``extra``: self-mask seeds it does not hold), decoded (the pair masks between
    survivors cancel)."""
    masked, shares, _ = _collected(fed, since)
    t = _told(fed, VICTIM)["threshold"]
    total = sum(y.astype(secagg.FIELD) for y in masked.values())
    seeds = {i: secagg_primitives().combine_shares(s[:t]) for i, s in shares.items() if len(s) >= t} | (extra or {})
    for seed in seeds.values():
        total = total - secagg.prg(seed, total.size)
    return secagg.dequantize(total, quantisation_steps(fed.cfg, total.size))


def _victims_self_seed(fed: Federation) -> bytes:
    """The victim's self-mask seed from two of its shares, opened with share keys bound to the
    *victim's* parameters, from its own store (what no adversary gets): the positive control,
    what its neighbours would have revealed had the binding not kept them from opening it."""
    told = _told(fed, VICTIM)
    with NodeStore.of(fed.run_id, VICTIM).open() as data:
        keys = {int(j): bytes_of(v[1]) for j, v in data["hyb"].items()}
        bound = parameters_statement([(str(k), v) for k, v in data[ROUND]["parameters"]])
    (reply,) = [r for r in fed.loop.seen if not r.has_error() and r.metadata.src_node_id == VICTIM
                and SECAGG_MASKED in r.content.array_records]
    tokens = dict(zip(sorted(told["neighbours"]), reply.content.config_records[SECAGG_RECORD]["b-tokens"]))
    shares = [secagg.decrypt_share(secagg.seed_from_key(keys[h], secagg.pair_info(told["round-id"], VICTIM, h,
                                                                                 secagg.PAIR_SHARES, bound)),
                                   bytes(tokens[h])) for h in sorted(told["neighbours"])[:told["threshold"]]]
    return secagg_primitives().combine_shares(shares)


def _victims_input(fed: Federation, self_seed: bytes) -> np.ndarray:
    """The victim's own input, from its masked input less its self mask and its pair masks."""
    masked, _, _ = _collected(fed, 0)
    e = masked[VICTIM].astype(secagg.FIELD) - secagg.prg(self_seed, masked[VICTIM].size)
    for j, seed in _mask_seeds_of(fed, VICTIM).items():
        mask = secagg.prg(seed, e.size)
        e = e - mask if j > VICTIM else e + mask
    return secagg.dequantize(e, quantisation_steps(fed.cfg, e.size))


@pytest.mark.parametrize("server", [SecAggGrid, WithholdsTheVictimsShares])
def test_different_weight_bounds_to_different_nodes_are_refused_by_name_and_reveal_no_update(defaults, tmp_path,
                                                                                               server):
    """The server tells the victim B = 1 (weight 1) and the others B = 10^9 (weights below one
    quantisation step), so that the sum would be the victim's update alone. Each node signs its
    survivor set with the bound it was given: the victim finds no neighbour's signature valid on
    its own bound, and refuses; its neighbours cannot open its self-mask share (the share key is
    bound to the owner's parameters), and refuse, or, asked without it, reveal the others' shares
    only. Every refusal names the bound and reaches clients.csv; the victim's self mask stays, and
    the sum and every single input the server can rebuild are uniform over the field."""
    from test_secagg_malicious import _clients_csv

    fed = Federation(_config(defaults), grid_class=server)
    _different_bounds(fed)
    replies = fed.train()
    refusals = _refusals(fed, 0)
    assert "0 valid signature(s) of surviving neighbours on the survivor set and round parameters this node signed " \
           "(participants 4, threshold 2, clip 1, weight-bound 1), fewer than the threshold 2 " \
           "(not valid: [11, 12, 13]: another set or other parameters): it reveals nothing" in refusals[VICTIM]
    for node in set(refusals) - {VICTIM}:  # the honest grid asks them for the victim's share
        assert f"the self-mask share from node {VICTIM} does not open under the round parameters this node was given " \
               "(participants 4, threshold 2, clip 1, weight-bound 1e+09): node 14 was given other parameters" \
               in refusals[node], refusals[node]
    assert set(refusals) == (set(NODES) if server is SecAggGrid else {VICTIM})
    rows = _clients_csv(fed, replies, tmp_path)
    assert {int(r["node_id"]): r["status"] for r in rows} == {n: f"failed: {why}" for n, why in refusals.items()}
    assert all("weight-bound" in r["status"] and r["status"].endswith("reveals nothing") for r in rows)

    masked, shares, seeds = _collected(fed, 0)
    assert len(masked) == 4 and VICTIM not in shares and not seeds  # the victim's self mask: no share of it, ever
    if server is WithholdsTheVictimsShares:
        assert all(len(shares[i]) >= 2 for i in (11, 12, 13))  # the others' self masks, rebuilt
    _learns_nothing(fed, 0)
    total = _sum_guess(fed, 0)
    assert np.sum(np.abs(total) <= fed.cfg.secagg_clip) <= 2, total
    field = (np.round(total / quantisation_steps(fed.cfg, total.size)).astype(np.int64) % 2**32) / 2**32
    assert stats.kstest(field, "uniform").pvalue > 1e-4

    # positive control: the victim's self-mask seed, opened with share keys bound to its own bound
    # (no adversary has them), decodes its input: an update with weight min(n, 1) / 1 = 1; and where
    # the others' self masks were rebuilt, the sum with that seed is the victim's input alone, to
    # within the others' rounding (one step each): had its neighbours opened its share, the lie worked
    seed = _victims_self_seed(fed)
    mine = _victims_input(fed, seed)
    steps = quantisation_steps(fed.cfg, mine.size)
    assert mine[-1] == 1.0 and np.all(np.abs(mine) <= fed.cfg.secagg_clip)
    assert np.mean(np.abs(mine[:-1]) > 10 * steps[:-1]) > 0.5  # an update, not a vector of zeros
    if server is WithholdsTheVictimsShares:
        total = _sum_guess(fed, 0, {VICTIM: seed})
        assert np.all(np.abs(total - mine) <= 3 * steps + 1e-12), np.max(np.abs(total - mine) / steps)


def test_the_same_bound_to_every_node_sums_as_before(defaults):
    """One bound for every node, whichever (here not the grid's own): the consistency round passes, all four sum."""
    fed = Federation(_config(defaults))

    def one_bound(msg):  # noqa: ANN001, ANN202  (one B for all, not the grid's own: nodes check it is one)
        if _stage_of(msg) == "train":
            msg.content[SECAGG_RECORD] = ConfigRecord({**dict(msg.content[SECAGG_RECORD].items()), "weight-bound": 1e3})

    fed.loop.tamper = one_bound
    (aggregate,) = fed.train()
    assert aggregate.content.metric_records["metrics"][SECAGG_SUMMED] == 4
