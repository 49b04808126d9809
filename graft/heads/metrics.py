"""Classification metrics from labels and predictions: accuracy, balanced accuracy, per-class
figures, confusion."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict:
    """`per_class[c]`: precision, recall, f1, support, and accuracy (the share of class c's images
    classified correctly, i.e. its recall). `confusion[i][j]`: images of class i predicted as j.
    `balanced_accuracy`: the mean recall over the classes present, so with uneven classes a model
    that ignores a small class cannot hide behind the big ones' accuracy."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(precision, 4), "recall": round(recall, 4),
                           "f1": round(f1, 4), "accuracy": round(recall, 4), "support": support}
    n = len(y_true)
    return {
        "accuracy": float((y_true == y_pred).mean()) if n else float("nan"),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, k),
        "n": n,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }


def balanced_accuracy(y_true, y_pred, n_classes: int | None = None) -> float:
    """Mean per-class recall over the classes that have at least one true example."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if not len(y_true):
        return float("nan")
    k = n_classes or int(max(y_true.max(), y_pred.max())) + 1
    support = np.bincount(y_true, minlength=k)
    hits = np.bincount(y_true[y_true == y_pred], minlength=k)
    present = support > 0
    return float((hits[present] / support[present]).mean())

