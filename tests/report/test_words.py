"""The report's words and axes a newcomer misreads (issue 20): an L-BFGS run's epochs, a probe curve
whose axis makes one photo look like a cliff, the validation photos called unknown."""

from __future__ import annotations

from graft.report import sections
from graft.run.store import read_record


def test_an_lbfgs_run_says_it_ran_no_epochs(trained_run):
    m = {**trained_run.metrics, "best_epoch": 0, "epochs_run": 0, "val_loss": None,
         "head": {**(trained_run.metrics.get("head") or {}), "solver": "lbfgs", "epochs": None}}
    text = sections.header(trained_run.run, read_record(trained_run.run), m)
    assert "best epoch 0 of 0" not in text
    assert "no epochs" in text and "L-BFGS" in text
    m.update(best_epoch=3, epochs_run=5)
    assert "best epoch 3 of 5" in sections.header(trained_run.run, read_record(trained_run.run), m)


def test_the_probe_curve_axis_spans_enough_that_one_photo_is_no_cliff(monkeypatch):
    figures = []

    def keep(*args, **kw):
        figures.append(real(*args, **kw))
        return figures[-1]

    real = sections.figure
    monkeypatch.setattr(sections, "figure", keep)
    cands = [{"solver": "lbfgs", "strength": s, "cv_accuracy": a}
             for s, a in ((0.001, 0.967), (0.01, 0.969), (0.1, 0.971), (1.0, 0.968))]
    sections.selection_curves({"candidates": cands, "history": {"cv_loss": [0.5, 0.4, 0.35]}})
    lo, hi = figures[0].axes[0].get_ylim()
    assert hi - lo >= 0.05 and lo <= 0.967 and hi >= 0.971 and hi <= 1.01
    figures.clear()
    wide = [{"solver": "lbfgs", "strength": s, "cv_accuracy": a} for s, a in ((0.001, 0.5), (1.0, 0.9))]
    sections.selection_curves({"candidates": wide, "history": {}})
    lo, hi = figures[0].axes[0].get_ylim()
    assert lo <= 0.5 and hi >= 0.9 and hi - lo < 0.6  # a wide curve keeps its own span


def test_unknown_counts_add_up():
    from graft.report.page import unknown_reasons

    assert unknown_reasons({"confidence": 6, "novelty": 5, "either": 10}) == "5 by novelty, 5 more by confidence"
    assert unknown_reasons({"confidence": 4, "novelty": None, "either": 4}) == "by confidence"
    assert unknown_reasons({"confidence": 0, "novelty": 3, "either": 3}) == "3 by novelty, 0 more by confidence"
