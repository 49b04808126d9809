"""Each photo's SHA-256 remembered under its file status, so a rescan reads no unchanged photo.

Like git's index: an entry maps a path (relative to the scanned folder) to the stat it had when
it was read (size, mtime_ns, inode, ctime_ns) and what reading it gave: the content digest and
the oriented (width, height), or why the file is unusable. A later scan that finds the same stat
reuses the entry without opening the file; any change of stat re-reads it. At 100k photos of
~100 KB that is the difference between reading 10 GB per run and reading none.

Never trusted blindly:
- The index file carries a checksum of its body; a damaged, truncated, foreign-format or
  other-folder index is ignored (and rewritten), never used.
- Racy entries: file timestamps tick coarsely (a kernel tick, 1-2 s on FAT/HFS+/some NFS), so a
  file rewritten within the tick of the stat we recorded can keep an identical stat. An entry is
  trusted only when its mtime and ctime are older, by `RACY_MARGIN_NS`, than the moment its file
  was read (git's "racily clean" rule, measured against the read time rather than the index
  write time, which also covers a slow scan). A racy entry is re-read once its file is old
  enough, and then recorded as settled: by `settle_racy`, which graft train calls once its
  features are extracted (so the first rerun after photos were copied opens none), else by the
  next scan.
- A file whose stat changes while it is being read is not recorded at all.
- Concurrent runs: the index is rewritten atomically (temp file + rename) under an exclusive
  lock, merged with what another run wrote meanwhile, so the last writer loses no one's work and
  a reader sees an old or a new index, never half of one.

Where: `<cache root>/digests/<sha256 of the folder's absolute path>.idx` (the cache root is the
feature cache's, `graft.cache.layout.default_cache_dir()` unless given).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from graft._util.atomic import write_bytes
from graft._util.files import open_regular
from graft.errors import IMAGE_ERROR_CODES, ImageError
from graft.cache.layout import DIGESTS, touch
from graft.data.images import MAX_FILE_BYTES, probe_file, read_error

log = logging.getLogger("graft")

FORMAT = 2  # 2: a skipped file keeps its ImageError code
MAGIC = b"graft-digests"
# Larger than a kernel timestamp tick and the 1-2 s granularity of FAT, HFS+ and some NFS servers.
RACY_MARGIN_NS = 2_000_000_000


_now = time.time_ns  # the clock an entry's read time comes from (tests move it forward)
# index file -> (folder, cache root, paths relative to it) of the entries this process recorded racy
_unsettled: dict[Path, tuple[str, object, set[str]]] = {}


def index_path(folder, cache_root=None) -> Path:
    if cache_root is None:
        from graft.cache.layout import default_cache_dir

        cache_root = default_cache_dir()
    key = hashlib.sha256(str(Path(folder).expanduser().absolute()).encode()).hexdigest()[:24]
    return Path(cache_root).expanduser() / DIGESTS / f"{key}.idx"


def stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


class DigestIndex:
    """The digests of one folder's photos, read once per scan and written back if anything changed.

    `lookup(rel, st)` -> the stored result for an unchanged, settled file, else None;
    `identify(path, rel)` reads the file and records what it found. Results are
    ("ok", digest, (w, h)) or ("bad", reason, code) with code one of ImageError's."""

    def __init__(self, folder, cache_root=None):
        self.folder = str(Path(folder).expanduser().absolute())
        self.cache_root = cache_root
        self.path = index_path(folder, cache_root)
        self.entries: dict[str, list] = self._load()
        self.seen: set[str] = set()
        self.changed = False
        self.reads = 0  # files actually read this scan

    # -- reading the index --------------------------------------------------------------------------
    def _load(self) -> dict[str, list]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warning("cannot read the photo digest index %s (%s): every photo is read again", self.path,
                        e.strerror or e)
            return {}
        entries = _parse(raw, self.folder)
        if entries is None:
            log.warning("the photo digest index %s is damaged or stale: rebuilt (every photo is read again)",
                        self.path)
            self.changed = True
            return {}
        touch(self.path)  # a use (a warm scan rewrites nothing), for `graft cache prune`
        return entries

    def lookup(self, rel: str, st: os.stat_result):
        self.seen.add(rel)
        e = self.entries.get(rel)
        if e is None or e[0] != stat_key(st):
            return None
        if _racy(e[0], e[1]):
            return None  # racily clean: a same-tick rewrite would look identical
        return tuple(e[2:5]) if e[2] == "bad" else ("ok", e[3], tuple(e[4]))

    def identify(self, path: Path, rel: str):
        """Read `path` once (identify_file) and note that this scan saw it."""
        self.seen.add(rel)
        return identify_file(path)

    def record(self, rel: str, entry) -> None:
        """Store an `identify` entry (from the main thread: workers only compute)."""
        self.reads += 1
        if entry is not None:
            self.entries[rel] = entry
            self.changed = True
            if _racy(entry[0], entry[1]):
                _unsettled.setdefault(self.path, (self.folder, self.cache_root, set()))[2].add(rel)

    # -- writing ------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write back if anything changed: entries of files no longer seen are dropped, and entries
        another run wrote meanwhile for files this scan did not see are kept while their stat
        still matches. Best effort: a read-only cache costs only the re-reading next time."""
        gone = set(self.entries) - self.seen
        if not self.changed and not gone:
            return
        keep = {rel: e for rel, e in self.entries.items() if rel in self.seen}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.path.with_suffix(".lock")):
                try:
                    theirs = _parse(self.path.read_bytes(), self.folder) or {}
                except OSError:
                    theirs = {}
                for rel, e in theirs.items():
                    if rel in keep or rel in self.seen:
                        continue
                    try:
                        st = os.stat(os.path.join(self.folder, rel))
                    except OSError:
                        continue
                    if e[0] == stat_key(st):
                        keep[rel] = e
                write_bytes(self.path, _serialise(keep, self.folder))
        except Exception as e:  # GraftError from the atomic write, or OSError from the lock
            log.info("could not update the photo digest index %s: %s", self.path, e)
            return
        self.entries, self.changed = keep, False


def _racy(key: list[int], read_at: int) -> bool:
    """Was the file (stat `key`) modified within the margin before it was read at `read_at`?"""
    return max(key[1], key[3]) + RACY_MARGIN_NS >= read_at


def settle_racy() -> int:
    """Read again, once, the photos this process indexed while their stat was too new to trust, where
    it is now old enough (as git refreshes racily clean entries): what is read now is recorded
    settled, so the next scan opens none of them. Entries still too new stay for the next scan.
    -> the number of files read."""
    read = 0
    for path, (folder, root, rels) in list(_unsettled.items()):
        index = DigestIndex(folder, root)
        index.seen = set(index.entries)  # keep every entry: this is no scan of the whole folder
        for rel in sorted(rels):
            e = index.entries.get(rel)
            if e is not None and _racy(e[0], e[1]) and not _racy(e[0], _now()):
                index.record(rel, identify_file(Path(folder) / rel)[1])
                read += 1
            if e is None or not _racy(e[0], _now()):
                rels.discard(rel)
        index.save()
        if not rels:
            del _unsettled[path]
    return read


def _serialise(entries: dict, folder: str) -> bytes:
    body = json.dumps({"format": FORMAT, "folder": folder, "entries": entries},
                      separators=(",", ":")).encode()
    return MAGIC + b" " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def _parse(raw: bytes, folder: str) -> dict | None:
    """The entries of a well-formed index of `folder`, else None."""
    head, sep, body = raw.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 2 or parts[0] != MAGIC:
        return None
    if hashlib.sha256(body).hexdigest().encode() != parts[1]:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("folder") != folder:
        return None
    entries = doc.get("entries")
    if not isinstance(entries, dict) or not all(_valid(e) for e in entries.values()):
        return None
    return entries


def _valid(e) -> bool:
    if not (isinstance(e, list) and len(e) >= 4 and isinstance(e[0], list) and len(e[0]) == 4
            and all(isinstance(v, int) for v in e[0]) and isinstance(e[1], int)):
        return False
    if e[2] == "bad":
        return len(e) == 5 and isinstance(e[3], str) and isinstance(e[4], str) and e[4] in IMAGE_ERROR_CODES
    return (e[2] == "ok" and len(e) == 5 and isinstance(e[3], str) and len(e[3]) == 64
            and isinstance(e[4], list) and len(e[4]) == 2 and all(isinstance(v, int) for v in e[4]))


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def identify_file(path: Path):
    """Read `path` once: digest and header probe. -> (result, index entry); the entry is None if
    the file changed meanwhile.

    Only a regular file of at most MAX_FILE_BYTES is read (a FIFO named x.jpg would block a
    plain read forever, a symlink to /dev/zero never ends); it is hashed in blocks, not held
    whole. A refusal is remembered like any result, under the stat that earned it."""
    read_at = _now()
    before = nbytes = None
    try:
        before = os.stat(path)  # the stat a refusal is keyed on (open_regular refuses before opening)
        with open_regular(path, max_bytes=MAX_FILE_BYTES) as f:
            before = os.fstat(f.fileno())
            h = hashlib.sha256()
            nbytes = 0
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                nbytes += len(block)
                if nbytes > MAX_FILE_BYTES:  # grew since it was opened
                    raise ImageError(path, f"refused: grew past {MAX_FILE_BYTES >> 20} MB while it was read",
                                     "too_large")
            f.seek(0)
            _, size = probe_file(path, f, nbytes)
        result = ("ok", h.hexdigest(), tuple(size))
    except ImageError as e:
        result = ("bad", e.reason, e.code)
    except OSError as e:
        e = read_error(path, e)
        result = ("bad", e.reason, e.code)
    if before is None:  # not even a stat: nothing to key an entry on
        return result, None
    try:
        after = os.stat(path)
    except OSError:
        return result, None
    key = stat_key(before)
    if key != stat_key(after) or (nbytes is not None and nbytes != before.st_size):
        return result, None
    entry = [key, read_at, *(["bad", result[1], result[2]] if result[0] == "bad"
                             else ["ok", result[1], list(result[2])])]
    return result, entry
