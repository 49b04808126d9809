"""Fuzzed label files (issue 22): whatever bytes a CSV, JSON lines or text label file holds, graft
reads it, trains from it or refuses it with one GraftError line; never another exception."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.data.labels import listed_photos, read_label_rows, scan_label_file
from graft.errors import GraftError

from conftest import make_photo

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with a few photos, a symlink to one, a byte copy, a broken photo and a sub-folder."""
    root = tmp_path_factory.mktemp("fuzz-labels")
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    for i, kind in enumerate(["red", "blue", "red", "blue"]):
        make_photo(rng, kind).save(root / "img" / f"{kind}{i}.jpg")
    os.symlink("red0.jpg", root / "img" / "link.jpg")
    shutil.copy(root / "img" / "blue1.jpg", root / "img" / "copy.jpg")
    (root / "img" / "broken.jpg").write_bytes(b"not a photo")
    return root


NAMES = ["img/red0.jpg", "img/blue1.jpg", "img/red2.jpg", "img/blue3.jpg", "img/link.jpg", "img/copy.jpg",
         "img/broken.jpg", "./img/red0.jpg", "img/../img/red0.jpg", "img//blue1.jpg", "img", "missing.jpg",
         "/dev/null", "/dev/zero", "..", "", " ", "img/red0.jpg\0x", "x" * 5000, "img/\udcff.jpg", "a\nb.jpg"]
LABELS = ["red", "blue", "Red", " red ", "", "green", "unknown", "a,b", '"q"', "\u00e9", "\udcff", "x" * 300]
SPLITS = [None, "train", "val", "test", "TRAIN", "holdout", "", 3]


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _use(path: Path) -> None:
    """Everything graft does with a label file: it works or raises a GraftError (the CLI prints it
    as one line, control characters escaped); any other exception fails the test."""
    try:
        read_label_rows(path)
        listed_photos(path)
        scan_label_file(path)
    except GraftError:
        pass


@given(data=st.binary(max_size=600), suffix=st.sampled_from([".csv", ".jsonl", ".txt"]))
@FUZZ
def test_22_12_fuzz_any_bytes_as_a_label_file(folder, data, suffix):
    _use(_write(folder, "labels" + suffix, data))


@given(rows=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(LABELS), st.sampled_from(SPLITS)),
                     max_size=8),
       header=st.sampled_from(["path,label,split", "path,label", "label,path", "path", "file,class", ""]),
       sep=st.sampled_from([",", ";", "\t"]), newline=st.sampled_from(["\n", "\r\n", "\r"]))
@FUZZ
def test_22_8_fuzz_csv_rows_of_real_and_odd_paths(folder, rows, header, sep, newline):
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, delimiter=sep, lineterminator=newline)
    if header:
        w.writerow(header.split(","))
    for p, label, split in rows:
        w.writerow([p, label] + ([] if split is None else [split]))
    _use(_write(folder, "labels.csv", out.getvalue().encode("utf-8", "surrogateescape")))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(NAMES),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["path", "label", "split", "x"]),
                                                                 inner, max_size=4),
    max_leaves=12)


@given(objs=st.lists(st.one_of(
    st.fixed_dictionaries({"path": st.sampled_from(NAMES), "label": st.sampled_from(LABELS)},
                          optional={"split": st.sampled_from(SPLITS)}),
    JSON_VALUES), max_size=8))
@FUZZ
def test_22_12_fuzz_jsonl_objects(folder, objs):
    text = "\n".join(json.dumps(o, ensure_ascii=False) for o in objs)
    _use(_write(folder, "labels.jsonl", text.encode("utf-8", "surrogateescape")))


@given(depth=st.integers(1, 3000), kind=st.sampled_from(["[", '{"a":']), digits=st.integers(1, 6000))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
def test_22_12_fuzz_deep_and_long_jsonl_lines(folder, depth, kind, digits):
    lines = [kind * depth, '{"path": "img/red0.jpg", "label": ' + "7" * digits + "}"]
    _use(_write(folder, "labels.jsonl", "\n".join(lines).encode()))
