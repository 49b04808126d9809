"""graft.data.images: every supported format and Pillow mode comes out as 8-bit RGB of the right
size, EXIF orientation is applied, JPEGs decode at reduced size on request, and unusable files
raise an ImageError that names the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, features

from graft.data.images import probe_image, read_image
from graft.errors import GraftError, ImageError

W, H = 40, 30
RED = (200, 30, 40)
BLUE = (20, 40, 220)


def _close(pixel, expected, tol=12):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _assert_rgb(img: Image.Image, size=(W, H)):
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == size
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr


def _two_halves(size=(W, H)) -> Image.Image:
    """Left half RED, right half BLUE."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = RED
    arr[:, w // 2 :] = BLUE
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    "ext, fmt, kwargs",
    [
        (".jpg", "JPEG", {"quality": 95}),
        (".jpeg", "JPEG", {"quality": 95}),
        (".png", "PNG", {}),
        (".bmp", "BMP", {}),
        (".gif", "GIF", {}),
        pytest.param(".webp", "WEBP", {"quality": 95}, marks=pytest.mark.skipif(
            not features.check("webp"), reason="Pillow built without WebP")),
    ],
)
def test_formats_read_as_rgb(tmp_path, ext, fmt, kwargs):
    path = tmp_path / f"img{ext}"
    _two_halves().save(path, format=fmt, **kwargs)
    arr = _assert_rgb(read_image(path))
    assert _close(arr[H // 2, 3], RED, tol=25)
    assert _close(arr[H // 2, W - 4], BLUE, tol=25)
    assert probe_image(path) == (fmt, (W, H))


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (W, H), RED), Image.new("RGB", (W, H), BLUE), Image.new("RGB", (W, H), (0, 200, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3  # really animated
    arr = _assert_rgb(read_image(path))
    assert _close(arr[5, 5], RED, tol=20)
    assert _close(arr[H - 5, W - 5], RED, tol=20)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    _two_halves().convert("CMYK").save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    arr = _assert_rgb(read_image(path))
    assert _close(arr[H // 2, 3], RED, tol=30)
    assert _close(arr[H // 2, W - 4], BLUE, tol=30)


def test_palette_with_transparency_composited_over_white(tmp_path):
    path = tmp_path / "pal.png"
    img = Image.new("P", (W, H), 0)
    img.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)
    img.paste(1, (0, 0, W // 2, H))  # left half opaque red, right half index 0 = transparent
    img.save(path, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    arr = _assert_rgb(read_image(path))
    assert tuple(arr[H // 2, 3]) == RED
    assert tuple(arr[H // 2, W - 4]) == (255, 255, 255)  # not the palette's black


def test_la_composited_over_white(tmp_path):
    path = tmp_path / "la.png"
    lum = np.full((H, W), 0, np.uint8)
    alpha = np.zeros((H, W), np.uint8)
    alpha[:, : W // 2] = 255
    Image.merge("LA", [Image.fromarray(lum), Image.fromarray(alpha)]).save(path)
    with Image.open(path) as check:
        assert check.mode == "LA"
    arr = _assert_rgb(read_image(path))
    assert tuple(arr[H // 2, 3]) == (0, 0, 0)  # opaque black stays black
    assert tuple(arr[H // 2, W - 4]) == (255, 255, 255)  # transparent becomes white


def test_16bit_grayscale_png_scaled_to_8bit(tmp_path):
    path = tmp_path / "g16.png"
    a16 = np.zeros((H, W), np.uint16)
    a16[:, :10] = 0
    a16[:, 10:20] = 32768
    a16[:, 20:] = 65535
    Image.fromarray(a16).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"
    arr = _assert_rgb(read_image(path))
    assert tuple(arr[0, 5]) == (0, 0, 0)
    assert tuple(arr[0, 15]) in {(127, 127, 127), (128, 128, 128)}  # scaled, not clipped to 255
    assert tuple(arr[0, 30]) == (255, 255, 255)


def test_grayscale_jpeg_and_png(tmp_path):
    gray = Image.fromarray(np.full((H, W), 90, np.uint8))
    for name, fmt in (("g.jpg", "JPEG"), ("g.png", "PNG")):
        gray.save(tmp_path / name, format=fmt)
        arr = _assert_rgb(read_image(tmp_path / name))
        assert _close(arr[H // 2, W // 2], (90, 90, 90), tol=3)


def test_rgba_png_composited_over_white(tmp_path):
    path = tmp_path / "rgba.png"
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., :3] = BLUE
    arr[:, : W // 2, 3] = 255
    Image.fromarray(arr, "RGBA").save(path)
    out = _assert_rgb(read_image(path))
    assert tuple(out[H // 2, 3]) == BLUE
    assert tuple(out[H // 2, W - 4]) == (255, 255, 255)


def test_exif_orientation_6_rotates(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display needs a 90 degree clockwise turn
    _two_halves((80, 60)).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.size == (80, 60)
    assert probe_image(path) == ("JPEG", (60, 80))  # oriented size from the header alone
    arr = _assert_rgb(read_image(path), size=(60, 80))
    # a clockwise turn brings the stored left half (red) to the top
    assert _close(arr[5, 30], RED, tol=25)
    assert _close(arr[75, 30], BLUE, tol=25)


def test_jpeg_draft_decodes_at_reduced_size(tmp_path):
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(small).resize((2000, 1500), Image.Resampling.BILINEAR).save(path, quality=85)
    full = read_image(path)
    assert full.size == (2000, 1500)
    img = read_image(path, min_size=(224, 224))
    assert img.mode == "RGB"
    w, h = img.size
    assert w < 2000 and h < 1500
    assert w >= 224 and h >= 224
    assert abs(w / h - 4 / 3) < 0.02  # same aspect ratio
    # min_short_side works the same way
    w2, h2 = read_image(path, min_short_side=256).size
    assert min(w2, h2) >= 256 and w2 < 2000


def test_draft_never_goes_below_the_requested_size(tmp_path):
    path = tmp_path / "small.jpg"
    _two_halves((300, 250)).save(path, quality=90)
    assert read_image(path, min_size=(224, 224)).size == (300, 250)  # 1/2 would be too small


# --- unusable files ---------------------------------------------------------------------------------


def _valid_jpeg_bytes(tmp_path) -> bytes:
    rng = np.random.default_rng(1)
    p = tmp_path / "source.jpg"
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(p, quality=90)
    return p.read_bytes()


def _check_error(excinfo, path, *words):
    err = excinfo.value
    assert isinstance(err, GraftError)
    assert str(path) in str(err) and err.path == str(path)  # names the file
    assert any(w in err.reason.lower() for w in words), err.reason  # and the problem


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as e:
        read_image(path)
    _check_error(e, path, "empty", "not an image")
    with pytest.raises(ImageError) as e:
        probe_image(path)
    _check_error(e, path, "empty")


def test_zero_byte_file_read_image_says_empty(tmp_path):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert "empty" in e.value.reason


def test_truncated_jpeg(tmp_path):
    data = _valid_jpeg_bytes(tmp_path)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        read_image(path)
    _check_error(e, path, "truncated")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageError) as e:
        read_image(path)
    _check_error(e, path, "not an image")
    with pytest.raises(ImageError):
        probe_image(path)


def test_png_named_jpg_is_a_mismatch(tmp_path):
    path = tmp_path / "really-a-png.jpg"
    _two_halves().save(path, format="PNG")
    with pytest.raises(ImageError) as e:
        read_image(path)
    _check_error(e, path, "png")
    assert "jpeg" in str(e.value).lower() and ".jpg" in str(e.value)
    with pytest.raises(ImageError) as e:
        probe_image(path)
    _check_error(e, path, "png")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as e:
        read_image(path)
    _check_error(e, path, "cannot read")


# --- ImageError.code: what programs branch on ---------------------------------------------------------


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bad_bmp_depth() -> bytes:
    data = bytearray(_bytes(_two_halves(), "BMP"))
    data[28:30] = (7).to_bytes(2, "little")  # 7 bits per pixel: no such BMP
    return bytes(data)


def _bomb_gif() -> bytes:
    data = bytearray(_bytes(Image.new("P", (20, 14)), "GIF"))
    data[6:10] = (9000).to_bytes(2, "little") + (8000).to_bytes(2, "little")  # 72 MP in ~100 bytes
    return bytes(data)


# name -> (file name, bytes, code from read_image, code from probe_image or None if the probe passes)
_KINDS = {
    "empty": ("zero.jpg", lambda: b"", "empty_file", "empty_file"),
    "text": ("notes.jpg", lambda: b"these are not pixels\n" * 20, "not_an_image", "not_an_image"),
    "png named jpg": ("really.jpg", lambda: _bytes(_two_halves(), "PNG"), "extension_mismatch", "extension_mismatch"),
    "tiff": ("scan.jpg", lambda: _bytes(_two_halves(), "TIFF"), "unsupported_format", "unsupported_format"),
    "bomb": ("bomb.gif", _bomb_gif, "too_large", "too_large"),
    "truncated jpeg": ("cut.jpg", lambda: _bytes(_two_halves((160, 120)), "JPEG", quality=95)[:700],
                       "truncated", None),
    "bad bmp depth": ("odd.bmp", _bad_bmp_depth, "undecodable", "undecodable"),
}


@pytest.mark.parametrize("kind", list(_KINDS))
def test_image_error_code_per_kind(tmp_path, kind):
    from graft.errors import IMAGE_ERROR_CODES

    name, make, read_code, probe_code = _KINDS[kind]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert e.value.code == read_code, e.value.reason
    assert read_code in IMAGE_ERROR_CODES
    if probe_code is None:
        probe_image(path)  # the header is fine: only decoding finds the damage
    else:
        with pytest.raises(ImageError) as e:
            probe_image(path)
        assert e.value.code == probe_code, e.value.reason


def test_image_error_codes_for_files_that_cannot_be_read(tmp_path):
    import os
    import threading

    missing = tmp_path / "nope.jpg"
    loop = tmp_path / "self.jpg"
    loop.symlink_to("self.jpg")
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    for path, code in ((missing, "unreadable"), (loop, "symlink_loop"), (pipe, "not_regular_file")):
        for read in (read_image, probe_image):
            got = []

            def attempt():
                try:
                    read(path)
                except ImageError as e:
                    got.append(e.code)

            t = threading.Thread(target=attempt, daemon=True)  # a pipe read would block for ever
            t.start()
            t.join(10)
            assert got == [code], (path.name, read.__name__)


def test_image_error_keeps_its_code_across_pickling():
    """Loader workers send ImageErrors back to the main process."""
    import pickle

    e = pickle.loads(pickle.dumps(ImageError("/photos/a.jpg", "truncated or damaged image data (x)", "truncated")))
    assert (type(e), e.path, e.reason, e.code, str(e)) == (
        ImageError, "/photos/a.jpg", "truncated or damaged image data (x)", "truncated",
        "/photos/a.jpg: truncated or damaged image data (x)")
    assert ImageError("/p.jpg", "odd").code == "undecodable"  # the default, for callers that do not say
    with pytest.raises(ValueError, match="unknown ImageError code"):
        ImageError("/p.jpg", "odd", "no_such_code")
