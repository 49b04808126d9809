"""What a run may ask for before it starts: augmented views that fit the disk and the memory.

`--aug-views 1000000` on a few dozen photos was accepted and grew to 18 GB of memory in 4 minutes
(an ETA of 394 hours, ~250 GB of cache) before it was stopped (issue 22, finding 14). Each view of
a training photo is one forward pass and one cached feature row (feature width x 4 bytes), so
both the count and the bytes are refused up front, in one line that says the estimate and what
fits: `MAX_VIEWS` when the settings are checked (no photo read), `check_views_fit` once the
training photos are counted and the backbone's width is known (before any view is computed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from graft.errors import GraftError

# Each view is a forward pass of every training photo: 100 is already 100 times the extraction, and
# more draws of one preset's few ops add nothing the head can use (README: 4 to 10 views help).
MAX_VIEWS = 100
# The views' rows are read back into memory when they fit the head's budget and streamed from the
# cache otherwise; a cache above this share of the free disk would leave the machine without room.
DISK_SHARE = 0.5
FLOAT_BYTES = 4


def views_bytes(n_photos: int, views: int, feature_dim: int) -> int:
    """Bytes of cache the views' features take: photos x views x width x 4."""
    return int(n_photos) * int(views) * int(feature_dim) * FLOAT_BYTES


def free_bytes(folder) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    where = Path(folder).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free


def check_views_fit(views, n_photos: int, feature_dim: int, cache_dir, *, free: int | None = None) -> None:
    """Refuse `views` augmented views of `n_photos` training photos that would not fit on the
    cache's disk (at most DISK_SHARE of what is free) or are over MAX_VIEWS; "auto" and 0 pass."""
    if views in (None, "auto") or not views:
        return
    if views > MAX_VIEWS:
        raise GraftError(f"--aug-views {views} is over the limit of {MAX_VIEWS}: each view is a forward pass of "
                         f"every training photo; ask for {MAX_VIEWS} or fewer (4 to 10 usually help)")
    need = views_bytes(n_photos, views, feature_dim)
    room = int((free_bytes(cache_dir) if free is None else free) * DISK_SHARE)
    if need > room:
        fits = room // max(1, views_bytes(n_photos, 1, feature_dim))
        raise GraftError(f"--aug-views {views} of {n_photos} training photos would take {_gb(need)} of feature "
                         f"cache in {os.fspath(cache_dir)}, and {_gb(room)} fits (half the free disk): ask for "
                         f"--aug-views {fits} or fewer, or free space")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"
