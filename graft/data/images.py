"""Read one image file into an RGB PIL image, or raise an ImageError that says why not.

This is the single door every photo comes through (training, prediction, checks), so the odd
cases are handled once: EXIF orientation, every Pillow mode (CMYK, palette with transparency,
16-bit, grayscale) to 8-bit RGB, GIF/WebP first frame, truncated files, decompression bombs,
and content that does not match the extension. JPEGs are decoded at reduced resolution in the
DCT domain (Pillow's `draft`) when the caller says how small it may be, which is most of the
cost of a 12-megapixel photo: training augmentation, thumbnails and checks ask for that. The
evaluation preprocessing (graft.backbones.preprocess) does not: its pixels must be the standard recipe's,
which decodes the whole file.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

# extension -> the Pillow format its content must have
SUPPORTED_EXTENSIONS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
}
_FORMATS = tuple(SUPPORTED_EXTENSIONS.values())
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def probe_image(path, data: bytes | None = None) -> tuple[str, tuple[int, int]]:
    """Check a file's header without decoding pixels; return (format, (width, height)).

    Sizes are after EXIF orientation. Raises ImageError for empty files, non-images and
    content whose format disagrees with the extension.
    """
    path = Path(path)
    if data is None:
        data = read_bytes(path)
    if not data:
        raise ImageError(path, "empty file (0 bytes)", "empty_file")
    img = _open(path, io.BytesIO(data))
    _check_format(path, img)
    _check_density(path, img, len(data))
    return img.format, oriented_size(img, _orientation(img))


def read_bytes(path) -> bytes:
    """The file's bytes, or an ImageError that says why not (a pipe or device is refused unread:
    reading one could block forever)."""
    path = Path(path)
    try:
        _require_regular(path, os.stat(path))
        return path.read_bytes()
    except OSError as e:
        raise _read_error(path, e) from None


def _require_regular(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(path, "not a regular file (a device, socket or pipe): graft cannot read it",
                         "not_regular_file")


def _read_error(path: Path, e: OSError) -> ImageError:
    code = "symlink_loop" if e.errno == errno.ELOOP else "unreadable"
    return ImageError(path, f"cannot read file ({e.strerror or e})", code)


def oriented_size(img: Image.Image, orientation: int | None) -> tuple[int, int]:
    w, h = img.size
    return (h, w) if orientation in _SWAPS_AXES else (w, h)


def read_image(
    path, *, min_size: tuple[int, int] | None = None, min_short_side: int | None = None,
    data: bytes | None = None,
) -> Image.Image:
    """Decode `path` to an 8-bit RGB image with EXIF orientation applied.

    `min_size` = (width, height) in oriented pixels that the result must still cover (or
    `min_short_side`, the shorter side it must keep); JPEGs are then decoded with the largest
    DCT downscale (1/2, 1/4, 1/8) that keeps at least that size. `data`: the file's bytes,
    already in memory (an upload; `path` then only names it in errors, and its extension, if
    any, must agree with the content), with every check a file gets.
    """
    path = Path(path)
    if data is not None:
        f = io.BytesIO(data)
    else:
        try:
            _require_regular(path, os.stat(path))
            f = open(path, "rb")
        except OSError as e:
            raise _read_error(path, e) from None
    with f:
        nbytes = len(data) if data is not None else os.fstat(f.fileno()).st_size
        if nbytes == 0:
            raise ImageError(path, "empty file (0 bytes)", "empty_file")
        img = _open(path, f)
        _check_format(path, img)
        _check_density(path, img, nbytes)
        orientation = _orientation(img)
        if min_short_side is not None:
            min_size = draft_size_for_short_side(oriented_size(img, orientation), min_short_side)
        if min_size is not None and img.format == "JPEG":
            w, h = min_size
            if orientation in _SWAPS_AXES:
                w, h = h, w
            img.draft("RGB", (max(1, int(w)), max(1, int(h))))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # EXIF/ICC chatter is not the user's problem
                img.load()
        except Image.DecompressionBombError as e:
            raise ImageError(path, f"refused: too many pixels ({e})", "too_large") from None
        except Exception as e:  # Pillow raises many types for damaged data
            raise _decode_error(path, e) from None
    try:
        if orientation not in (None, 1):
            img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except Exception as e:
        raise _decode_error(path, e) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited over white, 16-bit is scaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def draft_size_for_short_side(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """The least (w, h) a draft decode of an image of `size` must keep for its shorter side to
    still cover `short_side` (rounded up: a draft may be larger, never smaller)."""
    w, h = size
    scale = short_side / min(w, h)
    return math.ceil(w * scale), math.ceil(h * scale)


def _open(path: Path, fp) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp, formats=None)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"refused: too many pixels, a possible decompression bomb ({e})",
                         "too_large") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (no supported image format recognised)", "not_an_image") from None
    except Exception as e:
        raise _decode_error(path, e) from None


def _check_format(path: Path, img: Image.Image) -> None:
    expected = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if img.format not in _FORMATS:
        raise ImageError(path, f"unsupported image format {img.format}", "unsupported_format")
    if expected is not None and img.format != expected:
        raise ImageError(
            path,
            f"content is {img.format} but the extension {path.suffix} says {expected}; "
            f"rename it to use it",
            "extension_mismatch",
        )


def _check_density(path: Path, img: Image.Image, nbytes: int) -> None:
    """Refuse a small file that declares a huge canvas (found by fuzzing: a few hundred bytes
    declaring 80 megapixels, just under Pillow's bomb limit, cost seconds and gigabytes to
    decode). Real photos hold well under 1,000 pixels per byte; flat graphics compress better,
    hence the generous 5,000 and the 2-megapixel floor."""
    w, h = img.size
    if w * h > 2_000_000 and w * h > 5_000 * nbytes:
        raise ImageError(path, f"refused: declares {w}x{h} pixels in only {nbytes} bytes "
                               f"(damaged, or a decompression bomb)", "too_large")


def _orientation(img: Image.Image) -> int | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" is not the user's problem
            return img.getexif().get(_EXIF_ORIENTATION)
    except Exception:
        return None


def _decode_error(path: Path, e: Exception) -> ImageError:
    """Pillow raises many exception types for damaged data, and says "truncated" only in words:
    this is the one place that reads its message."""
    msg = str(e) or type(e).__name__
    if "truncated" in msg.lower():
        return ImageError(path, f"truncated or damaged image data ({msg})", "truncated")
    return ImageError(path, f"cannot decode image ({msg})", "undecodable")
