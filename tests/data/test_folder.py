"""graft.data.folder: both layouts, the content-hash split (stratified, stable), clear errors for
unusable folders, bad files skipped with reasons, hidden files ignored."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data import scan_photos
from graft.data.folder import hash_fraction, split_by_hash
from graft.errors import GraftError


def _tiny(path: Path, rng: np.random.Generator, fmt="PNG") -> Path:
    """A small image with random pixels: every file has distinct content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def _fill(root: Path, counts: dict, seed=0, start=0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for cls, n in counts.items():
        for i in range(start, start + n):
            out.append(_tiny(root / cls / f"{cls}{i:03d}.png", rng))
    return out


def _sides(data) -> dict[str, str]:
    return {**{str(s.path): "train" for s in data.train}, **{str(s.path): "val" for s in data.val}}


def test_class_folders_layout(tmp_path):
    _fill(tmp_path, {"cat": 30, "dog": 30, "fox": 30})
    data = scan_photos(tmp_path, val_split=0.2)
    assert data.layout == "folders"
    assert data.classes == ["cat", "dog", "fox"]
    assert data.skipped == []
    assert len(data.train) + len(data.val) == 90
    assert {str(s.path) for s in data.train}.isdisjoint(str(s.path) for s in data.val)
    for s in data.train + data.val:
        assert s.path.parent.name == data.classes[s.label]
        assert s.digest == hashlib.sha256(s.path.read_bytes()).hexdigest()
        assert s.size == (16, 12)
    # stratified-ish: every class on both sides, about val_split of it held out
    for label in range(3):
        n_val = sum(s.label == label for s in data.val)
        n_train = sum(s.label == label for s in data.train)
        assert n_val >= 1 and n_train >= 1
        assert 1 <= n_val <= 14, n_val
    assert 0.08 <= len(data.val) / 90 <= 0.35


def test_val_split_is_respected_roughly(tmp_path):
    _fill(tmp_path, {"a": 60, "b": 60})
    small = scan_photos(tmp_path, val_split=0.1)
    large = scan_photos(tmp_path, val_split=0.5)
    assert len(small.val) < len(large.val)
    assert 0.25 <= len(large.val) / 120 <= 0.75
    # a photo held out at 10% is also held out at 50% (thresholds on the same hash)
    assert {s.digest for s in small.val} <= {s.digest for s in large.val}


def test_split_depends_only_on_content(tmp_path):
    _fill(tmp_path / "one", {"a": 20, "b": 20})
    first = scan_photos(tmp_path / "one")
    # same bytes, different names and folder: the same files are held out
    for cls in ("a", "b"):
        for i, p in enumerate(sorted((tmp_path / "one" / cls).iterdir())):
            dst = tmp_path / "two" / cls / f"renamed-{100 - i}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dst)
    second = scan_photos(tmp_path / "two")
    assert {s.digest for s in first.val} == {s.digest for s in second.val}
    assert {s.digest for s in first.train} == {s.digest for s in second.train}


def test_adding_photos_never_moves_old_ones(tmp_path):
    _fill(tmp_path, {"a": 25, "b": 25, "c": 25}, seed=1)
    before = _sides(scan_photos(tmp_path))
    _fill(tmp_path, {"a": 25, "b": 25, "c": 25}, seed=2, start=100)  # new photos, new content
    after_data = scan_photos(tmp_path)
    after = _sides(after_data)
    assert len(after) == 150
    moved = [p for p, side in before.items() if after[p] != side]
    assert moved == []
    assert any(after[p] == "val" for p in after if p not in before)  # new ones do get held out


def _digest_file(path: Path, rng, want) -> Path:
    """Write random tiny PNGs at `path` until `want(hash_fraction(sha256))` holds."""
    for _ in range(10_000):
        _tiny(path, rng)
        if want(hash_fraction(hashlib.sha256(path.read_bytes()).hexdigest())):
            return path
    raise AssertionError("could not make a file with the wanted hash")


def test_adding_photos_never_moves_old_ones_small_class(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        _digest_file(tmp_path / "b" / f"b{i}.png", rng, lambda f: True)
    for i in range(2):  # class a: two photos that both hash above the 0.2 threshold
        _digest_file(tmp_path / "a" / f"a{i}.png", rng, lambda f: f >= 0.2)
    before = _sides(scan_photos(tmp_path, val_split=0.2))
    _digest_file(tmp_path / "a" / "a_new.png", rng, lambda f: f < 0.2)
    after = _sides(scan_photos(tmp_path, val_split=0.2))
    assert {p: after[p] for p in before} == before


def test_split_by_hash_only_keeps_small_classes_trainable():
    from graft.data import Sample

    def sample(label, frac):
        digest = format(int(frac * 16**15), "015x") + "0" * 49
        return Sample(Path(f"/x/{digest[:6]}"), label, digest)

    all_high = [sample(0, 0.5), sample(0, 0.9)]
    all_low = [sample(1, 0.01), sample(1, 0.02), sample(1, 0.03)]
    train, val = split_by_hash(all_high + all_low, 2, 0.2)
    # a photo's side depends on its own hash only: none of class 0 hashes below 0.2, so none is
    # moved into val; class 1 all hash below 0.2, and its highest-hash photo trains so the class
    # stays trainable
    assert not any(s.label == 0 for s in val) and len([s for s in train if s.label == 0]) == 2
    assert [s.digest for s in train if s.label == 1] == [all_low[2].digest]
    single = [sample(0, 0.05), sample(1, 0.5), sample(1, 0.6)]
    train, val = split_by_hash(single, 2, 0.2)
    assert len(train) + len(val) == 3  # a lone photo is not lost


def test_train_val_layout(tmp_path):
    _fill(tmp_path / "train", {"ant": 6, "bee": 5})
    _fill(tmp_path / "val", {"ant": 2, "bee": 3}, seed=9)
    data = scan_photos(tmp_path)
    assert data.layout == "train/val"
    assert data.classes == ["ant", "bee"]
    assert len(data.train) == 11 and len(data.val) == 5
    assert all(s.path.parent.parent.name == "train" for s in data.train)
    assert all(s.path.parent.parent.name == "val" for s in data.val)
    assert sorted(s.label for s in data.val) == [0, 0, 1, 1, 1]


def test_train_val_layout_val_must_have_the_classes(tmp_path):
    _fill(tmp_path / "train", {"ant": 3, "bee": 3})
    _fill(tmp_path / "val", {"ant": 2}, seed=9)
    with pytest.raises(GraftError, match="bee"):
        scan_photos(tmp_path)
    _fill(tmp_path / "val", {"bee": 2, "wasp": 2}, seed=10)
    with pytest.raises(GraftError, match="wasp"):
        scan_photos(tmp_path)


# --- errors ---------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(GraftError) as e:
        scan_photos(missing)
    assert str(missing) in str(e.value) and "not found" in str(e.value)


@pytest.mark.parametrize("classes", [[], ["only"]])
def test_fewer_than_two_classes(tmp_path, classes):
    _fill(tmp_path, {c: 3 for c in classes})
    with pytest.raises(GraftError) as e:
        scan_photos(tmp_path)
    msg = str(e.value)
    assert "at least two" in msg
    assert all(c in msg for c in classes)


def test_empty_class(tmp_path):
    _fill(tmp_path, {"full": 3})
    (tmp_path / "hollow").mkdir()
    with pytest.raises(GraftError) as e:
        scan_photos(tmp_path)
    assert str(tmp_path / "hollow") in str(e.value) and "no usable image" in str(e.value)


def test_class_with_only_bad_files_is_an_error(tmp_path):
    _fill(tmp_path, {"full": 3})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "zero.jpg").write_bytes(b"")
    (tmp_path / "broken" / "text.png").write_text("nope")
    with pytest.raises(GraftError, match="broken"):
        scan_photos(tmp_path)


@pytest.mark.parametrize("split", [0.0, 1.0, -0.1, 1.5])
def test_bad_val_split(tmp_path, split):
    _fill(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(GraftError, match="val-split"):
        scan_photos(tmp_path, val_split=split)


# --- skipped and hidden files ---------------------------------------------------------------------


def test_bad_files_are_skipped_with_reasons(tmp_path):
    good = _fill(tmp_path, {"a": 4, "b": 4})
    rng = np.random.default_rng(5)
    bad = {
        tmp_path / "a" / "zero.jpg": "empty",
        tmp_path / "a" / "text.jpg": "not an image",
        tmp_path / "b" / "png-as.jpg": "content is png",
        tmp_path / "b" / "readme.txt": "not a supported image type",
    }
    (tmp_path / "a" / "zero.jpg").write_bytes(b"")
    (tmp_path / "a" / "text.jpg").write_text("hello")
    _tiny(tmp_path / "b" / "png-as.jpg", rng, fmt="PNG")
    (tmp_path / "b" / "readme.txt").write_text("notes")
    data = scan_photos(tmp_path)
    reasons = {item["path"]: item["reason"] for item in data.skipped}
    assert set(reasons) == {str(p) for p in bad}
    for path, word in bad.items():
        assert word in reasons[str(path)].lower(), reasons[str(path)]
    used = {str(s.path) for s in data.train + data.val}
    assert used == {str(p) for p in good}


def test_hidden_files_and_folders_are_ignored(tmp_path):
    good = _fill(tmp_path, {"a": 3, "b": 3})
    rng = np.random.default_rng(6)
    _tiny(tmp_path / "a" / ".hidden.png", rng)  # a valid image, but hidden
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\x00\x01junk")
    _tiny(tmp_path / "b" / ".thumbs" / "t.png", rng)
    _tiny(tmp_path / ".git" / "x.png", rng)  # a hidden folder is not a class
    (tmp_path / ".git" / "y.png").write_bytes(b"")
    data = scan_photos(tmp_path)
    assert data.classes == ["a", "b"]
    assert data.skipped == []
    assert {str(s.path) for s in data.train + data.val} == {str(p) for p in good}


# --- the walk train and check share ------------------------------------------------------------------


def test_walk_reports_what_it_leaves_out(tmp_path):
    """class_files: the files graft reads, and every entry left out with a code; links are not
    followed into loops, a pipe named like a photo is skipped unread instead of blocking train."""
    import os

    from graft.data.folder import class_files, class_folders

    good = _fill(tmp_path, {"a": 3, "b": 3})
    rng = np.random.default_rng(7)
    nested = _tiny(tmp_path / "a" / "trip" / "day1" / "n.png", rng)  # sub-folders are searched
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "a" / "self.jpg").symlink_to("self.jpg")
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "a" / "up").symlink_to(tmp_path / "a")  # would loop for ever if followed
    (tmp_path / "a" / "other").symlink_to(tmp_path / "b")  # a linked folder: not looked into
    os.mkfifo(tmp_path / "a" / "pipe.jpg")
    (tmp_path / "loose.png").write_bytes(b"x")
    files, skips = class_files(tmp_path / "a")
    assert files == sorted([p for p in good if p.parent.name == "a"] + [nested, tmp_path / "a" / "pipe.jpg"])
    assert {s.path.name: s.code for s in skips} == {
        "notes.txt": "unsupported_type", ".DS_Store": "hidden_file", "self.jpg": "symlink_loop",
        "gone.jpg": "unreadable", "up": "symlink_loop", "other": "symlinked_folder"}
    folders, beside = class_folders(tmp_path)
    assert [name for name, _ in folders] == ["a", "b"]
    assert [(s.path.name, s.code) for s in beside] == [("loose.png", "not_in_class_folder")]

    data = scan_photos(tmp_path)
    assert {str(s.path) for s in data.train + data.val} == {str(p) for p in good + [nested]}
    assert {Path(d["path"]).name: d["code"] for d in data.skipped} == {
        "notes.txt": "unsupported_type", "self.jpg": "symlink_loop", "gone.jpg": "unreadable",
        "up": "symlink_loop", "pipe.jpg": "not_regular_file"}


@pytest.mark.parametrize("names", [("Ant", "ant"), ("ant", "ant "), ("ant queen", "Ant  Queen")])
def test_class_folders_that_differ_only_in_case_or_spaces_are_one_error(tmp_path, names):
    """`Ant/` and `ant/` (or `ant /`) are one class misspelt, never two classes: one error naming them."""
    _fill(tmp_path, {"bee": 3, **{n: 3 for n in names}})
    with pytest.raises(GraftError) as e:
        scan_photos(tmp_path)
    message = str(e.value)
    assert "\n" not in message and "case" in message and "rename" in message
    assert all(repr(n) in message for n in names)
