"""graft.recipe.log: one CSV row per epoch and stage (read back), TensorBoard scalars read back
from the event file, resume keeps earlier rows, non-finite values become empty cells."""

from __future__ import annotations

import csv

import pytest

from graft.errors import GraftError
from graft.recipe.log import TrainingLog, parse_log_kinds


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_one_row_per_epoch_and_resume(tmp_path):
    log = TrainingLog(tmp_path, "csv")
    each = log.on_epoch("finetune", each=True)  # fine-tuning: on disk as each epoch ends
    for e in range(1, 4):
        each(e, {"train_loss": 1.0 / e, "val_loss": float("nan"), "val_accuracy": 0.5 + e / 10, "lr": 1e-3})
        assert len(_rows(tmp_path / "log.csv")) == e
    rows = _rows(tmp_path / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["train_loss"] == "0.5" and rows[0]["val_loss"] == ""
    resumed = TrainingLog(tmp_path, "csv", resume=True)
    resumed.epoch("finetune", 3, train_loss=0.2)  # the epoch that was cut short is replaced, not doubled
    resumed.epoch("finetune", 4, train_loss=0.1)
    resumed.close()
    assert [r["epoch"] for r in _rows(tmp_path / "log.csv")] == ["1", "2", "3", "4"]
    assert TrainingLog(tmp_path, "csv").rows == []  # a fresh run starts a fresh log


def test_fast_epochs_are_written_now_and_then_and_at_the_end(tmp_path, monkeypatch):
    """Head epochs take milliseconds: the files are not rewritten after each, but every
    EVERY_S seconds, when the stage changes, and when the log is flushed or closed."""
    import importlib

    monkeypatch.setattr(importlib.import_module("graft.recipe.log"), "EVERY_S", 3600.0)  # no clock in the test: only the events count
    log = TrainingLog(tmp_path, "csv")
    for e in range(1, 51):
        log.epoch("head", e, train_loss=1.0 / e)
    assert len(_rows(tmp_path / "log.csv")) == 1  # the first epoch is written at once, the rest wait
    log.epoch("finetune", 1, train_loss=0.5)  # a new stage: everything so far goes to disk
    assert len(_rows(tmp_path / "log.csv")) == 51
    log.epoch("finetune", 2, train_loss=0.4)
    log.close()
    assert [(r["stage"], r["epoch"]) for r in _rows(tmp_path / "log.csv")][-2:] == [("finetune", "1"), ("finetune", "2")]


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TrainingLog(tmp_path, "tensorboard")
    for e in range(1, 6):
        log.epoch("head", e, train_loss=1.0 / e, val_accuracy=e / 10)
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    steps = [s.step for s in acc.Scalars("head/train_loss")]
    assert steps == [1, 2, 3, 4, 5]
    assert acc.Scalars("head/val_accuracy")[-1].value == pytest.approx(0.5)
    assert len(_rows(tmp_path / "log.csv")) == 5  # csv is always written too


def test_log_kinds():
    assert parse_log_kinds(None) == ("csv",)
    assert parse_log_kinds("tensorboard") == ("csv", "tensorboard")
    with pytest.raises(GraftError, match="unknown kind"):
        parse_log_kinds("wandb")


def test_a_real_head_run_logs_one_row_per_epoch(trained_run, tmp_path):
    """graft.recipe (warm cache, head) with --log tensorboard: the head's epochs are its
    cross-validated AdamW curve (what chose its epochs, on the training photos); the CSV and the
    event file both hold one entry per epoch of it, with the curve metrics.json keeps."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import graft
    from conftest import isolated_env

    with isolated_env(tmp_path):
        result = graft.train(trained_run.photos, tmp_path / "run", cache_dir=trained_run.cache, strategy="head",
                             solver="adamw", epochs=12, patience=0, workers=0, progress=False, report=False,
                             log="tensorboard")
    m = result.metrics
    curve = m["history"]["cv_loss"]
    assert len(curve) == 12 and m["log"] == {"csv": "log.csv", "tensorboard": "tensorboard"}
    rows = _rows(result.run_dir / "log.csv")
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("head", e) for e in range(1, 13)]
    assert [float(r["cv_loss"]) for r in rows] == pytest.approx(curve, abs=1e-6)
    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("head/cv_loss")] == list(range(1, 13))
    assert [s.value for s in acc.Scalars("head/cv_loss")] == pytest.approx(curve, abs=1e-5)

    # a second, fresh run into the same folder replaces graft's event files instead of mixing with them
    with isolated_env(tmp_path):
        graft.train(trained_run.photos, tmp_path / "run", cache_dir=trained_run.cache, strategy="head",
                    solver="adamw", epochs=4, patience=0, workers=0, progress=False, report=False, log="tensorboard")
    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("head/cv_loss")] == [1, 2, 3, 4]
    assert len(_rows(result.run_dir / "log.csv")) == 4
