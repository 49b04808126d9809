"""Scan a photo folder into labelled samples, each identified by the SHA-256 of its content.

Two layouts are accepted: `ROOT/train/<class>/*` + `ROOT/val/<class>/*`, or `ROOT/<class>/*`, in
which case the validation split is drawn per class from each file's content hash (the idea of
TensorFlow's retrain.py, which hashed names): a photo's side depends on nothing but its bytes, so
adding photos later never moves an old photo between train and val. The content hash is also the
feature cache's key.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .._digest import sha256_file
from ..errors import GraftError
from .digests import DigestIndex
from .images import SUPPORTED_EXTENSIONS


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


def scan_photos(root, *, val_split: float = 0.2, cache_dir=None) -> Dataset:
    """Find classes and samples under `root`; see the module docstring for the layouts.

    Digests are remembered in the cache folder `cache_dir` (default: graft's cache), so a rescan
    reads only new or changed photos (graft.data.digests)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GraftError(f"photo folder not found: {root}")
    if not 0.0 < val_split < 1.0:
        raise GraftError(f"--val-split must be between 0 and 1, got {val_split}")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train, skipped = scan_class_folders(root / "train", cache_dir=cache_dir)
        _, val, skipped_val = scan_class_folders(root / "val", classes=classes, cache_dir=cache_dir)
        return Dataset(root, classes, train, val, skipped + skipped_val, "train/val")
    classes, samples, skipped = scan_class_folders(root, cache_dir=cache_dir)
    train, val = split_by_hash(samples, len(classes), val_split)
    without_val = sorted(set(classes) - {classes[s.label] for s in val})
    if without_val:
        logging.getLogger("graft").warning(
            "class(es) %s have no validation photo at --val-split %g (too few photos): validation "
            "figures will not cover them", ", ".join(without_val), val_split)
    return Dataset(root, classes, train, val, skipped, "folders")


def scan_class_folders(root, *, classes: list[str] | None = None, cache_dir=None):
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
    return _scan(root, classes, cache_dir)


@contextlib.contextmanager
def _gc_paused():
    """The walk and the lookups make no reference cycles but many small objects (the index's
    entries, paths, samples): the cyclic collector's passes over them made a warm scan of 10k
    photos 2-3x slower than its work, and made its cost grow faster than the photo count.
    (Not paused while photos are read: decoders may leave cycles.)"""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _scan(root: Path, classes: list[str], cache_dir):
    """scan_class_folders' work once the classes are known: walk, look up, read what changed."""
    with _gc_paused():
        index = DigestIndex(root, cache_dir)
        results, todo, skipped = _walk(root, classes, index)
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashing releases the GIL; more for network disks
        for (pos, p, rel, label), (found, entry) in zip(todo, pool.map(lambda t: index.identify(t[1], t[2]), todo)):
            index.record(rel, entry)
            results[pos] = (p, label, found)
    index.save()
    with _gc_paused():
        samples = []
        for p, label, (kind, *rest) in results:
            if kind == "bad":
                skipped.append({"path": str(p), "reason": rest[0]})
            else:
                samples.append(Sample(p, label, rest[0], tuple(rest[1])))
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


def _walk(root: Path, classes: list[str], index: DigestIndex):
    """-> (results, todo, skipped): per image file (path, label, known result or None), the ones
    to read as (position in results, path, relative path, label), and files skipped already."""
    results: list = []
    todo: list[tuple[int, Path, str, int]] = []
    skipped: list[dict] = []
    for label, name in enumerate(classes):
        for rel in _files(root, name):
            full = os.path.join(root, rel)
            try:
                st = os.stat(full)
            except OSError as e:  # a dangling link, or gone since the listing
                st, why = None, f"cannot read file ({e.strerror or e})"
            if st is not None and stat.S_ISDIR(st.st_mode):
                continue
            suffix = _suffix(rel)
            if suffix.lower() not in SUPPORTED_EXTENSIONS:
                skipped.append({"path": full, "reason": f"not a supported image type ({suffix or 'no extension'})"})
                continue
            if st is None:
                skipped.append({"path": full, "reason": why})
                continue
            p = Path(full)
            known = index.lookup(rel, st)
            if known is None:
                todo.append((len(results), p, rel, label))
            results.append((p, label, known))
    return results, todo, skipped


def _files(root: Path, name: str) -> list[str]:
    """Paths (relative to root, '/'-separated) of the non-hidden entries below root/name that are
    not folders walked into, in the order of sorted(Path.rglob("*")). os.walk rather than rglob:
    a warm scan of 10k photos is mostly this walk, and pathlib's per-path parsing doubled it."""
    out: list[tuple[tuple[str, ...], str]] = []
    top = os.path.join(root, name)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = os.path.relpath(dirpath, root).split(os.sep)
        for f in filenames:
            if not f.startswith("."):
                parts = (*base, f)
                out.append((parts, "/".join(parts)))
    out.sort(key=lambda item: item[0])
    return [rel for _, rel in out]


def _suffix(rel: str) -> str:
    """Path(rel).suffix, without building the Path."""
    name = rel.rsplit("/", 1)[-1]
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def split_by_hash(samples: list[Sample], n_classes: int, val_split: float):
    """Stratified split that depends only on file contents (see module docstring).

    Within each class a file goes to val when its hash, read as a number in [0, 1), is below
    `val_split`, so a file's side never changes as photos are added. The one exception keeps a
    class trainable: if every photo of a class falls in val (a class of one or two photos, say),
    its highest-hash photo trains. A class with no validation photo is reported by the caller.
    """
    train, val = [], []
    by_class: list[list[Sample]] = [[] for _ in range(n_classes)]
    for s in samples:
        by_class[s.label].append(s)
    for label in range(n_classes):
        members = sorted(by_class[label], key=lambda s: s.digest)
        in_val = [s for s in members if hash_fraction(s.digest) < val_split]
        if in_val and len(in_val) == len(members):
            in_val = in_val[:-1]
        chosen = {id(s) for s in in_val}
        val += in_val
        train += [s for s in members if id(s) not in chosen]
    return train, val


def hash_fraction(digest: str) -> float:
    return int(digest[:15], 16) / float(16**15)


file_digest = sha256_file  # the content hash that names a photo
