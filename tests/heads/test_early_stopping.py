"""graft/heads/early_stopping.py: the one early-stopping rule of the head, the head's epochs chosen
on folds and fine-tuning: the best epoch, when to stop (patience, 0 = never), ties, no validation."""

from __future__ import annotations

import math

import pytest

from graft.heads.early_stopping import MIN_DELTA, EarlyStopping


def _run(losses, patience):
    """Feed `losses` epoch by epoch as a training loop does -> (epochs run, best epoch, kept epochs)."""
    stopping, kept = EarlyStopping(patience), []
    for epoch, loss in enumerate(losses):
        if stopping.update(epoch, loss):
            kept.append(epoch)
        if stopping.should_stop(epoch):
            return epoch + 1, stopping.best_epoch, kept
    return len(losses), stopping.best_epoch, kept


def test_nothing_recorded_yet():
    s = EarlyStopping(3)
    assert s.best_epoch == -1 and s.best_loss == math.inf


def test_stops_after_patience_epochs_without_a_better_loss():
    losses = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7, 0.6]
    assert _run(losses, patience=3) == (5, 1, [0, 1])  # epochs 2, 3, 4 are no better: stop after 4
    assert _run(losses, patience=4) == (7, 6, [0, 1, 5, 6])  # 0.7 came in time


def test_patience_zero_never_stops_and_still_keeps_the_best():
    losses = [0.5] + [1.0] * 50
    assert _run(losses, patience=0) == (51, 0, [0])


def test_a_tie_keeps_the_earlier_epoch():
    losses = [1.0, 0.5, 0.5, 0.5 - MIN_DELTA / 2, 0.5 - MIN_DELTA]  # within MIN_DELTA: not better
    _, best, kept = _run(losses, patience=0)
    assert best == 1 and kept == [0, 1]
    assert _run([1.0, 0.5, 0.5 - 2 * MIN_DELTA], patience=0)[1] == 2  # more than MIN_DELTA lower is better


def test_a_tie_counts_towards_patience():
    assert _run([1.0, 1.0, 1.0, 0.1], patience=2) == (3, 0, [0])


def test_without_validation_every_epoch_is_kept_and_none_stops():
    assert _run([None] * 10, patience=1) == (10, 9, list(range(10)))


def test_a_nan_loss_is_never_better():
    assert _run([math.nan, math.nan, math.nan], patience=2) == (2, -1, [])
    assert _run([0.5, math.nan, math.nan, 0.4], patience=3) == (4, 3, [0, 3])


def test_keep_and_improves_let_a_caller_choose_what_to_compare():
    """The CV epoch choice keeps the first epoch whatever its loss, and its curve's rounded figure."""
    s = EarlyStopping(2)
    s.keep(0, 0.123457)
    assert (s.best_epoch, s.best_loss) == (0, 0.123457)
    assert not s.improves(0.1234565) and s.improves(0.123455)
    assert not s.should_stop(1) and s.should_stop(2)


@pytest.mark.parametrize("best_epoch, epoch, patience, stop", [
    (0, 4, 5, False), (0, 5, 5, True), (3, 8, 5, True), (3, 7, 5, False), (7, 100, 0, False),
])
def test_should_stop_counts_epochs_since_the_best(best_epoch, epoch, patience, stop):
    assert EarlyStopping(patience, 0.1, best_epoch).should_stop(epoch) is stop
