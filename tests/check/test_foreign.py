"""graft check finds a photo of neither class saved in a class folder (issue 20, item 6): reported
as `foreign`, listed before every other finding (errors included), in the text report's first
section and the run report's first table; a clean set gets no such finding; the distances are
out of fold, so a photo never vouches for itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_photo, make_photo_folder
from PIL import Image

from graft.check import check_photos, format_report
from graft.check.foreign import foreign_scores


def _natural_photo(name: str) -> Image.Image:
    """A real photo bundled with scikit-image (a graft dependency): nothing like the generated shapes."""
    import skimage.data

    return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB").resize((128, 96))


def test_a_photo_of_neither_class_is_reported_and_listed_first(tmp_path, default_backbone):
    root = make_photo_folder(tmp_path / "photos", per_class=12, seed=5)
    _natural_photo("coffee").save(root / "blue" / "blue_cup.jpg", format="JPEG")
    make_photo(np.random.default_rng(99), "red").save(root / "blue" / "blue_really_red.jpg", format="JPEG")
    (root / "red" / "empty.jpg").write_bytes(b"")  # an error, which would be listed first otherwise
    report = check_photos(root, backbone=default_backbone, cache_dir=tmp_path / "cache", workers=0)
    json.dumps(report)
    text = format_report(report)
    foreign = [f for f in report["findings"] if f["code"] == "foreign"]
    assert foreign and Path(foreign[0]["path"]).name == "blue_cup.jpg", text
    assert report["findings"][0] is foreign[0]
    # far outliers only: a handful of the generated photos at most (a big square is unusual too)
    assert len(foreign) <= 2, text
    assert foreign[0]["level"] == "warning"
    assert "blue/blue_cup.jpg" in foreign[0]["message"] and "neither class" in foreign[0]["message"]
    assert "all 25 other photos" in foreign[0]["message"]  # the farthest of the 26 decoded photos
    # a photo of the other class is mislabelled, not foreign: the two findings stay apart
    mislabelled = [Path(f["path"]).name for f in report["findings"] if f["code"] == "likely_mislabelled"]
    assert "blue_really_red.jpg" in mislabelled and "blue_cup.jpg" not in mislabelled
    assert {f["code"] for f in report["findings"] if f["level"] == "error"} == {"empty_file"}
    # the text report: its own section, before the errors
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"photos of neither class ({len(foreign)})"))
    assert "blue/blue_cup.jpg" in lines[first + 1] and "[foreign]" in lines[first + 1]
    assert first < text.splitlines().index("errors (1):")
    assert sum("blue_cup.jpg" in line for line in lines) == 1
    assert lines.index("errors (1):") > first + len(foreign)


def test_a_clean_set_has_no_photo_of_neither_class(tmp_path, default_backbone):
    root = make_photo_folder(tmp_path / "photos", classes=("blue", "red", "green"), per_class=10, seed=8)
    report = check_photos(root, backbone=default_backbone, cache_dir=tmp_path / "cache", workers=0)
    assert not [f for f in report["findings"] if f["code"] in ("foreign", "check_skipped")], format_report(report)
    assert "neither class" not in format_report(report)


def test_too_few_photos_for_a_fence_is_said(tmp_path, default_backbone):
    root = make_photo_folder(tmp_path / "photos", per_class=6, seed=2)
    _natural_photo("rocket").save(root / "red" / "red_rocket.jpg", format="JPEG")
    report = check_photos(root, backbone=default_backbone, cache_dir=tmp_path / "cache", workers=0)
    skipped = [f["message"] for f in report["findings"] if f["code"] == "check_skipped"]
    assert len(skipped) == 1 and "neither class" in skipped[0] and "13 here" in skipped[0], skipped
    assert not [f for f in report["findings"] if f["code"] == "foreign"]


def _clusters(rng, n_per_class=30, dim=64):
    centres = rng.normal(size=(2, dim)) * 3
    x = np.concatenate([centres[c] + rng.normal(size=(n_per_class, dim)) for c in range(2)])
    y = np.repeat([0, 1], n_per_class)
    return x, y


def test_distances_are_out_of_fold():
    """A row's distance depends only on the other folds: changing a row of its own fold (itself
    included) leaves it alone, changing a row of another fold does not; and a point far from
    both clusters scores highest, closest to the cluster it lies nearer to."""
    rng = np.random.default_rng(0)
    x, y = _clusters(rng)
    far = x[0] * 0.2 + rng.normal(size=x.shape[1]) * 8  # nearer class 0 than class 1, far from both
    x = np.vstack([x, far])
    y = np.append(y, 1)  # "saved in class 1's folder"
    folds = np.arange(len(y)) % 5
    scores, nearest = foreign_scores(x, y, 2, folds)
    assert scores.argmax() == len(y) - 1 and nearest[-1] == 0
    assert scores[-1] > 3 * np.median(scores)
    i, same, other = 0, 5, 1  # rows 0 and 5 share fold 0; row 1 is in fold 1
    for j, changes in ((same, False), (other, True)):
        moved = x.copy()
        moved[j] = rng.normal(size=x.shape[1]) * 10
        again, _ = foreign_scores(moved, y, 2, folds)
        assert (abs(again[i] - scores[i]) > 1e-9) == changes, j


def test_the_run_report_lists_photos_of_neither_class_first(tmp_path):
    """RUN/check.json (written by `graft check --apply-to`) as the report shows it: the photos of
    neither class in their own table, above the errors; not repeated among the warnings."""
    from graft.report.findings import check_findings
    from graft.run.files import CHECK_JSON

    photos = tmp_path / "photos"
    findings = [{"level": "warning", "code": "foreign", "path": str(photos / "bees" / "cup.jpg"),
                 "message": "bees/cup.jpg: labelled 'bees', but it looks like neither class"},
                {"level": "error", "code": "empty_file", "path": str(photos / "ants" / "e.jpg"),
                 "message": "ants/e.jpg: empty file (0 bytes)"},
                {"level": "warning", "code": "duplicate", "path": str(photos / "ants" / "b.jpg"),
                 "message": "ants/b.jpg: identical to ants/a.jpg"}]
    (tmp_path / CHECK_JSON).write_text(json.dumps({
        "root": str(photos), "layout": "folders", "classes": ["ants", "bees"], "findings": findings,
        "summary": {"errors": 1, "warnings": 2, "infos": 0}}))
    html = check_findings(tmp_path, {})
    assert html.index("photos of neither class (1)") < html.index("errors (1)") < html.index("warnings (1)")
    assert html.count("cup.jpg</code>") == 1 and "looks like neither class" in html
