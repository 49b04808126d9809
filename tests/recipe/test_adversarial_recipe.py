"""Training with no validation photo (issue 14): strict JSON, no validation figure made up."""

from __future__ import annotations

import logging

from conftest import _strict_json, make_photo_folder


def test_training_with_no_validation_photo_writes_strict_json_and_makes_up_no_validation_loss(tmp_path, caplog,
                                                                                             default_backbone):
    import graft

    photos = make_photo_folder(tmp_path / "photos", per_class=1, seed=11)  # 1 photo a class: all train
    with caplog.at_level(logging.WARNING, logger="graft"):
        result = graft.train(photos, tmp_path / "run", backbone=default_backbone, cache_dir=tmp_path / "cache",
                             strategy="head", workers=0, progress=False, report=True)
    m = _strict_json(result.run_dir / "metrics.json")
    assert m["n_val"] == 0 and m["val_accuracy"] is None and m["val_loss"] is None
    assert all(v is None for v in m["history"]["val_loss"] + m["history"]["val_accuracy"])  # no number made up
    # nothing to cross-validate with one photo a class: the default L2 probe, said so, no score made up
    assert m["head"]["folds"] == 0 and "no cross-validation" in m["head"]["balance"]
    assert m["cv_accuracy"] == {"mean": None, "std": None}
    said = [r.getMessage() for r in caplog.records if "no validation photo" in r.getMessage()]
    assert len(said) == 1, said  # the report scans the photos again: still said once
    assert (result.run_dir / "report.html").is_file()
