"""graft.data.demo: the offline demo set: its size, no validation pixel among the training crops'
sources, the same photos for the same seed, and a complete set reused as it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("skimage.data")

from graft.data import demo  # noqa: E402


def test_halves_split_a_photo_in_two_parts_that_share_no_pixel():
    img = np.arange(20 * 10 * 4, dtype=np.uint8).reshape(20, 10, 4)  # RGBA: the alpha is dropped
    for split, axis, cut in (("columns", 1, 5), ("rows", 0, 11)):
        first, second = demo._halves(img, split, first=True), demo._halves(img, split, first=False)
        assert first.shape[axis] == cut and first.shape[-1] == 3  # the first 55%
        assert np.array_equal(np.concatenate([first, second], axis=axis), img[..., :3])
    gray = np.zeros((8, 6), np.uint8)
    assert demo._halves(gray, None, first=True).shape == (8, 6, 3)  # a stereo pair: the whole photo


def test_the_demo_set_is_complete_separate_and_repeatable(tmp_path, monkeypatch):
    halves = []
    real_crop = demo._random_crop
    monkeypatch.setattr(demo, "_random_crop", lambda img, rng: halves.append(img.shape) or real_crop(img, rng))
    root = demo.make_demo_photos(tmp_path / "a", seed=3)
    classes = sorted(demo.SOURCES)
    for subset, n in (("train", demo.N_TRAIN), ("val", demo.N_VAL)):
        assert sorted(p.name for p in (root / subset).iterdir()) == classes
        assert all(len(list((root / subset / c).glob("*.jpg"))) == n for c in classes)
    # per class, every training crop comes from the first part and every validation crop from the rest
    per_class = demo.N_TRAIN + demo.N_VAL
    for i, name in enumerate(demo.SOURCES):
        shapes = halves[i * per_class:(i + 1) * per_class]
        train, val = set(shapes[:demo.N_TRAIN]), set(shapes[demo.N_TRAIN:])
        assert len(train) == len(val) == 1
        if demo.SOURCES[name][2] == "columns":
            (th, tw, _), (vh, vw, _) = train.pop(), val.pop()
            assert th == vh and tw == int((tw + vw) * 0.55)
    meta = json.loads((root / "demo.json").read_text())
    assert meta["seed"] == 3 and meta["classes"] == classes
    again = demo.make_demo_photos(tmp_path / "b", seed=3)
    files = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.jpg"))
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_a_complete_set_is_reused_and_an_incomplete_one_is_finished(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    (root / "demo.json").parent.mkdir()
    (root / "demo.json").write_text("{}")
    monkeypatch.setattr(demo, "_photo", lambda name: pytest.fail("a complete set is read again"))
    assert demo.make_demo_photos(root) == root  # the marker says it is complete: nothing is made
    monkeypatch.undo()
    (root / "demo.json").unlink()  # a set killed half way has no marker: it is made (again)
    demo.make_demo_photos(root)
    assert len(list(root.rglob("*.jpg"))) == len(demo.SOURCES) * (demo.N_TRAIN + demo.N_VAL)
