"""graft.cache: the on-disk feature cache (round trip, namespaces, damaged shards) and what it
buys: a killed `graft train` keeps every finished batch and never trusts a half-written one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_photo_folder
from graft.cache import FeatureCache
from graft.features.extract import ExtractStats, extract_features

GRAFT = str(Path(sys.executable).with_name("graft"))
NS = {"arch": "timm:test_net", "weights_digest": "ab" * 32,
      "preprocessing": {"size": 224, "resize": 256}, "point": "pooled"}


@pytest.fixture
def graft_log():
    """Warnings of the 'graft' logger, whatever its propagation is set to."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("graft")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old)


def _rows(n, dim=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _shards(cache: FeatureCache) -> list[Path]:
    return sorted(p for p in cache.dir.glob("*.safetensors") if not p.name.startswith("."))


def test_put_get_round_trip(tmp_path):
    cache = FeatureCache(tmp_path, NS)
    a, b = _rows(3, seed=1), _rows(2, seed=2)
    cache.put(["a0", "a1", "a2"], a)
    cache.put(["b0", "b1"], b)
    assert len(cache) == 5 and "a1" in cache and "zz" not in cache
    feats, missing = cache.get(["b1", "zz", "a0", "a2", "yy"])
    assert missing == [1, 4]
    assert feats.dtype == np.float32 and feats.shape == (5, 6)
    np.testing.assert_array_equal(feats[0], b[1])
    np.testing.assert_array_equal(feats[2], a[0])
    np.testing.assert_array_equal(feats[3], a[2])
    assert not feats[1].any() and not feats[4].any()  # missing rows are zero
    assert len(_shards(cache)) == 2  # one shard per batch
    feats, missing = cache.get(["nothing", "here"])
    assert feats is None and missing == [0, 1]


def test_entries_survive_a_new_instance(tmp_path):
    rows = _rows(4)
    FeatureCache(tmp_path, NS).put(["w", "x", "y", "z"], rows)
    again = FeatureCache(tmp_path, dict(NS))
    assert len(again) == 4
    feats, missing = again.get(["z", "w"])
    assert missing == []
    np.testing.assert_array_equal(feats, rows[[3, 0]])
    assert json.loads((again.dir / "namespace.json").read_text())["weights_digest"] == NS["weights_digest"]


def test_refresh_sees_another_writer(tmp_path):
    reader = FeatureCache(tmp_path, NS)
    FeatureCache(tmp_path, NS).put(["late"], _rows(1))
    assert "late" not in reader
    reader.refresh()
    assert "late" in reader


@pytest.mark.parametrize("change", [
    {"preprocessing": {"size": 240, "resize": 274}},
    {"weights_digest": "cd" * 32},
    {"arch": "timm:other_net"},
    {"point": "blocks.5"},
])
def test_other_namespace_does_not_see_entries(tmp_path, change):
    cache = FeatureCache(tmp_path, NS)
    cache.put(["img"], _rows(1))
    other = FeatureCache(tmp_path, {**NS, **change})
    assert other.key != cache.key and other.dir != cache.dir
    assert len(other) == 0
    assert other.get(["img"])[1] == [0]


def test_stray_temp_file_is_ignored(tmp_path, graft_log):
    cache = FeatureCache(tmp_path, NS)
    cache.put(["a", "b"], _rows(2))
    stray = cache.dir / ".tmp-deadbeef.safetensors"
    stray.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{half a header")
    (cache.dir / ".tmp-xyz").write_bytes(b"")
    again = FeatureCache(tmp_path, NS)
    assert len(again) == 2 and again.get(["a", "b"])[1] == []
    assert graft_log == []  # no "damaged" warning about a temp file
    assert stray.exists()


def _damaged(tmp_path, damage):
    cache = FeatureCache(tmp_path, NS)
    cache.put(["keep0", "keep1"], _rows(2, seed=1))
    cache.put(["bad0", "bad1", "bad2"], _rows(3, seed=2))
    shard = next(s for s in _shards(cache) if b"bad0" in s.read_bytes())
    damage(shard)
    return shard


def _flip_data_byte(shard: Path):
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF  # inside the float data, after the header
    shard.write_bytes(bytes(raw))


def _truncate(shard: Path):
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-7])


@pytest.mark.parametrize("damage", [_flip_data_byte, _truncate], ids=["flipped", "truncated"])
def test_damaged_shard_is_discarded_with_a_warning(tmp_path, graft_log, damage):
    shard = _damaged(tmp_path, damage)
    cache = FeatureCache(tmp_path, NS)
    feats, missing = cache.get(["keep0", "bad0", "keep1", "bad1", "bad2"])
    assert missing == [1, 3, 4]  # the damaged shard's entries count as missing
    np.testing.assert_array_equal(feats[[0, 2]], _rows(2, seed=1))
    warnings = [r.getMessage() for r in graft_log if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and shard.name in warnings[0] and "damaged" in warnings[0]
    assert not shard.exists()  # never read again
    # recomputed entries can be stored again and are then found
    cache.put(["bad0", "bad1", "bad2"], _rows(3, seed=3))
    assert FeatureCache(tmp_path, NS).get(["bad0", "bad1", "bad2", "keep0"])[1] == []


def test_shard_with_damaged_header_key_is_discarded(tmp_path, graft_log):
    def rename_key(shard: Path):
        shard.write_bytes(shard.read_bytes().replace(b'"features"', b'"featurez"', 1))

    _damaged(tmp_path, rename_key)
    cache = FeatureCache(tmp_path, NS)
    assert cache.get(["keep0", "bad0"])[1] == [1]


# --- extract_features: hits, misses, and no network for cached entries -------------------------


class _MeanNet(nn.Module):
    """A stand-in backbone: per-channel means of the normalised image."""

    def __init__(self):
        super().__init__()
        from graft.backbones.preprocess import Preprocessing

        self.preprocessing = Preprocessing(8, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3))


def test_extract_features_counts_hits_and_misses(tmp_path):
    net = _MeanNet()
    built = []

    def get_backbone():
        built.append(1)
        return net

    def load(path):
        value = int(Path(path).stem)
        if value == 99:
            from graft.errors import ImageError

            raise ImageError(path, "cannot decode image (test)")
        return torch.full((3, 8, 8), value, dtype=torch.uint8)

    names = [f"n{i}" for i in range(5)]
    paths = [tmp_path / f"{i * 10}.jpg" for i in range(5)]
    cache = FeatureCache(tmp_path / "c", NS)
    feats, ok, stats = extract_features(get_backbone, names, paths, cache, load=load, batch_size=2,
                                        workers=0, progress=False)
    assert (stats.hits, stats.misses, stats.forward_batches) == (0, 5, 3)
    assert ok.all() and feats.shape == (5, 3)
    expected = (np.arange(5) * 10.0 - 127.5) / 127.5  # mean = std = 0.5 (x255)
    np.testing.assert_allclose(feats[:, 0], expected, rtol=1e-6)

    # warm: the backbone is not even asked for
    built.clear()
    cache2 = FeatureCache(tmp_path / "c", NS)
    feats2, ok2, stats2 = extract_features(get_backbone, names, paths, cache2, load=load, workers=0,
                                           progress=False)
    assert built == [] and (stats2.hits, stats2.misses, stats2.forward_batches) == (5, 0, 0)
    np.testing.assert_array_equal(feats2, feats)

    # one new entry and one unreadable one: a single forward pass, the bad one reported
    names3 = names + ["new", "broken"]
    paths3 = paths + [tmp_path / "70.jpg", tmp_path / "99.jpg"]
    feats3, ok3, stats3 = extract_features(get_backbone, names3, paths3, FeatureCache(tmp_path / "c", NS),
                                           load=load, workers=0, progress=False, stats=ExtractStats())
    assert stats3.hits == 5 and stats3.misses == 1 and stats3.forward_batches == 1
    assert ok3.tolist() == [True] * 6 + [False]
    assert [s["path"] for s in stats3.skipped] == [str(tmp_path / "99.jpg")]
    assert "broken" not in FeatureCache(tmp_path / "c", NS)


# --- kill-safety ----------------------------------------------------------------------------------


def _shard_names(shard: Path) -> list[str]:
    """The entry names of a whole, checksum-correct shard (asserts that it is one)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(shard), framework="numpy") as f:
        meta = f.metadata()
    arr = load_file(str(shard))["features"]
    names = json.loads(meta["names"])
    assert hashlib.sha256(np.ascontiguousarray(arr, "<f4").tobytes()).hexdigest() == meta["sha256"], shard
    assert len(names) == arr.shape[0], shard
    return names


def test_killed_train_keeps_finished_batches(tmp_path, graft_log):
    import graft

    photos = make_photo_folder(tmp_path / "photos", per_class=20, seed=11)
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "GRAFT_CACHE_DIR": str(cache_dir), "GRAFT_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [GRAFT, "train", str(photos), "--out", str(tmp_path / "run1"), "--batch-size", "4",
         "--workers", "0", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    killed = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(not p.name.startswith(".") for p in cache_dir.glob("*/*.safetensors")):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode(errors="replace")
    if not killed:  # it finished (or failed) before the first shard was seen
        assert proc.returncode == 0, err.decode(errors="replace")

    # nothing graft would read is half-written
    namespaces = [d for d in cache_dir.iterdir() if d.is_dir() and d.name not in ("digests", "engines")]
    assert len(namespaces) == 1
    finished: list[str] = []
    for f in namespaces[0].iterdir():
        if f.name.startswith("."):
            continue  # a temp file the kill interrupted, or the extraction lock: never read as data
        if f.suffix == ".safetensors":
            finished += _shard_names(f)
        else:
            assert f.name == "namespace.json"
            json.loads(f.read_text())
    done = len(set(finished))
    assert done > 0

    result = graft.train(photos, tmp_path / "run2", cache_dir=cache_dir, workers=1, batch_size=8,
                         progress=False)
    m = result.metrics
    assert m["cache"]["hits"] == done > 0
    assert m["cache"]["hits"] + m["cache"]["misses"] == 40
    assert m["skipped"] == [] and m["n_train"] + m["n_val"] == 40
    assert (tmp_path / "run2" / "model.json").is_file()
    assert not [r for r in graft_log if "damaged" in r.getMessage()]
    if killed and done < 40:
        assert not (tmp_path / "run1" / "model.json").exists()
