"""The guard as a package: one idea a module, one surface (``strategies.guard``), and the old
module name still answering for the import sites outside the strategies package."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from helpers import make_reply

import strategies.guard as guard
from strategies.guard import SIDEWAYS_BOUND, sideways_screen

DIM = 40
GLOBAL = np.zeros(DIM)
U = np.ones(DIM) / np.sqrt(DIM)


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


def test_each_idea_has_its_module_and_the_package_re_exports_them_sorted():
    from strategies.guard import claims, schema, screens, sideways

    assert guard.__all__ == sorted(guard.__all__)
    homes = {"ReplySchema": schema, "filter_replies": schema, "robust_screen": screens, "direction_screen": screens,
             "delta_screen": screens, "clip_fidelity": claims, "cap_examples": claims, "sideways_screen": sideways}
    for name, module in homes.items():
        assert getattr(guard, name) is getattr(module, name), name


def test_the_old_module_name_is_the_same_objects():
    import strategies.validation as old

    assert all(getattr(old, name) is getattr(guard, name) for name in guard.__all__)


def across(node: int, reach: float) -> np.ndarray:
    """An update one unit along ``U`` and ``reach`` across it (a direction of the node's own)."""
    side = np.random.default_rng(node).normal(size=DIM)
    side -= (side @ U) * U
    return U + reach * side / np.linalg.norm(side)


def test_the_sideways_bound_weighs_a_reply_as_if_its_part_across_were_cut():
    # Arrange: four replies 0.3 across, one 1.2 across (4 x the round's median such part)
    replies = [make_reply({"w": GLOBAL + across(k, 0.3 if k < 5 else 1.2)}, 30, k) for k in range(1, 6)]
    # Act
    seen = sideways_screen(replies, ArrayRecord({"w": Array(GLOBAL)}))
    # Assert: the median reference is close to U, so the ratio is about 4 and the factor 1.5 / 4
    assert set(seen.bounded) == {5}
    ratio, factor = seen.bounded[5]
    assert ratio == pytest.approx(4.0, rel=0.1) and factor == pytest.approx(SIDEWAYS_BOUND / ratio)
    assert seen.factor(1) == 1.0


def test_the_sideways_bound_leaves_fewer_than_three_replies_and_a_zero_median():
    two = [make_reply({"w": GLOBAL + across(k, 5.0 * k)}, 30, k) for k in (1, 2)]
    assert sideways_screen(two, ArrayRecord({"w": Array(GLOBAL)})).bounded == {}
    still = [make_reply({"w": GLOBAL + s * U}, 30, k) for k, s in ((1, -1.0), (2, 0.0), (3, 1.0))]
    assert sideways_screen(still, ArrayRecord({"w": Array(GLOBAL)})).bounded == {}


def test_robust_screen_multiplies_the_count_by_trust_and_the_sideways_factor():
    replies = [make_reply({"w": GLOBAL + across(k, 0.3 if k < 5 else 1.2)}, 30, k) for k in range(1, 6)]
    on = guard.robust_screen(replies, ArrayRecord({"w": Array(GLOBAL)}), 4.0, 4.0, direction=True)
    off = guard.robust_screen(replies, ArrayRecord({"w": Array(GLOBAL)}), 4.0, 4.0, direction=True, sideways=False)
    count = {m.metadata.src_node_id: float(m.content["metrics"]["num-examples"]) for m in on.kept}
    count_off = {m.metadata.src_node_id: float(m.content["metrics"]["num-examples"]) for m in off.kept}
    assert count[5] == pytest.approx(count_off[5] * on.sideways[5][1]) and off.sideways == {}
    assert all(count[k] == count_off[k] for k in range(1, 5))
