"""graft.heads.metrics: every figure of classification_metrics on a confusion worked out by hand
(test_balanced_accuracy covers balanced_accuracy on its own)."""

from __future__ import annotations

import pytest

from graft.heads.metrics import classification_metrics


def test_every_figure_matches_the_hand_worked_confusion():
    # truth a a a b b c, predicted a a b b a a: rows are the truth, columns the prediction
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 0], ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert m["n"] == 6 and m["classes"] == ["a", "b", "c"] and m["accuracy"] == 0.5
    # a: 2 of the 4 predicted a are a (precision), 2 of the 3 a found (recall)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.6667, "f1": 0.5714, "accuracy": 0.6667,
                                   "support": 3}
    assert m["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.5, "support": 2}
    # c is never predicted: no precision to divide by, and 0, not nan
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "support": 1}
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_a_class_with_no_photo_counts_in_the_table_but_not_in_the_balanced_accuracy():
    m = classification_metrics([0, 1, 1], [0, 1, 1], ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["per_class"]["c"]["support"] == 0 and m["confusion"][2] == [0, 0, 0]


def test_it_is_plain_json():
    import json

    m = classification_metrics([0, 1], [1, 1], ["a", "b"])
    assert json.loads(json.dumps(m)) == m  # ints and floats, not numpy scalars
    assert all(type(v) is int for row in m["confusion"] for v in row)
