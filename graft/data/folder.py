"""Scan a photo folder into labelled samples, each identified by the SHA-256 of its content.

Two folder layouts are accepted (and label files, see labels.py): `ROOT/train/<class>/*` + `ROOT/val/<class>/*`, or `ROOT/<class>/*`, in
which case the validation split is drawn per class from each file's content hash (the idea of
TensorFlow's retrain.py, which hashed names): a photo's side depends on nothing but its bytes, so
adding photos later never moves an old photo between train and val. The content hash is also the
feature cache's key.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .._digest import sha256_file
from ..errors import GraftError, ImageError
from .images import SUPPORTED_EXTENSIONS, probe_image


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    digest: str  # sha256 of the file's bytes
    size: tuple[int, int] = (0, 0)  # (width, height) after EXIF orientation, from the header


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: list[dict] = field(default_factory=list)  # [{path, reason}]
    layout: str = "folders"  # "train/val" or "folders" (split by hash)


def scan_photos(root, *, val_split: float = 0.2) -> Dataset:
    """Find classes and samples under `root`; see the module docstring for the layouts."""
    root = Path(root).expanduser()
    if not 0.0 < val_split < 1.0:
        raise GraftError(f"--val-split must be between 0 and 1, got {val_split}")
    from .labels import is_label_file, scan_label_file

    if is_label_file(root):
        return scan_label_file(root, val_split=val_split)
    if not root.is_dir():
        raise GraftError(f"photo folder (or .csv/.jsonl label file) not found: {root}")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train, skipped = scan_class_folders(root / "train")
        _, val, skipped_val = scan_class_folders(root / "val", classes=classes)
        return Dataset(root, classes, train, val, skipped + skipped_val, "train/val")
    classes, samples, skipped = scan_class_folders(root)
    train, val = split_by_hash(samples, len(classes), val_split)
    warn_classes_without_val(classes, val, val_split)
    return Dataset(root, classes, train, val, skipped, "folders")


def warn_classes_without_val(classes: list[str], val: list[Sample], val_split: float) -> None:
    without_val = sorted(set(classes) - {classes[s.label] for s in val})
    if without_val:
        logging.getLogger("graft").warning(
            "class(es) %s have no validation photo at --val-split %g (too few photos): validation "
            "figures will not cover them", ", ".join(without_val), val_split)


def scan_class_folders(root, *, classes: list[str] | None = None):
    """Read `root/<class>/*`. With `classes` given (validation / evaluation), folders must match.

    Returns (classes, samples, skipped). Unusable files are skipped, not fatal; a class left
    with no usable image is an error, because training on it would silently drop a class.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GraftError(f"photo folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        if len(found) < 2:
            raise GraftError(
                f"{root} has {len(found)} class folder(s) ({', '.join(found) or 'none'}); "
                f"graft needs at least two: one sub-folder of photos per class"
            )
        classes = found
    else:
        missing = [c for c in classes if c not in found]
        extra = [c for c in found if c not in classes]
        if missing:
            raise GraftError(f"{root} has no folder for class(es) {', '.join(missing)}")
        if extra:
            raise GraftError(
                f"{root} has folder(s) {', '.join(extra)} that are not classes of this model "
                f"({', '.join(classes)})"
            )
    files: list[tuple[Path, int]] = []
    skipped: list[dict] = []
    for label, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if any(part.startswith(".") for part in p.relative_to(root).parts) or p.is_dir():
                continue
            if p.suffix.lower() not in SUPPORTED_EXTENSIONS:
                skipped.append({"path": str(p), "reason": f"not a supported image type ({p.suffix or 'no extension'})"})
                continue
            files.append((p, label))
    samples, more = identify(files)
    skipped += more
    counts = [0] * len(classes)
    for s in samples:
        counts[s.label] += 1
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise GraftError(
            f"class folder(s) with no usable image: {', '.join(str(root / c) for c in empty)} "
            f"(supported: {', '.join(sorted(set(SUPPORTED_EXTENSIONS)))})"
        )
    return list(classes), samples, skipped


def split_by_hash(samples: list[Sample], n_classes: int, val_split: float):
    """Stratified split that depends only on file contents (see module docstring).

    Within each class a file goes to val when its hash, read as a number in [0, 1), is below
    `val_split`, so a file's side never changes as photos are added. The one exception keeps a
    class trainable: if every photo of a class falls in val (a class of one or two photos, say),
    its highest-hash photo trains. A class with no validation photo is reported by the caller.
    """
    train, val = [], []
    for label in range(n_classes):
        members = sorted((s for s in samples if s.label == label), key=lambda s: s.digest)
        in_val = [s for s in members if hash_fraction(s.digest) < val_split]
        if in_val and len(in_val) == len(members):
            in_val = in_val[:-1]
        chosen = {id(s) for s in in_val}
        val += in_val
        train += [s for s in members if id(s) not in chosen]
    return train, val


def identify(files: list[tuple[Path, int]]) -> tuple[list[Sample], list[dict]]:
    """Read, probe and hash each (path, label): the one door from a listed file to a Sample,
    whether the list came from folders or a label file. Returns (samples, skipped)."""
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashing releases the GIL
        results = list(pool.map(lambda item: _identify(*item), files))
    samples, skipped = [], []
    for r in results:
        if isinstance(r, ImageError):
            skipped.append({"path": r.path, "reason": r.reason})
        else:
            samples.append(r)
    return samples, skipped


def hash_fraction(digest: str) -> float:
    return int(digest[:15], 16) / float(16**15)


file_digest = sha256_file  # the content hash that names a photo


def _identify(path: Path, label: int):
    try:
        data = path.read_bytes()
    except OSError as e:
        return ImageError(path, f"cannot read file ({e.strerror or e})")
    try:
        _, size = probe_image(path, data)
    except ImageError as e:
        return e
    return Sample(path, label, hashlib.sha256(data).hexdigest(), size)
