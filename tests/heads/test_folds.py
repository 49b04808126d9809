"""graft.heads.folds: a fold's training rows, the scores of out-of-fold logits, and which candidate
row wins (test_search covers stratified_folds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graft.heads.folds import best_row, fold_scores, train_rows


def test_train_rows_are_every_row_but_the_held_out_ones():
    assert train_rows(6, np.array([1, 4])).tolist() == [0, 2, 3, 5]
    assert train_rows(3, np.array([], dtype=int)).tolist() == [0, 1, 2]


def test_fold_scores_match_a_hand_worked_case():
    y = np.array([0, 0, 1, 1, 0, 1])
    logits = np.array([[2, 0], [0, 2], [0, 2], [0, 2], [2, 0], [2, 0]], np.float32)  # rows 1 and 5 wrong
    folds = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    s = fold_scores(logits, y, folds)
    assert s["accuracy"] == {"mean": pytest.approx(2 / 3, abs=1e-6), "std": 0.0,
                             "folds": [pytest.approx(2 / 3, abs=1e-6)] * 2}
    # fold 1: class 0 recall 1/2, class 1 recall 1/1; fold 2: class 0 1/1, class 1 1/2
    assert s["balanced_accuracy"]["folds"] == [0.75, 0.75]
    right, wrong = -math.log(1 / (1 + math.exp(-2))), -math.log(1 / (1 + math.exp(2)))
    assert s["log_loss"] == pytest.approx((4 * right + 2 * wrong) / 6, abs=1e-6)  # over every row


def test_fold_scores_spread_is_the_population_std():
    y = np.array([0, 1, 0, 1])
    logits = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], np.float32)  # fold 1 all right, fold 2 all wrong
    s = fold_scores(logits, y, [np.array([0, 1]), np.array([2, 3])])
    assert s["accuracy"] == {"mean": 0.5, "std": 0.5, "folds": [1.0, 0.0]}


def _row(name, score, log_loss):
    return {"name": name, "accuracy": {"mean": score}, "balanced_accuracy": {"mean": 1 - score},
            "log_loss": log_loss}


def test_best_row_takes_the_highest_score_then_the_lower_loss_then_the_earlier_row():
    rows = [_row("a", 0.8, 0.5), _row("b", 0.9, 0.7), _row("c", 0.9, 0.4), _row("d", 0.9, 0.4)]
    assert best_row(rows)["name"] == "c"  # b and c tie on accuracy: c's loss is lower; d comes after c
    assert best_row(rows, "balanced_accuracy")["name"] == "a"  # the score asked for
