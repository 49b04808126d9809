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


# --- through graft.train, evaluate, check and the command line -------------------------------------

def _photo_tree(root: Path) -> list[tuple[str, str, str]]:
    """PHOTOS/train/<class>/* + PHOTOS/val/<class>/* + PHOTOS/test/<class>/* of generated
    photos the real backbone separates; returns (relative path, class, split) rows."""
    from conftest import make_photo

    rng = np.random.default_rng(3)
    rows = []
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        for cls in ("blue", "red"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rel = f"{split}/{cls}/{cls}{i}.jpg"
                make_photo(rng, cls).save(root / rel, format="JPEG")
                rows.append((rel, cls, split))
    return rows


def test_train_from_csv_matches_the_folder_tree(tmp_path):
    import graft
    from graft.check import check_photos

    photos = tmp_path / "photos"
    rows = _photo_tree(photos)
    labels = _write_csv(photos / "labels.csv", ["path", "label", "split"], rows)
    tree = tmp_path / "tree"  # the same photos as a train/ + val/ folder tree (no test/)
    for rel, _, split in rows:
        if split != "test":
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes((photos / rel).read_bytes())
    a = graft.train(labels, tmp_path / "run-csv", strategy="head", workers=0, progress=False, report=False)
    b = graft.train(tree, tmp_path / "run-tree", strategy="head", workers=0, progress=False, report=False)
    for key in ("classes", "n_train", "n_val", "per_class", "confusion"):
        assert a.metrics[key] == b.metrics[key], key
    assert (a.metrics["n_train"], a.metrics["n_val"]) == (12, 6)  # test rows are held out
    assert a.metrics["cache"]["hits"] == 0 and b.metrics["cache"]["misses"] == 0  # same photos, same cache keys
    meta = json.loads((a.run_dir / "model.json").read_text())
    assert meta["training"]["layout"] == "labels:split"

    # evaluate scores the test rows; check reads the file as train does
    m = graft.evaluate(a.run_dir, labels, workers=0)
    assert m["n"] == 4 and [v["support"] for v in m["per_class"].values()] == [2, 2]
    report = check_photos(labels, deep=False)
    assert report["layout"] == "labels:split"
    assert report["counts"] == {"blue": {"train": 6, "val": 3}, "red": {"train": 6, "val": 3}}
    assert report["summary"]["errors"] == 0


def test_check_of_a_label_file_names_broken_photos(tmp_path):
    from graft.check import check_photos, format_report

    photos = tmp_path / "photos"
    rows = [r for r in _photo_tree(photos) if r[2] == "train"]
    (photos / "train/red/broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    rows.append(("train/red/broken.jpg", "red", "train"))
    labels = _write_csv(photos / "labels.csv", ["path", "label"], [(r, c) for r, c, _ in rows])
    report = check_photos(labels, deep=False)
    assert report["layout"] == "labels"
    errors = [d for d in report["findings"] if d["level"] == "error"]
    assert [Path(d["path"]).name for d in errors] == ["broken.jpg"]
    assert "train/red/broken.jpg" in format_report(report)  # relative to the label file's folder


BAD_FILES = {  # name -> (header, rows, words the one error line must hold)
    "no-path": (["file", "label"], [("train/red/red0.jpg", "red")], ["no 'path' column", "bad.csv"]),
    "bad-split": (["path", "label", "split"], [("train/red/red0.jpg", "red", "dev")], ["unknown split 'dev'", ":2"]),
    "missing": (["path", "label"], [("train/red/red0.jpg", "red"), ("gone.jpg", "blue")],
                ["not found", "gone.jpg", "line 3"]),
}


def test_bad_csvs_one_line_exit_2_through_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    _photo_tree(tmp_path)
    graft_exe = str(Path(sys.executable).with_name("graft"))
    env = {**os.environ, "GRAFT_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    procs = {}
    for name, (header, rows, _) in BAD_FILES.items():
        folder = tmp_path / name
        folder.mkdir()
        if name != "no-path":
            for rel, *_ in rows:
                if (tmp_path / rel).exists():
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    (folder / rel).write_bytes((tmp_path / rel).read_bytes())
        csv_path = _write_csv(folder / "bad.csv", header, rows)
        procs[name] = subprocess.Popen([graft_exe, "train", str(csv_path), "--out", str(folder / "run")],
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert p.returncode == 2, stderr
        assert "Traceback" not in stderr and stdout == ""
        assert len(lines) == 1 and lines[0].startswith("graft: error: "), stderr
        for w in BAD_FILES[name][2]:
            assert w in lines[0], (w, lines[0])
        assert not (tmp_path / name / "run").exists()


# --- issue 20: Kaggle's train/test-only files, class names that clash --------------------------------

def test_train_and_test_rows_only_draw_validation_from_train_by_hash(tmp_path, caplog):
    """Kaggle ships train/test rows and no val: validation is drawn from the train rows by content
    hash exactly as for a folder (and said in one line); the test rows stay out of both."""
    rows = _tree(tmp_path / "photos", {"train": {"cat": 20, "dog": 20}, "test": {"cat": 3, "dog": 3}})
    flat = tmp_path / "flat"  # the train rows as PHOTOS/<class>/*
    for rel, cls, split in rows:
        if split == "train":
            (flat / cls).mkdir(parents=True, exist_ok=True)
            (flat / cls / Path(rel).name).write_bytes((tmp_path / "photos" / rel).read_bytes())
    labels = _write_csv(tmp_path / "photos" / "labels.csv", ["path", "label", "split"], rows)
    with caplog.at_level("INFO", logger="graft"):
        a = scan_photos(labels, val_split=0.3)
    b = scan_photos(flat, val_split=0.3)
    assert a.val and _summary(a) == _summary(b)
    assert all(Path(s.path).parent.parent.name == "train" for s in a.train + a.val)
    said = [r.getMessage() for r in caplog.records if "validation" in r.getMessage()]
    assert len(said) == 1 and "train" in said[0] and "0.3" in said[0]


@pytest.mark.parametrize("names", [("Ant", "ant"), ("ant  queen", "Ant Queen"), ("ant", "ANT", "Ant")])
def test_label_names_that_differ_only_in_case_or_spaces_are_one_error(tmp_path, names):
    rows = _tree(tmp_path, {"train": {"bee": 2}})
    rows = [(r, c) for r, c, _ in rows]
    listed = []
    for i, name in enumerate(names):
        rel = f"x/{i}.png"
        _photo(tmp_path / rel, np.random.default_rng(i))
        listed.append((rel, name))
    with pytest.raises(GraftError) as e:
        scan_photos(_write_csv(tmp_path / "l.csv", ["path", "label"], rows + listed))
    message = str(e.value)
    assert "\n" not in message and "case" in message and "rename" in message
    assert all(repr(n) in message for n in names)


def test_train_on_train_and_test_rows_only_is_validated_and_evaluate_scores_the_test_rows(tmp_path):
    """Before issue 20 such a run printed `val accuracy nan (0/0 ...)` and a table of zeros."""
    import graft

    photos = tmp_path / "photos"
    rows = [(r, c, "test" if s == "test" else "train") for r, c, s in _photo_tree(photos)]
    labels = _write_csv(photos / "labels.csv", ["path", "label", "split"], rows)
    a = graft.train(labels, tmp_path / "run", strategy="head", workers=0, progress=False, report=False,
                    val_split=0.4)
    data = scan_photos(labels, val_split=0.4)
    assert (a.metrics["n_train"], a.metrics["n_val"]) == (len(data.train), len(data.val))
    assert a.metrics["n_val"] > 0 and a.metrics["n_train"] + a.metrics["n_val"] == 18  # test rows held out
    assert a.metrics["val_accuracy"] == a.metrics["val_accuracy"]  # not nan
    assert graft.evaluate(a.run_dir, labels, workers=0)["n"] == 4
