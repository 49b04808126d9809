"""graft.data.labels: a CSV / JSON-lines label file gives the same classes and split as the
equivalent folder tree, and each kind of bad label file gets one clear error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data import scan_photos
from graft.data.labels import evaluation_photos
from graft.errors import GraftError


def _photo(path: Path, rng) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _tree(root: Path, layout: dict) -> list[tuple[str, str, str]]:
    """Photos at root/<split>/<class>/<name>.png; returns (relative path, class, split) rows."""
    rng = np.random.default_rng(0)
    rows = []
    for split, counts in layout.items():
        for cls, n in counts.items():
            for i in range(n):
                rel = f"{split}/{cls}/{cls}{i:02d}.png"
                _photo(root / rel, rng)
                rows.append((rel, cls, split))
    return rows


def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _summary(data):
    key = lambda s: (data.classes[s.label], s.digest)  # noqa: E731
    return data.classes, sorted(map(key, data.train)), sorted(map(key, data.val))


def test_csv_with_split_matches_folder_tree(tmp_path):
    rows = _tree(tmp_path, {"train": {"cat": 5, "dog": 4, "emu": 3}, "val": {"cat": 2, "dog": 2, "emu": 1}})
    labels = _write_csv(tmp_path / "labels.csv", ["path", "label", "split"], rows)
    from_csv = scan_photos(labels)
    from_tree = scan_photos(tmp_path)
    assert from_tree.layout == "train/val"
    assert _summary(from_csv) == _summary(from_tree)
    assert len(from_csv.train) == 12 and len(from_csv.val) == 5


def test_without_split_uses_the_content_hash_split_of_a_folder_tree(tmp_path):
    rows = _tree(tmp_path / "photos", {"all": {"cat": 20, "dog": 20}})
    flat = tmp_path / "flat"
    for rel, cls, _ in rows:  # the same photos as PHOTOS/<class>/*
        _photo(flat / cls / Path(rel).name, np.random.default_rng(0))
        (flat / cls / Path(rel).name).write_bytes((tmp_path / "photos" / rel).read_bytes())
    labels = _write_csv(tmp_path / "photos" / "labels.csv", ["path", "label"], [(r, c) for r, c, _ in rows])
    a, b = scan_photos(labels, val_split=0.3), scan_photos(flat, val_split=0.3)
    assert _summary(a) == _summary(b)
    assert a.val and a.train


def test_jsonl_and_test_rows_held_out(tmp_path):
    rows = _tree(tmp_path, {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}, "test": {"a": 2, "b": 2}})
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps({"path": r, "label": c, "split": s}) for r, c, s in rows) + "\n")
    data = scan_photos(path)
    assert (len(data.train), len(data.val)) == (6, 2)
    test = evaluation_photos(path, data.classes)  # the test rows, when there are any
    assert len(test.val) == 4 and not test.train
    assert {Path(s.path).parent.parent.name for s in test.val} == {"test"}
    no_test = tmp_path / "no_test.jsonl"
    no_test.write_text("\n".join(json.dumps({"path": r, "label": c}) for r, c, s in rows if s != "test") + "\n")
    assert len(evaluation_photos(no_test, data.classes).val) == 8  # else every row


def test_broken_photo_is_skipped_like_in_a_folder(tmp_path):
    rows = _tree(tmp_path, {"train": {"a": 3, "b": 3}})
    (tmp_path / "train/a/broken.jpg").write_bytes(b"not a jpeg at all")
    rows.append(("train/a/broken.jpg", "a", "train"))
    data = scan_photos(_write_csv(tmp_path / "l.csv", ["path", "label"], [(r, c) for r, c, _ in rows]))
    assert [Path(s["path"]).name for s in data.skipped] == ["broken.jpg"]


@pytest.mark.parametrize("header,rows,message", [
    (["file", "label"], [("x.png", "a")], "no 'path' column"),
    (["path", "class"], [("x.png", "a")], "no 'label' column"),
    (["path", "label", "split"], [("train/a/a00.png", "a", "holdout")], "unknown split 'holdout'"),
    (["path", "label"], [("nowhere/missing.png", "a"), ("train/a/a00.png", "b")], "1 listed photo(s) not found"),
    (["path", "label"], [("train/a/a00.png", "")], "empty label"),
    (["path", "label"], [("train/a/a00.png", "a"), ("train/a/a01.png", "a")], "needs at least two"),
    (["path", "label"], [], "lists no photos"),
    (["path", "label"], [("train/a/a00.png", "a"), ("train/a/a00.png", "b")], "listed twice"),
])
def test_bad_label_files_give_one_clear_error(tmp_path, header, rows, message):
    _tree(tmp_path, {"train": {"a": 2}})
    with pytest.raises(GraftError) as e:
        scan_photos(_write_csv(tmp_path / "bad.csv", header, rows))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_jsonl_line_names_its_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"path": "a.png", "label": "x"}\n{oops\n')
    with pytest.raises(GraftError, match=r"l\.jsonl:2: not valid JSON"):
        scan_photos(path)
