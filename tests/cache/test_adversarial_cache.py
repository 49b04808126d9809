"""Caches (issue 14, items 1 and 9): `graft cache prune` deletes only what graft provably made, and a
cache that cannot be used as it is (a file, read-only) is refused or worked around, said once."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from graft.errors import GraftError

from conftest import _listing, graft_cli, make_photo, make_photo_folder, read_only


# --- graft cache prune deletes only what graft provably made (item 1) ----------------------------------

def _users_pca_and_decoded(root: Path) -> list[Path]:
    """The issue's repro: folders of the user's that happen to be called pca/ and decoded/."""
    (root / "pca").mkdir(parents=True)
    (root / "decoded" / "e").mkdir(parents=True)
    (root / "pca" / "r.json").write_text("{}")
    np.save(root / "decoded" / "e" / "s.npy", np.arange(9))
    (root / "decoded" / "ab").mkdir()
    np.save(root / "decoded" / "ab" / "notes.npy", np.arange(3))
    (root / "pca" / ".tmp-mine").write_text("x")
    old = 1_000_000_000  # 2001: older than any --older-than
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        os.utime(p, (old, old))
    return files


@pytest.mark.parametrize("how", ["cli", "api", "api-dry-run"])
def test_prune_never_deletes_a_users_pca_or_decoded_folder(tmp_path, capsys, how):
    from graft.cache.admin import prune, usage

    files = _users_pca_and_decoded(tmp_path / "P")
    if how == "cli":
        rc, out, err = graft_cli(["cache", "prune", "--cache-dir", tmp_path / "P", "--older-than", "0d"], capsys)
        assert rc == 0 and "Traceback" not in err, err
    else:
        r = prune(tmp_path / "P", older_than=0, dry_run=how == "api-dry-run")
        assert r.deleted_files == 0 and r.paths == []
    assert all(p.exists() for p in files)
    assert {a.kind for a in usage(tmp_path / "P")} == {"other"}


def test_prune_in_a_marked_folder_deletes_only_graft_named_files(tmp_path):
    """Even under graft's marker, a file of the user's put there keeps; graft's entries go."""
    from graft.cache.admin import prune
    from graft.cache.layout import MARKER, mark

    root = tmp_path / "P"
    users = _users_pca_and_decoded(root)
    mark(root / "decoded", "decoded")
    mark(root / "pca", "pca")
    ours = [root / "decoded" / "ab" / f"ab{'0' * 62}-r1.sha256.npy", root / "pca" / f"{'0' * 16}.json"]
    for p in ours:
        p.write_bytes(b"graft's")
        os.utime(p, (1_000_000_000, 1_000_000_000))
    r = prune(root, older_than=0)
    assert sorted(r.paths) == sorted(map(str, ours))
    assert all(p.exists() for p in users) and (root / "decoded" / MARKER).exists()


def test_prune_takes_an_unmarked_cache_graft_made_before_the_marker(tmp_path):
    """Caches made before the marker: a file named as graft names its own is the proof."""
    from graft.cache.admin import prune

    entry = tmp_path / "P" / "decoded" / "cd" / f"cd{'1' * 62}-r0.npy"  # the earlier entry format
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"old")
    os.utime(entry, (1_000_000_000, 1_000_000_000))
    mine = tmp_path / "P" / "decoded" / "cd" / "mine.npy"
    mine.write_bytes(b"mine")
    os.utime(mine, (1_000_000_000, 1_000_000_000))
    assert prune(tmp_path / "P", older_than=0).paths == [str(entry)]
    assert mine.exists()


# --- caches that cannot be used as they are (item 9) --------------------------------------------------

def test_the_cache_root_from_the_environment_that_is_a_file_is_refused(tmp_path, monkeypatch):
    from graft.cache import cache_root

    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "f"))
    with pytest.raises(GraftError, match=r"GRAFT_CACHE_DIR or the default\) .*/f is a file"):
        cache_root()
    assert cache_root(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"  # not there yet: fine


def _read_only_warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "cannot be written" in ln]


@pytest.mark.parametrize("state", ["empty", "warm-plus-one-new-photo"])
def test_training_on_a_read_only_cache_computes_what_is_missing_and_says_so_once(tmp_path, capsys, cli_log,
                                                                                 default_backbone, state):
    import graft

    photos = make_photo_folder(tmp_path / "photos", per_class=3, seed=4)
    cache = tmp_path / "cache"
    cache.mkdir()
    if state != "empty":
        graft.train(photos, tmp_path / "warm-run", backbone=default_backbone, cache_dir=cache, strategy="head",
                    workers=0, progress=False)
        make_photo(np.random.default_rng(99), "red").save(photos / "red" / "new.jpg")
    before = _listing(cache)
    with read_only(cache):
        rc, out, err = graft_cli(["train", photos, "--out", tmp_path / "run", "--cache-dir", cache, "--json",
                                  "--strategy", "head", "--workers", "0"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    said = _read_only_warnings(err)
    assert len(said) == 1 and "WARNING" in said[0] and str(cache) in said[0], err
    assert "not kept" in said[0] and "give a writable --cache-dir" in said[0]
    metrics = json.loads(out)
    assert metrics["cache"]["misses"] == (6 if state == "empty" else 1), metrics["cache"]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert _listing(cache) == before  # nothing written into the read-only cache


def test_a_read_only_feature_cache_keeps_new_features_for_its_own_life_only(tmp_path, monkeypatch):
    """In process, whatever the user: the lock cannot be opened (EROFS), so new shards go to a
    temporary folder that FeatureRows keeps alive and that goes with the cache."""
    import gc

    from graft.cache import FeatureCache
    from graft.cache import features as fc_module
    from graft.cache.rows import FeatureRows

    cache_dir = tmp_path / "cache"
    FeatureCache(cache_dir, {"arch": "t"}).put(["a"], np.ones((1, 4), np.float32))  # a warm entry
    before = _listing(cache_dir)
    real_open = open

    def no_write(path, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(fc_module, "open", no_write, raising=False)
    cache = FeatureCache(cache_dir, {"arch": "t"})
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("graft").addHandler(handler)
    try:
        for _ in range(2):
            with cache.extraction_lock():
                cache.put(["b"], np.full((1, 4), 2, np.float32))
        with pytest.raises(GraftError, match="under torchrun the ranks share features"):
            with FeatureCache(cache_dir, {"arch": "t"}).extraction_lock(shared=True):
                pass
    finally:
        logging.getLogger("graft").removeHandler(handler)
    assert cache.read_only and len([r for r in records if "cannot be written" in r.getMessage()]) == 1
    rows = FeatureRows(cache, ["a", "b"])
    spill = Path(cache._spill.name)
    del cache
    gc.collect()
    assert np.array_equal(np.asarray(rows), [[1] * 4, [2] * 4]) and spill.is_dir()
    del rows
    gc.collect()
    assert not spill.exists() and _listing(cache_dir) == before
