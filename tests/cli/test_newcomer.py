"""What a newcomer reads (issue 20): a typo'd run path, a folder holding more than photos, a report
that cannot be opened, an L-BFGS run's training line and calibrate's unknown counts each say plainly
what happened."""

from __future__ import annotations

import shutil

from conftest import assert_one_line, graft_cli, make_photo_folder

from graft.cli.calibrate import calibration_summary
from graft.cli.train import train_summary


def test_a_run_path_that_does_not_exist_says_so(tmp_path, capsys):
    photo = next(iter(sorted(make_photo_folder(tmp_path / "photos", per_class=1).rglob("*.jpg"))))
    for argv in (["predict", tmp_path / "runn", photo], ["export", tmp_path / "runn", "--format", "onnx"],
                 ["report", tmp_path / "runn"], ["evaluate", tmp_path / "runn", tmp_path / "photos"]):
        rc, _, err = graft_cli(argv, capsys)
        assert_one_line(rc, err, "run folder not found", str(tmp_path / "runn"))
        assert "not a graft run" not in err


def test_a_folder_that_is_not_a_run_still_says_so(tmp_path, capsys):
    photo = next(iter(sorted(make_photo_folder(tmp_path / "photos", per_class=1).rglob("*.jpg"))))
    rc, _, err = graft_cli(["predict", tmp_path / "photos", photo], capsys)
    assert_one_line(rc, err, "not a graft run", "model.json")


def test_predict_on_a_folder_lists_what_was_not_a_photo(trained_run, tmp_path, capsys, cli_log):
    folder = make_photo_folder(tmp_path / "mixed", classes=("red",), per_class=2)
    for name in ("notes.txt", "labels.csv", "b.json", "c.md"):
        (folder / name).write_text("not a photo\n")
    (folder / ".hidden.txt").write_text("hidden files stay unmentioned\n")
    rc, out, err = graft_cli(["predict", trained_run.run, folder, "--workers", "0"], capsys)
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 2  # the two photos
    said = [line for line in err.splitlines() if "not" in line and "photo" in line]
    assert len(said) == 1, err
    assert "4 file(s)" in said[0] and "b.json" in said[0] and "c.md" in said[0] and ".hidden" not in said[0]


def test_report_open_without_a_browser_says_where_the_file_is(trained_run, tmp_path, capsys, monkeypatch):
    import webbrowser

    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    monkeypatch.setattr(webbrowser, "open", lambda *a, **k: False)  # what it returns with no browser
    rc, out, err = graft_cli(["report", run, "--open"], capsys)
    assert rc == 0, err
    assert out.strip() == str(run / "report.html")
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no web browser" in lines[0] and str(run / "report.html") in lines[0], err


def test_an_lbfgs_run_says_it_ran_no_epochs(trained_run):
    m = dict(trained_run.metrics)
    m.update(best_epoch=0, epochs_run=0, head={**(m.get("head") or {}), "solver": "lbfgs", "epochs": None,
                                                 "strength": 0.01, "folds": 5, "balance": "none"})
    text = train_summary(m, trained_run.run)
    assert "best epoch 0 of 0" not in text
    training = next(line for line in text.splitlines() if line.lstrip().startswith("training"))
    assert "no epochs" in training and "L-BFGS" in training
    m.update(best_epoch=7, epochs_run=9, head={**m["head"], "solver": "adamw", "epochs": 7})
    assert "best epoch 7 of 9" in train_summary(m, trained_run.run)


def _calibration(confidence: int, novelty: int | None, either: int) -> dict:
    return {"fit": {"photos": "training", "how": "out of fold", "nll": {"before": 0.3, "after": 0.2},
                    "kept": 0.95, "accuracy_kept": 0.99},
            "temperature": 1.2, "threshold": 0.6, "keep": 0.95, "target_accuracy": 0.99, "target_reached": True,
            "novelty": {"k": 1, "n_reference": 100, "threshold": 0.4} if novelty is not None else None,
            "val_unknown": {"n_val": 40, "confidence": confidence, "novelty": novelty, "either": either},
            "val_kept": {"n": 40, "kept": (40 - either) / 40, "accuracy": 0.9, "accuracy_kept": 0.97}}


def test_calibrate_unknown_counts_add_up(tmp_path):
    """6 by confidence and 5 by novelty of 10 unknown overlap: said as 5 by novelty, 5 more by confidence."""
    line = next(s for s in calibration_summary(_calibration(6, 5, 10), tmp_path).splitlines() if "validation" in s)
    assert "unknown: 10 (5 by novelty, 5 more by confidence)" in line, line
    line = next(s for s in calibration_summary(_calibration(3, None, 3), tmp_path).splitlines() if "validation" in s)
    assert "unknown: 3 (by confidence)" in line, line
