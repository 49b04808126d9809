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

import csv
import json
import logging
from pathlib import Path

from graft.errors import GraftError
from graft.data.class_names import refuse_clashing_class_names
from graft.data.folder import VAL_SPLIT, Dataset, identify, split_by_hash, tell_once, warn_classes_without_val

LABEL_FILE_SUFFIXES = (".csv", ".jsonl")
SPLITS = ("train", "val", "test")


def read_label_rows(path) -> list[dict]:
    """Rows as {"path", "label", "split" or None, "line"}; one clear GraftError per kind of
    mistake (missing column, empty label, unknown split), naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel writes a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise GraftError(f"cannot read label file {path}: {e}") from None
    if path.suffix.lower() == ".jsonl":
        raw = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise GraftError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise GraftError(f"{path}:{n}: each line must be a JSON object with \"path\" and \"label\"")
            raw.append((n, obj))
        columns = set().union(*(o.keys() for _, o in raw)) if raw else set()
    else:
        reader = csv.DictReader(text.splitlines())
        columns = {c.strip() for c in (reader.fieldnames or [])}
        raw = [(n, {(k or "").strip(): v for k, v in row.items()}) for n, row in enumerate(reader, 2)]
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise GraftError(f"{path} has no {' or '.join(repr(c) for c in missing)} column "
                         f"(found: {', '.join(sorted(columns)) or 'none'}); graft reads path,label[,split]")
    rows = []
    for n, obj in raw:
        p, label, split = (_text(obj.get(k)) for k in ("path", "label", "split"))
        if not p:
            raise GraftError(f"{path}:{n}: empty path")
        if not label:
            raise GraftError(f"{path}:{n}: empty label for {p}")
        if split and split.lower() not in SPLITS:
            raise GraftError(f"{path}:{n}: unknown split {split!r} (use {', '.join(SPLITS)})")
        rows.append({"path": p, "label": label, "split": split.lower() if split else None, "line": n})
    if not rows:
        raise GraftError(f"{path} lists no photos")
    return rows


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
    seen: dict[str, int] = {}
    for r in rows:
        key = str(base / r["path"])
        if key in seen:
            raise GraftError(f"{path}:{r['line']}: {r['path']} is listed twice (also line {seen[key]}); "
                             f"list each photo once")
        seen[key] = r["line"]
    missing = [r for r in rows if not (base / r["path"]).exists() and not (base / r["path"]).is_symlink()]
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


def scan_label_file(path, *, val_split: float = VAL_SPLIT) -> Dataset:
    """The Dataset a label file describes for training (see the module docstring)."""
    path = Path(path).expanduser()
    classes, listed = listed_photos(path)
    samples, skipped = identify([(p, label) for p, label, _ in listed])
    side = {str(p): s for p, _, s in listed}
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
    return Dataset(path, classes, [], samples, skipped, "labels:test" if has_test else "labels")


def _text(value) -> str:
    return "" if value is None else str(value).strip()
