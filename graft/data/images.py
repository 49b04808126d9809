"""Read one image file into an RGB PIL image, or raise an ImageError that says why not.

This is the single door every photo comes through (training, prediction, checks), so the odd
cases are handled once: EXIF orientation, every Pillow mode (CMYK, palette with transparency,
16-bit, grayscale) to 8-bit RGB, GIF/WebP first frame, truncated files, decompression bombs,
and content that does not match the extension. JPEGs are decoded at reduced resolution in the
DCT domain (Pillow's `draft`) when the caller says how small it may be, which is most of the
cost of a 12-megapixel photo: training augmentation, thumbnails and checks ask for that. The
evaluation preprocessing (graft.backbones.preprocess) does not: its pixels must be the standard recipe's,
which decodes the whole file.

Only regular files are read (a FIFO, device or socket with an image's name is refused, never
opened blocking: graft._util.files), at most MAX_FILE_BYTES of them, and decoding is bounded by a
memory budget (`decode_budget`): a JPEG over it is decoded at a DCT reduction that fits, any
other image over it is refused, already when its header is probed.
"""

from __future__ import annotations

import errno
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from graft._util.files import FileTooLarge, NotRegularFile, open_regular, read_regular
from graft.errors import ImageError

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

MAX_FILE_BYTES = 256 << 20  # no photo graft reads is this big; a bigger "photo" is not read at all
DEFAULT_DECODE_BUDGET_MB = 192
# Peak bytes per pixel of decoding an image of each mode and converting it to 8-bit RGB (to_rgb):
# the decoded image, the intermediates of the conversion, the RGB result. Others: 16.
_PEAK_BYTES_PER_PIXEL = {
    "RGB": 3, "L": 4, "1": 4, "P": 4, "CMYK": 7, "YCbCr": 6, "LAB": 6, "HSV": 6, "RGBX": 7,
    "I;16": 10, "I;16L": 10, "I;16B": 10, "I;16N": 10, "I": 12, "F": 12,
    "RGBA": 15, "RGBa": 15, "LA": 17, "La": 17, "PA": 17,
}


def decode_budget() -> int:
    """Bytes one image may take while it is decoded and converted (GRAFT_DECODE_BUDGET_MB, default
    192): a 9400x9400 PNG of a few hundred KB must not cost graft a quarter of a gigabyte per
    loader worker. 192 MB still decodes a 64-megapixel RGB PNG, and any JPEG (reduced)."""
    try:
        return max(1, int(float(os.environ.get("GRAFT_DECODE_BUDGET_MB", DEFAULT_DECODE_BUDGET_MB)) * (1 << 20)))
    except ValueError:
        return DEFAULT_DECODE_BUDGET_MB << 20


# Pillow opens every WebP through libwebp's animation decoder, which allocates two RGBA canvases
# (the frame and the previous one) at once, before any pixel is asked for.
_WEBP_DECODER_BYTES_PER_PIXEL = 8


def decode_cost(mode: str, size: tuple[int, int], orientation: int | None = None, fmt: str | None = None) -> int:
    """Peak bytes of decoding an image of `mode` and `size` (w, h) to oriented 8-bit RGB."""
    per_pixel = _PEAK_BYTES_PER_PIXEL.get(mode, 16)
    if fmt == "WEBP":
        per_pixel += _WEBP_DECODER_BYTES_PER_PIXEL
    if orientation not in (None, 1):
        per_pixel += 3  # exif_transpose copies the image
    return per_pixel * size[0] * size[1]


def _cost(img: Image.Image, orientation: int | None) -> int:
    # a palette image with transparency is converted through RGBA (to_rgb)
    mode = "RGBA" if img.mode == "P" and "transparency" in img.info else img.mode
    return decode_cost(mode, img.size, orientation, img.format)


def _jpeg_reduction_for_budget(img: Image.Image, orientation: int | None, budget: int) -> int | None:
    """Smallest DCT reduction (1, 2, 4, 8) that brings a JPEG's decode under `budget`, or None."""
    w, h = img.size
    for r in (1, 2, 4, 8):
        if decode_cost(img.mode, (-(-w // r), -(-h // r)), orientation) <= budget:
            return r
    return None


def _over_budget(path: Path, img: Image.Image, cost: int, budget: int) -> ImageError:
    w, h = img.size
    return ImageError(path, f"refused: decoding {w}x{h} {img.mode} pixels takes about {cost / 2**20:.0f} MB, "
                            f"over the {budget / 2**20:.0f} MB budget for one image (GRAFT_DECODE_BUDGET_MB); "
                            f"downscale it or save it as JPEG", "too_large")


def _check_budget(path: Path, img: Image.Image, orientation: int | None) -> None:
    """Refuse at probe time what read_image could not decode within the budget."""
    budget = decode_budget()
    if img.format == "JPEG":
        if _jpeg_reduction_for_budget(img, orientation, budget) is None:
            w, h = img.size
            raise _over_budget(path, img, decode_cost(img.mode, (-(-w // 8), -(-h // 8)), orientation), budget)
        return
    cost = _cost(img, orientation)
    if cost > budget:
        raise _over_budget(path, img, cost, budget)


def read_error(path: Path, e: OSError) -> ImageError:
    if isinstance(e, NotRegularFile):
        return ImageError(path, f"refused: {e.strerror}", "not_regular_file")
    if isinstance(e, FileTooLarge):
        return ImageError(path, f"refused: {e.strerror}", "too_large")
    code = "symlink_loop" if e.errno == errno.ELOOP else "unreadable"
    return ImageError(path, f"cannot read file ({e.strerror or e})", code)


def probe_image(path, data: bytes | None = None) -> tuple[str, tuple[int, int]]:
    """Check a file's header without decoding pixels; return (format, (width, height)).

    Sizes are after EXIF orientation. Raises ImageError for empty files, non-images, content
    whose format disagrees with the extension, files that are not regular files or are too
    big, and images whose decoding would exceed the memory budget.
    """
    path = Path(path)
    if data is not None:
        return probe_file(path, io.BytesIO(data), len(data))
    try:
        f = open_regular(path, max_bytes=MAX_FILE_BYTES)
    except OSError as e:
        raise read_error(path, e) from None
    with f:
        return probe_file(path, f, os.fstat(f.fileno()).st_size)


def probe_file(path: Path, fp, nbytes: int) -> tuple[str, tuple[int, int]]:
    """probe_image on an open binary file `fp` of `nbytes` bytes (read from its start)."""
    if not nbytes:
        raise ImageError(path, "empty file (0 bytes)", "empty_file")
    img = _open(path, fp, nbytes)
    _check_format(path, img)
    _check_density(path, img.size, nbytes)
    orientation = _orientation(img)
    _check_budget(path, img, orientation)
    return img.format, oriented_size(img, orientation)


def read_bytes(path) -> bytes:
    """The file's bytes, or an ImageError that says why not (a pipe or device is refused unread:
    reading one could block forever; a file over MAX_FILE_BYTES is refused before it is read)."""
    try:
        return read_regular(path, max_bytes=MAX_FILE_BYTES)
    except OSError as e:
        raise read_error(Path(path), e) from None


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
            f = open_regular(path, max_bytes=MAX_FILE_BYTES)
        except OSError as e:
            raise read_error(path, e) from None
    with f:
        nbytes = len(data) if data is not None else os.fstat(f.fileno()).st_size
        if nbytes == 0:
            raise ImageError(path, "empty file (0 bytes)", "empty_file")
        img = _open(path, f, nbytes)
        _check_format(path, img)
        _check_density(path, img.size, nbytes)
        orientation = _orientation(img)
        if min_short_side is not None:
            min_size = draft_size_for_short_side(oriented_size(img, orientation), min_short_side)
        budget = decode_budget()
        if img.format == "JPEG":
            # the DCT reduction asked for (the largest keeping min_size), raised to one that fits the budget
            w0, h0 = img.size
            r = _jpeg_reduction_for_budget(img, orientation, budget)
            if r is None:
                raise _over_budget(path, img, _cost(img, orientation), budget)
            want = (w0, h0) if min_size is None else min_size
            if min_size is not None and orientation in _SWAPS_AXES:
                want = (want[1], want[0])
            want = (min(int(want[0]), w0 // r), min(int(want[1]), h0 // r))
            if min_size is not None or r > 1:
                img.draft("RGB", (max(1, want[0]), max(1, want[1])))
        cost = _cost(img, orientation)
        if cost > budget:
            raise _over_budget(path, img, cost, budget)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # EXIF/ICC chatter is not the user's problem
                img.load()
        except Image.DecompressionBombError as e:
            raise ImageError(path, f"refused: too many pixels ({e})", "too_large") from None
        except Exception as e:  # Pillow raises many types for damaged data
            raise _decode_error(path, e) from None
    try:
        return to_rgb(upright(img, orientation))
    except Exception as e:
        raise _decode_error(path, e) from None


def upright(img: Image.Image, orientation: int | None) -> Image.Image:
    """`img` turned and mirrored as its EXIF `orientation` says (None or 1: as it is)."""
    return img if orientation in (None, 1) else ImageOps.exif_transpose(img)


def decoded_to_rgb(img: Image.Image) -> Image.Image:
    """An image a program decoded itself (a PIL image, not a file) as read_image leaves a file:
    its pixels loaded, turned upright by its EXIF orientation, 8-bit RGB. Its EXIF is read whole,
    not from the header only (_orientation): once the pixels are loaded that costs nothing more.
    Pillow's own errors go through (a lazily opened image can fail now): the caller names it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF chatter, as read_image
        img.load()
        img = upright(img, img.getexif().get(_EXIF_ORIENTATION))
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited over white, 16-bit is scaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)  # float32, in place: 4 bytes a pixel, not 3 x 8
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr *= np.float32(255.0 / hi)
        arr += np.float32(0.5)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
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


def _open(path: Path, fp, nbytes: int) -> Image.Image:
    _check_webp_canvas(path, fp, nbytes)
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


def webp_canvas(head: bytes) -> tuple[tuple[int, int], bool] | None:
    """((width, height), has_alpha) from the first 30 bytes of a WebP file; None if not one."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(head[24:27], "little")
        h = 1 + int.from_bytes(head[27:30], "little")
        return (w, h), bool(head[20] & 0x10)
    if chunk == b"VP8 ":
        return (int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF), False
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)), bool(bits >> 28 & 1)
    return None


def _check_webp_canvas(path: Path, fp, nbytes: int) -> None:
    """Pillow allocates a WebP's canvases when it opens the file (found by fuzzing: 968 bytes
    declaring 20x983054 pixels cost 150 MB before graft saw the size), so its header is read,
    and the density and budget rules applied, before Pillow is given it."""
    start = fp.tell()
    head = fp.read(30)
    fp.seek(start)
    found = webp_canvas(head)
    if found is None:
        return
    size, alpha = found
    _check_density(path, size, nbytes)
    cost = decode_cost("RGBA" if alpha else "RGB", size, None, "WEBP")
    budget = decode_budget()
    if cost > budget:
        raise ImageError(path, f"refused: decoding {size[0]}x{size[1]} WebP pixels takes about "
                               f"{cost / 2**20:.0f} MB, over the {budget / 2**20:.0f} MB budget for one "
                               f"image (GRAFT_DECODE_BUDGET_MB); downscale it or save it as JPEG", "too_large")


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


def _check_density(path: Path, size: tuple[int, int], nbytes: int) -> None:
    """Refuse a small file that declares a huge canvas (found by fuzzing: a few hundred bytes
    declaring 80 megapixels, just under Pillow's bomb limit, cost seconds and gigabytes to
    decode). Real photos hold well under 1,000 pixels per byte; flat graphics compress better,
    hence the generous 5,000 and the 2-megapixel floor."""
    w, h = size
    if w * h > 2_000_000 and w * h > 5_000 * nbytes:
        raise ImageError(path, f"refused: declares {w}x{h} pixels in only {nbytes} bytes "
                               f"(damaged, or a decompression bomb)", "too_large")


def _orientation(img: Image.Image) -> int | None:
    """The EXIF orientation, from the header only. Pillow's PNG getexif() decodes the whole image
    when the EXIF chunk is not before the pixels (or there is none): a probe of a 9400x9400 PNG
    cost 340 MB. So a PNG's EXIF counts only where Pillow itself writes it, before the pixels,
    the same in the probe and the reader."""
    if img.format == "PNG" and "exif" not in img.info:
        return None
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
