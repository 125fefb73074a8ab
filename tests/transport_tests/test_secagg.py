"""SecAgg+'s pure parts (transport/secagg.py): a round played by honest clients in this process
(:func:`transport.secagg.play_round`, every stage in turn).

What the server receives are the masked inputs; these tests check that their sum unmasks to
the plain sum (to the quantisation error), that it still does when a client drops before its
masked input arrives, that below the threshold (or with a dropped client's pair seed
unrevealed) the round fails naming why, and that one client's masked input is uniform
whatever its update.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from transport import hybrid_kem, secagg

STEP = 2.0**-16


def _round(updates: dict[int, np.ndarray], k: int, t: int, drop: set[int] = frozenset(),  # noqa: ANN202
           silent: set[int] = frozenset()):
    total, masked, _ = secagg.play_round(updates, k, t, STEP, frozenset(drop), frozenset(silent))
    return total, masked


def _updates(n: int, d: int = 200, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.uniform(-0.9, 0.9, d) for i in range(1, n + 1)}


@pytest.mark.parametrize(("n", "k"), [(5, 4), (12, 6)])  # complete graph; sparse ring
def test_the_unmasked_sum_is_the_plain_sum_to_the_quantisation_error(n, k):
    updates = _updates(n)
    total, masked = _round(updates, k=k, t=3)
    plain = sum(updates.values())
    assert np.max(np.abs(total - plain)) <= n * STEP  # each input rounds by less than one step
    assert all(not np.allclose(y, secagg.quantize(updates[i], STEP)) for i, y in masked.items())


@pytest.mark.parametrize(("n", "k", "drop"), [(8, 6, {3}), (12, 6, {2, 9})])
def test_a_client_whose_masked_input_never_arrives_leaves_the_sum_of_the_survivors(n, k, drop):
    updates = _updates(n)
    total, masked = _round(updates, k=k, t=3, drop=drop)
    survivors = sum(v for i, v in updates.items() if i not in drop)
    assert set(masked) == set(updates) - drop
    assert np.max(np.abs(total - survivors)) <= n * STEP


def test_below_the_threshold_the_round_fails_naming_the_client():
    updates = _updates(6)
    # k = 2: each client's shares sit with its 2 neighbours; both fall silent in the unmask stage
    graph = secagg.neighbours(sorted(updates), 2, seed=7)
    with pytest.raises(secagg.SecAggError, match=r"share\(s\) of client \d's self-mask seed, the threshold is 2"):
        _round(updates, k=2, t=2, silent=set(graph[3]))


def test_a_dropped_clients_mask_with_a_silent_survivor_fails_the_round_naming_the_pair():
    """Each survivor removes its own mask with a dropped neighbour: one that then falls silent
    leaves a mask nobody else can remove (the limit two exchanges a round buy)."""
    updates = _updates(6)
    graph = secagg.neighbours(sorted(updates), 4, seed=7)
    silent = min(graph[3])
    with pytest.raises(secagg.SecAggError, match=rf"survivor {silent} did not reveal its pair seed with dropped client 3"):
        _round(updates, k=4, t=2, drop={3}, silent={silent})


def test_signed_quantisation_is_unbiased_and_wraps_into_the_field():
    values = np.array([-0.75, -1e-6, 0.0, 0.3, 2.5])
    draws = np.stack([secagg.dequantize(secagg.quantize(values, 0.25), 0.25) for _ in range(4000)])
    assert np.all(np.abs(draws - values) < 0.25)  # one step at most
    assert np.allclose(draws.mean(axis=0), values, atol=0.01)  # unbiased
    total = secagg.quantize(np.array([-3.0]), 1.0) + secagg.quantize(np.array([1.0]), 1.0)  # wraps mod 2^32
    assert total.dtype == secagg.FIELD and secagg.dequantize(total, 1.0)[0] == -2.0
    with pytest.raises(ValueError, match="2\\^31"):
        secagg.quantize(np.array([3e9]), 1.0)


def test_one_clients_masked_input_is_uniform_whatever_its_update():
    """The server's view of client 1 is the same distribution for two very different updates:
    uniform over Z_{2^32} (a fresh self-mask seed and round-bound pair seeds every round)."""
    seen = {}
    for name, value in (("zeros", 0.0), ("large", 0.9)):
        draws = []
        for _ in range(40):
            updates = _updates(4, d=50)
            updates[1] = np.full(50, value)
            _, masked = _round(updates, k=3, t=2)
            draws.append(masked[1] / 2.0**32)
        seen[name] = np.concatenate(draws)
    for sample in seen.values():
        assert stats.kstest(sample, "uniform").pvalue > 1e-3
    assert stats.ks_2samp(seen["zeros"], seen["large"]).pvalue > 1e-3


def test_the_neighbour_graph_is_symmetric_sparse_and_the_same_for_the_same_round_seed():
    nodes = list(range(10, 110))
    graph = secagg.neighbours(nodes, 8, seed=3)
    assert graph == secagg.neighbours(nodes, 8, seed=3) != secagg.neighbours(nodes, 8, seed=4)
    assert all(i in graph[j] for i in nodes for j in graph[i])
    assert {len(v) for v in graph.values()} == {8}  # k of 100, not 99
    assert secagg.neighbours(nodes[:5], 8, seed=3)[10] == set(nodes[1:5])  # k >= n - 1: complete


def test_the_prg_is_keyed_by_all_32_bytes_of_its_seed():
    """Flower's pseudo_rand_gen folds its seed to 32 bits; this one does not."""
    seed = bytes(32)
    flipped = bytes(31) + b"\x01"
    folded = b"\x01\0\0\0" * 2 + bytes(24)  # its 4-byte words XOR to 0, as `seed`'s do
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen  # the weakness, shown

    assert np.array_equal(pseudo_rand_gen(seed, 2**32, [(64,)])[0], pseudo_rand_gen(folded, 2**32, [(64,)])[0])
    assert not np.array_equal(secagg.prg(seed, 64), secagg.prg(flipped, 64))
    assert not np.array_equal(secagg.prg(seed, 64), secagg.prg(folded, 64))
    with pytest.raises(ValueError, match="32 bytes"):
        secagg.prg(b"short", 4)


# --- the hybrid X25519 + ML-KEM-768 pair key (transport/hybrid_kem.py) -----------------------


def _pair():  # noqa: ANN202
    x_low, x_high = secagg.new_key(), secagg.new_key()
    kem_high = hybrid_kem.new_kem_key()
    pub = (secagg.public_bytes(x_low), secagg.public_bytes(x_high), hybrid_kem.kem_public_bytes(kem_high))
    return x_low, x_high, kem_high, pub


def test_both_ends_of_a_pair_derive_the_same_hybrid_key_and_a_tampered_ciphertext_another():
    x_low, x_high, kem_high, (pk_low, pk_high, ek_high) = _pair()
    key, ct = hybrid_kem.encapsulate_pair(x_low, 3, 8, pk_high, ek_high)
    assert len(ct) == hybrid_kem.CT_BYTES == 1088 and len(ek_high) == hybrid_kem.EK_BYTES == 1184
    assert hybrid_kem.decapsulate_pair(x_high, hybrid_kem.kem_seed(kem_high), 8, 3, pk_low, ct) == key
    tampered = bytes([ct[0] ^ 1]) + ct[1:]  # ML-KEM rejects implicitly: another key, no error
    assert hybrid_kem.decapsulate_pair(x_high, kem_high, 8, 3, pk_low, tampered) != key
    assert hybrid_kem.decapsulate_pair(x_high, kem_high, 8, 3, secagg.public_bytes(secagg.new_key()), ct) != key
    again, ct2 = hybrid_kem.encapsulate_pair(x_low, 3, 8, pk_high, ek_high)
    assert ct2 != ct and again != key  # a fresh encapsulation: a fresh key
    with pytest.raises(ValueError, match="ciphertext is 1088 bytes, got 1087"):
        hybrid_kem.decapsulate_pair(x_high, kem_high, 8, 3, pk_low, ct[:-1])
    with pytest.raises(ValueError, match="the lower node of a pair encapsulates"):
        hybrid_kem.encapsulate_pair(x_high, 8, 3, pk_low, ek_high)


def test_the_hybrid_key_is_hkdf_sha256_of_both_secrets_bound_to_the_transcript():
    """Known answer from an independent HKDF (RFC 5869 written with the standard library's HMAC):
    both secrets count, in the stated order, and the info binds the pair's public values."""
    import hashlib
    import hmac

    def hkdf(ikm: bytes, info: bytes) -> bytes:
        prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()  # salt None: 32 zero bytes
        return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()

    x_secret, kem_secret = bytes(range(32)), bytes(range(32, 64))
    info = hybrid_kem.transcript(3, 8, b"a" * 32, b"b" * 32, b"e" * 1184, b"c" * 1088)
    assert info.startswith(b"qfl-secagg/hybrid-x25519-mlkem768/v1\x00\x00\x00\x10")
    assert hybrid_kem.combine(x_secret, kem_secret, info) == hkdf(x_secret + kem_secret, info)
    assert hybrid_kem.combine(kem_secret, x_secret, info) != hkdf(x_secret + kem_secret, info)
    assert hybrid_kem.transcript(3, 8, b"a" * 32, b"b" * 32, b"e" * 1184, b"d" * 1088) != info
    # Flower's node IDs are unsigned 64-bit: the largest name a pair too
    assert hybrid_kem.transcript(2**63, 2**64 - 1, b"a" * 32, b"b" * 32, b"e" * 1184, b"d" * 1088)
    seed = hybrid_kem.kem_seed(hybrid_kem.new_kem_key())
    assert hybrid_kem.kem_public_bytes(seed) == hybrid_kem.kem_public_bytes(seed)  # the seed is the key


def test_a_rounds_bytes_count_the_run_keys_once():
    updates = _updates(6, d=10)
    graph = secagg.neighbours(sorted(updates), 4, seed=7)
    keys, moved = secagg.pair_keys(sorted(updates), graph)
    edges = sum(len(v) for v in graph.values()) // 2
    assert {k: moved[k] for k in ("keys", "pair-keys")} == {"keys": 6 * (32 + 1184), "pair-keys": edges * (32 + 1184 + 2 * 1088)}
    # each node's certificate (about 2.3 kB: an ML-DSA-65 key) and signature (3,309 bytes) up,
    # both ends' down to the other per pair, the ciphertext's signature up and down
    cert = 2300
    assert moved["identity"] == pytest.approx(6 * (cert + 3309) + edges * (2 * (cert + 3309 + 64) + 2 * 3309), rel=0.02)
    total, _, later = secagg.play_round(updates, 4, 3, STEP, keys=keys)
    assert later["keys"] == later["pair-keys"] == later["identity"] == 0
    assert later["consistency"] == 6 * (8 * 6 + 3309)  # the survivor set down, a signature up
    assert np.max(np.abs(total - sum(updates.values()))) <= 6 * STEP


# --- the server's bound check --------------------------------------------------------------


def test_the_weighted_sum_check_accepts_the_honest_extreme_and_rejects_just_beyond():
    n, clip, step, ws = 4, 0.5, 0.5 * 2.0**-19, 2.0**-19
    extreme = np.array([n * clip, -n * clip, 0.0, n])  # every client at +-clip with weight 1
    secagg.check_weighted_sum(extreme, n, clip, step, ws)
    secagg.check_weighted_sum(np.array([0.0, 0.0, 0.0, 0.0]), n, clip, step, ws)  # weights may all be 0
    slack = n * (clip * ws + step)
    with pytest.raises(secagg.SumOutOfBounds, match="coordinate 0 sums to 2.00002, beyond clip 0.5 x total weight 4"):
        secagg.check_weighted_sum(extreme + [2 * slack, 0, 0, 0], n, clip, step, ws)
    with pytest.raises(secagg.SumOutOfBounds, match=r"the weights sum to 4.001, outside \[0, 4\]"):
        secagg.check_weighted_sum(np.array([0.0, 0.0, 0.0, 4.001]), n, clip, step, ws)
    with pytest.raises(secagg.SumOutOfBounds, match=r"the weights sum to -0.001"):
        secagg.check_weighted_sum(np.array([0.0, 0.0, 0.0, -0.001]), n, clip, step, ws)
    with pytest.raises(secagg.SumOutOfBounds, match="4 honest clients can produce: it is not finite"):
        secagg.check_weighted_sum(np.array([np.nan, 0.0, 0.0, 1.0]), n, clip, step, ws)


def test_the_noised_sum_check_holds_every_honest_sum_and_its_bound_is_the_stated_one():
    rng = np.random.default_rng(1)
    n, d, clip, sigma, m_min = 6, 400, 1.0, 2.0, 3
    bound = secagg.noise_norm_bound(n, clip, sigma, m_min, d)
    assert bound == pytest.approx(sigma * clip * np.sqrt(n / m_min) * (np.sqrt(d) + np.sqrt(80 * np.log(2))))
    worst = 0.0
    for _ in range(200):  # every client at norm C, all aligned: the largest honest sum, plus its noise
        noise = rng.normal(0.0, sigma * clip / np.sqrt(m_min), (n, d)).sum(axis=0)
        total = n * clip * np.eye(d)[0] + noise
        secagg.check_noised_sum(total, n, clip, sigma, m_min, 1e-9)
        worst = max(worst, np.linalg.norm(total))
    assert worst < n * clip + bound  # and not by accident: the noise's norm is near s sqrt(d)
    assert np.linalg.norm(noise) == pytest.approx(sigma * clip * np.sqrt(n / m_min) * np.sqrt(d), rel=0.1)
    with pytest.raises(secagg.SumOutOfBounds, match="its L2 norm is"):
        secagg.check_noised_sum(np.eye(d)[0] * (n * clip + bound + 1e-3), n, clip, sigma, m_min, 1e-9)


def test_the_signed_field_holds_4095_sums_of_2_19_steps_and_not_4096():
    one = secagg.quantize(np.array([1.0]), 2.0**-19)  # a weight of 1: 2^19 steps
    assert secagg.max_summands(2**19) == 4095
    assert secagg.dequantize(one * np.uint32(4095), 2.0**-19)[0] == 4095.0
    assert secagg.dequantize(one * np.uint32(4096), 2.0**-19)[0] == -4096.0  # wrapped: why 4,095 is the most
