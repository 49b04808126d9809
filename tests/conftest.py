"""Shared fixtures: an isolated cache and offline hubs for every test, and tiny photo sets.

Tests never read ../shared: the photos they need are generated here (coloured shapes on noise,
which the real pretrained backbone separates easily).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


def make_photo(rng: np.random.Generator, kind: str, size=(96, 80)) -> Image.Image:
    """A noisy background with a shape whose colour and form depend on `kind`."""
    w, h = size
    base = rng.integers(90, 160, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(base)
    d = ImageDraw.Draw(img)
    x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
    x1, y1 = x0 + w // 2 + int(rng.integers(0, w // 6)), y0 + h // 2 + int(rng.integers(0, h // 6))
    if kind == "red":
        d.ellipse([x0, y0, x1, y1], fill=(220, int(rng.integers(0, 40)), 30))
    elif kind == "blue":
        d.rectangle([x0, y0, x1, y1], fill=(20, 40, 230 - int(rng.integers(0, 40))))
    else:
        d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=(30, 200, int(rng.integers(0, 50))))
    return img


def make_photo_folder(root: Path, classes=("blue", "red"), per_class=12, seed=0, fmt="JPEG") -> Path:
    rng = np.random.default_rng(seed)
    ext = {"JPEG": ".jpg", "PNG": ".png"}[fmt]
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_photo(rng, c).save(root / c / f"{c}{i:03d}{ext}", format=fmt)
    return root


@pytest.fixture
def photos(tmp_path) -> Path:
    """PHOTOS/<class>/* with two classes of 12 JPEGs each."""
    return make_photo_folder(tmp_path / "photos")
