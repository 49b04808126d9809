"""The report's augmentation preview is drawn once per set of inputs and then reused from the cache."""

from __future__ import annotations

import importlib

from graft.augment import build
from graft.data import scan_photos
from conftest import make_photo_folder


gallery = importlib.import_module("graft.report.gallery")  # (graft.report.gallery is also a function's name)


def test_the_preview_is_reused_while_its_inputs_stay(tmp_path, monkeypatch):
    data = scan_photos(make_photo_folder(tmp_path / "photos", per_class=4), cache_dir=tmp_path / "cache")
    pipeline = build("light", size=64).describe()
    drawn, draw = [], gallery._draw_preview
    monkeypatch.setattr(gallery, "_draw_preview", lambda *a: drawn.append(1) or draw(*a))
    first = gallery._augmentation_png(pipeline, data, tmp_path / "cache")
    assert gallery._augmentation_png(pipeline, data, tmp_path / "cache") == first and len(drawn) == 1
    assert gallery._augmentation_png(pipeline, data, None) == first  # seeded: a redraw is the same sheet
    other = build("standard", size=64).describe()
    gallery._augmentation_png(other, data, tmp_path / "cache")  # other settings: drawn
    assert len(drawn) == 3
