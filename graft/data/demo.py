"""A small demo photo set that exists on every fresh machine, offline.

scikit-image ships a handful of real photographs inside its wheel. The demo cuts each into
random crops: training crops from one side of the photo, validation crops from the other side
(the motorcycle is a stereo pair: left image for training, right image for validation), so no
validation pixel was seen in training. It is honest about what it is: five photos, five classes
(cat, coffee, rocket, astronaut, motorcycle), enough to exercise the whole pipeline on the real
pretrained backbone in about a minute, not a measure of generalisation to new scenes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from graft._util.atomic import atomic_path, write_json
from graft._util.output import not_regular
from graft.errors import GraftError

# class -> (photo for training crops, photo for validation crops, how to split one photo)
SOURCES = {
    "astronaut": ("astronaut", "astronaut", "columns"),
    "cat": ("chelsea", "chelsea", "columns"),
    "coffee": ("coffee", "coffee", "columns"),
    "motorcycle": ("motorcycle_left", "motorcycle_right", None),
    "rocket": ("rocket", "rocket", "columns"),
}


def _photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    if name.startswith("motorcycle_"):
        left, right, _ = skdata.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skdata, name)()
N_TRAIN, N_VAL = 24, 8


def make_demo_photos(root, *, seed: int = 0, parents: bool = False) -> Path:
    """Write `root/train/<class>/*.jpg` and `root/val/<class>/*.jpg`; reuse them if complete.

    Only into a new or empty folder, or one this function made (its demo.json, written first,
    says so): a user's photos are never overwritten. `parents`: make missing parent folders (the
    cache's own place); a folder the user names must be in one that exists."""
    root = Path(root).expanduser()
    marker = root / "demo.json"
    made = _marker(marker)
    if made is not None and made.get("complete", True):
        return root
    if made is None:
        _check_new(root, parents)
    about = {"seed": seed, "classes": sorted(SOURCES), "train_per_class": N_TRAIN, "val_per_class": N_VAL,
             "source": "scikit-image's bundled photos"}
    write_json(marker, {**about, "complete": False})  # from now on the folder says it is graft's
    rng = np.random.default_rng(seed)
    for name, (train_fn, val_fn, split) in SOURCES.items():
        train_img, val_img = _photo(train_fn), _photo(val_fn)
        train_part, val_part = _halves(train_img, split, first=True), _halves(val_img, split, first=False)
        for subset, img, n in (("train", train_part, N_TRAIN), ("val", val_part, N_VAL)):
            for i in range(n):
                crop = _random_crop(img, rng)
                with atomic_path(root / subset / name / f"{name}-{i:02d}.jpg") as tmp:
                    Image.fromarray(crop).save(tmp, format="JPEG", quality=90)
    write_json(marker, {**about, "complete": True})
    return root


def _marker(path: Path) -> dict | None:
    """demo.json when it is a regular file holding a JSON object (the folder is the demo's), else None."""
    if not_regular(path) is not None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _check_new(root: Path, parents: bool) -> None:
    """Refuse (one GraftError) a demo folder that is not new or empty, or whose parent is missing."""
    if not parents and not root.parent.is_dir():
        raise GraftError(f"--data {root}: the folder {root.parent} does not exist; create it first or give "
                         f"another folder")
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise GraftError(f"--data {root} is not a folder; give a new or empty folder for the demo photos")
    entries = sorted(e.name for e in root.iterdir()) if root.is_dir() else []
    if entries:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise GraftError(f"--data {root} is a folder graft demo did not make (it holds {shown}); give a new "
                         f"or empty folder: its photos are never overwritten")


def _halves(img: np.ndarray, split, *, first: bool) -> np.ndarray:
    """Train on the first 55% of the photo along `split`, validate on the last 45%."""
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if split is None:
        return img
    axis = 1 if split == "columns" else 0
    cut = int(img.shape[axis] * 0.55)
    if axis == 1:
        return img[:, :cut] if first else img[:, cut:]
    return img[:cut] if first else img[cut:]


def _random_crop(img: np.ndarray, rng) -> np.ndarray:
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.6, 1.0))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = img[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)
