"""Check and train agree on extreme and merely thin images (issue 14, item 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from graft.data.images import read_image

from conftest import make_photo_folder


def test_check_and_train_agree_on_extreme_and_merely_thin_images(tmp_path, default_backbone):
    """A 5000x2 image that decodes fine: check calls it an error ("not decoded, remove it") and train
    indeed skips it, with the same code and reason; a 400x20 one (20:1, the limit) is a warning
    for check and a training photo for train."""
    import graft
    from graft.check import check_photos

    photos = make_photo_folder(tmp_path / "photos", per_class=4, seed=3)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (2, 5000, 3), dtype=np.uint8)).save(photos / "red" / "thin.png")
    Image.fromarray(rng.integers(0, 255, (20, 400, 3), dtype=np.uint8)).save(photos / "red" / "wide.png")
    assert read_image(photos / "red" / "thin.png").size == (5000, 2)  # it does decode
    report = check_photos(photos, deep=False, backbone=default_backbone, workers=0)
    said = {Path(f["path"]).name: f for f in report["findings"] if Path(f["path"] or ".").suffix == ".png"}
    assert said["thin.png"]["level"] == "error" and said["thin.png"]["code"] == "extreme_aspect"
    assert said["wide.png"]["level"] != "error"
    result = graft.train(photos, tmp_path / "run", backbone=default_backbone, cache_dir=tmp_path / "cache",
                         strategy="head", workers=0, progress=False)
    skipped = {Path(s["path"]).name: s for s in result.metrics["skipped"]}
    assert set(skipped) == {"thin.png"} and skipped["thin.png"]["code"] == "extreme_aspect"
    assert said["thin.png"]["message"].endswith(skipped["thin.png"]["reason"])
    assert result.metrics["n_train"] + result.metrics["n_val"] == 9  # the 8 photos and wide.png
