"""What a PHOTOS argument names: a folder of class folders, or a label file listing the photos.

Every command that takes PHOTOS (train, check, evaluate, calibrate, report) asks here first, so a
label file works wherever a folder does.
"""

from __future__ import annotations

from pathlib import Path

from graft.errors import GraftError
from graft.data.folder import VAL_SPLIT, Dataset, scan_folder
from graft.data.labels import LABEL_FILE_SUFFIXES, scan_label_file


def photo_layout(root, val_split: float = VAL_SPLIT) -> tuple[Path, str]:
    """(root, layout): "train/val" (ROOT/train + ROOT/val), "folders" (ROOT/<class>/*) or "labels"
    (a .csv/.jsonl file of path,label[,split]). A missing one or a bad split is an error."""
    root = Path(root).expanduser()
    if not 0.0 < val_split < 1.0:
        raise GraftError(f"--val-split must be between 0 and 1, got {val_split}")
    if root.suffix.lower() in LABEL_FILE_SUFFIXES and root.is_file():
        return root, "labels"
    if not root.is_dir():
        raise GraftError(f"photo folder (or .csv/.jsonl label file) not found: {root}")
    return root, "train/val" if (root / "train").is_dir() and (root / "val").is_dir() else "folders"


def scan_photos(root, *, val_split: float = VAL_SPLIT, cache_dir=None) -> Dataset:
    """Classes and samples, split into train and val, of a photo folder or a label file
    (`cache_dir`: where a folder's digest index lives; see graft.data.digests)."""
    root, layout = photo_layout(root, val_split)
    if layout == "labels":
        return scan_label_file(root, val_split=val_split)
    return scan_folder(root, layout, val_split=val_split, cache_dir=cache_dir)


def is_label_file(path) -> bool:
    p = Path(path).expanduser()
    return p.suffix.lower() in LABEL_FILE_SUFFIXES and p.is_file()
