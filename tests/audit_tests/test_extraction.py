"""Model extraction: seeded, so the query count is a property of the seed; and it copies."""

from __future__ import annotations

import numpy as np
import pytest

from qfl.audit.extraction import extraction_curve, queries_to_agree, served_answers
from qfl.task.model import PQCClassifier

BUDGETS = [4, 16, 64]


def _served() -> tuple[PQCClassifier, np.ndarray]:
    target = PQCClassifier(n_qubits=2, n_layers=1, n_classes=2, seed=3)
    held_out = np.random.default_rng(5).uniform(0, np.pi, (64, 2))
    return target, held_out


@pytest.mark.parametrize("access", ["labels", "expectations"])
def test_the_query_count_is_deterministic_for_a_seed(access):
    # Arrange
    target, held_out = _served()
    # Act
    first = extraction_curve(target, BUDGETS[:2], held_out, access, seed=11, steps=15)
    again = extraction_curve(target, BUDGETS[:2], held_out, access, seed=11, steps=15)
    # Assert
    assert first == again
    assert queries_to_agree(first, 0.9) == queries_to_agree(again, 0.9)
    assert [p.queries for p in first] == BUDGETS[:2]


def test_enough_queries_copy_the_served_model():
    target, held_out = _served()
    curve = extraction_curve(target, BUDGETS, held_out, "expectations", seed=11, steps=60)
    assert curve[-1].agreement >= 0.9
    assert queries_to_agree(curve, 0.9) is not None
    expvals, labels = served_answers(target, held_out)
    assert expvals.shape == (64, 2) and set(np.unique(labels)) <= {0, 1}


def test_extraction_refuses_what_it_cannot_do():
    target, held_out = _served()
    with pytest.raises(ValueError, match="access"):
        extraction_curve(target, BUDGETS, held_out, "gradients", seed=0)
    with pytest.raises(ValueError, match="increasing"):
        extraction_curve(target, [16, 4], held_out, "labels", seed=0)
