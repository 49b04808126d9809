"""On-disk cache of frozen-backbone features, so each image goes through the backbone once.

Layout (graft.cache.layout): `<root>/<arch>-<key>/` per namespace, where the key hashes everything that changes a
feature (backbone architecture, weights digest, preprocessing, which activation). Inside, entries
are named by the image's content hash (plus the augmentation key and view index for augmented
views), and stored in shards: standard safetensors files, each holding one extraction batch and
its entry names and a checksum in the metadata.

Why shards: a shard is written to a temp file and renamed into place, so a killed run leaves
whole shards only, and every finished batch survives a kill; two processes sharing a cache each
write their own shards, so they never corrupt each other (at worst one batch is duplicated).
Reads memory-map the tensor data directly (safetensors' numpy loader copies, so the documented
layout, an 8-byte header length, a JSON header and raw little-endian data, is mapped with
numpy). A shard whose checksum or header is wrong is discarded with a warning and its entries are
recomputed.

A cache that cannot be written (a read-only disk, a shared folder without write permission) is
still read: what it holds is used, and what is missing is computed into a temporary folder that
lives as long as the FeatureCache (one warning per cache folder; nothing is kept for the next run).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from graft._util.atomic import write_error, write_json, write_safetensors
from graft.errors import GraftError
from graft.cache.layout import EXTRACT_LOCK, NAMESPACE_FILE, SKIPPED, namespace_dir, touch

log = logging.getLogger("graft")

FORMAT = 1
READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}  # a cache that may be read but not written
_warned_read_only: set[str] = set()  # cache folders already warned about (one line per folder and process)


class FeatureCache:
    """A namespace of cached feature vectors, one float32 row per entry name."""

    def __init__(self, root, namespace: dict):
        self.dir = namespace_dir(root, namespace, FORMAT)
        self.key = self.dir.name.rsplit("-", 1)[1]
        self.namespace = namespace
        self._index: dict[str, tuple[Path, int]] = {}
        self._arrays: dict[Path, np.ndarray] = {}
        self._bad: set[Path] = set()
        self._layouts: dict[Path, tuple[int, int]] = {}  # verified shards: (data offset, dim)
        self.written: list[Path] = []  # shards this instance wrote, in order
        self._spill: tempfile.TemporaryDirectory | None = None  # where shards go when the cache is read-only
        self.refresh()

    @property
    def read_only(self) -> bool:
        """The cache folder cannot be written: new shards go to a temporary folder (see module)."""
        return self._spill is not None

    # -- reading ------------------------------------------------------------------------------------
    def refresh(self, extra=()) -> None:
        """Pick up shards written since (by this or another process). `extra`: shard paths known to
        exist (another node's, by name), read even when the directory listing does not show them
        yet: NFS clients cache listings for up to a minute, while opening a named file is fresh."""
        if not self.dir.is_dir():
            return
        known = {p for p, _ in self._index.values()} | self._bad
        listed = set(self.dir.glob("*.safetensors")) | {Path(p) for p in extra}
        for shard in sorted(listed):
            if shard.name.startswith(".") or shard in known:
                continue
            try:
                names, _, _ = _read_header(shard)
            except FileNotFoundError:  # pruned since the directory was listed
                continue
            except (OSError, ValueError) as e:
                self._discard(shard, f"unreadable header ({e})")
                continue
            for row, name in enumerate(names):
                self._index.setdefault(name, (shard, row))

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, names: list[str]) -> tuple[np.ndarray | None, list[int]]:
        """Rows for `names` (a float32 array, missing rows zero) and the positions that missed."""
        rows, missing = [], []
        out = None
        for i, name in enumerate(names):
            hit = self._index.get(name)
            arr = self._array(hit[0]) if hit else None
            if arr is None:
                missing.append(i)
                rows.append(None)
                continue
            if out is None:
                out = np.zeros((len(names), arr.shape[1]), np.float32)
            out[i] = arr[hit[1]]
        return out, missing

    def locate(self, name: str) -> tuple[Path, int, int, int] | None:
        """(shard, row, data offset, dim) of an entry whose shard passed its checksum, or None.

        For readers that stream rows themselves (graft.cache.rows): the shard is verified once
        but not kept mapped, so neither open files nor resident pages grow with the cache."""
        hit = self._index.get(name)
        if hit is None:
            return None
        layout = self._layouts.get(hit[0])
        if layout is None:
            mapped = hit[0] in self._arrays
            arr = self._array(hit[0])
            if arr is None:
                return None
            if not mapped:
                del self._arrays[hit[0]]
            layout = self._layouts[hit[0]] = (int(arr.offset), int(arr.shape[1]))
        return hit[0], hit[1], *layout

    def _array(self, shard: Path) -> np.ndarray | None:
        arr = self._arrays.get(shard)
        if arr is not None or shard in self._bad:
            return arr
        try:
            names, arr, checksum = _read_header(shard, mmap=True)
            if hashlib.sha256(arr.tobytes()).hexdigest() != checksum:
                raise ValueError("checksum mismatch")
        except FileNotFoundError:  # `graft cache prune` took it since the index was read
            log.info("cache shard %s is gone: its entries will be recomputed", shard)
            self._forget(shard)
            return None
        except (OSError, ValueError) as e:
            self._discard(shard, str(e))
            return None
        self._arrays[shard] = arr
        touch(shard)  # its last use, for `graft cache prune`
        return arr

    def _forget(self, shard: Path) -> None:
        """Drop a shard from the index, so its entries count as missing."""
        self._bad.add(shard)
        self._layouts.pop(shard, None)
        self._index = {k: v for k, v in self._index.items() if v[0] != shard}

    def _discard(self, shard: Path, why: str) -> None:
        log.warning("cache shard %s is damaged (%s): discarded, its entries will be recomputed", shard, why)
        self._forget(shard)
        try:
            shard.unlink()
        except OSError:
            pass

    @contextlib.contextmanager
    def extraction_lock(self, shared: bool = False):
        """Held while computing missing entries, so two runs sharing the cache never compute the
        same features twice: the second waits, refreshes, and finds them cached. The OS releases
        the lock when a holder dies, even by SIGKILL. `shared`: the ranks of one torchrun job,
        which split the work among themselves, hold it together (and keep `graft cache prune`
        out until every rank has read back what the others wrote).

        A cache that cannot be written has no lock to take: it turns read-only (see module) and
        nothing is locked, since nothing will be written in it."""
        f = None
        if not self.read_only:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                f = open(self.dir / EXTRACT_LOCK, "a+b")
            except OSError as e:
                if e.errno not in READ_ONLY:
                    raise write_error(self.dir / EXTRACT_LOCK, e) from e
                if shared:  # torchrun's ranks hand each other their features through the cache folder
                    raise GraftError(f"the feature cache {self.dir.parent} cannot be written ({_why(e)}): under "
                                     f"torchrun the ranks share features through it; give a writable --cache-dir")
                self._go_read_only(e)
        if f is None:  # read-only: nothing will be written here, so there is nothing to lock
            yield
            return
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        with f:
            try:
                fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another graft process is extracting into or pruning %s; waiting for it", self.dir)
                fcntl.flock(f.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _go_read_only(self, cause: OSError) -> None:
        """From now on new shards go to a temporary folder, removed with this FeatureCache (or at
        exit; graft.cache.rows.FeatureRows keeps the cache it reads from alive)."""
        try:
            self._spill = tempfile.TemporaryDirectory(prefix="graft-features-")
        except OSError as e:
            raise GraftError(f"the feature cache {self.dir.parent} cannot be written ({_why(cause)}) and neither can "
                             f"a temporary folder ({_why(e)}): give a writable --cache-dir") from None
        root = str(self.dir.parent)
        if root not in _warned_read_only:
            _warned_read_only.add(root)
            log.warning("the feature cache %s cannot be written (%s): what it holds is used, missing features are "
                        "computed for this run only and not kept; give a writable --cache-dir to keep them",
                        root, _why(cause))

    # -- files that could not be extracted ----------------------------------------------------------
    def skips(self, names: list[str], rule: str) -> dict[str, dict]:
        """{name: {"reason", "code"}} of the entries among `names` that a load following `rule`
        could not use before (remember_skips): a warm run neither opens them nor builds a network."""
        wanted, found = set(names), {}
        try:
            with open(self.dir / SKIPPED, encoding="utf-8") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                        if item["rule"] == rule and item["name"] in wanted:
                            found[item["name"]] = {"reason": str(item["reason"]), "code": str(item["code"])}
                    except (ValueError, KeyError, TypeError):  # a line a killed run left half written
                        continue
        except OSError:  # none yet (or unreadable): they are tried again
            pass
        return found

    def remember_skips(self, items: list[dict], rule: str) -> None:
        """Note entries (`name`, `reason`, `code`) a load following `rule` could not use. Appended
        one line each (concurrent runs append whole lines); best effort, and nothing is kept for
        a read-only cache."""
        if not items or self.read_only:
            return
        lines = "".join(json.dumps({"name": i["name"], "rule": rule, "reason": i["reason"], "code": i["code"]}) + "\n"
                        for i in items)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / SKIPPED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        except OSError as e:
            log.info("could not remember the skipped files in %s: %s", self.dir, _why(e))

    # -- writing ------------------------------------------------------------------------------------
    def put(self, names: list[str], features: np.ndarray) -> None:
        """Store one batch as a new shard, atomically (in the temporary folder when read-only)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        assert features.ndim == 2 and len(names) == len(features)
        folder = Path(self._spill.name) if self._spill is not None else self.dir
        if self._spill is None and not (self.dir / NAMESPACE_FILE).exists():
            write_json(self.dir / NAMESPACE_FILE, {"format": FORMAT, **self.namespace})
        shard = folder / f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        metadata = {"names": json.dumps(names), "sha256": hashlib.sha256(features.tobytes()).hexdigest()}
        write_safetensors(shard, {"features": features}, metadata=metadata)
        for row, name in enumerate(names):
            self._index[name] = (shard, row)
        self.written.append(shard)


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _read_header(path: Path, mmap: bool = False):
    try:
        return _parse_header(path, mmap)
    except (KeyError, TypeError, IndexError, AttributeError) as e:  # valid JSON, wrong content
        raise ValueError(f"inconsistent header ({type(e).__name__}: {e})") from None


def _parse_header(path: Path, mmap: bool):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("truncated")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError("implausible header size")
        header = json.loads(f.read(n))
    metadata = header.get("__metadata__") or {}  # the shard's own: its row names and checksum
    info = header["features"]
    names = json.loads(metadata["names"])
    rows, dim = info["shape"]
    start, end = info["data_offsets"]
    if info["dtype"] != "F32" or len(names) != rows or end - start != rows * dim * 4:
        raise ValueError("inconsistent header")
    if os.path.getsize(path) < 8 + n + end:
        raise ValueError("truncated data")
    arr = None
    if mmap:
        arr = np.memmap(path, dtype="<f4", mode="r", offset=8 + n + start, shape=(rows, dim))
    return names, arr, metadata.get("sha256")
