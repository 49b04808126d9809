"""Head training beyond its memory budget: features stay in the cache shards and are read a chunk
at a time; the result matches in-memory training to rounding, and memory does not hold them all."""

from __future__ import annotations

import logging
import os
import tracemalloc

import numpy as np
import pytest
import torch

from graft.cache import FeatureCache
from graft.cache.rows import FeatureRows, with_views
from graft.heads.softmax import HeadConfig, HeadTrainer, predict_labels, train_head


def _cache(tmp_path, n=300, dim=24, shard=25, seed=0, classes=3):
    """A cache holding n feature rows that separate `classes` classes, written in shards."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(0, 2, (classes, dim))
    x = (centres[y] + rng.normal(0, 1.5, (n, dim)) + 5).astype(np.float32)
    cache = FeatureCache(tmp_path / "cache", {"arch": "test", "point": "pooled"})
    names = [f"{i:064x}" for i in range(n)]
    for s in range(0, n, shard):
        cache.put(names[s:s + shard], x[s:s + shard])
    return FeatureCache(tmp_path / "cache", {"arch": "test", "point": "pooled"}), names, x, y


def test_rows_read_what_the_cache_holds_with_few_open_files(tmp_path, monkeypatch):
    import graft.cache.rows as fr

    monkeypatch.setattr(fr, "MAX_OPEN", 2)
    cache, names, x, _ = _cache(tmp_path)
    rows = FeatureRows(cache, names)
    assert rows.shape == x.shape and rows.nbytes == x.nbytes
    np.testing.assert_array_equal(np.asarray(rows), cache.get(names)[0])
    np.testing.assert_array_equal(np.asarray(rows), x)
    pick = np.random.default_rng(1).integers(0, len(names), 500)  # any order, repeats
    np.testing.assert_array_equal(rows.take(pick), x[pick])
    assert len(rows._files) <= 2
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    del rows
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) <= fds  # closed with the reader
    # views: (N, 1 + K, D) with the clean row first
    views = FeatureRows(cache, [names[i * 2:(i + 1) * 2] for i in range(100, 150)])
    both = with_views(FeatureRows(cache, names[:50]), views, cache)
    assert both.shape == (50, 3, x.shape[1])
    got = np.asarray(both)
    np.testing.assert_array_equal(got[:, 0], x[:50])
    np.testing.assert_array_equal(got[:, 1:], x[200:300].reshape(50, 2, -1))


def test_damaged_shard_is_not_read(tmp_path, caplog):
    cache, names, x, _ = _cache(tmp_path)
    shard = cache.locate(names[0])[0]
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    fresh = FeatureCache(tmp_path / "cache", {"arch": "test", "point": "pooled"})
    with caplog.at_level(logging.WARNING, logger="graft"):
        assert fresh.locate(names[0]) is None
    assert "damaged" in caplog.text
    assert fresh.locate(names[-1]) is not None


@pytest.mark.parametrize("views", [False, True])
def test_streamed_training_matches_in_memory(tmp_path, views):
    cache, names, x, y = _cache(tmp_path)
    n_train = 240
    if views:  # two "views" per image: its own row and another image's of the same class
        partner = [int(np.flatnonzero(y[:n_train] == y[i])[0]) for i in range(n_train)]
        grid = [[names[i], names[p]] for i, p in enumerate(partner)]
        x_mem = np.stack([x[:n_train], x[partner]], axis=1)
        x_rows = FeatureRows(cache, grid)
    else:
        x_mem, x_rows = x[:n_train], FeatureRows(cache, names[:n_train])
    v_mem, v_rows = x[n_train:], FeatureRows(cache, names[n_train:])
    cfg = HeadConfig(epochs=5, batch_size=16, patience=0, seed=3)
    mem = HeadTrainer(x_mem, y[:n_train], v_mem, y[n_train:], 3, cfg)
    streamed = HeadTrainer(x_rows, y[:n_train], v_rows, y[n_train:], 3, cfg, budget=2048)
    assert not mem.streamed and streamed.streamed
    assert streamed.chunk < n_train  # several chunks per epoch
    for _ in range(cfg.epochs):
        mem.run_epoch()
        streamed.run_epoch()
    a, b = mem.result(), streamed.result()
    np.testing.assert_allclose(b.head.weight.detach(), a.head.weight.detach(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b.head.bias.detach(), a.head.bias.detach(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b.history["train_loss"], a.history["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(b.history["val_loss"], a.history["val_loss"], rtol=1e-4)
    assert b.history["val_accuracy"] == a.history["val_accuracy"]
    assert b.history["val_accuracy"][-1] > 0.8  # it learnt something
    np.testing.assert_array_equal(predict_labels(b.head, v_rows, budget=2048), predict_labels(a.head, v_mem))


def test_memory_mapped_array_streams_too(tmp_path):
    _, _, x, y = _cache(tmp_path)
    path = tmp_path / "x.f32"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    cfg = HeadConfig(epochs=3, batch_size=16, patience=0)
    a = train_head(x[:240], y[:240], x[240:], y[240:], 3, cfg)
    b = train_head(mm[:240], y[:240], mm[240:], y[240:], 3, cfg, budget=4096)
    np.testing.assert_allclose(b.head.weight.detach(), a.head.weight.detach(), rtol=1e-3, atol=1e-4)


def test_under_budget_is_bit_identical_to_arrays(tmp_path):
    cache, names, x, y = _cache(tmp_path)
    cfg = HeadConfig(epochs=3, batch_size=16, patience=0)
    a = train_head(x[:240], y[:240], x[240:], y[240:], 3, cfg)
    rows_t, rows_v = FeatureRows(cache, names[:240]), FeatureRows(cache, names[240:])
    b = train_head(np.asarray(rows_t), y[:240], np.asarray(rows_v), y[240:], 3, cfg)
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.bias, b.head.bias)
    assert a.history == b.history


def test_streamed_training_never_holds_all_features(tmp_path):
    """numpy's allocations (tracemalloc sees them) stay near the budget, far below the features."""
    cache, names, x, y = _cache(tmp_path, n=8000, dim=64, shard=500)
    rows_t, rows_v = FeatureRows(cache, names[:6400]), FeatureRows(cache, names[6400:])
    total = rows_t.nbytes + rows_v.nbytes  # 2 MB
    budget = 64 << 10
    tracemalloc.start()
    try:
        fit = train_head(rows_t, y[:6400], rows_v, y[6400:], 3, HeadConfig(epochs=2, patience=0, batch_size=256),
                         budget=budget)
        predict_labels(fit.head, rows_v, budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < total / 4, (peak, total)
    assert fit.history["val_accuracy"][-1] > 0.8
