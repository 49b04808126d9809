"""A small demo photo set that exists on every fresh machine, offline.

scikit-image ships a handful of real photographs inside its wheel. The demo cuts each into
random crops: training crops from one side of the photo, validation crops from the other side
(the motorcycle is a stereo pair: left image for training, right image for validation), so no
validation pixel was seen in training. It is honest about what it is: five photos, five classes
(cat, coffee, rocket, astronaut, motorcycle), enough to exercise the whole pipeline on the real
pretrained backbone in about a minute, not a measure of generalisation to new scenes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from graft._util.atomic import atomic_path, write_json

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


def make_demo_photos(root, *, seed: int = 0) -> Path:
    """Write `root/train/<class>/*.jpg` and `root/val/<class>/*.jpg`; reuse them if complete."""
    root = Path(root).expanduser()
    marker = root / "demo.json"
    if marker.is_file():
        return root
    rng = np.random.default_rng(seed)
    for name, (train_fn, val_fn, split) in SOURCES.items():
        train_img, val_img = _photo(train_fn), _photo(val_fn)
        train_part, val_part = _halves(train_img, split, first=True), _halves(val_img, split, first=False)
        for subset, img, n in (("train", train_part, N_TRAIN), ("val", val_part, N_VAL)):
            for i in range(n):
                crop = _random_crop(img, rng)
                with atomic_path(root / subset / name / f"{name}-{i:02d}.jpg") as tmp:
                    Image.fromarray(crop).save(tmp, format="JPEG", quality=90)
    write_json(marker, {"seed": seed, "classes": sorted(SOURCES), "train_per_class": N_TRAIN,
                        "val_per_class": N_VAL, "source": "scikit-image's bundled photos"})
    return root


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
