"""Cached features as a matrix whose rows stay on disk: the head reads the rows it needs, when it needs them.

Holding every feature in memory is fine at 10k photos (50 MB for EfficientNet-Lite0) and not at
a million (5 GB, then copies of it). `FeatureRows` is an (N, D) or, for augmented views, an
(N, K, D) float32 matrix over entries of a `FeatureCache`; `take` reads only the requested rows
with `os.pread` from the verified shards, through a bounded set of open files, so neither
memory, open files nor mapped pages grow with the data set. `np.asarray(rows)` reads everything
(the same float32 values `FeatureCache.get` returns), which is what small data sets do.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from graft.errors import GraftError

MAX_OPEN = 128  # shard files kept open between reads


class FeatureRows:
    """Entries `names` (a list, or a list of equal-length lists for (N, K, D)) of `cache`."""

    def __init__(self, cache, names):
        grid = bool(names) and isinstance(names[0], (list, tuple))
        self.k = len(names[0]) if grid else None
        flat = [n for group in names for n in group] if grid else list(names)
        if grid and len(flat) != len(names) * self.k:
            raise ValueError("every image needs the same number of views")
        self.names = flat
        self._cache = cache  # kept alive: a read-only cache's new shards live as long as it does
        self._shards: list = []
        ids: dict = {}
        self._sid = np.empty(len(flat), np.int32)
        self._pos = np.empty(len(flat), np.int64)  # byte offset of the row in its shard
        dim = None
        for i, name in enumerate(flat):
            hit = cache.locate(name)
            if hit is None:
                raise GraftError(f"feature cache entry {name} is missing from {cache.dir} (pruned or damaged "
                                 f"meanwhile?): run the command again to recompute it")
            shard, row, offset, d = hit
            if dim is not None and d != dim:
                raise GraftError(f"feature cache {cache.dir} mixes {dim}- and {d}-wide features")
            dim = d
            if shard not in ids:
                ids[shard] = len(self._shards)
                self._shards.append(shard)
            self._sid[i] = ids[shard]
            self._pos[i] = offset + row * d * 4
        self.dim = dim or 0
        self._files: OrderedDict[int, int] = OrderedDict()  # shard id -> open fd, least recent first

    @property
    def shape(self) -> tuple[int, ...]:
        n = len(self.names)
        return (n // self.k, self.k, self.dim) if self.k else (n, self.dim)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return len(self.names) * self.dim * 4

    def __len__(self) -> int:
        return self.shape[0]

    def subset(self, rows) -> FeatureRows:
        """The images `rows` (indices) of one-view rows, still in the cache."""
        if self.k is not None:
            raise ValueError("subset takes rows of clean features, not of views")
        return FeatureRows(self._cache, [self.names[i] for i in rows])

    def take(self, flat_rows) -> np.ndarray:
        """(len(flat_rows), D) float32: rows by flat index (image * K + view for views)."""
        flat_rows = np.asarray(flat_rows, dtype=np.int64)
        out = np.empty((len(flat_rows), self.dim), np.float32)
        if not len(flat_rows):
            return out
        row_bytes = self.dim * 4
        sid, pos = self._sid[flat_rows], self._pos[flat_rows]
        order = np.lexsort((pos, sid))  # by shard, then offset: one read per run of adjacent rows
        sid, pos = sid[order], pos[order]
        starts = np.flatnonzero(np.concatenate([[True], (sid[1:] != sid[:-1]) | (pos[1:] != pos[:-1] + row_bytes)]))
        ends = np.append(starts[1:], len(order))
        for a, b in zip(starts.tolist(), ends.tolist()):
            want = (b - a) * row_bytes
            data = os.pread(self._fd(int(sid[a])), want, int(pos[a]))
            if len(data) != want:
                raise GraftError(f"feature cache shard {self._shards[sid[a]]} was cut short while in use: "
                                 f"run the command again")
            out[order[a:b]] = np.frombuffer(data, "<f4").reshape(b - a, self.dim)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.take(np.arange(len(self.names))).reshape(self.shape)
        return out if dtype is None else out.astype(dtype, copy=False)

    def _fd(self, sid: int) -> int:
        fd = self._files.get(sid)
        if fd is not None:
            self._files.move_to_end(sid)
            return fd
        try:
            fd = os.open(self._shards[sid], os.O_RDONLY)
        except OSError as e:
            raise GraftError(f"cannot read feature cache shard {self._shards[sid]} ({e.strerror or e}): "
                             f"run the command again") from None
        self._files[sid] = fd
        if len(self._files) > MAX_OPEN:
            os.close(self._files.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def with_views(clean: FeatureRows, views: FeatureRows, cache) -> FeatureRows:
    """(N, 1 + K, D): each image's clean features followed by its K augmented views."""
    k = views.k
    return FeatureRows(cache, [[c, *views.names[i * k:(i + 1) * k]] for i, c in enumerate(clean.names)])
