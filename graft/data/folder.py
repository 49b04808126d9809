"""Scan a photo folder into labelled samples, each identified by the SHA-256 of its content.

Two folder layouts are accepted (label files are the other door, labels.py; source.py says which
PHOTOS names): `ROOT/train/<class>/*` + `ROOT/val/<class>/*`, or `ROOT/<class>/*`, in which case the validation split is drawn per class from each file's content hash (the idea of
TensorFlow's retrain.py, which hashed names): a photo's side depends on nothing but its bytes, so
adding photos later never moves an old photo between train and val. The content hash is also the
feature cache's key.

What is read, and what is left out, is decided once, by `class_folders` and `class_files`: hidden
entries, files next to the class folders, symbolic links to folders (not followed), loops and
unsupported extensions (a pipe or device named like a photo is then refused unread by
`graft._util.files.open_regular`). `graft train` and `graft check` both walk with them, so they always agree on which
files a folder holds.

Reading is what costs at scale (every photo, every run), so each file's result is remembered in a
digest index under its stat (graft.data.digests): a rescan stats every file but reads only the new
or changed ones, through the same bounded, regular-files-only path.
"""

from __future__ import annotations

import errno
import contextlib
import gc
import hashlib
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from graft._util.digest import sha256_file
from graft.errors import GraftError
from graft.data.class_names import refuse_clashing_class_names
from graft.data.digests import DigestIndex, identify_file
from graft.data.images import SUPPORTED_EXTENSIONS

VAL_SPLIT = 0.2  # the share of each class held out for validation when the photos have no val/


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
    skipped: list[dict] = field(default_factory=list)  # [{path, reason, code}]: code says why for programs
    layout: str = "folders"  # "train/val" or "folders" (split by hash)


def scan_folder(root: Path, layout: str, *, val_split: float = VAL_SPLIT, cache_dir=None) -> Dataset:
    """Find classes and samples under the folder `root` laid out as `layout` ("train/val" or
    "folders", see graft.data.source.photo_layout and the module docstring).

    Digests are remembered in the cache folder `cache_dir` (default: graft's cache), so a rescan
    reads only new or changed photos (graft.data.digests)."""
    if layout == "train/val":
        classes, train, skipped = scan_class_folders(root / "train", cache_dir=cache_dir)
        _, val, skipped_val = scan_class_folders(root / "val", classes=classes, cache_dir=cache_dir)
        return Dataset(root, classes, train, val, skipped + skipped_val, "train/val")
    classes, samples, skipped = scan_class_folders(root, cache_dir=cache_dir)
    train, val = split_by_hash(samples, len(classes), val_split)
    warn_classes_without_val(root, classes, val, val_split)
    return Dataset(root, classes, train, val, skipped, "folders")


def warn_classes_without_val(photos, classes: list[str], val: list[Sample], val_split: float) -> None:
    without_val = sorted(set(classes) - {classes[s.label] for s in val})
    if without_val:
        tell_once(photos, f"class(es) {', '.join(without_val)} have no validation photo at --val-split "
                   f"{val_split:g} (too few photos): validation figures will not cover them")


_warned: set[tuple[str, str]] = set()


def tell_once(photos, message: str, level: int = logging.WARNING) -> None:
    """One process scans the same photos more than once (train, then its report; calibrate):
    the user is told about them once. Once per photo set, not per process: a notebook that trains
    on two folders with the same class names hears about each."""
    key = (str(photos), message)
    if key not in _warned:
        _warned.add(key)
        logging.getLogger("graft").log(level, "%s", message)


def scan_class_folders(root, *, classes: list[str] | None = None, cache_dir=None):
    """Read `root/<class>/*`. With `classes` given (validation / evaluation), folders must match.

    Returns (classes, samples, skipped). Unusable files are skipped, not fatal; a class left
    with no usable image is an error, because training on it would silently drop a class.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GraftError(f"photo folder not found: {root}")
    folders, _ = class_folders(root)  # what lies beside the class folders is not training data
    found = [name for name, _ in folders]
    if classes is None:
        if len(found) < 2:
            raise GraftError(
                f"{root} has {len(found)} class folder(s) ({', '.join(found) or 'none'}); "
                f"graft needs at least two: one sub-folder of photos per class"
            )
        refuse_clashing_class_names(root, found, "folders", "move their photos into one folder")
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
    with _gc_paused():
        files, skipped, index, results, todo = _walk_and_look_up(root, classes, cache_dir)
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashing releases the GIL; more for network disks
        for (pos, _, rel), (found, entry) in zip(todo, pool.map(lambda t: index.identify(t[1], t[2]), todo)):
            index.record(rel, entry)
            results[pos] = found
    index.save()
    with _gc_paused():
        samples = []
        for (p, label), (kind, *rest) in zip(files, results):
            if kind == "bad":
                skipped.append({"path": str(p), "reason": rest[0], "code": rest[1]})
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


def split_by_hash(samples: list[Sample], n_classes: int, val_split: float):
    """Stratified split that depends only on file contents (see module docstring).

    Within each class a file goes to val when its hash, read as a number in [0, 1), is below
    `val_split`, so a file's side never changes as photos are added. The one exception keeps a
    class trainable: if every photo of a class falls in val (a class of one or two photos, say),
    its highest-hash photo trains. A class with no validation photo is reported by the caller.
    """
    def below(members: list[Sample]) -> list[Sample]:
        in_val = [s for s in members if hash_fraction(s.digest) < val_split]
        return in_val[:-1] if in_val and len(in_val) == len(members) else in_val

    return _hash_split(samples, n_classes, None, below)


def inner_split(data: Dataset, share: float, seed: int = 0) -> Dataset:
    """Fine-tuning's early-stopping photos, carved from the TRAINING photos: per class, the
    `share` with the lowest hash of (seed, content digest), at least one when the class has two
    or more photos. A hash of its own (not the train/val one, which placed every training photo
    above val_split), so the carve does not depend on file order; an exact share, not a
    threshold: nothing here must hold still as photos are added. Calibration finds these photos
    again from the share and seed model.json records. -> Dataset(train=the rest, val=the held)."""
    def share_of(members: list[Sample]) -> list[Sample]:
        n = min(max(int(round(share * len(members))), 1), len(members) - 1) if len(members) > 1 else 0
        return members[:n]

    train, held = _hash_split(data.train, len(data.classes), f"inner:{seed}", share_of)
    return Dataset(data.root, data.classes, train, held, data.skipped, data.layout)


def _hash_split(samples: list[Sample], n_classes: int, salt: str | None, held_of):
    """The one content-hash splitter: per class, the photos ordered by their content hash (salted:
    by SHA-256 of "salt:digest", an order of its own), `held_of(ordered members)` held out.
    -> (the rest, the held), each class after the other, in that order."""
    def order(s: Sample):
        return s.digest if salt is None else hashlib.sha256(f"{salt}:{s.digest}".encode()).digest()

    rest, held = [], []
    for label in range(n_classes):
        members = sorted((s for s in samples if s.label == label), key=order)
        chosen = held_of(members)
        picked = {id(s) for s in chosen}
        held += chosen
        rest += [s for s in members if id(s) not in picked]
    return rest, held


def _walk_and_look_up(root: Path, classes: list[str], cache_dir):
    """-> (files as (path, label), skipped, the digest index, per file the index's result or
    None, and the files to read as (position, path, path relative to root))."""
    files: list[tuple[Path, int]] = []
    skipped: list[dict] = []
    for label, name in enumerate(classes):
        paths, left_out = class_files(root / name)
        files += [(p, label) for p in paths]
        skipped += [{"path": str(s.path), "reason": s.reason, "code": s.code}
                    for s in left_out if s.code in SKIPPED_FILE_CODES]
    index = DigestIndex(root, cache_dir)
    prefix = len(str(root)) + 1  # the walk's paths all lie under root: slicing beats relative_to
    results: list = []
    todo: list[tuple[int, Path, str]] = []
    for p, _ in files:
        rel = str(p)[prefix:]
        try:
            known = index.lookup(rel, os.stat(p))
        except OSError:  # gone since the listing, or a dangling link: the read says which
            known = None
        if known is None:
            todo.append((len(results), p, rel))
        results.append(known)
    return files, skipped, index, results, todo


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


def identify(files: list[tuple[Path, int]]) -> tuple[list[Sample], list[dict]]:
    """Read, probe and hash each (path, label): the one door from a listed file to a Sample,
    whether the list came from folders or a label file. Returns (samples, skipped)."""
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashing releases the GIL
        results = list(pool.map(lambda item: identify_file(item[0])[0], files))
    samples, skipped = [], []
    for (p, label), (kind, *rest) in zip(files, results):
        if kind == "bad":
            skipped.append({"path": str(p), "reason": rest[0], "code": rest[1]})
        else:
            samples.append(Sample(p, label, rest[0], tuple(rest[1])))
    return samples, skipped


def hash_fraction(digest: str) -> float:
    return int(digest[:15], 16) / float(16**15)


file_digest = sha256_file  # the content hash that names a photo


def spread_over_classes(samples: list[Sample], n: int) -> list[Sample]:
    """Up to `n` of `samples`, one per class before any class gets a second, and the same ones
    every time (ordered by content hash): the photos an augmentation preview shows."""
    picked, seen = [], set()
    n_classes = len({s.label for s in samples})
    for s in sorted(samples, key=lambda s: s.digest):
        if len(picked) == n:
            break
        if s.label not in seen or len(seen) == n_classes:
            picked.append(s)
            seen.add(s.label)
    return picked


# --- the walk -------------------------------------------------------------------------------------

# Skip codes for files a user meant as photos: `graft train` lists them as skipped. The others
# (hidden entries, linked folders, loose files beside the class folders) are left out silently.
SKIPPED_FILE_CODES = frozenset({"unsupported_type", "unreadable", "symlink_loop"})


@dataclass(frozen=True)
class Skip:
    """An entry the walk leaves out: `code` says why for programs, `reason` for people."""

    path: Path
    code: str  # hidden_file, not_in_class_folder, symlinked_folder, symlink_loop, unreadable, unsupported_type
    reason: str


def class_folders(base) -> tuple[list[tuple[str, Path]], list[Skip]]:
    """The class folders directly under `base` as (name, path), sorted; and what else lies there."""
    folders, skips = [], []
    for entry in _entries(Path(base)):
        path = Path(entry.path)
        kind = _kind(entry, path, skips)
        if kind == "dir":
            folders.append((entry.name, path))
        elif kind == "file":
            skips.append(Skip(path, "not_in_class_folder",
                              "a file next to the class folders, not inside one: ignored by graft"))
    return folders, skips


def class_files(folder) -> tuple[list[Path], list[Skip]]:
    """The image files under one class folder, sorted, and what the walk left out.

    Sub-folders are searched; hidden entries and symbolically linked folders are not (a link
    into an ancestor would never end), nor a folder that is its own ancestor (a bind mount).
    """
    folder = Path(folder)
    found: list[Path] = []
    skips: list[Skip] = []
    _walk(folder, found, skips, {_inode(folder)})
    return sorted(found), skips


def _walk(folder: Path, found: list[Path], skips: list[Skip], visited: set) -> None:
    for entry in _entries(folder):
        path = Path(entry.path)
        kind = _kind(entry, path, skips)
        if kind == "dir":
            if entry.is_symlink():
                skips.append(Skip(path, "symlinked_folder", "a symbolic link to a folder: graft does not "
                                  "look inside it, its photos are not used"))
                continue
            key = _inode(path)
            if key in visited:
                skips.append(Skip(path, "symlink_loop", "folder loop: this folder is one of its own ancestors"))
                continue
            _walk(path, found, skips, visited | {key})
        elif kind == "file":
            if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                skips.append(Skip(path, "unsupported_type",
                                  f"not a supported image type ({path.suffix or 'no extension'}): ignored by "
                                  f"graft (supported: {', '.join(sorted(set(SUPPORTED_EXTENSIONS)))})"))
                continue
            found.append(path)


def _entries(base: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(base) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _inode(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _kind(entry: os.DirEntry, path: Path, skips: list[Skip]) -> str | None:
    """'dir', 'file' (anything else that exists) or None (left out with a Skip); loops are found
    here, never followed."""
    if entry.name.startswith("."):
        skips.append(Skip(path, "hidden_file", "hidden, ignored by graft"))
        return None
    is_link = False
    try:
        is_link = entry.is_symlink()
        st = os.stat(path)  # follows links; a loop raises ELOOP
    except OSError as e:
        if e.errno == errno.ELOOP:
            skips.append(Skip(path, "symlink_loop", "symbolic link loop (the link resolves to itself)"))
        elif is_link:
            skips.append(Skip(path, "unreadable", f"broken symbolic link (its target {_link_target(path)} "
                              f"is missing)"))
        else:
            skips.append(Skip(path, "unreadable", f"cannot read ({e.strerror or e})"))
        return None
    if stat.S_ISDIR(st.st_mode):
        if is_link:
            target = Path(os.path.realpath(path))
            parent = Path(os.path.realpath(path.parent))
            if target == parent or target in parent.parents:
                skips.append(Skip(path, "symlink_loop",
                                  f"symbolic link loop: it points to {target}, a folder that contains it"))
                return None
        return "dir"
    return "file"  # a pipe or device among the photos is refused unread by open_regular


def _link_target(path: Path) -> str:
    try:
        return repr(os.readlink(path))
    except OSError:
        return "?"
