"""balanced_accuracy: the mean per-class recall, beside accuracy in classification_metrics."""

from __future__ import annotations

import pytest

from graft.heads.metrics import balanced_accuracy, classification_metrics


def test_balanced_accuracy_is_the_mean_recall():
    # 8 of class 0 all right, 2 of class 1 both wrong: accuracy 0.8, balanced 0.5
    y_true = [0] * 8 + [1] * 2
    y_pred = [0] * 10
    m = classification_metrics(y_true, y_pred, ["big", "small"])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(
        sum(c["recall"] for c in m["per_class"].values()) / 2)


def test_balanced_accuracy_skips_absent_classes_and_empty_input():
    # class 2 has no true example: it does not count (its recall is undefined)
    assert balanced_accuracy([0, 0, 1, 1], [0, 1, 1, 2], 3) == pytest.approx(0.5)
    assert balanced_accuracy([0, 1, 1, 1], [0, 1, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    m = classification_metrics([], [], ["a", "b"])
    assert m["balanced_accuracy"] != m["balanced_accuracy"]  # nan, like accuracy
