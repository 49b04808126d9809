"""One file at a time: everything `graft check` can tell about a photo without looking at the others.

Read and hash the bytes, probe the header (graft.data.images, the door every photo comes through),
sort an ImageError by its code, note what graft converts silently (animation, modes, EXIF
rotation, tiny sizes), then decode once at reduced size for the pixel statistics and the
perceptual hashes that the cross-file checks compare.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from graft.data.images import SUPPORTED_EXTENSIONS, probe_image, read_bytes, read_image
from graft.data.placeholders import photo_stats
from graft.errors import ImageError

MAX_ASPECT = 20.0  # longer side / shorter side: beyond it the centre crop sees a sliver, and the
# resize to the shorter side makes a huge image (20 x 4,000,000 -> 256 x 51,200,000 pixels)
TINY_SHORT_SIDE = 64  # a shorter side below this is upscaled several times: blurry at any input
# size (a 500x181 photo is fine: the network's 224 input is a resize, not a size requirement)

# ImageError codes that graft check reports under another of its (stable) codes
_AS_CHECK_CODE = {"not_an_image": "undecodable", "unsupported_format": "undecodable",
                  "not_regular_file": "unreadable"}


@dataclass
class PhotoFile:
    path: Path
    rel: str
    cls: str
    label: int
    split_dir: str | None  # "train"/"val" in the train/val layout, else None
    digest: str | None = None
    fmt: str | None = None
    size: tuple[int, int] | None = None
    probe_ok: bool = False
    usable: bool = False  # probed and decoded
    split: str | None = None
    dhash: np.ndarray | None = None
    phash: np.ndarray | None = None
    stats: dict = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (code, message) of this file alone


def inspect(f: PhotoFile, input_size: int) -> None:
    """Fill in `f`; an unexpected failure on one file is reported, not fatal to the whole check."""
    try:
        _inspect(f, input_size)
    except Exception as e:  # a bug here must not hide every other finding
        if not f.usable:
            f.problems.append(("undecodable", f"cannot check it ({type(e).__name__}: {e})"))
        f.stats = f.stats or {}


def _inspect(f: PhotoFile, input_size: int) -> None:
    try:
        data = read_bytes(f.path)
    except ImageError as e:
        f.problems.append(_classify(f.path, b"", e))
        return
    f.digest = hashlib.sha256(data).hexdigest()
    try:
        f.fmt, f.size = probe_image(f.path, data)
    except ImageError as e:
        f.problems.append(_classify(f.path, data, e))
        return
    f.probe_ok = True
    why = extreme_aspect(f.size, input_size)
    if why:
        f.problems.append(("extreme_aspect", why))
        return
    _header_warnings(f, data, input_size)
    try:
        img = read_image(f.path, min_short_side=64)
    except ImageError as e:
        f.problems.append(_classify(f.path, data, e))
        return
    f.usable = True
    img.thumbnail((256, 256), Image.Resampling.BILINEAR, reducing_gap=None)
    f.stats = photo_stats(img)
    f.dhash, f.phash = image_hashes(img)


def extreme_aspect(size: tuple[int, int], input_size: int) -> str | None:
    """Why a photo of `size` (from its header) is unusable for its shape, or None."""
    w, h = size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return None
    scale = input_size / min(w, h)
    return (f"{w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1: not a usable photo (damaged "
            f"header?), and resizing its shorter side to the backbone's input would need "
            f"{w * scale * h * scale / 1e6:,.0f} megapixels; not decoded, remove it")


def _classify(path: Path, data: bytes, e: ImageError) -> tuple[str, str]:
    """graft check's code and message for an ImageError, from its code and the file's bytes."""
    if e.code == "too_large":
        return "too_large", f"{e.reason}; graft refuses it unread"
    if e.code in ("unreadable", "symlink_loop", "not_regular_file", "empty_file"):
        return _AS_CHECK_CODE.get(e.code, e.code), e.reason
    expected = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    actual = _sniff(data)
    if actual is not None and actual != expected:  # e.g. a HEIC or TIFF named .jpg
        return "extension_mismatch", (f"content is {actual} but the extension {path.suffix} says {expected}: "
                                      f"graft skips it (rename it to use it)")
    if e.code in ("extension_mismatch", "truncated"):
        return e.code, e.reason
    if actual is not None and _declared_longer(actual, data):
        return "truncated", f"truncated: the file is shorter than its header says ({e.reason})"
    return _AS_CHECK_CODE.get(e.code, e.code), e.reason


_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
]


def _sniff(data: bytes) -> str | None:
    """The image format the bytes start with (the ones graft reads, and a few others)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    return None


def _declared_longer(fmt: str, data: bytes) -> bool:
    """The container says the file is longer than it is (WebP's RIFF size, BMP's file size)."""
    if fmt == "WEBP" and len(data) >= 8:
        return struct.unpack("<I", data[4:8])[0] + 8 > len(data)
    if fmt == "BMP" and len(data) >= 6:
        return struct.unpack("<I", data[2:6])[0] > len(data)
    return False


_MODE_NOTES = {
    "CMYK": "CMYK (print colours): converted to RGB, colours may shift",
    "L": "grayscale: converted to RGB, the network sees no colour",
    "LA": "grayscale with transparency: converted to RGB over white, no colour",
    "1": "1-bit black and white: converted to RGB",
    "I;16": "16-bit grayscale: scaled to 8 bits",
    "I;16B": "16-bit grayscale: scaled to 8 bits",
    "I;16L": "16-bit grayscale: scaled to 8 bits",
    "I;16N": "16-bit grayscale: scaled to 8 bits",
    "I": "32-bit integer grayscale: scaled to 8 bits",
    "F": "32-bit float grayscale: scaled to 8 bits",
    "PA": "palette with transparency: transparent parts become white",
}


def _header_warnings(f: PhotoFile, data: bytes, input_size: int) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            mode, info = img.mode, img.info
            orientation = None
            try:
                orientation = img.getexif().get(0x0112)
            except Exception:
                pass
            frames = 1
            try:
                if getattr(img, "is_animated", False):
                    frames = img.n_frames
            except Exception:
                frames = 2
    except Exception:  # probe_image accepted it; its details are only for warnings
        return
    if frames > 1:
        f.problems.append(("animated", f"animated {f.fmt} with {frames} frames: only the first frame is used"))
    note = _MODE_NOTES.get(mode)
    if mode == "P" and "transparency" in info:
        note = "palette with transparency: transparent parts become white"
    elif mode == "RGBA" and f.fmt == "PNG" and len(data) > 24 and data[24] == 16:
        note = "16-bit RGBA: scaled to 8 bits, transparent parts become white"
    elif mode == "RGB" and f.fmt == "PNG" and len(data) > 24 and data[24] == 16:
        note = "16-bit RGB: scaled to 8 bits"
    if note:
        f.problems.append(("mode", f"mode {mode}, {note}"))
    if orientation not in (None, 1):
        f.problems.append(("exif_rotated", f"EXIF orientation {orientation}: graft rotates it to "
                                           f"{f.size[0]}x{f.size[1]}; check it looks upright"))
    w, h = f.size
    if min(w, h) < TINY_SHORT_SIDE:
        f.problems.append(("tiny", f"{w}x{h} pixels, its shorter side under {TINY_SHORT_SIDE} px: upscaled "
                                   f"about {input_size / min(w, h):.0f}x for the backbone's {input_size}x"
                                   f"{input_size} input, it looks blurry; use a larger copy"))


def image_hashes(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """256-bit dHash and pHash of an image, as packed uint8 arrays (32 bytes each)."""
    g = img.convert("L")
    d = np.asarray(g.resize((17, 16), Image.Resampling.BOX), dtype=np.float32)
    dh = (d[:, 1:] > d[:, :-1]).ravel()
    p = np.asarray(g.resize((64, 64), Image.Resampling.BOX), dtype=np.float64)
    c = (_DCT64 @ p @ _DCT64.T)[:16, :16].ravel()
    ac = c[1:]
    ph = np.concatenate([[False], ac > np.median(ac)])  # the DC term says nothing about structure
    return np.packbits(dh), np.packbits(ph)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    return m * np.sqrt(2 / n)


_DCT64 = _dct_matrix(64)
