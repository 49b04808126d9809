"""graft.cache.admin: what the cache holds, and pruning it without losing results: pruned entries
are recomputed by the next run, least recently used files go first, and a namespace a run is
extracting into is left alone."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graft
from graft.backbones import DEFAULT_ARCH
from conftest import make_photo_folder
from graft.cache import FeatureCache
from graft._util.sizes import parse_size
from graft.cache.admin import parse_age, prune, usage
from graft.cache.layout import mark, touch
from graft.data.decoded import DecodedCache
from graft.errors import GraftError

GRAFT = str(Path(sys.executable).with_name("graft"))
DAY = 86400


def _age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t))


@pytest.fixture
def warm(tmp_path, default_backbone):
    """A cache filled by one head run on 2 classes x 8 photos, one shard per batch of 4."""
    photos = make_photo_folder(tmp_path / "photos", per_class=8, seed=3)
    cache = tmp_path / "cache"
    first = graft.train(photos, tmp_path / "run1", backbone=default_backbone, cache_dir=cache,
                        workers=0, batch_size=4, progress=False)
    return photos, cache, first


def test_usage_lists_each_area(warm):
    _, cache, first = warm
    areas = {a.kind: a for a in usage(cache)}
    feats = areas["features"]
    assert feats.files == len(list(feats.path.glob("*.safetensors"))) + 2  # + namespace.json, lock
    assert feats.bytes == sum(f.stat().st_size for f in feats.path.iterdir())
    assert DEFAULT_ARCH.partition(":")[2] in feats.what and "pooled" in feats.what
    assert time.time() - feats.last_used < 600
    assert len(feats.entries) == len(list(feats.path.glob("*.safetensors")))


def test_the_digest_index_is_listed_and_prunable_and_a_rescan_rebuilds_it(warm):
    """The photos' digest index (graft.data.digests) is graft's: listed, pruned like the rest,
    and a scan after pruning reads the photos again and writes it back with the same digests."""
    from graft.data import scan_photos

    photos, cache, _ = warm
    digests = {a.kind: a for a in usage(cache)}["digests"]
    idx = [p for _, _, p in digests.entries]
    assert len(idx) == 1 and idx[0].suffix == ".idx" and "digest" in digests.what
    before = scan_photos(photos, cache_dir=cache)
    res = prune(cache, max_bytes=0)
    assert str(idx[0]) in res.paths and not idx[0].exists()
    after = scan_photos(photos, cache_dir=cache)
    assert idx[0].is_file()
    assert [(s.path, s.digest) for s in after.train + after.val] == [(s.path, s.digest) for s in before.train + before.val]


def test_pruned_shards_are_recomputed_and_results_do_not_change(warm, default_backbone, caplog):
    photos, cache, first = warm
    ns = next(a for a in usage(cache) if a.kind == "features").path
    shards = sorted(ns.glob("*.safetensors"))
    old = shards[:2]
    rows = sum(len(json.loads(_names(s))) for s in old)  # before ageing: reading is a use
    for s in shards:
        _age(s, 3)
    for s in old:
        _age(s, 40)

    dry = prune(cache, older_than=parse_age("30d"), dry_run=True)
    assert (dry.deleted_files, dry.dry_run) == (2, True) and all(s.exists() for s in shards)
    r = prune(cache, older_than=parse_age("30d"))
    assert r.deleted_files == 2 and r.deleted_bytes == dry.deleted_bytes
    assert not any(s.exists() for s in old) and all(s.exists() for s in shards[2:])

    again = graft.train(photos, Path(cache).parent / "run2", backbone=default_backbone, cache_dir=cache,
                        workers=0, batch_size=4, progress=False)
    assert again.metrics["cache"]["misses"] == rows  # exactly the pruned entries, computed again
    assert again.val_accuracy == first.val_accuracy


def test_max_size_deletes_least_recently_used_first(tmp_path):
    cache = tmp_path / "cache"
    files = []
    for i in range(5):
        f = cache / "decoded" / "ab" / f"ab{i:062x}-r0.sha256.npy"  # graft's names: only those are pruned
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, np.zeros((10, 10, 3), np.uint8))
        _age(f, 10 - i)  # file 0 is the least recently used
        files.append(f)
    size = files[0].stat().st_size
    r = prune(cache, max_bytes=3 * size)
    assert r.deleted_files == 2 and r.kept_bytes == 3 * size
    assert [f.exists() for f in files] == [False, False, True, True, True]


def test_touch_sets_the_access_time_and_keeps_mtime(tmp_path):
    f = tmp_path / "entry.npy"
    f.write_bytes(b"x")
    _age(f, 40)
    mtime = f.stat().st_mtime_ns
    touch(f)
    assert time.time() - f.stat().st_atime < 60 and f.stat().st_mtime_ns == mtime
    touch(tmp_path / "missing")  # best effort: no error


def test_opening_an_entry_records_its_use(warm, tmp_path, monkeypatch):
    # The kernel's relatime may update atime on a read too, but not on noatime mounts: graft's
    # own touch must be called whenever a shard or a decoded photo is opened.
    import graft.cache.features
    import graft.data.decoded

    touched = []
    monkeypatch.setattr(graft.cache.features, "touch", touched.append)
    monkeypatch.setattr(graft.data.decoded, "touch", touched.append)
    _, cache, _ = warm
    ns = next(a for a in usage(cache) if a.kind == "features")
    shard = sorted(ns.path.glob("*.safetensors"))[0]
    fc = FeatureCache(cache, json.loads((ns.path / "namespace.json").read_text()))
    assert not fc.get([json.loads(_names(shard))[0]])[1]
    assert touched == [shard]

    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (1, 2, 3)).save(photo)
    DecodedCache(tmp_path / "dc").load(photo, "cd" * 32, (40, 30), 1)  # decodes and stores
    assert DecodedCache(tmp_path / "dc").load(photo, "cd" * 32, (40, 30), 1).shape == (30, 40, 3)  # maps it
    assert touched[1:] == list((tmp_path / "dc").rglob("*.npy"))


def test_only_graft_files_are_pruned_and_counted(warm, tmp_path):
    _, cache, _ = warm
    ns = next(a for a in usage(cache) if a.kind == "features")
    demo = cache / "demo-photos" / "x"  # big, never prunable: must not count toward --max-size
    demo.mkdir(parents=True)
    (demo / "big.jpg").write_bytes(b"\0" * (4 << 20))
    run = cache / "runs" / "cats"  # a run folder someone put in the cache: its model must survive
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"weights")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.json").write_text("{}")
    (cache / "linked").symlink_to(elsewhere, target_is_directory=True)
    tmp_dir = cache / "decoded" / "ab"
    tmp_dir.mkdir(parents=True)
    mark(cache / "decoded", "decoded")  # as graft's decoded-photo cache does when it stores one
    dead, live = tmp_dir / f".tmp-{'d' * 32}.npy", tmp_dir / f".tmp-{'e' * 32}.npy"
    dead.write_bytes(b"x" * 100)
    live.write_bytes(b"y" * 100)
    _age(dead, 3)

    # the shards, the scan's digest index and the head chosen fit: nothing of theirs goes, only the dead temp file
    indexes = sum(a.bytes for a in usage(cache) if a.kind in ("digests", "engines", "heads", "previews"))
    r = prune(cache, max_bytes=ns.bytes + indexes)
    assert r.paths == [str(dead)] and not r.unmet
    assert live.exists() and (demo / "big.jpg").exists()
    r = prune(cache, max_bytes=0)
    assert not list(ns.path.glob("*.safetensors"))  # the shards went...
    assert (run / "model.safetensors").exists() and (elsewhere / "keep.json").exists()  # ...nothing else
    assert (ns.path / "namespace.json").exists() and live.exists()
    assert r.prunable_bytes == 0 and r.kept_bytes == sum(a.bytes for a in usage(cache))


def test_namespace_being_extracted_into_is_skipped(warm):
    _, cache, _ = warm
    ns = next(a for a in usage(cache) if a.kind == "features")
    fc = FeatureCache(cache, json.loads((ns.path / "namespace.json").read_text()))
    with fc.extraction_lock():
        dry = prune(cache, max_bytes=0, dry_run=True)
        r = prune(cache, max_bytes=0)
    # the busy namespace is untouched; only the scan's digest index and the head chosen (not busy) may go
    assert dry.skipped_busy == r.skipped_busy == [str(ns.path)] and dry.paths == r.paths
    assert all("/digests/" in p or "/heads/" in p for p in r.paths) and not any(p.startswith(str(ns.path)) for p in r.paths)
    assert r.unmet and r.deleted_files == len(r.paths)
    with fc.extraction_lock(shared=True):  # the ranks of a torchrun job keep it out too
        assert prune(cache, max_bytes=0).skipped_busy == [str(ns.path)]
    assert prune(cache, max_bytes=0).deleted_files == len(ns.entries)


def test_a_shard_pruned_under_a_reader_is_recomputed_quietly(warm, caplog):
    _, cache, _ = warm
    ns = next(a for a in usage(cache) if a.kind == "features")
    fc = FeatureCache(cache, json.loads((ns.path / "namespace.json").read_text()))
    shard = sorted(ns.path.glob("*.safetensors"))[0]
    names = json.loads(_names(shard))
    shard.unlink()  # pruned after this reader indexed the namespace
    with caplog.at_level(logging.INFO, logger="graft"):
        logging.getLogger("graft").propagate = True
        try:
            _, missing = fc.get(names)
        finally:
            logging.getLogger("graft").propagate = False
    assert missing == list(range(len(names)))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cli_info_and_prune(warm):
    _, cache, _ = warm
    env = {**os.environ, "GRAFT_CACHE_DIR": str(cache)}
    info = json.loads(subprocess.run([GRAFT, "cache", "--json"], capture_output=True, text=True, check=True,
                                     env=env).stdout)
    assert info["root"] == str(cache) and info["bytes"] == sum(a["bytes"] for a in info["areas"])
    text = subprocess.run([GRAFT, "cache"], capture_output=True, text=True, check=True, env=env).stdout
    assert "features" in text and DEFAULT_ARCH.partition(":")[2] in text
    dry = subprocess.run([GRAFT, "cache", "--json", "prune", "--max-size", "0", "--dry-run"], capture_output=True,
                         text=True, check=True, env=env)
    assert json.loads(dry.stdout)["paths"] and list(cache.rglob("*.safetensors"))
    out = subprocess.run([GRAFT, "cache", "prune", "--max-size", "0", "--json"], capture_output=True, text=True,
                         check=True, env=env)
    r = json.loads(out.stdout)
    assert r["deleted_files"] > 0 and not list(cache.rglob("*.safetensors"))
    assert (cache / next(a for a in info["areas"] if a["kind"] == "features")["path"] / "namespace.json").exists()
    bad = subprocess.run([GRAFT, "cache", "prune"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    bad = subprocess.run([GRAFT, "cache", "prune", "--max-size", "lots"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "500M" in bad.stderr
    bad = subprocess.run([GRAFT, "cache", "--cache-dir", str(cache / "nope")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "no cache at" in bad.stderr


def test_parse_size_and_age():
    assert parse_size("2G") == 2 << 30 and parse_size("500m") == 500 << 20 and parse_size("1.5k") == 1536
    assert parse_size("1024") == 1024 and parse_size("3GiB") == 3 << 30
    assert parse_age("30d") == 30 * DAY and parse_age("12h") == 12 * 3600 and parse_age("2w") == 14 * DAY
    for bad in ("", "lots", "-1G"):
        with pytest.raises(GraftError):
            parse_size(bad)
    for bad in ("30", "6m", "6M"):  # m: minutes or months? refused
        with pytest.raises(GraftError):
            parse_age(bad)
    assert parse_age("90min") == 5400
    with pytest.raises(GraftError):
        prune(None, older_than="30d")  # the Python API takes seconds


def _names(shard: Path) -> str:
    from graft.cache.features import _read_header

    return json.dumps(_read_header(shard)[0])
