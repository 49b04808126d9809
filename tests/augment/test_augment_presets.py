"""Tests of graft.augment's presets, the user's overrides (command line and config files), and
the preview sheet."""

import json

import pytest
import torch
from PIL import Image
from test_augment import H, W, gen, gradient, one_thread  # noqa: F401  (one_thread: autouse)

from graft import augment as A
from graft.augment import functional as AF
from graft.errors import GraftError


# ---------------------------------------------------------------- presets and overrides


@pytest.mark.parametrize("preset", list(A.PRESETS))
def test_presets_build(preset):
    pipe = A.build(preset, size=32)
    assert pipe.ops[0].name == "crop"
    out = pipe(gradient(), gen(0))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    json.dumps(pipe.describe())


def test_none_preset_only_resizes_and_standard_is_default():
    pipe = A.build("none", size=(24, 32))
    assert [op.name for op in pipe.ops] == ["crop"]
    img = gradient()
    assert torch.equal(pipe(img, gen(0)), AF.resized_crop(img, 0, 0, H, W, (24, 32)))
    assert A.build().describe() == A.build("standard").describe()
    with pytest.raises(ValueError, match="valid presets: none, light, standard, heavy"):
        A.build("medium")


def test_parse_overrides():
    parsed = A.parse_overrides(" flip=0.5, rotate=15,rgb_shift=8,crop_scale=0.35-1,rgb_shift_dist=uniform ")
    assert parsed == {"flip": 0.5, "rotate": 15.0, "rgb_shift": 8.0, "crop_scale": (0.35, 1.0),
                      "rgb_shift_dist": "uniform"}
    assert A.parse_overrides("") == {}
    d = A.build("light", "rotate=15,rgb_shift=8,crop_scale=0.35-1", size=32).describe()
    assert d["rotate"]["degrees"] == 15.0 and d["rgb_shift"]["std"] == 8.0
    assert d["crop"]["scale"] == [0.35, 1.0]
    assert A.build("standard", {"rotate": 0}).describe().get("rotate") is None


@pytest.mark.parametrize(
    "text, needles",
    [
        ("rotat=15", ["'rotat'", "did you mean 'rotate'", "valid keys: crop_scale, crop_ratio"]),
        ("flip=2", ["flip=2", "probability between 0 and 1"]),
        ("rotate=abc", ["rotate=abc", "number between 0 and 180"]),
        ("rotate=nan", ["rotate=nan"]),
        ("crop_scale=0.35", ["crop_scale=0.35", "range low-high"]),
        ("crop_scale=0.8-0.3", ["crop_scale=0.8-0.3"]),
        ("crop_scale=0-1", ["crop_scale=0-1", "0 < low"]),
        ("crop_scale=0.2-0.5-1", ["crop_scale=0.2-0.5-1"]),
        ("rotate", ["'rotate' is not key=value", "valid keys"]),
        ("rotate=15,rotate=20", ["'rotate' is given twice"]),
        ("rgb_shift_dist=gauss", ["rgb_shift_dist=gauss", "one of normal, uniform"]),
    ],
)
def test_parse_overrides_errors(text, needles):
    with pytest.raises(ValueError) as info:
        A.parse_overrides(text)
    for needle in needles:
        assert needle in str(info.value)


def test_load_overrides_from_json_and_toml(tmp_path):
    (tmp_path / "aug.json").write_text(json.dumps({"augment": {"rotate": 12, "crop_scale": [0.5, 1]}}))
    (tmp_path / "aug.toml").write_text('rotate = 12\ncrop_scale = "0.5-1"\n')
    for name in ("aug.json", "aug.toml"):
        assert A.load_overrides(tmp_path / name) == {"rotate": 12.0, "crop_scale": (0.5, 1.0)}
    (tmp_path / "bad.toml").write_text("flip = true\n")
    with pytest.raises(ValueError, match="bad.toml: augment override flip=True"):
        A.load_overrides(tmp_path / "bad.toml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(GraftError, match="not valid JSON"):
        A.load_overrides(tmp_path / "broken.json")
    with pytest.raises(GraftError, match="cannot read"):
        A.load_overrides(tmp_path / "missing.toml")
    with pytest.raises(GraftError, match=".json or .toml"):
        A.load_overrides(tmp_path / "aug.yaml")


def test_preset_table_lists_every_preset_and_knob():
    table = A.preset_table()
    for word in [*A.PRESETS, *A.KNOBS, "standard*"]:
        assert word in table


def test_build_with_fitted_pca():
    vals, vecs = A.fit_pca([gradient(), gradient(offset=30)])
    d = A.build("standard", pca=(vals, vecs)).describe()
    assert d["pca_color"]["eigvals"] == vals and d["pca_color"]["eigvecs"] == vecs
    assert A.build("standard", pca={"eigvals": vals, "eigvecs": vecs}).describe() == d


# ---------------------------------------------------------------- preview


def test_preview_grid_layout_and_atomic_write(tmp_path):
    photos = [gradient(), Image.fromarray(gradient(40, 40, offset=30).permute(1, 2, 0).numpy())]
    pipe = A.build("heavy", size=24)
    out = tmp_path / "sheet.png"
    assert A.preview_grid(photos, pipe, out, n_draws=3, seed=1, cell=40) == out
    row = A.preview.LABEL_H + 40
    with Image.open(out) as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == ((1 + 3) * 40, (len(photos) + len(pipe.ops)) * row)
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp file left behind
    first = out.read_bytes()
    A.preview_grid(photos, pipe.config(), out, n_draws=3, seed=1, cell=40)
    assert out.read_bytes() == first  # same seed, same sheet

    small = tmp_path / "small.png"
    A.preview_grid(photos[:1], {"crop": {"size": 24}, "rotate": {"degrees": 10}}, small, n_draws=2, cell=40)
    with Image.open(small) as sheet:
        assert sheet.size == (3 * 40, (1 + 2) * row)
