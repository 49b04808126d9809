"""Decode each photo once per data set, not once per epoch.

Training on a few hundred photos runs dozens of epochs, and JPEG decoding is the largest cost of
every augmented sample. The random crop changes each epoch; the decoded pixels never do. So the
first time a worker decodes a photo it stores the RGB array (uint8, HxWx3 `.npy`) under its
content hash, and later epochs memory-map it (the OS page cache keeps it in RAM) and crop from it.

The stored resolution is the smallest that still serves the smallest crop the pipeline can draw
at full detail: a 12-megapixel JPEG is kept at the DCT reduction (1/2, 1/4, 1/8) chosen from the
crop op's scale and ratio ranges, a small photo at full size. Entries are written atomically
(temp file, fsync, rename), so workers and concurrent runs can share the folder. Each entry ends
with the SHA-256 of its header and pixels, checked when a process first maps it (about 0.6 ms
per MB, once per worker and entry): a damaged entry (pixels zeroed by a bad disk, say, header
and size intact) is discarded with a warning and the photo decoded again. The cache is used
only when the data set's decoded size fits `budget`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
import uuid
from pathlib import Path

import numpy as np

from graft._util.files import open_regular
from graft.cache.layout import DECODED, mark, touch
from graft.data.images import read_image

log = logging.getLogger("graft")

DEFAULT_BUDGET = 4 << 30  # bytes of decoded pixels a data set may occupy


def reduction_for(size: tuple[int, int], crop, out: tuple[int, int]) -> int:
    """Largest DCT reduction (1, 2, 4, 8) keeping the smallest drawable crop >= `out` (h, w)."""
    w, h = size
    area = crop.scale[0] * w * h
    min_w = math.sqrt(area * crop.ratio[0])
    min_h = math.sqrt(area / crop.ratio[1])
    limit = min(min(min_w, w) / out[1], min(min_h, h) / out[0])
    r = 1
    while r < 8 and limit >= 2 * r:
        r *= 2
    return r


def estimate_bytes(sizes, crop, out) -> int:
    total = 0
    for w, h in sizes:
        r = reduction_for((w, h), crop, out)
        total += math.ceil(w / r) * math.ceil(h / r) * 3
    return total


MAX_OPEN = 8192  # maps one process keeps (address space only: the pages live in the page cache)
TRAILER = 32  # bytes after the pixels: the SHA-256 of the header and pixels


class DamagedEntry(ValueError):
    """A stored entry whose header, size or checksum is wrong."""


def entry_name(digest: str, reduction: int) -> str:
    """`.sha256.npy`: a standard .npy (numpy.load reads it) followed by the SHA-256 of all of it.
    Entries of the earlier format, without it, have other names and are never read."""
    return f"{digest}-r{reduction}.sha256.npy"


class DecodedCache:
    """`load(path, digest, (W, H), reduction)` -> uint8 HxWx3 array, decoded at most once.

    Each process keeps the entries it has opened mapped, so later epochs skip opening the file
    and parsing its header (about 150 us a photo, a tenth of a sample's cost). A stat per load
    (inode, size, mtime) notices an entry replaced or damaged since, and opens it again. The maps
    come from torch.from_file, which closes its file descriptor after mapping: numpy's memmap
    keeps one open per map, and a worker holding thousands would hit the open-file limit.
    """

    def __init__(self, root):
        self.root = Path(root)
        self._open: dict[Path, tuple[tuple, np.ndarray]] = {}

    def __getstate__(self):  # workers start with no maps of their own
        return {"root": self.root}

    def __setstate__(self, state):
        self.__init__(state["root"])

    def load(self, path, digest: str, size: tuple[int, int], reduction: int) -> np.ndarray:
        entry = self.root / digest[:2] / entry_name(digest, reduction)
        store = True
        try:
            st = os.stat(entry)
            if not stat.S_ISREG(st.st_mode):  # a FIFO, a folder...: not graft's, neither read nor replaced
                store = False
                raise FileNotFoundError(entry)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            held = self._open.get(entry)
            if held is not None and held[0] == stamp:
                return held[1]
            arr = _map_rgb(entry, st.st_size)
            if len(self._open) >= MAX_OPEN:
                self._open.clear()
            self._open[entry] = (stamp, arr)
            touch(entry)  # its last use, for `graft cache prune` (access time only: stamp holds)
            return arr
        except FileNotFoundError:  # not stored yet (or pruned): decode and store
            pass
        except DamagedEntry as e:
            self._discard(entry, stamp, str(e))
        except OSError:  # unreadable: decode, and try to store it again
            pass
        w, h = size
        img = read_image(path, min_size=(math.ceil(w / reduction), math.ceil(h / reduction)))
        arr = np.asarray(img)
        if store:
            self._store(entry, arr)
        return arr

    def _discard(self, entry: Path, stamp: tuple, why: str) -> None:
        """Delete a damaged entry, with one warning (by the process that deletes it: a worker that
        finds it already replaced by another says nothing and deletes nothing)."""
        self._open.pop(entry, None)
        try:
            st = os.stat(entry)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != stamp:
                return
            entry.unlink()
        except OSError:
            return
        log.warning("decoded photo %s is damaged (%s): discarded, the photo is decoded again", entry, why)

    def _store(self, entry: Path, arr: np.ndarray) -> None:
        """Write `arr` and its checksum to a temp file, fsync it, rename it into place."""
        arr = np.ascontiguousarray(arr)
        tmp = entry.with_name(f".tmp-{uuid.uuid4().hex}.npy")
        try:
            mark(self.root, DECODED)  # graft made this folder: `graft cache prune` may clear it
            entry.parent.mkdir(parents=True, exist_ok=True)
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(arr))
            pixels = memoryview(arr).cast("B")
            digest = hashlib.sha256(head.getvalue())
            digest.update(pixels)
            with open(tmp, "xb") as f:
                f.write(head.getvalue())
                f.write(pixels)
                f.write(digest.digest())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, entry)
        except OSError:  # full disk or read-only cache: decoding again next epoch is fine
            try:
                tmp.unlink()
            except OSError:
                pass


def stored_bytes(root, digests) -> tuple[int, int]:
    """(files, bytes) the decoded photos with these content hashes take under `root`: what a run
    on them left in the cache (every reduction it stored)."""
    files = size = 0
    for d in set(digests):
        for entry in Path(root).glob(f"{d[:2]}/{d}-r*.npy"):
            try:
                size += entry.stat().st_size
                files += 1
            except OSError:  # pruned meanwhile
                pass
    return files, size


def _map_rgb(entry: Path, nbytes: int) -> np.ndarray:
    """Memory-map an HxWx3 uint8 entry read-only, holding no file descriptor, after checking its
    header, size and SHA-256 (DamagedEntry if any is wrong)."""
    import torch

    with open_regular(entry) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise DamagedEntry(f"unexpected .npy version {version}")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except ValueError as e:
            raise DamagedEntry(f"bad header: {e}") from None
        offset = f.tell()
        if len(shape) != 3 or shape[2] != 3 or dtype != np.uint8 or fortran:
            raise DamagedEntry(f"not an RGB uint8 array: {shape} {dtype}")
        size = math.prod(shape)
        if nbytes != offset + size + TRAILER:
            raise DamagedEntry(f"{nbytes} bytes, expected {offset + size + TRAILER}")
        f.seek(0)
        digest = hashlib.sha256(f.read(offset))
        f.seek(offset + size)
        expected = f.read(TRAILER)
    try:
        whole = torch.from_file(str(entry), shared=False, size=nbytes, dtype=torch.uint8)
    except RuntimeError as e:  # e.g. pruned between the header read and here
        raise OSError(str(e)) from None
    pixels = whole[offset:offset + size].numpy()
    digest.update(memoryview(pixels))
    if digest.digest() != expected:
        raise DamagedEntry("checksum mismatch")
    return pixels.reshape(shape)
