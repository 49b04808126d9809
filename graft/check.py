"""`graft check`: scan a photo folder before training and report every problem, file by file.

The scan reads the folder exactly as `graft train` will (graft.data: the same layouts, the same
header probe, the same content-hash train/val split), then looks further:

- quick (always): files that cannot be used (empty, undecodable, truncated, content not matching
  the extension, over Pillow's decompression-bomb limit or declaring far more pixels than their
  bytes can hold, absurd aspect ratios, symlink loops), classes left empty,
  photos that sit in both train and val (identical bytes or the same picture by perceptual
  hash: leakage), duplicates and near-duplicates within a split, animated images, unusual
  modes, EXIF rotation, images smaller than the backbone's input, hidden files, class imbalance.
  It probes headers, hashes the bytes and decodes each image once at reduced size (a full
  decode is the only way to find truncated data; JPEGs decode in the DCT domain at 1/8 scale).
- deep (default, `--quick` skips it): placeholder and non-photo images ("image not found"
  pictures, near-constant or flat graphics) from pixel statistics, and photos that are likely
  mislabelled: out-of-fold predictions of a logistic regression on the frozen backbone's
  features (the same feature cache `graft train` uses, so a check warms the cache for training)
  give the label a low probability, far below its class's typical one, and the photo's nearest
  neighbours in feature space mostly carry another label.

Every finding is {"level", "code", "path", "message"}; a file has at most one finding per code.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data.folder import Sample, split_by_hash
from .data.images import SUPPORTED_EXTENSIONS, probe_image, read_image
from .errors import GraftError, ImageError

# code -> level. Stable: scripts may rely on these.
CODES = {
    # errors: graft cannot use the file, or training would be wrong
    "undecodable": "error",
    "truncated": "error",
    "empty_file": "error",
    "extension_mismatch": "error",
    "too_large": "error",
    "extreme_aspect": "error",
    "unreadable": "error",
    "symlink_loop": "error",
    "empty_class": "error",
    "class_mismatch": "error",
    "too_few_classes": "error",
    "leakage": "error",
    "not_a_photo": "error",
    # warnings: graft uses the file, but probably not as you expect
    "animated": "warning",
    "mode": "warning",
    "exif_rotated": "warning",
    "tiny": "warning",
    "duplicate": "warning",
    "near_duplicate": "warning",
    "class_imbalance": "warning",
    "hidden_file": "warning",
    "likely_mislabelled": "warning",
    "no_validation_image": "warning",
    # info: ignored by graft, or a check that could not run
    "unsupported_type": "info",
    "not_in_class_folder": "info",
    "symlinked_folder": "info",
    "check_skipped": "info",
}
LEVELS = ("error", "warning", "info")

# --- tuning (see photo_stats / _duplicates / _mislabelled) -----------------------------------
NEAR_CONSTANT_STD = 6.0  # pixel std (0-255) below which an image shows nothing
FLAT_TOP_FRACTION = 0.5  # share of pixels in the most common colour (5 bits/channel) ...
FLAT_MAX_COLOURS = 64  # ... with at most this many colours (4 bits/channel) covering 99% of it,
THIN_SOLID_FRACTION = 0.35  # ... and what is not background is thin strokes (text, lines: real
FLAT_FILL_FRACTION = 0.6  # objects on a plain background are solid) or flat colour fills
PHASH_MAX_DISTANCE = 40  # bits of 256: re-encoded/resized copies of photos measure <= ~26, different
DHASH_MAX_DISTANCE = 64  # photos >= ~60 (pHash) / ~57 (dHash); dHash is noisier on flat noise
IMBALANCE_RATIO = 3.0
BOMB_MIN_PIXELS = 2_000_000  # an image this big that holds more than
BOMB_PIXELS_PER_BYTE = 5_000  # this many pixels per byte of file is a decompression bomb: real images,
# even flat-colour PNGs, hold under ~1,000 (a 243-byte GIF declaring 60180x1134 holds 280,000)
MAX_ASPECT = 20.0  # longer side / shorter side: beyond it the centre crop sees a sliver, and the
# resize to the shorter side makes a huge image (20 x 4,000,000 -> 256 x 51,200,000 pixels)
MISLABEL_MAX_PROB = 0.2  # out-of-fold probability of the given label below this ...
MISLABEL_MARGIN = 0.5  # ... and this far below the class's mean self-confidence
MISLABEL_FOLDS = 5
MISLABEL_L2 = 1.0  # strong enough that a few dozen photos do not give confident spurious fits
MISLABEL_NEIGHBOURS = 10  # ... and the nearest photos in feature space must agree:
MISLABEL_MAX_AGREEMENT = 0.2  # at most this share of them has the given label
MISLABEL_MIN_PER_CLASS = 4
DEFAULT_INPUT_SIZE = 224


@dataclass
class _File:
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
    problems: list[tuple[str, str]] = field(default_factory=list)  # (code, message) from the scan


class _Report:
    def __init__(self, root: Path):
        self.root = root
        self.findings: list[dict] = []
        self._seen: set[tuple[str, str]] = set()

    def rel(self, path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def add(self, code: str, path, problem: str) -> None:
        """One finding; a second one with the same code for the same path is dropped."""
        rel = self.rel(path)
        if (code, rel) in self._seen:
            return
        self._seen.add((code, rel))
        self.findings.append({"level": CODES[code], "code": code, "path": str(path),
                              "message": f"{rel}: {problem}"})


# --- the check ----------------------------------------------------------------------------------

def check_photos(photos, *, deep: bool = True, cache_dir=None, backbone="default", val_split: float = 0.2,
                 progress: bool = False, workers: int | None = None, input_size: int | None = None) -> dict:
    """Scan `photos` (a folder `graft train` accepts) and report its problems; see the module doc.

    Returns {"root", "layout", "classes", "counts": {class: {"train", "val"}}, "findings":
    [{"level", "code", "path", "message"}], "summary": {"errors", "warnings", "infos"}}.
    `backbone` (a spec or a built Backbone) gives the features of the deep check and the input
    size below which photos are `tiny` (`input_size` overrides it; a quick check of a backbone
    other than the default assumes 224 rather than resolve its weights); `workers` is the number
    of decoding processes for feature extraction (default: automatic).
    """
    root = Path(photos).expanduser()
    if not root.is_dir():
        raise GraftError(f"photo folder not found: {root}")
    if not 0.0 < val_split < 1.0:
        raise GraftError(f"--val-split must be between 0 and 1, got {val_split}")
    report = _Report(root)
    layout = "train/val" if (root / "train").is_dir() and (root / "val").is_dir() else "folders"
    classes, files = _collect(root, layout, report)
    input_size = int(input_size or _input_size(backbone, resolve=deep))

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(lambda f: _inspect_safely(f, input_size), files))

    for f in files:
        for code, message in f.problems:
            report.add(code, f.path, message)
    _assign_splits(files, classes, layout, val_split)
    counts = {c: {"train": 0, "val": 0} for c in classes}
    for f in files:
        if f.usable:
            counts[f.cls][f.split] += 1
    _class_checks(root, layout, classes, files, counts, report)
    non_photos = _non_photos(files, report) if deep else set()
    _duplicates(files, report, skip=non_photos)
    if deep:
        _mislabelled(files, classes, report, skip=non_photos, backbone=backbone, cache_dir=cache_dir,
                     progress=progress, workers=workers)

    rank = {lvl: i for i, lvl in enumerate(LEVELS)}
    findings = sorted(report.findings, key=lambda d: (rank[d["level"]], d["code"], d["path"]))
    summary = {"errors": sum(d["level"] == "error" for d in findings),
               "warnings": sum(d["level"] == "warning" for d in findings),
               "infos": sum(d["level"] == "info" for d in findings)}
    return {"root": str(root), "layout": layout, "classes": classes, "counts": counts,
            "deep": bool(deep), "findings": findings, "summary": summary}


def _input_size(backbone, resolve: bool) -> int:
    if backbone is None or (isinstance(backbone, str) and backbone == "default"):
        from .backbones import DEFAULT_PREPROCESSING

        return DEFAULT_PREPROCESSING.size
    pre = getattr(backbone, "preprocessing", None)
    if pre is not None:
        return int(pre.size)
    if not resolve:
        return DEFAULT_INPUT_SIZE
    try:
        from .backbones import resolve_backbone

        return int(resolve_backbone(backbone).preprocessing.size)
    except GraftError:
        return DEFAULT_INPUT_SIZE


# --- walking the folder -------------------------------------------------------------------------

def _collect(root: Path, layout: str, report: _Report) -> tuple[list[str], list[_File]]:
    """Classes and candidate files, as graft.data.folder finds them; walk problems reported."""
    split_dirs = [("train", root / "train"), ("val", root / "val")] if layout == "train/val" else [(None, root)]
    if layout == "train/val":
        for entry in _entries(root):
            if entry.name.startswith("."):
                report.add("hidden_file", entry.path, "hidden, ignored by graft")
            elif entry.name not in ("train", "val"):
                report.add("not_in_class_folder", entry.path,
                           "ignored by graft: with train/ and val/ present only they are read")
    per_split: dict[str | None, list[tuple[str, Path]]] = {}
    for split, base in split_dirs:
        dirs = []
        for entry in _entries(base):
            path = Path(entry.path)
            if entry.name.startswith("."):
                report.add("hidden_file", path, "hidden, ignored by graft")
                continue
            kind = _kind(entry, path, report)
            if kind == "dir":
                dirs.append((entry.name, path))
            elif kind == "file":
                report.add("not_in_class_folder", path,
                           "a file next to the class folders, not inside one: ignored by graft")
        per_split[split] = dirs
    if layout == "train/val":
        classes = [name for name, _ in per_split["train"]]
        val_names = [name for name, _ in per_split["val"]]
        for c in classes:
            if c not in val_names:
                report.add("class_mismatch", root / "val" / c,
                           f"class {c!r} has a train/ folder but no val/ folder: graft train refuses this")
        for c in val_names:
            if c not in classes:
                report.add("class_mismatch", root / "val" / c,
                           f"val/ has a folder {c!r} that train/ does not: graft train refuses this")
    else:
        classes = [name for name, _ in per_split[None]]
    if len(classes) < 2:
        report.add("too_few_classes", root / "train" if layout == "train/val" else root,
                   f"{len(classes)} class folder(s) ({', '.join(classes) or 'none'}); graft needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    files: list[_File] = []
    for split, dirs in per_split.items():
        for name, path in dirs:
            if name not in index:
                continue
            found: list[Path] = []
            _walk(path, found, report, {_inode(path)})
            for p in sorted(found):  # graft sorts Paths, not strings: same order, same split
                files.append(_File(p, report.rel(p), name, index[name], split))
    return classes, files


def _entries(base: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(base) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _inode(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _kind(entry: os.DirEntry, path: Path, report: _Report) -> str | None:
    """'dir', 'file' or None (reported or ignored); symlink loops are found here, never followed."""
    is_link = False
    try:
        is_link = entry.is_symlink()
        st = os.stat(path)  # follows links; a loop raises ELOOP
    except OSError as e:
        if e.errno == errno.ELOOP:
            report.add("symlink_loop", path, "symbolic link loop (the link resolves to itself)")
        elif is_link:
            report.add("unreadable", path, f"broken symbolic link (its target {_link_target(path)} is missing)")
        else:
            report.add("unreadable", path, f"cannot read ({e.strerror or e})")
        return None
    if stat.S_ISDIR(st.st_mode):
        if is_link:
            target = Path(os.path.realpath(path))
            parent = Path(os.path.realpath(path.parent))
            if target == parent or target in parent.parents:
                report.add("symlink_loop", path,
                           f"symbolic link loop: it points to {target}, a folder that contains it")
                return None
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    report.add("unreadable", path, "not a regular file (a device, socket or pipe): graft cannot read it")
    return None


def _link_target(path: Path) -> str:
    try:
        return repr(os.readlink(path))
    except OSError:
        return "?"


def _walk(folder: Path, found: list[Path], report: _Report, visited: set) -> None:
    """Files under a class folder as graft's `rglob` finds them (not following symlinked folders)."""
    for entry in _entries(folder):
        path = Path(entry.path)
        if entry.name.startswith("."):
            report.add("hidden_file", path, "hidden, ignored by graft")
            continue
        kind = _kind(entry, path, report)
        if kind == "dir":
            if entry.is_symlink():
                report.add("symlinked_folder", path,
                           "a symbolic link to a folder: graft does not look inside it, its photos are not used")
                continue
            key = _inode(path)
            if key in visited:  # a bind mount or similar back to an ancestor
                report.add("symlink_loop", path, "folder loop: this folder is one of its own ancestors")
                continue
            _walk(path, found, report, visited | {key})
        elif kind == "file":
            if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                report.add("unsupported_type", path,
                           f"not a supported image type ({path.suffix or 'no extension'}): ignored by graft "
                           f"(supported: {', '.join(sorted(set(SUPPORTED_EXTENSIONS)))})")
                continue
            found.append(path)


# --- one file -----------------------------------------------------------------------------------

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


def _inspect_safely(f: _File, input_size: int) -> None:
    """_inspect, but an unexpected failure on one file is reported, not fatal to the whole check."""
    try:
        _inspect(f, input_size)
    except Exception as e:  # a bug here must not hide every other finding
        if not f.usable:
            f.problems.append(("undecodable", f"cannot check it ({type(e).__name__}: {e})"))
        f.stats = f.stats or {}


def _inspect(f: _File, input_size: int) -> None:
    """Everything about one file that needs no other file; results go on `f`."""
    try:
        data = f.path.read_bytes()
    except OSError as e:
        code = "symlink_loop" if e.errno == errno.ELOOP else "unreadable"
        f.problems.append((code, f"cannot read file ({e.strerror or e})"))
        return
    f.digest = hashlib.sha256(data).hexdigest()
    if not data:
        f.problems.append(("empty_file", "empty file (0 bytes)"))
        return
    try:
        f.fmt, f.size = probe_image(f.path, data)
    except ImageError as e:
        f.problems.append(_classify_probe_error(f.path, data, e))
        return
    f.probe_ok = True
    w, h = f.size
    if w * h > BOMB_MIN_PIXELS and w * h > BOMB_PIXELS_PER_BYTE * len(data):
        f.problems.append(("too_large", f"{w}x{h} pixels ({w * h / 1e6:.0f} megapixels) declared in a "
                           f"{len(data):,}-byte file: a decompression bomb or a damaged header (real images "
                           f"hold far fewer pixels per byte); not decoded, remove it"))
        return
    if max(w, h) > MAX_ASPECT * min(w, h):
        f.problems.append(("extreme_aspect", f"{w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):.0f}:1: "
                           f"not a usable photo (damaged header?), and resizing its shorter side to the "
                           f"backbone's input would need {_megapixels(w, h, input_size)} megapixels; "
                           f"not decoded, remove it"))
        return
    _header_warnings(f, data, input_size)
    try:
        img = read_image(f.path, min_short_side=64)
    except ImageError as e:
        f.problems.append(_classify_decode_error(f.fmt, data, e))
        return
    f.usable = True
    img.thumbnail((256, 256), Image.Resampling.BILINEAR, reducing_gap=None)
    f.stats = photo_stats(img)
    f.dhash, f.phash = image_hashes(img)


def _megapixels(w: int, h: int, short_side: int) -> str:
    scale = short_side / min(w, h)
    return f"{w * scale * h * scale / 1e6:,.0f}"


def _classify_probe_error(path: Path, data: bytes, e: ImageError) -> tuple[str, str]:
    reason = e.reason
    if "too many pixels" in reason or "decompression bomb" in reason:
        return "too_large", f"{reason}; graft refuses it unread"
    expected = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    actual = _sniff(data)
    if actual is not None and actual != expected:
        return "extension_mismatch", (f"content is {actual} but the extension {path.suffix} says {expected}: "
                                      f"graft skips it (rename it to use it)")
    if "content is" in reason:
        return "extension_mismatch", reason
    if "truncated" in reason.lower():
        return "truncated", reason
    if actual is not None and _declared_longer(actual, data):
        return "truncated", f"truncated: the file is shorter than its header says ({reason})"
    return "undecodable", reason


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


def _classify_decode_error(fmt: str, data: bytes, e: ImageError) -> tuple[str, str]:
    reason = e.reason
    if "truncated" in reason.lower():
        return "truncated", reason
    if _declared_longer(fmt, data):
        return "truncated", f"truncated: the file is shorter than its header says ({reason})"
    return "undecodable", reason


def _declared_longer(fmt: str, data: bytes) -> bool:
    """The container says the file is longer than it is (WebP's RIFF size, BMP's file size)."""
    if fmt == "WEBP" and len(data) >= 8:
        return struct.unpack("<I", data[4:8])[0] + 8 > len(data)
    if fmt == "BMP" and len(data) >= 6:
        return struct.unpack("<I", data[2:6])[0] > len(data)
    return False


def _header_warnings(f: _File, data: bytes, input_size: int) -> None:
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
    if min(f.size) < input_size:
        f.problems.append(("tiny", f"{f.size[0]}x{f.size[1]} pixels, smaller than the backbone's "
                                   f"{input_size}x{input_size} input: it is upscaled and looks blurry"))


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


def photo_stats(img: Image.Image) -> dict:
    """Pixel statistics that separate photos from placeholders and flat graphics.

    On a 128-pixel thumbnail: `std` (pixel standard deviation, 0-255), `top_colour_fraction`
    (share of the most common colour at 5 bits per channel: the background), `colours_99` (colours
    at 4 bits per channel that cover 99% of the pixels), and, for what differs from that
    background, `solid_fraction` (share of it whose 3x3 neighbourhood also differs: thick shapes,
    not thin strokes like text) and `flat_fill` (share of those solid pixels in an exactly uniform
    3x3 neighbourhood: flat colour fills, not photographed texture).
    """
    small = img.copy()
    small.thumbnail((128, 128), Image.Resampling.BILINEAR, reducing_gap=None)
    a = np.asarray(small, dtype=np.int32)
    std = float(np.sqrt(a.reshape(-1, 3).var(0).mean()))
    q5 = a >> 3
    key5 = (q5[..., 0] << 10) | (q5[..., 1] << 5) | q5[..., 2]
    bins = np.bincount(key5.ravel())
    dominant = int(bins.argmax())
    top = float(bins[dominant] / key5.size)
    q4 = a >> 4
    key4 = ((q4[..., 0] << 8) | (q4[..., 1] << 4) | q4[..., 2]).ravel()
    counts = np.sort(np.bincount(key4))[::-1]
    covering = int(np.searchsorted(np.cumsum(counts), 0.99 * key4.size) + 1)
    background = a[key5 == dominant].mean(0)
    fg = np.abs(a - background).max(2) > 24
    solid = _all_3x3(fg)
    spread = _spread_3x3(a)
    n_fg, n_solid = int(fg.sum()), int(solid.sum())
    return {"std": round(std, 2), "top_colour_fraction": round(top, 4), "colours_99": covering,
            "solid_fraction": round(n_solid / n_fg, 4) if n_fg else 0.0,
            "flat_fill": round(float((solid & (spread <= 1)).sum() / n_solid), 4) if n_solid else 0.0}


def _all_3x3(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    m = np.pad(mask, 1)
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= m[dy : dy + h, dx : dx + w]
    return out


def _spread_3x3(a: np.ndarray) -> np.ndarray:
    """Largest channel difference between each pixel and its 3x3 neighbours (edges padded)."""
    h, w = a.shape[:2]
    p = np.pad(a, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros((h, w), np.int32)
    for dy in range(3):
        for dx in range(3):
            out = np.maximum(out, np.abs(p[dy : dy + h, dx : dx + w] - a).max(2))
    return out


# --- across files -------------------------------------------------------------------------------

def _assign_splits(files: list[_File], classes: list[str], layout: str, val_split: float) -> None:
    """The side of each probed file, exactly as graft.data.scan_photos decides it."""
    if layout == "train/val":
        for f in files:
            f.split = f.split_dir
        return
    samples = [Sample(f.path, f.label, f.digest, f.size) for f in files if f.probe_ok]
    by_id = {id(s): f for s, f in zip(samples, [f for f in files if f.probe_ok])}
    train, val = split_by_hash(samples, len(classes), val_split)
    for s in train:
        by_id[id(s)].split = "train"
    for s in val:
        by_id[id(s)].split = "val"


def _class_checks(root, layout, classes, files, counts, report) -> None:
    probed = {c: {"train": 0, "val": 0} for c in classes}
    for f in files:
        if f.probe_ok:
            probed[f.cls][f.split] += 1
    for c in classes:
        n = counts[c]
        where = (lambda s: root / s / c) if layout == "train/val" else (lambda s: root / c)
        if n["train"] + n["val"] == 0:
            report.add("empty_class", where("train"), f"class {c!r} has no usable image: graft train fails")
        elif n["train"] == 0:
            report.add("empty_class", where("train"),
                       f"class {c!r} has no usable training image ({n['val']} in val): graft train fails")
        elif layout == "train/val" and not (root / "val" / c).is_dir():
            pass  # class_mismatch, reported with the folders
        elif layout == "train/val" and probed[c]["val"] == 0:
            report.add("empty_class", where("val"),
                       f"class {c!r} has no usable image in val/: graft train refuses this")
        elif n["val"] == 0:
            report.add("no_validation_image", where("val"),
                       f"class {c!r} has no usable validation image: its accuracy is not measured")
    sizes = {c: n["train"] + n["val"] for c, n in counts.items() if n["train"] + n["val"] > 0}
    if len(sizes) >= 2:
        big, small = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
        if sizes[big] > IMBALANCE_RATIO * sizes[small]:
            report.add("class_imbalance", root,
                       f"classes are imbalanced: {big!r} has {sizes[big]} usable images, {small!r} only "
                       f"{sizes[small]} ({sizes[big] / sizes[small]:.1f}x); the small class will be "
                       f"under-predicted: add photos to it")


def _non_photos(files: list[_File], report: _Report) -> set[str]:
    flagged = set()
    for f in files:
        if not f.usable or not f.stats:
            continue
        s = f.stats
        if s["std"] < NEAR_CONSTANT_STD:
            why = f"near-constant image (pixel std {s['std']:.1f} of 255): it shows nothing"
        elif (s["top_colour_fraction"] > FLAT_TOP_FRACTION and s["colours_99"] <= FLAT_MAX_COLOURS
              and (s["solid_fraction"] < THIN_SOLID_FRACTION or s["flat_fill"] > FLAT_FILL_FRACTION)):
            why = (f"a flat graphic, not a photo ({s['top_colour_fraction']:.0%} of it is one colour, "
                   f"{s['colours_99']} colours in all): a placeholder such as 'image not found'?")
        else:
            continue
        report.add("not_a_photo", f.path, why + "; remove it")
        flagged.add(f.rel)
    return flagged


def _duplicates(files: list[_File], report: _Report, skip: set[str]) -> None:
    usable = [f for f in files if f.usable]
    # exact copies: the first (by split, path) keeps, later ones are reported
    first: dict[tuple[str, str], _File] = {}
    train_by_digest: dict[str, _File] = {}
    for f in usable:
        if f.split == "train":
            train_by_digest.setdefault(f.digest, f)
    exact = set()
    for f in usable:
        key = (f.split, f.digest)
        if key in first:
            other = first[key]
            report.add("duplicate", f.path, f"identical to {other.rel} (same bytes, both in {f.split})"
                       + _labels(f, other))
            exact.add(f.rel)
        else:
            first[key] = f
        if f.split == "val" and f.digest in train_by_digest:
            other = train_by_digest[f.digest]
            report.add("leakage", f.path, f"identical to the training photo {other.rel}: the same photo is in "
                       f"train and val, so validation accuracy is inflated" + _labels(f, other))
    # near copies, by perceptual hash; near-constant images hash to noise, so they are left out
    reps = [f for f in usable if f.rel not in exact and f.rel not in skip and f.dhash is not None
            and f.stats.get("std", 0) >= NEAR_CONSTANT_STD]
    if len(reps) < 2:
        return
    pairs = _near_pairs(np.stack([f.dhash for f in reps]), np.stack([f.phash for f in reps]))
    near: dict[int, list[int]] = {}
    for i, j in pairs:
        near.setdefault(i, []).append(j)
        near.setdefault(j, []).append(i)
    for j, f in enumerate(reps):
        others = [reps[i] for i in sorted(near.get(j, [])) if reps[i].digest != f.digest]
        if f.split == "val":
            in_train = [o for o in others if o.split == "train"]
            if in_train and not (f.digest in train_by_digest):
                o = in_train[0]
                report.add("leakage", f.path, f"near-identical to the training photo {o.rel} (perceptual hash): "
                           f"the same photo is in train and val, so validation accuracy is inflated" + _labels(f, o))
        earlier = [reps[i] for i in sorted(near.get(j, [])) if i < j and reps[i].split == f.split
                   and reps[i].digest != f.digest]
        if earlier:
            o = earlier[0]
            report.add("near_duplicate", f.path, f"near-identical to {o.rel} (perceptual hash, both in "
                       f"{f.split}): a re-encoded or resized copy?" + _labels(f, o))


def _labels(f: _File, other: _File) -> str:
    if f.cls != other.cls:
        return f"; labelled {f.cls!r} here but {other.cls!r} there"
    return ""


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8), axis=-1).reshape(*x.shape, -1).sum(-1)


def _near_pairs(dh: np.ndarray, ph: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) close on both hashes (pHash first, all pairs, in blocks)."""
    d64 = np.ascontiguousarray(dh).view(np.uint64)
    p64 = np.ascontiguousarray(ph).view(np.uint64)
    out = []
    n = len(d64)
    block = max(16, min(1024, 2_000_000 // max(1, n)))  # bounds memory: block x n x 4 words
    for s in range(0, n, block):
        a = p64[s : s + block]
        dist = _popcount(a[:, None, :] ^ p64[None, :, :]).sum(-1)
        ii, jj = np.nonzero(dist <= PHASH_MAX_DISTANCE)
        for i, j in zip(ii + s, jj):
            if i < j and int(_popcount(d64[i] ^ d64[j]).sum()) <= DHASH_MAX_DISTANCE:
                out.append((int(i), int(j)))
    return out


# --- likely mislabelled -------------------------------------------------------------------------

def _mislabelled(files, classes, report, *, skip, backbone, cache_dir, progress, workers) -> None:
    from .backbones import resolve_backbone
    from .cache import FeatureCache, default_cache_dir
    from .features import cache_namespace, extract_features

    cand = [f for f in files if f.usable and f.rel not in skip]
    per_class = np.bincount([f.label for f in cand], minlength=len(classes))
    few = [c for c, n in zip(classes, per_class) if 0 < n < MISLABEL_MIN_PER_CLASS]
    kept = [k for k, n in enumerate(per_class) if n >= MISLABEL_MIN_PER_CLASS]
    if few:
        report.add("check_skipped", report.root,
                   f"mislabelled-photo check left out class(es) {', '.join(map(repr, few))}: it needs at least "
                   f"{MISLABEL_MIN_PER_CLASS} usable photos per class")
    if len(kept) < 2:
        if not few:
            report.add("check_skipped", report.root, "mislabelled-photo check skipped: it needs at least two "
                       f"classes with {MISLABEL_MIN_PER_CLASS} or more usable photos")
        return
    cand = [f for f in cand if f.label in kept]
    source = resolve_backbone(backbone)
    cache = FeatureCache(cache_dir or default_cache_dir(), cache_namespace(source))
    digests = sorted({f.digest for f in cand})
    path_of = {}
    for f in cand:
        path_of.setdefault(f.digest, f.path)
    feats, ok, _ = extract_features(source.build, digests, [path_of[d] for d in digests], cache,
                                    load=source.preprocessing.load, workers=workers, progress=progress,
                                    desc="check: features")
    row = {d: i for i, d in enumerate(digests) if ok[i]}
    cand = [f for f in cand if f.digest in row]
    x = feats[[row[f.digest] for f in cand]]
    remap = {k: j for j, k in enumerate(kept)}
    y = np.array([remap[f.label] for f in cand])
    names = [classes[k] for k in kept]
    probs = oof_probabilities(x, y, len(kept), _folds(cand, MISLABEL_FOLDS))
    given = probs[np.arange(len(y)), y]
    self_conf = np.array([given[y == k].mean() for k in range(len(kept))])
    agree = neighbour_agreement(x, y, [f.digest for f in cand], MISLABEL_NEIGHBOURS)
    for i, f in enumerate(cand):
        k = int(probs[i].argmax())
        if (k == y[i] or given[i] >= MISLABEL_MAX_PROB or given[i] > self_conf[y[i]] - MISLABEL_MARGIN
                or agree[i] > MISLABEL_MAX_AGREEMENT):
            continue
        report.add("likely_mislabelled", f.path,
                   f"labelled {f.cls!r}, but it looks like {names[k]!r}: out-of-fold probability "
                   f"{given[i]:.2f} for {f.cls!r} ({probs[i, k]:.2f} for {names[k]!r}; photos of {f.cls!r} "
                   f"typically get {self_conf[y[i]]:.2f}), and {agree[i]:.0%} of its "
                   f"{MISLABEL_NEIGHBOURS} most similar photos are labelled {f.cls!r}: check its label")


def neighbour_agreement(x: np.ndarray, y: np.ndarray, digests: list[str], k: int) -> np.ndarray:
    """Share of each row's k nearest other rows (cosine, centred features) that have its label.

    Identical files (same digest) are not each other's neighbours.
    """
    z = x - x.mean(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    _, group = np.unique(np.asarray(digests), return_inverse=True)
    k = max(1, min(k, len(y) - 1))
    out = np.zeros(len(y))
    block = max(16, min(1024, 4_000_000 // max(1, len(y))))
    for s in range(0, len(y), block):
        sims = z[s : s + block] @ z.T
        sims[group[s : s + block, None] == group[None, :]] = -np.inf  # itself and its copies
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[s : s + block] = (y[nearest] == y[s : s + block, None]).mean(1)
    return out


def _folds(cand: list[_File], k: int) -> np.ndarray:
    """Stratified, deterministic folds; identical files share a fold (their features are identical)."""
    fold_of: dict[str, int] = {}
    counters: dict[int, int] = {}
    for f in sorted(cand, key=lambda f: (f.label, f.digest)):
        if f.digest not in fold_of:
            fold_of[f.digest] = counters.get(f.label, 0) % k
            counters[f.label] = counters.get(f.label, 0) + 1
    return np.array([fold_of[f.digest] for f in cand])


def oof_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, folds: np.ndarray,
                      l2: float = MISLABEL_L2) -> np.ndarray:
    """Out-of-fold class probabilities of an L2-regularised logistic regression (full-batch LBFGS)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: thread start-up and contention cost 30x the maths
    try:
        probs = np.zeros((len(y), n_classes), np.float64)
        for k in np.unique(folds):
            test = folds == k
            probs[test] = _fit_predict(x[~test], y[~test], x[test], n_classes, l2)
    finally:
        torch.set_num_threads(threads)
    return probs


def _fit_predict(x_train, y_train, x_test, n_classes, l2) -> np.ndarray:
    import torch

    mean = x_train.mean(0)
    std = x_train.std(0) + 1e-6
    xt = torch.from_numpy((x_train - mean) / std).double()
    yt = torch.from_numpy(y_train).long()
    w = torch.zeros(x_train.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        xs = torch.from_numpy((x_test - mean) / std).double()
        return (xs @ w + b).softmax(1).numpy()


# --- output -------------------------------------------------------------------------------------

def format_report(report: dict) -> str:
    """The report as text: counts per class, then findings grouped by level, one line each."""
    lines = [f"checked {report['root']} ({report['layout']} layout"
             + ("" if report.get("deep", True) else ", quick") + ")"]
    counts = report["counts"]
    if counts:
        width = max(5, *(len(c) for c in counts))
        lines.append(f"  {'class':<{width}}  train    val")
        for c, n in counts.items():
            lines.append(f"  {c:<{width}}  {n['train']:>5}  {n['val']:>5}")
    for level, title in (("error", "errors"), ("warning", "warnings"), ("info", "notes")):
        items = [d for d in report["findings"] if d["level"] == level]
        if not items:
            continue
        lines.append("")
        lines.append(f"{title} ({len(items)}):")
        for d in items:
            lines.append(f"  {level}: [{d['code']}] {d['message']}")
    s = report["summary"]
    lines.append("")
    lines.append(f"{s['errors']} error(s), {s['warnings']} warning(s)"
                 + (": fix the errors before training" if s["errors"] else ""))
    return "\n".join(lines)


def add_cli(subparsers) -> None:
    """Register `graft check PHOTOS [--json] [--quick] [--cache-dir DIR]` on graft's sub-parsers."""
    c = subparsers.add_parser(
        "check", help="scan a photo folder for problems before training",
        description="Scan PHOTOS (as graft train reads it) for unusable files, train/val leakage, "
        "duplicates, placeholders, likely mislabelled photos and more. Exit status 1 if there are errors.")
    c.add_argument("photos", metavar="PHOTOS", help="folder of class sub-folders (or train/ + val/)")
    c.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    c.add_argument("--quick", action="store_true",
                   help="skip the deep checks (placeholder images, mislabelled photos: needs backbone features)")
    c.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: $GRAFT_CACHE_DIR or ~/.cache/graft)")
    c.add_argument("--backbone", "-b", default="default", metavar="SPEC",
                   help="backbone for the features of the deep check (default: default)")
    c.add_argument("--val-split", type=float, default=0.2, metavar="F",
                   help="as for graft train, to know which photos will be in val (default 0.2)")
    c.set_defaults(func=cmd_check, handler=cmd_check)


def cmd_check(args) -> int:
    report = check_photos(args.photos, deep=not args.quick, cache_dir=args.cache_dir,
                          backbone=getattr(args, "backbone", "default"),
                          val_split=getattr(args, "val_split", 0.2),
                          progress=not args.json and not getattr(args, "quiet", False))
    print(json.dumps(report, indent=None) if args.json else format_report(report))
    return 1 if report["summary"]["errors"] else 0
