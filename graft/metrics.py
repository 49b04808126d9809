"""Classification metrics from labels and predictions: accuracy, per-class figures, confusion."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict:
    """`per_class[c]`: precision, recall, f1, support, and accuracy (the share of class c's images
    classified correctly, i.e. its recall). `confusion[i][j]`: images of class i predicted as j."""
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
        "n": n,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }
