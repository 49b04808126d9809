"""Label files: `path,label[,split]` as a CSV or JSON lines, the layout Kaggle and labelling
tools export (and fastai, timm and Hugging Face read).

A label file is another door into the same Dataset a folder tree gives: paths are relative to
the file, classes are the sorted distinct labels (as sorted folder names are), every photo is
read, hashed and skipped exactly as in a folder (`folder.identify`), and without a `split=val`
row (no split column, or Kaggle's train and test rows) validation is drawn from the training rows
by content hash, so a photo's side never depends on its row.
Rows with `split=test` are held out of training and validation entirely; `graft evaluate RUN
labels.csv` scores them (every row when the file has no test row).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from graft._util import limits
from graft._util.files import read_regular
from graft.errors import GraftError
from graft.data.class_names import refuse_clashing_class_names
from graft.data.folder import VAL_SPLIT, Dataset, identify, split_by_hash, tell_once, warn_classes_without_val

LABEL_FILE_SUFFIXES = (".csv", ".jsonl")
SPLITS = ("train", "val", "test")
MAX_LABEL_FILE_BYTES = 256 << 20  # a million rows of long paths; a bigger "label file" is not read


def read_label_rows(path) -> list[dict]:
    """Rows as {"path", "label", "split" or None, "line"}; one clear GraftError per kind of
    mistake (missing column, empty label, unknown split), naming the file and the line."""
    path = Path(path)
    try:  # a regular file only (a FIFO would block), within a bound; Excel writes a BOM
        text = read_regular(path, max_bytes=MAX_LABEL_FILE_BYTES).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise GraftError(f"cannot read label file {path}: {why}") from None
    if path.suffix.lower() == ".jsonl":
        raw = _jsonl_objects(path, text)
        columns = set().union(*(o.keys() for _, o in raw)) if raw else set()
    else:
        try:
            fieldnames, raw = limits.csv_dict_rows(text.splitlines())
        except limits.LimitError as e:
            raise GraftError(f"{path}: {e}; graft reads path,label[,split]") from None
        columns = {(c or "").strip() for c in (fieldnames or [])}
        raw = [(n, {(k or "").strip(): v for k, v in row.items()}) for n, row in raw]
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise GraftError(f"{path} has no {' or '.join(repr(c) for c in missing)} column "
                         f"(found: {', '.join(sorted(columns)) or 'none'}); graft reads path,label[,split]")
    rows = []
    for n, obj in raw:
        p, label, split = (_text(obj.get(k)) for k in ("path", "label", "split"))
        if not p:
            raise GraftError(f"{path}:{n}: empty path")
        if "\0" in p:
            raise GraftError(f"{path}:{n}: the path holds a NUL character, which no file name can")
        if not label:
            raise GraftError(f"{path}:{n}: empty label for {p}")
        if split and split.lower() not in SPLITS:
            raise GraftError(f"{path}:{n}: unknown split {split!r} (use {', '.join(SPLITS)})")
        rows.append({"path": p, "label": label, "split": split.lower() if split else None, "line": n})
    if not rows:
        raise GraftError(f"{path} lists no photos")
    return rows


def _jsonl_objects(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line; one GraftError naming the line for a line
    that is not a JSON object (or is one past graft._util.limits' bounds)."""
    raw = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = limits.loads(line)
        except ValueError as e:
            why = getattr(e, "msg", None) or str(e)
            raise GraftError(f"{path}:{n}: not valid JSON ({why})") from None
        if not isinstance(obj, dict):
            raise GraftError(f"{path}:{n}: each line must be a JSON object with \"path\" and \"label\"")
        raw.append((n, obj))
    return raw


def listed_photos(path, *, classes: list[str] | None = None, split: str | None = None):
    """-> (classes, [(photo path, label index, split or None)]) of a label file, every listed
    photo present. `classes` (evaluation) must cover every label; `split` keeps that split's rows."""
    path = Path(path).expanduser()
    rows = read_label_rows(path)
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise GraftError(f"{path} has no row with split={split}")
    base = path.parent
    _refuse_a_file_listed_twice(path, base, rows)
    # lexists: a link to nothing is listed (the photo check says why it is skipped); a name too long
    # for the system is not found, not an OSError
    missing = [r for r in rows if not os.path.lexists(base / r["path"])]
    if missing:
        shown = "; ".join(f"line {r['line']}: {r['path']}" for r in missing[:3])
        raise GraftError(f"{path}: {len(missing)} listed photo(s) not found (paths are relative to the "
                         f"label file): {shown}{' ...' if len(missing) > 3 else ''}")
    labels = sorted({r["label"] for r in rows})
    if classes is None:
        if len(labels) < 2:
            raise GraftError(f"{path} has {len(labels)} label(s) ({', '.join(labels)}); graft needs at least two")
        refuse_clashing_class_names(path, labels, "labels", "write each one way in the file")
        classes = labels
    else:
        extra = [c for c in labels if c not in classes]
        if extra:
            raise GraftError(f"{path} has label(s) {', '.join(extra)} that are not classes of this model "
                             f"({', '.join(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    return list(classes), [(base / r["path"], index[r["label"]], r["split"]) for r in rows]


def _refuse_a_file_listed_twice(path: Path, base: Path, rows: list[dict]) -> None:
    """Two rows naming one file, however spelled (`./x`, `img//x`, `img/../img/x`, a symlink to
    it): the real path decides, so one photo cannot be given two labels by its spelling."""
    seen: dict[str, dict] = {}
    for r in rows:
        key = os.path.realpath(base / r["path"])
        first = seen.setdefault(key, r)
        if first is not r:
            same = "" if first["path"] == r["path"] else f" as {first['path']}: both name {key}"
            raise GraftError(f"{path}:{r['line']}: {r['path']} is listed twice (also line {first['line']}{same}); "
                             f"list each photo once")


def _refuse_one_photo_two_labels(path: Path, samples, classes: list[str], side: dict, listed) -> None:
    """Two files with the same bytes (a copy) under two labels, or on both sides of the split:
    one photo would train as two classes, or be validated on after training on it. `listed`:
    listed_photos' list, for the lines the message names (read again only then)."""
    first_of: dict[str, object] = {}
    for s in samples:
        first = first_of.setdefault(s.digest, s)
        if first is s or (first.label == s.label and (side[str(first.path)] or "train") == (side[str(s.path)] or "train")):
            continue
        what = (f"labels {classes[first.label]} and {classes[s.label]}" if first.label != s.label else
                f"splits {side[str(first.path)] or 'train'} and {side[str(s.path)] or 'train'}")
        lines = _lines(path, listed)
        raise GraftError(f"{path}:{lines[str(s.path)]}: {s.path} is the same photo as line {lines[str(first.path)]} "
                         f"({first.path}: the same bytes) under {what}; a photo has one label and one split: "
                         f"remove one of the rows")


def scan_label_file(path, *, val_split: float = VAL_SPLIT) -> Dataset:
    """The Dataset a label file describes for training (see the module docstring)."""
    path = Path(path).expanduser()
    classes, listed = listed_photos(path)
    samples, skipped = identify([(p, label) for p, label, _ in listed])
    side = {str(p): s for p, _, s in listed}
    _refuse_one_photo_two_labels(path, samples, classes, side, listed)
    samples = [s for s in samples if side[str(s.path)] != "test"]
    if "val" in side.values():
        train = [s for s in samples if side[str(s.path)] in (None, "train")]
        val = [s for s in samples if side[str(s.path)] == "val"]
        layout = "labels:split"
    else:
        if any(side.values()):
            tell_once(path, without_val_rows(path, val_split), logging.INFO)
        train, val = split_by_hash(samples, len(classes), val_split)
        warn_classes_without_val(path, classes, val, val_split)
        layout = "labels"
    empty = [c for i, c in enumerate(classes) if not any(s.label == i for s in train)]
    if empty:
        raise GraftError(f"{path}: no usable training photo for class(es) {', '.join(empty)}")
    return Dataset(path, classes, train, val, skipped, layout)


def without_val_rows(path, val_split: float) -> str:
    """What is said of a file with a split column but no val row (Kaggle ships train and test)."""
    return (f"{Path(path).name} has no split=val row: validation is drawn from the train rows by content "
            f"hash, {val_split:g} of each class (--val-split), as for a folder; test rows stay out")


def evaluation_photos(path, classes: list[str]) -> Dataset:
    """The photos `graft evaluate RUN labels.csv` scores, all in `val`: the rows with split=test
    when the file has any, else every row. Labels must be among the run's `classes`."""
    path = Path(path).expanduser()
    has_test = any(r["split"] == "test" for r in read_label_rows(path))
    classes, listed = listed_photos(path, classes=classes, split="test" if has_test else None)
    samples, skipped = identify([(p, label) for p, label, _ in listed])
    _refuse_one_photo_two_labels(path, samples, classes, {str(p): None for p, _, _ in listed}, listed)
    return Dataset(path, classes, [], samples, skipped, "labels:test" if has_test else "labels")


def _lines(path: Path, listed) -> dict[str, int]:
    """{photo path: its line in the label file}, for messages (rows in file order: see listed_photos)."""
    base = path.parent
    line_of = {str(base / r["path"]): r["line"] for r in read_label_rows(path)}
    return {str(p): line_of.get(str(p), 0) for p, _, _ in listed}


def _text(value) -> str:
    return "" if value is None else str(value).strip()
