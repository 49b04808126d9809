"""File names that are not valid UTF-8, or hold a newline (issue 22, item 11): Python hands a name's
undecodable bytes over as lone surrogates, which a strict UTF-8 writer refuses; `report`,
`predict --csv` and `check --apply-to` crashed with UnicodeEncodeError, and `train` exited 0 with
its report unwritten. graft's text writer (graft._util.atomic.write_text / atomic_text) writes
them escaped as Python spells them, the text still UTF-8; a newline in a name splits no line."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from graft._util.atomic import atomic_text, write_json, write_text

from conftest import graft_cli, isolated_env, make_photo, make_photo_folder

NAMES = [b"\xff.jpg", b"caf\xe9.jpg", b"\xed\xa0\x80.jpg", b"\xc3(.jpg", b"\xf0\x28\x8c\x28.jpg", b"\x80.jpg",
         b"a\nb.jpg", b"a\rb.jpg", b"a\r\nb.jpg", b"\x1b[31mred.jpg", b"tab\there.jpg",
         "\u202e-rtl.jpg".encode(), b'quote".jpg', b"comma,name.jpg", b"<script>x</script>.jpg", b"\xff\n\xfe.jpg",
         "\U0001f41d.jpg".encode(), b"\xfe\xff.jpg"]
IDS = [repr(n)[2:-1][:24] for n in NAMES]


def _escaped(name: bytes) -> str:
    return os.fsdecode(name).encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_22_11_write_text_writes_any_name_as_utf8(tmp_path, name):
    write_text(tmp_path / "page.html", f"<p>{os.fsdecode(name)}</p>")
    text = (tmp_path / "page.html").read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert text == f"<p>{_escaped(name)}</p>"


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_22_11_a_csv_row_per_name_however_odd(tmp_path, name):
    out = tmp_path / "p.csv"
    with atomic_text(out, newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerow([str(Path("/photos") / os.fsdecode(name)), "red"])
    rows = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8"), newline="")))
    assert len(rows) == 2 and rows[1] == [f"/photos/{_escaped(name)}", "red"]  # a newline splits no row


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_22_11_json_writes_any_name(tmp_path, name):
    write_json(tmp_path / "x.json", {"path": os.fsdecode(name)})
    assert (tmp_path / "x.json").read_bytes().decode("ascii").count("\n") == 3


def test_22_11_a_failed_text_write_leaves_the_old_file(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_text(out) as f:
        f.write("new")
        raise RuntimeError("the writer failed")
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


# --- end to end: photos with such names, through train, report, check --apply-to, predict ---------------

ODD = [b"\xff\xfe.jpg", b"caf\xe9.jpg", b"new\nline.jpg", b"\x1b[31mred.jpg"]
BROKEN = [b"\xff broken.jpg", b"\xfe\nnewline broken.jpg"]


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    photos = make_photo_folder(root / "photos", per_class=6, seed=4)
    rng = np.random.default_rng(2)
    for i, name in enumerate(ODD):
        kind = ("red", "blue")[i % 2]
        make_photo(rng, kind).save(os.fsdecode(os.path.join(os.fsencode(photos / kind), name)), "JPEG")
    for name in BROKEN:
        with open(os.path.join(os.fsencode(photos / "red"), name), "wb") as f:
            f.write(b"not a photo")
    with open(os.path.join(os.fsencode(photos / "blue"), b"dup\xff.jpg"), "wb") as f:
        f.write((photos / "red" / "red001.jpg").read_bytes())  # a copy under another label: check names it
    from graft.cli import main

    with isolated_env(root):
        rc = main(["train", str(photos), "--out", str(root / "run"), "--workers", "0", "--quiet"])
    return root, photos, root / "run", rc


def test_22_11_train_writes_its_report_with_odd_names(odd_run):
    root, photos, run, rc = odd_run
    assert rc == 0
    html = (run / "report.html").read_bytes().decode("utf-8")
    assert "\\udcff broken.jpg" in html  # a skipped photo, named as Python spells it


@pytest.mark.parametrize("command", ["report", "check-apply-to", "report-after-check"])
def test_22_11_report_and_check_never_crash_on_odd_names(odd_run, capsys, command):
    root, photos, run, _ = odd_run
    with isolated_env(root):
        if command in ("check-apply-to", "report-after-check"):
            rc, out, err = graft_cli(["check", photos, "--apply-to", run], capsys)
            assert "Traceback" not in err and (run / "check.json").is_file(), err
        if command != "check-apply-to":
            rc, out, err = graft_cli(["report", run], capsys)
            assert rc == 0 and "Traceback" not in err, err
            (run / "report.html").read_bytes().decode("utf-8")


def test_22_11_predict_prints_one_line_per_photo(odd_run, capsys):
    root, photos, run, _ = odd_run
    with isolated_env(root):
        rc, out, err = graft_cli(["predict", run, photos, "--workers", "0"], capsys)
    assert "Traceback" not in err
    n = sum(1 for _ in Path(photos).rglob("*.jpg"))
    assert len(out.splitlines()) == n, out
    assert "new\\nline.jpg" in out and "\\udcfe\\nnewline broken.jpg: error:" in out


def test_22_11_predict_csv_writes_odd_names(odd_run, tmp_path, capsys):
    root, photos, run, _ = odd_run
    with isolated_env(root):
        rc, out, err = graft_cli(["predict", run, photos, "--workers", "0", "--csv", tmp_path / "p.csv"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_bytes().decode("utf-8"), newline="")))
    assert len(rows) == sum(1 for _ in Path(photos).rglob("*.jpg"))
    names = {Path(r["path"]).name for r in rows}
    assert {"\\udcff\\udcfe.jpg", "new\nline.jpg", "caf\\udce9.jpg"} <= names, names
    assert sys.getfilesystemencoding() == "utf-8"
