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

from transport import secagg

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
