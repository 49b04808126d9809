"""graft.data.source: what a PHOTOS argument names (a train/val tree, a folder of class folders,
a label file) and the errors for what it cannot be; test_labels covers label files themselves."""

from __future__ import annotations

import pytest

from graft.data.source import is_label_file, photo_layout, scan_photos
from graft.errors import GraftError

from conftest import make_photo_folder


def test_the_layout_is_told_by_what_is_there(tmp_path):
    tree = tmp_path / "tree"
    (tree / "train" / "a").mkdir(parents=True)
    (tree / "val" / "a").mkdir(parents=True)
    assert photo_layout(tree) == (tree, "train/val")
    only_train = tmp_path / "only-train"
    (only_train / "train").mkdir(parents=True)
    assert photo_layout(only_train) == (only_train, "folders")  # "train" is then just a class
    (tmp_path / "labels.CSV").write_text("path,label\n")
    assert photo_layout(tmp_path / "labels.CSV") == (tmp_path / "labels.CSV", "labels")  # any case
    (tmp_path / "l.jsonl").write_text("")
    assert photo_layout(tmp_path / "l.jsonl")[1] == "labels"


def test_a_folder_named_like_a_label_file_is_a_folder(tmp_path):
    (tmp_path / "photos.csv").mkdir()
    assert photo_layout(tmp_path / "photos.csv")[1] == "folders"
    assert not is_label_file(tmp_path / "photos.csv")


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "photos").mkdir()
    assert photo_layout("~/photos") == (tmp_path / "photos", "folders")


@pytest.mark.parametrize("name", ["missing", "missing.csv", "notes.txt"])
def test_what_is_neither_a_folder_nor_a_label_file_is_one_error(tmp_path, name):
    (tmp_path / "notes.txt").write_text("not photos")
    with pytest.raises(GraftError, match=r"photo folder \(or \.csv/\.jsonl label file\) not found: .*" + name):
        photo_layout(tmp_path / name)


@pytest.mark.parametrize("split", [0.0, 1.0, -0.2, 1.5])
def test_a_validation_share_outside_0_1_is_refused_before_anything_is_read(tmp_path, split):
    with pytest.raises(GraftError, match=f"--val-split must be between 0 and 1, got {split}"):
        photo_layout(tmp_path / "not-even-there", split)


def test_scan_photos_splits_a_train_val_tree_by_its_folders(tmp_path):
    make_photo_folder(tmp_path / "p" / "train", per_class=3)
    make_photo_folder(tmp_path / "p" / "val", per_class=1, seed=1)
    data = scan_photos(tmp_path / "p", cache_dir=tmp_path / "cache")
    assert data.layout == "train/val" and data.classes == ["blue", "red"]
    assert len(data.train) == 6 and len(data.val) == 2
    assert all(s.path.parent.parent.name == "val" for s in data.val)
