"""Telling photos from what is not one: near-constant images and flat graphics ("image not found"
placeholders, logos, screenshots of text), by pixel statistics of a small thumbnail.

One rule, `non_photo_reason`, serves `graft check` (which reports such files as errors) and
`graft train` (which skips them through `RefuseNonPhotos`, on the image its feature extraction
decodes anyway), so the two agree on which files are photos.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from graft.errors import ImageError

NEAR_CONSTANT_STD = 6.0  # pixel std (0-255) below which an image shows nothing
FLAT_TOP_FRACTION = 0.5  # share of pixels in the most common colour (5 bits/channel) ...
FLAT_MAX_COLOURS = 64  # ... with at most this many colours (4 bits/channel) covering 99% of it,
THIN_SOLID_FRACTION = 0.35  # ... and what is not background is thin strokes (text, lines: real
FLAT_FILL_FRACTION = 0.6  # objects on a plain background are solid) or flat colour fills
THUMBNAIL = 128  # the statistics' resolution: enough for strokes, cheap next to a decode


def photo_stats(img, *, lazy: bool = False) -> dict:
    """Pixel statistics that separate photos from placeholders and flat graphics.

    On a 128-pixel thumbnail of `img` (a PIL image, or uint8 pixels (H, W, 3)): `std` (pixel
    standard deviation, 0-255), `top_colour_fraction` (share of the most common colour at 5 bits
    per channel: the background), `colours_99` (colours at 4 bits per channel that cover 99% of the
    pixels), and, for what differs from that background, `solid_fraction` (share of it whose 3x3
    neighbourhood also differs: thick shapes, not thin strokes like text) and `flat_fill` (share of
    those solid pixels in an exactly uniform 3x3 neighbourhood: flat colour fills, not photographed
    texture). `lazy` leaves the last two out when the first three already say "photo" (most
    photos: a third of the cost).
    """
    if not isinstance(img, Image.Image):
        img = Image.fromarray(np.asarray(img, dtype=np.uint8))
    small = img.copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR, reducing_gap=None)
    a = np.asarray(small if small.mode == "RGB" else small.convert("RGB"), dtype=np.int32)
    std = float(np.sqrt(a.reshape(-1, 3).var(0).mean()))
    q5 = a >> 3
    key5 = (q5[..., 0] << 10) | (q5[..., 1] << 5) | q5[..., 2]
    bins = np.bincount(key5.ravel())
    dominant = int(bins.argmax())
    q4 = a >> 4
    key4 = ((q4[..., 0] << 8) | (q4[..., 1] << 4) | q4[..., 2]).ravel()
    counts = np.sort(np.bincount(key4))[::-1]
    stats = {"std": round(std, 2), "top_colour_fraction": round(float(bins[dominant] / key5.size), 4),
             "colours_99": int(np.searchsorted(np.cumsum(counts), 0.99 * key4.size) + 1)}
    if lazy and not _maybe_flat(stats):
        return stats
    background = a[key5 == dominant].mean(0)
    fg = np.abs(a - background).max(2) > 24
    solid = _all_3x3(fg)
    n_fg, n_solid = int(fg.sum()), int(solid.sum())
    stats["solid_fraction"] = round(n_solid / n_fg, 4) if n_fg else 0.0
    stats["flat_fill"] = round(float((solid & (_spread_3x3(a) <= 1)).sum() / n_solid), 4) if n_solid else 0.0
    return stats


def non_photo_reason(stats: dict) -> str | None:
    """Why the image with these `photo_stats` is not a photo, or None if it is one."""
    if stats["std"] < NEAR_CONSTANT_STD:
        return f"near-constant image (pixel std {stats['std']:.1f} of 255): it shows nothing"
    if _maybe_flat(stats) and (stats["solid_fraction"] < THIN_SOLID_FRACTION
                               or stats["flat_fill"] > FLAT_FILL_FRACTION):
        return (f"a flat graphic, not a photo ({stats['top_colour_fraction']:.0%} of it is one colour, "
                f"{stats['colours_99']} colours in all): a placeholder such as 'image not found'?")
    return None


def _maybe_flat(stats: dict) -> bool:
    return (stats["std"] >= NEAR_CONSTANT_STD and stats["top_colour_fraction"] > FLAT_TOP_FRACTION
            and stats["colours_99"] <= FLAT_MAX_COLOURS)


class RefuseNonPhotos:
    """A `load(path)` for feature extraction that raises ImageError("not_a_photo") for what
    `graft check` calls a placeholder, judged on the pixels `load` returns (uint8 (3, H, W)):
    no extra decode, about a millisecond a photo. Picklable, for loader worker processes.

    `skip_rule` names the rule (its thresholds): feature extraction remembers the files it
    refused under it, and forgets them when the rule changes (graft.features.extract)."""

    skip_rule = "photos:" + ",".join(f"{v:g}" for v in (NEAR_CONSTANT_STD, FLAT_TOP_FRACTION, FLAT_MAX_COLOURS,
                                                         THIN_SOLID_FRACTION, FLAT_FILL_FRACTION, THUMBNAIL))

    def __init__(self, load):
        self.load = load

    def __call__(self, path):
        x = self.load(path)
        why = non_photo_reason(photo_stats(np.asarray(x).transpose(1, 2, 0), lazy=True))
        if why:
            raise ImageError(path, why, "not_a_photo")
        return x


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
