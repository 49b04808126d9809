"""Hostile label files (issue 22): one photo under two labels however it is named (item 8), and
files Python's parsers choke on (item 12); each is one GraftError line, never a traceback, and a
photo never trains under two labels."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from graft.data.labels import evaluation_photos, listed_photos, read_label_rows, scan_label_file
from graft.errors import GraftError

from conftest import assert_one_line, graft_cli, make_photo, run_with_timeout


@pytest.fixture
def img(tmp_path) -> Path:
    """tmp/img with 3 red and 3 blue photos (red0..2, blue0..2)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for kind in ("red", "blue"):
        for i in range(3):
            make_photo(rng, kind).save(tmp_path / "img" / f"{kind}{i}.jpg")
    return tmp_path / "img"


def _rows(extra, split=False):
    rows = [(f"img/{k}{i}.jpg", k) + (("train",) if split else ()) for k in ("red", "blue") for i in range(3)]
    return rows + list(extra)


def _csv(path: Path, rows, split=False) -> Path:
    lines = ["path,label" + (",split" if split else "")] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(json.dumps({"path": r[0], "label": r[1]}) for r in rows) + "\n")
    return path


# --- item 8: one photo, two labels -----------------------------------------------------------------

def _spell(img: Path, how: str) -> str:
    """Another name for img/red0.jpg."""
    if how == "dotdot":
        return "img/../img/red0.jpg"
    if how == "dot":
        return "./img/red0.jpg"
    if how == "double-slash":
        return "img//red0.jpg"
    if how == "absolute":
        return str(img / "red0.jpg")
    if how == "symlink":
        os.symlink("red0.jpg", img / "alias.jpg")
        return "img/alias.jpg"
    if how == "symlinked-folder":
        os.symlink("img", img.parent / "alias")
        return "alias/red0.jpg"
    if how == "absolute-symlink":
        os.symlink(img / "red0.jpg", img.parent / "abs-alias.jpg")
        return "abs-alias.jpg"
    if how == "dotdot-through-folder":
        (img.parent / "sub").mkdir()
        return "sub/../img/red0.jpg"
    raise ValueError(how)


SPELLINGS = ["dotdot", "dot", "double-slash", "absolute", "symlink", "symlinked-folder", "absolute-symlink",
             "dotdot-through-folder"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("how", SPELLINGS)
def test_22_8_one_file_under_two_names_and_labels_is_refused(img, how, fmt):
    other = _spell(img, how)
    rows = _rows([(other, "blue")])
    path = (_csv if fmt == "csv" else _jsonl)(img.parent / f"labels.{fmt}", rows)
    with pytest.raises(GraftError) as e:
        scan_label_file(path)
    msg = str(e.value)
    assert "is listed twice" in msg and other in msg and "list each photo once" in msg, msg


@pytest.mark.parametrize("how", SPELLINGS)
def test_22_8_one_file_under_two_names_is_refused_by_listed_photos_too(img, how):
    """graft check reads label files through listed_photos: the same real path is one photo there too."""
    other = _spell(img, how)
    path = _csv(img.parent / "labels.csv", _rows([(other, "red")]))
    with pytest.raises(GraftError, match="is listed twice"):
        listed_photos(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("copy", ["byte-copy", "hard-link", "copy-in-other-folder"])
def test_22_8_a_byte_copy_under_another_label_is_refused(img, fmt, copy):
    target = {"byte-copy": img / "copy.jpg", "hard-link": img / "hard.jpg",
              "copy-in-other-folder": img.parent / "elsewhere" / "x.jpg"}[copy]
    target.parent.mkdir(exist_ok=True)
    if copy == "hard-link":
        os.link(img / "red0.jpg", target)
    else:
        shutil.copy(img / "red0.jpg", target)
    rel = str(target.relative_to(img.parent))
    path = (_csv if fmt == "csv" else _jsonl)(img.parent / f"labels.{fmt}", _rows([(rel, "blue")]))
    with pytest.raises(GraftError) as e:
        scan_label_file(path)
    msg = str(e.value)
    first, repeat = (2, 8) if fmt == "csv" else (1, 7)  # the CSV's header is line 1
    assert f"the same photo as line {first}" in msg and "labels red and blue" in msg and rel in msg, msg
    assert f":{repeat}:" in msg  # the row that repeats it


def test_22_8_a_byte_copy_under_the_same_label_trains_as_in_a_folder(img):
    shutil.copy(img / "red0.jpg", img / "copy.jpg")
    data = scan_label_file(_csv(img.parent / "labels.csv", _rows([("img/copy.jpg", "red")])))
    assert len(data.train) + len(data.val) == 7


@pytest.mark.parametrize("sides", [("train", "val"), ("val", "test"), ("train", "test")])
def test_22_8_a_byte_copy_on_both_sides_of_the_split_is_refused(img, sides):
    shutil.copy(img / "red0.jpg", img / "copy.jpg")
    rows = [(r[0], r[1], sides[0] if r[0] == "img/red0.jpg" else "val" if r[0].endswith("2.jpg") else "train")
            for r in _rows([], split=True)] + [("img/copy.jpg", "red", sides[1])]
    with pytest.raises(GraftError, match=f"under splits {sides[0]} and {sides[1]}"):
        scan_label_file(_csv(img.parent / "labels.csv", rows, split=True))


def test_22_8_an_empty_split_and_train_are_one_side(img):
    shutil.copy(img / "red0.jpg", img / "copy.jpg")
    rows = [(r[0], r[1], "") for r in _rows([])] + [("img/copy.jpg", "red", "train")]
    data = scan_label_file(_csv(img.parent / "labels.csv", rows, split=True))
    assert len(data.train) + len(data.val) == 7


def test_22_8_evaluation_refuses_one_photo_under_two_labels(img):
    shutil.copy(img / "blue0.jpg", img / "copy.jpg")
    path = _csv(img.parent / "labels.csv", _rows([("img/copy.jpg", "red")]))
    with pytest.raises(GraftError, match="labels blue and red"):
        evaluation_photos(path, ["blue", "red"])


def test_22_8_train_through_the_cli_is_one_line_and_writes_no_run(img, tmp_path, capsys):
    os.symlink("red0.jpg", img / "alias.jpg")
    path = _csv(tmp_path / "labels.csv", _rows([("img/alias.jpg", "blue")]))
    rc, out, err = graft_cli(["train", path, "--out", tmp_path / "run", "--workers", "0"], capsys)
    assert_one_line(rc, err, "is listed twice", "img/alias.jpg")
    assert not (tmp_path / "run").exists()


# --- item 12: what Python's parsers choke on --------------------------------------------------------

HOSTILE = {
    "jsonl-200000-brackets": ("jsonl", "[" * 200_000, "nested deeper than 64 levels"),
    "jsonl-100000-objects": ("jsonl", '{"a":' * 100_000, "nested deeper than 64 levels"),
    "jsonl-65-levels": ("jsonl", "[" * 65 + "]" * 65, "nested deeper than 64 levels"),
    "jsonl-5000-digit-label": ("jsonl", '{"path": "img/red0.jpg", "label": ' + "1" * 5000 + "}", "5000 digits"),
    "jsonl-5000-digit-negative": ("jsonl", '{"path": "img/red0.jpg", "label": -' + "1" * 5000 + "}", "5000 digits"),
    "jsonl-5000-digit-split": ("jsonl", '{"path": "x", "label": "a", "split": ' + "2" * 5000 + "}", "5000 digits"),
    "csv-field-131073": ("csv", "path,label\n" + "a" * 131_073 + ",red\n", "a field longer than 131,072"),
    "csv-label-200000": ("csv", "path,label\nimg/red0.jpg," + "r" * 200_000 + "\n", "a field longer than 131,072"),
    "csv-quoted-200000": ("csv", 'path,label\n"' + "q" * 200_000 + '",red\n', "a field longer than 131,072"),
    "csv-unclosed-quote": ("csv", 'path,label\n"img/red0.jpg,red\n' + "x" * 140_000, "a field longer than"),
    "txt-field-200000": ("txt", "path,label\n" + "t" * 200_000 + ",red\n", "a field longer than 131,072"),
    "jsonl-nul-in-path": ("jsonl", '{"path": "img/red0.jpg\\u0000.png", "label": "red"}', "NUL character"),
    "csv-path-too-long": ("csv", "path,label\n" + "p" * 5000 + ",red\nimg/red1.jpg,blue\n", "not found"),
    "jsonl-latin1": ("jsonl", None, "cannot read label file"),
    "csv-only-bom": ("csv", "\ufeff", "no 'path' or 'label' column"),
    "jsonl-a-list": ("jsonl", "[1, 2]", "each line must be a JSON object"),
    "jsonl-nan": ("jsonl", '{"path": NaN, "label": "red"}', "not found"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_22_12_hostile_label_file_is_one_line(img, name):
    fmt, text, says = HOSTILE[name]
    path = img.parent / f"labels.{fmt}"
    if text is None:
        path.write_bytes('{"path": "img/red0.jpg", "label": "r\xe9d"}'.encode("latin-1"))
    else:
        path.write_text(text)
    with pytest.raises(GraftError) as e:
        scan_label_file(path)
    msg = str(e.value)
    assert says in msg and str(path) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("name", ["jsonl-200000-brackets", "csv-field-131073", "jsonl-5000-digit-label"])
@pytest.mark.parametrize("command", ["train", "check", "evaluate"])
def test_22_12_hostile_label_file_through_the_cli(img, tmp_path, capsys, trained_run, name, command):
    fmt, text, says = HOSTILE[name]
    path = img.parent / f"labels.{fmt}"
    path.write_text(text)
    argv = {"train": ["train", path, "--out", tmp_path / "run", "--workers", "0"],
            "check": ["check", path],
            "evaluate": ["evaluate", trained_run.run, path, "--workers", "0"]}[command]
    rc, out, err = graft_cli(argv, capsys)
    assert_one_line(rc, err, says)


def _special(kind: str, path: Path, outside: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "sparse-300MB":
        with open(path, "wb") as f:
            f.truncate(300 << 20)
    elif kind == "dangling":
        os.symlink(outside / "nothing.csv", path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "sparse-300MB", "dangling"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_22_12_a_label_file_that_is_not_a_file_is_one_line_never_a_hang(tmp_path, kind, fmt):
    path = tmp_path / f"labels.{fmt}"
    _special(kind, path, tmp_path)

    def attempt():
        try:
            read_label_rows(path)
        except GraftError as e:
            return str(e)
        return None

    msg = run_with_timeout(attempt, tmp_path, timeout=60)
    assert msg is not None and "cannot read label file" in msg and "\n" not in msg, msg


def test_22_12_a_csv_with_a_nul_byte_reads_or_is_one_line(img):
    path = img.parent / "labels.csv"
    path.write_bytes(b"path,label\nimg/red0.jpg,r\0ed\nimg/blue0.jpg,blue\n")
    rows = read_label_rows(path)  # Python 3.11's csv reads NUL; the label keeps it
    assert rows[0]["label"] == "r\0ed"
