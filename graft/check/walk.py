"""Which files `graft check` looks at: exactly those `graft train` reads, found by the same walk
(graft.data.folder), plus a finding for everything the walk leaves out and for folder-level
problems train would refuse (mismatched train/ and val/ classes, fewer than two classes)."""

from __future__ import annotations

from pathlib import Path

from graft.data.class_names import class_name_clashes, clash_message
from graft.data.folder import Sample, class_files, class_folders, split_by_hash
from graft.data.labels import listed_photos
from graft.check.findings import Findings
from graft.check.inspect import PhotoFile

IMBALANCE_RATIO = 3.0  # largest class / smallest class beyond which the small one is under-predicted


def collect(root: Path, layout: str, findings: Findings) -> tuple[list[str], list[PhotoFile]]:
    """Classes and candidate files, in graft train's order; what the walk leaves out is reported."""
    split_dirs = [("train", root / "train"), ("val", root / "val")] if layout == "train/val" else [(None, root)]
    if layout == "train/val":
        entries, skips = class_folders(root)
        ignored = "ignored by graft: with train/ and val/ present only they are read"
        for s in skips:  # none of it is read, broken or not
            if s.code == "hidden_file":
                findings.add(s.code, s.path, s.reason)
            else:
                findings.add("not_in_class_folder", s.path, ignored)
        for name, path in entries:
            if name not in ("train", "val"):
                findings.add("not_in_class_folder", path, ignored)
    per_split: dict[str | None, list[tuple[str, Path]]] = {}
    for split, base in split_dirs:
        per_split[split], skips = class_folders(base)
        for s in skips:
            findings.add(s.code, s.path, s.reason)
    classes = [name for name, _ in per_split["train" if layout == "train/val" else None]]
    if layout == "train/val":
        _class_mismatch(root, classes, [name for name, _ in per_split["val"]], findings)
    clashes = class_name_clashes(classes)
    if clashes:  # one finding: they all lie in one folder
        findings.add("class_name_clash", root / "train" if layout == "train/val" else root,
                     clash_message(clashes, "folders", "move their photos into one folder"))
    if len(classes) < 2:
        findings.add("too_few_classes", root / "train" if layout == "train/val" else root,
                     f"{len(classes)} class folder(s) ({', '.join(classes) or 'none'}); graft needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    files: list[PhotoFile] = []
    for split, folders in per_split.items():
        for name, path in folders:
            if name not in index:
                continue
            found, skips = class_files(path)
            for s in skips:
                findings.add(s.code, s.path, s.reason)
            files += [PhotoFile(p, findings.rel(p), name, index[name], split) for p in found]
    return classes, files


def collect_listed(label_file: Path, findings: Findings) -> tuple[list[str], list[PhotoFile], str]:
    """Classes, files and layout ("labels:split" with split=val rows, else "labels": validation by
    content hash) of a label file, as graft train reads it: rows with split=test are not checked
    (train never reads them)."""
    classes, listed = listed_photos(label_file)
    has_val = any(split == "val" for _, _, split in listed)
    files = [PhotoFile(p, findings.rel(p), classes[label], label, (split or "train") if has_val else None)
             for p, label, split in listed if split != "test"]
    return classes, files, "labels:split" if has_val else "labels"


def _class_mismatch(root: Path, train: list[str], val: list[str], findings: Findings) -> None:
    for c in train:
        if c not in val:
            findings.add("class_mismatch", root / "val" / c,
                         f"class {c!r} has a train/ folder but no val/ folder: graft train refuses this")
    for c in val:
        if c not in train:
            findings.add("class_mismatch", root / "val" / c,
                         f"val/ has a folder {c!r} that train/ does not: graft train refuses this")


def assign_splits(files: list[PhotoFile], n_classes: int, layout: str, val_split: float) -> None:
    """The side of each probed file, exactly as graft.data.scan_photos decides it."""
    if layout in ("train/val", "labels:split"):
        for f in files:
            f.split = f.split_dir
        return
    probed = [f for f in files if f.probe_ok]
    samples = [Sample(f.path, f.label, f.digest, f.size) for f in probed]
    by_id = {id(s): f for s, f in zip(samples, probed)}
    train, val = split_by_hash(samples, n_classes, val_split)
    for side, members in (("train", train), ("val", val)):
        for s in members:
            by_id[id(s)].split = side


def class_checks(root: Path, layout: str, files: list[PhotoFile], counts: dict, findings: Findings) -> None:
    """Classes graft train would fail on or refuse, classes without validation photos, imbalance.

    `counts`: usable (decoded) photos per class and side, {class: {"train": n, "val": n}}.
    """
    probed = {c: {"train": 0, "val": 0} for c in counts}
    for f in files:
        if f.probe_ok:
            probed[f.cls][f.split] += 1
    for c, n in counts.items():
        where = (lambda s: root / s / c) if layout == "train/val" else (lambda s: root / c)
        if n["train"] + n["val"] == 0:
            findings.add("empty_class", where("train"), f"class {c!r} has no usable image: graft train fails")
        elif n["train"] == 0:
            findings.add("empty_class", where("train"),
                         f"class {c!r} has no usable training image ({n['val']} in val): graft train fails")
        elif layout == "train/val" and not (root / "val" / c).is_dir():
            pass  # class_mismatch, reported with the folders
        elif layout == "train/val" and probed[c]["val"] == 0:
            findings.add("empty_class", where("val"),
                         f"class {c!r} has no usable image in val/: graft train refuses this")
        elif n["val"] == 0:
            findings.add("no_validation_image", where("val"),
                         f"class {c!r} has no usable validation image: its accuracy is not measured")
    sizes = {c: n["train"] + n["val"] for c, n in counts.items() if n["train"] + n["val"] > 0}
    if len(sizes) >= 2:
        big, small = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
        if sizes[big] > IMBALANCE_RATIO * sizes[small]:
            findings.add("class_imbalance", root,
                         f"classes are imbalanced: {big!r} has {sizes[big]} usable images, {small!r} only "
                         f"{sizes[small]} ({sizes[big] / sizes[small]:.1f}x); the small class will be "
                         f"under-predicted: add photos to it")
