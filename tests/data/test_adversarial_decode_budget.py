"""Images whose decoding would not fit the memory budget (issue 14): a 257 KB 9400x9400 PNG, JPEGs
decoded reduced, WebPs judged by their header, and what each pixel mode costs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data.images import probe_image, read_image
from graft.errors import ImageError

from conftest import huge_png, make_photo_folder


def test_the_9400_pixel_png_is_small_and_passes_the_older_checks():
    data = huge_png()
    assert 250_000 < len(data) < 270_000
    assert 9400 * 9400 < Image.MAX_IMAGE_PIXELS and 9400 * 9400 < 5_000 * len(data)


@contextlib.contextmanager
def count_decodes():
    """Every call of Pillow's ImageFile.load (what decodes pixels), by file name."""
    from PIL import ImageFile

    calls = []
    real = ImageFile.ImageFile.load

    def load(self):
        calls.append(Path(getattr(self, "filename", "") or "?").name)
        return real(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageFile.ImageFile, "load", load)
        yield calls


@pytest.mark.parametrize("call", ["probe", "read", "read-reduced", "scan"])
def test_a_png_that_would_double_peak_memory_is_refused_before_decoding(tmp_path, call):
    from graft.data import scan_class_folders

    photos = make_photo_folder(tmp_path / "photos", per_class=2)
    path = photos / "red" / "huge.png"
    path.write_bytes(huge_png())
    decodes = count_decodes()
    fn = {"probe": lambda: probe_image(path), "read": lambda: read_image(path),
          "read-reduced": lambda: read_image(path, min_short_side=64)}
    with decodes as decoded:
        if call == "scan":
            _, samples, skipped = scan_class_folders(photos)
            assert [s["path"] for s in skipped] == [str(path)] and len(samples) == 4
            reason = skipped[0]["reason"]
        else:
            with pytest.raises(ImageError) as e:
                fn[call]()
            reason = e.value.reason
    assert "huge.png" not in decoded  # refused from the header (Pillow's PNG getexif() would decode it)
    assert reason.startswith("refused: decoding 9400x9400 RGB pixels takes about 253 MB, over the 192 MB budget")


@pytest.mark.parametrize("exif", [None, 1, 6], ids=["no-exif", "exif-upright", "exif-rotated"])
def test_probing_a_png_never_decodes_it(tmp_path, exif):
    path = tmp_path / "p.png"
    img = Image.new("RGB", (30, 20), (1, 2, 3))
    kw = {}
    if exif:
        e = Image.Exif()
        e[0x0112] = exif
        kw["exif"] = e.tobytes()
    img.save(path, **kw)
    with count_decodes() as decoded:
        fmt, size = probe_image(path)
    assert not decoded and fmt == "PNG"
    assert size == ((20, 30) if exif == 6 else (30, 20))  # Pillow writes EXIF before the pixels: still read
    assert read_image(path).size == size


@pytest.mark.parametrize("kwargs", [{}, {"min_short_side": 16}], ids=["full", "reduced"])
@pytest.mark.parametrize("damage", ["garbage", "zeros"])
def test_a_png_with_damaged_pixel_data_is_refused_not_half_decoded(tmp_path, damage, kwargs):
    # found by bench/fuzz_images.py: 226 of 1,000 mutated PNGs were "read" half decoded, because
    # the EXIF lookup decoded them first and swallowed the error, and the second load returned
    # what the failed one had left
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    mid = data.find(b"IDAT") + 8 + 200
    data[mid:mid + 64] = b"\xff" * 64 if damage == "garbage" else bytes(64)
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    assert probe_image(path) == ("PNG", (64, 48))  # the header is fine
    with pytest.raises(ImageError, match="cannot decode image"):
        read_image(path, **kwargs)


def _jpeg(path: Path, size, mode="RGB") -> Path:
    Image.new(mode, size, 128 if mode == "L" else (200, 30, 40)).save(path, quality=90)
    return path


@pytest.mark.parametrize("kwargs, expected", [
    ({}, (600, 450)),  # full size would be 3.2 MB: 1/2 (810 KB) is the first DCT scale that fits
    ({"min_size": (1200, 900)}, (600, 450)),  # asked for full size: the budget wins
    ({"min_short_side": 100}, (150, 113)),  # asked for less: the reduction asked for
])
def test_a_jpeg_over_the_budget_is_decoded_reduced(tmp_path, monkeypatch, kwargs, expected):
    monkeypatch.setenv("GRAFT_DECODE_BUDGET_MB", "1")
    path = _jpeg(tmp_path / "big.jpg", (1200, 900))
    assert probe_image(path) == ("JPEG", (1200, 900))  # accepted: it can be decoded reduced
    img = read_image(path, **kwargs)
    assert img.size == expected and img.mode == "RGB"


@pytest.mark.parametrize("mode, size, fits", [
    ("RGB", (600, 500), True),  # 3 bytes a pixel: 0.9 MB
    ("RGB", (700, 600), False),  # 1.26 MB
    ("L", (500, 500), True),  # 1 + 3 (its RGB copy): 1.0 MB
    ("L", (600, 500), False),  # 1.2 MB
    ("RGBA", (250, 250), True),  # 15 bytes a pixel through alpha compositing: 0.94 MB
    ("RGBA", (300, 300), False),  # 1.35 MB
    ("I;16", (300, 300), True),  # 10 bytes a pixel: 0.9 MB
    ("I;16", (400, 300), False),  # 1.2 MB
])
def test_the_decode_budget_counts_what_each_mode_costs(tmp_path, monkeypatch, mode, size, fits):
    monkeypatch.setenv("GRAFT_DECODE_BUDGET_MB", "1")
    path = tmp_path / "x.png"
    img = Image.new(mode, size, 7 if mode in ("L", "I;16") else (1, 2, 3, 4)[:len(mode)])
    img.save(path)
    if fits:
        assert probe_image(path)[1] == size and read_image(path).size == size
    else:
        with pytest.raises(ImageError, match="over the 1 MB budget"):
            probe_image(path)
        with pytest.raises(ImageError, match="over the 1 MB budget"):
            read_image(path)


def _webp(kind: str) -> bytes:
    import io

    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    buf = io.BytesIO()
    if kind == "animated-canvas-20x983054":  # found by bench/fuzz_images.py: 150 MB at Image.open
        frames = [Image.new("RGB", (20, 14), (i * 60, 0, 0)) for i in range(2)]
        frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=50)
        data = bytearray(buf.getvalue())
        i = data.find(b"VP8X")
        data[i + 15:i + 18] = (983054 - 1).to_bytes(3, "little")
        return bytes(data)
    if kind == "lossless-declaring-16383x16383":
        Image.new("RGB", (20, 14)).save(buf, "WEBP", lossless=True)
        data = bytearray(buf.getvalue())
        data[21:25] = ((16383 - 1) | (16383 - 1) << 14).to_bytes(4, "little")
        return bytes(data)
    size, mode = {"rgba-300x300": ((300, 300), "RGBA"), "rgb-200x200": ((200, 200), "RGB")}[kind]
    img = Image.new(mode, size, (10, 20, 30, 128)[:len(mode)])
    img.putpixel((0, 0), (200, 0, 0, 7)[:len(mode)])
    img.save(buf, "WEBP", lossless=True)
    return buf.getvalue()


@pytest.mark.parametrize("kind, says", [
    ("animated-canvas-20x983054", "refused: declares 20x983054 pixels in only"),
    ("lossless-declaring-16383x16383", "refused: declares 16383x16383 pixels in only"),
    ("rgba-300x300", "refused: decoding 300x300 WebP pixels takes about 2 MB, over the 1 MB budget"),
    ("rgb-200x200", None),  # 11 bytes a pixel with the decoder's canvases: 0.4 MB, fits
])
def test_a_webp_is_judged_by_its_header_before_pillow_allocates_its_canvas(tmp_path, monkeypatch, kind, says):
    monkeypatch.setenv("GRAFT_DECODE_BUDGET_MB", "1")
    path = tmp_path / "x.webp"
    path.write_bytes(_webp(kind))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    if says is None:
        assert probe_image(path) == ("WEBP", (200, 200)) and read_image(path).size == (200, 200)
        return
    for call in (probe_image, read_image):
        with pytest.raises(ImageError) as e:
            call(path)
        assert e.value.reason.startswith(says), e.value.reason
    assert not opened  # refused from the header: Pillow never saw the file
