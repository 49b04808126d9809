"""graft.data.digests: a rescan reads no unchanged photo, re-reads changed ones, and never trusts a
damaged, foreign or racy index entry; concurrent writers merge."""

from __future__ import annotations

import builtins
import hashlib
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.data import digests, scan_photos
from graft.data.digests import DigestIndex, index_path


def _fill(root: Path, per_class=6, seed=0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            p = root / cls / f"{cls}{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, format="JPEG")
            out.append(p)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return out


class _Opens:
    """Every open of a file under `root`, by builtins.open, io.open or os.open, from any thread."""

    def __init__(self, root: Path, mp: pytest.MonkeyPatch):
        self.root, self.paths, self.lock = str(root), [], threading.Lock()
        for mod, name in ((builtins, "open"), (io, "open"), (os, "open")):
            mp.setattr(mod, name, self._wrap(getattr(mod, name)))

    def _wrap(self, original):
        def opening(file, *a, **k):
            if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(self.root):
                with self.lock:
                    self.paths.append(os.fspath(file))
            return original(file, *a, **k)
        return opening


def _later(mp, seconds=10):
    """Move the index's clock forward: entries read now are then settled (older than the margin)."""
    real = digests._now
    mp.setattr(digests, "_now", lambda: real() + int(seconds * 1e9))


def _digests(data):
    return {str(s.path): (s.digest, s.size) for s in data.train + data.val}


def test_warm_rescan_opens_no_photo_and_matches_a_cold_scan(tmp_path, monkeypatch):
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    files = _fill(photos)
    _later(monkeypatch)
    with pytest.MonkeyPatch.context() as mp:
        cold_opens = _Opens(photos, mp)
        cold = scan_photos(photos, cache_dir=cache)
    assert len(set(cold_opens.paths)) == len(files) + 1  # every photo, and the broken file, read once
    assert index_path(photos, cache).is_file()
    with pytest.MonkeyPatch.context() as mp:
        warm_opens = _Opens(photos, mp)
        warm = scan_photos(photos, cache_dir=cache)
    assert warm_opens.paths == []
    assert _digests(warm) == _digests(cold)
    assert warm.skipped == cold.skipped and len(warm.skipped) == 1
    for s in warm.train + warm.val:
        assert s.digest == hashlib.sha256(s.path.read_bytes()).hexdigest()
        assert s.size == Image.open(s.path).size
    # the unused index is not rewritten by a warm scan
    before = index_path(photos, cache).stat().st_mtime_ns
    scan_photos(photos, cache_dir=cache)
    assert index_path(photos, cache).stat().st_mtime_ns == before


def test_changed_photo_is_read_again(tmp_path, monkeypatch):
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    files = _fill(photos)
    _later(monkeypatch)
    scan_photos(photos, cache_dir=cache)
    # same size, same mtime restored: only ctime (and the content) says it changed
    victim, touched = files[0], files[1]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # inside the entropy-coded data, before the EOI marker
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    os.utime(touched)  # a touch: new mtime, same content
    _later(monkeypatch, 20)
    with pytest.MonkeyPatch.context() as mp:
        opens = _Opens(photos, mp)
        data2 = scan_photos(photos, cache_dir=cache)
    assert sorted(set(opens.paths)) == sorted([str(victim), str(touched)])
    got = _digests(data2)
    assert got[str(victim)][0] == hashlib.sha256(victim.read_bytes()).hexdigest()
    assert got[str(touched)][0] == hashlib.sha256(touched.read_bytes()).hexdigest()


def test_racy_entries_are_read_again_until_settled(tmp_path):
    """A photo written just before it was indexed could be rewritten within the same timestamp tick
    unnoticed, so its entry is not trusted until the file is older than the margin at read time."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    files = _fill(photos, per_class=2)
    scan_photos(photos, cache_dir=cache)  # photos written a moment ago: all racy
    with pytest.MonkeyPatch.context() as mp:
        opens = _Opens(photos, mp)
        scan_photos(photos, cache_dir=cache)
    assert len(set(opens.paths)) == len(files) + 1
    with pytest.MonkeyPatch.context() as mp:
        _later(mp)
        scan_photos(photos, cache_dir=cache)  # read again "later": now settled
    with pytest.MonkeyPatch.context() as mp:
        opens = _Opens(photos, mp)
        scan_photos(photos, cache_dir=cache)
    assert opens.paths == []


def test_racy_entries_settled_later_in_the_run_are_trusted_by_the_next_scan(tmp_path, monkeypatch):
    """graft train settles the racy entries of photos copied just before it (settle_racy, once its
    features are extracted): each is read once more then, so the next scan opens no photo."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    files = _fill(photos, per_class=2)
    monkeypatch.setattr(digests, "_unsettled", {})
    scan_photos(photos, cache_dir=cache)  # photos written a moment ago: all racy
    assert digests.settle_racy() == 0  # still too new: nothing read, nothing trusted yet
    with pytest.MonkeyPatch.context() as mp:
        _later(mp)
        opens = _Opens(photos, mp)
        assert digests.settle_racy() == len(files) + 1  # the broken file's refusal is settled too
    assert len(set(opens.paths)) == len(files) + 1 and digests._unsettled == {}
    with pytest.MonkeyPatch.context() as mp:
        opens = _Opens(photos, mp)
        again = scan_photos(photos, cache_dir=cache)
    assert opens.paths == []
    assert {str(s.path): s.digest for s in again.train + again.val} == {
        str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert digests.settle_racy() == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "other_folder"])
def test_damaged_or_foreign_index_is_rebuilt(tmp_path, monkeypatch, caplog, damage):
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    files = _fill(photos)
    _later(monkeypatch)
    cold = scan_photos(photos, cache_dir=cache)
    idx = index_path(photos, cache)
    raw = idx.read_bytes()
    if damage == "flip":
        i = raw.index(b'"ok"') + 10  # inside a digest: still valid JSON, wrong content
        raw = raw[:i] + (b"0" if raw[i:i + 1] != b"0" else b"1") + raw[i + 1:]
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = b"\x00" * 100
    else:  # another folder's index copied over this one's name
        other = tmp_path / "other"
        _fill(other, seed=1)
        scan_photos(other, cache_dir=cache)
        raw = index_path(other, cache).read_bytes()
    idx.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="graft"), pytest.MonkeyPatch.context() as mp:
        opens = _Opens(photos, mp)
        again = scan_photos(photos, cache_dir=cache)
    assert len(set(opens.paths)) == len(files) + 1  # nothing trusted
    assert _digests(again) == _digests(cold)
    assert "damaged or stale" in caplog.text
    with pytest.MonkeyPatch.context() as mp:  # rewritten whole: trusted again
        opens = _Opens(photos, mp)
        scan_photos(photos, cache_dir=cache)
    assert opens.paths == []


def test_concurrent_writers_merge_and_drop_deleted_files(tmp_path, monkeypatch):
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    files = _fill(photos, per_class=3)
    _later(monkeypatch)
    a, b = DigestIndex(photos, cache), DigestIndex(photos, cache)  # both start from no index
    x, y = files[0], files[1]
    rx, ry = str(x.relative_to(photos)), str(y.relative_to(photos))
    b.record(rx, b.identify(x, rx)[1])
    b.save()
    a.record(ry, a.identify(y, ry)[1])
    a.save()  # a never saw x, but keeps b's entry for it: x is still there, unchanged
    merged = DigestIndex(photos, cache)
    assert set(merged.entries) == {rx, ry}
    assert merged.lookup(rx, x.stat())[1] == hashlib.sha256(x.read_bytes()).hexdigest()
    # a file deleted since is dropped by the next writer, not resurrected by the merge
    x.unlink()
    c = DigestIndex(photos, cache)
    c.lookup(ry, y.stat())
    c.save()
    assert set(DigestIndex(photos, cache).entries) == {ry}


def test_train_keeps_the_index_in_its_cache_folder(tmp_path, default_backbone):
    import graft

    photos, cache = tmp_path / "photos", tmp_path / "cache"
    _fill(photos, per_class=5)
    graft.train(photos, tmp_path / "run", backbone=default_backbone, cache_dir=cache, workers=0,
                progress=False, report=False, epochs=2)
    assert index_path(photos, cache).is_file()
