"""Predict on a folder of files that are not photos (issue 14), in process and through the CLI: each
is refused with its reason and the photos beside them are still scored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EXPECTED, SPECIAL, Children, fill_with_specials, huge_png, make_photo, run_with_timeout


@pytest.fixture(scope="module")
def predict_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    folder = root / "in"
    fill_with_specials(folder, root / "outside")
    (folder / "huge.png").write_bytes(huge_png())
    make_photo(np.random.default_rng(1), "red").save(folder / "good.jpg")
    return folder


@pytest.fixture(scope="module")
def predictions(trained_run, predict_folder):
    import graft

    results = run_with_timeout(lambda: graft.predict(trained_run.run, predict_folder, workers=0), predict_folder.parent)
    return {Path(r["path"]).name: r for r in results}


@pytest.fixture(scope="module")
def children(tmp_path_factory, trained_run, predict_folder):
    """`graft predict` on a folder of traps in a child process, started once the shared trained run is built."""
    kids = Children(tmp_path_factory.mktemp("cli-predict"))
    try:
        kids.start("cli-predict", [sys.executable, "-m", "graft", "predict", str(trained_run.run), str(predict_folder),
                                   "--workers", "0"], timeout=300)
        yield kids
    finally:
        kids.close()


@pytest.mark.parametrize("name", [f"{k}.jpg" for k in SPECIAL] + ["huge.png"])
def test_predict_reports_a_refused_file_and_goes_on(predictions, name):
    r = predictions[name]
    assert "predictions" not in r
    reason = "refused: decoding 9400x9400" if name == "huge.png" else EXPECTED[name.removesuffix(".jpg")]
    assert r["error"].startswith(reason), r
    assert "predictions" in predictions["good.jpg"]  # the good photo in the same batch is scored
    assert "predictions" in predictions["inside.jpg"]  # and the one in the folder named folder.jpg


def test_cli_predict_on_a_folder_of_traps_neither_hangs_nor_prints_a_traceback(children):
    proc = children.result("cli-predict")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0  # one photo was scored
    lines = proc.stdout.splitlines()
    assert sum(": error: refused: " in x for x in lines) == len(SPECIAL) + 1, proc.stdout  # + huge.png
    assert len(lines) == len(SPECIAL) + 3  # + good.jpg and folder.jpg/inside.jpg, scored


# --- issue 22, item 10: every Pillow mode, F included -------------------------------------------------

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La",
         "I;16", "I;16L", "I;16B", "I;16N"]


@pytest.fixture(scope="module")
def predictor(trained_run):
    import graft

    return graft.Predictor(trained_run.run, engine="torch")


def _image_in(mode: str):
    base = make_photo(np.random.default_rng(3), "red")
    try:
        return base.convert(mode)
    except ValueError:  # Pillow converts to some modes only from others
        return base.convert("LA" if mode == "La" else "RGBA").convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_22_10_every_pillow_mode_is_predicted(predictor, mode):
    img = _image_in(mode)
    assert img.mode == mode
    r = predictor.predict(img)
    assert "error" not in r and len(r["predictions"]) == 2, r


@pytest.mark.parametrize("mode", ["F", "I"])
def test_22_10_float_and_int_pixels_read_as_their_grey_levels(predictor, mode):
    """0..255 pixels of a float or int image are those grey levels, as a mode-L image gives."""
    grey = make_photo(np.random.default_rng(4), "blue").convert("L")
    assert np.array_equal(predictor.prepare(grey.convert(mode)), predictor.prepare(grey))


@pytest.mark.parametrize("values", ["nan", "inf", "-inf", "negative", "over-255", "over-65535", "constant-0",
                                    "tiny", "one-pixel"])
def test_22_10_hostile_float_images_are_answered(predictor, values):
    from PIL import Image

    rng = np.random.default_rng(5)
    arr = rng.uniform(0, 255, (60, 70)).astype(np.float32)
    if values == "nan":
        arr[::3] = np.nan
    elif values in ("inf", "-inf"):
        arr[::2] = float(values)
    elif values == "negative":
        arr -= 300
    elif values == "over-255":
        arr *= 100
    elif values == "over-65535":
        arr *= 1e6
    elif values == "constant-0":
        arr[:] = 0
    elif values == "tiny":
        arr = arr[:2, :3]
    else:
        arr = arr[:1, :1]
    crop = predictor.prepare(Image.fromarray(arr, "F"))
    assert crop.dtype == np.uint8 and crop.shape[2] == 3


def test_22_10_float_image_keeps_its_exif_orientation(predictor):
    from PIL import Image

    grey = make_photo(np.random.default_rng(6), "red", size=(120, 60)).convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    as_float = grey.convert("F")
    as_float.info["exif"] = exif.tobytes()
    grey.info["exif"] = exif.tobytes()
    assert np.array_equal(predictor.prepare(as_float), predictor.prepare(grey))


# --- issue 22, item 9: the exported client reads photos as graft does ---------------------------------

def _save(kind: str, folder: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(7)
    rgb = make_photo(rng, "red", size=(90, 70))
    if kind == "png16-grey":
        arr = (np.asarray(rgb.convert("L"), np.uint32) * 257).astype(np.uint16)
        img, ext = Image.fromarray(arr), "png"
    elif kind == "png16-dark":
        arr = (np.asarray(rgb.convert("L"), np.uint32) * 20).astype(np.uint16)  # all under 5,100 of 65,535
        img, ext = Image.fromarray(arr), "png"
    elif kind == "png-rgba-half":
        img, ext = rgb.convert("RGBA"), "png"
        img.putalpha(128)
    elif kind == "png-rgba-holes":
        img, ext = rgb.convert("RGBA"), "png"
        alpha = np.full((70, 90), 255, np.uint8)
        alpha[::2, ::3] = 0
        img.putalpha(Image.fromarray(alpha, "L"))
    elif kind == "png-la":
        img, ext = rgb.convert("LA"), "png"
    elif kind == "png-p-transparent":
        img, ext = rgb.convert("P"), "png"
        img.info["transparency"] = 0
    elif kind == "gif-transparent":
        img, ext = rgb.convert("P"), "gif"
        img.info["transparency"] = 3
    elif kind == "png-1bit":
        img, ext = rgb.convert("1"), "png"
    elif kind == "jpeg-cmyk":
        img, ext = rgb.convert("CMYK"), "jpg"
    elif kind == "jpeg-grey":
        img, ext = rgb.convert("L"), "jpg"
    elif kind == "webp-alpha":
        img, ext = rgb.convert("RGBA"), "webp"
        img.putalpha(100)
    else:
        img, ext = rgb, "bmp"
    path = folder / f"{kind}.{ext}"
    img.save(path, **({"transparency": img.info["transparency"]} if "transparency" in img.info else {}))
    return path


CLIENT_FILES = ["png16-grey", "png16-dark", "png-rgba-half", "png-rgba-holes", "png-la", "png-p-transparent",
                "gif-transparent", "png-1bit", "jpeg-cmyk", "jpeg-grey", "webp-alpha", "bmp"]


@pytest.mark.parametrize("kind", CLIENT_FILES)
def test_22_9_export_client_reads_each_file_as_graft(trained_run, tmp_path, kind):
    pytest.importorskip("onnxruntime")
    from PIL import Image, ImageOps

    from graft.backbones.preprocess import Preprocessing
    from graft.data.images import read_image
    from graft.use import export_client

    path = _save(kind, tmp_path)
    pre = json.loads((trained_run.run / "model.json").read_text())["preprocessing"]
    mine = export_client.to_rgb(ImageOps.exif_transpose(Image.open(path)))
    grafts = read_image(path)
    assert mine.mode == "RGB" and np.array_equal(np.asarray(mine), np.asarray(grafts))
    assert np.array_equal(export_client.preprocess(path, pre), Preprocessing.from_json(pre).crop_array(grafts))


@pytest.mark.parametrize("mode", MODES)
def test_22_9_export_client_converts_every_mode_as_graft(mode):
    pytest.importorskip("onnxruntime")
    from graft.data.images import decoded_to_rgb
    from graft.use import export_client
    from graft.use.inputs import _float_to_l

    img = _image_in(mode)
    grafts = decoded_to_rgb(_float_to_l(img) if mode == "F" else img.convert("LA") if mode == "La" else img)
    assert np.array_equal(np.asarray(export_client.to_rgb(img)), np.asarray(grafts))


def test_22_9_a_16_bit_png_is_not_white_in_the_client(tmp_path):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from graft.use import export_client

    path = _save("png16-grey", tmp_path)
    rgb = np.asarray(export_client.to_rgb(Image.open(path)))
    assert rgb.mean() < 200 and rgb.std() > 10  # Pillow's own convert("RGB") clips it all to 255


@pytest.mark.parametrize("topk", [0, -1, 2.5, True, "3", None])
def test_22_also_topk_out_of_range_is_refused_by_the_predictor(tmp_path, topk):
    """topk <= 0 was silently taken as 1 (the serve side: tests/use/test_adversarial_serve.py)."""
    from graft.errors import GraftError
    from graft.use.predictor import check_topk

    with pytest.raises(GraftError, match="topk must be a whole number >= 1"):
        check_topk(topk)
