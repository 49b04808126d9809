"""graft.backbones.bf16_engine: the augmented views in bfloat16 (OpenVINO) only when asked for,
close to float32 and truly computed in bfloat16 on the real default backbone, never used when its
check fails, and named apart in the cache so they never stand in for float32 views."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch
from conftest import make_photo_folder

from graft._util.cpu import cpu_has_native_bf16
from graft.backbones import bf16_engine as bf
from graft.backbones import engine as eng
from graft.errors import GraftError


def test_views_are_bfloat16_only_when_asked_for_and_openvino_is_there(monkeypatch, caplog):
    """auto keeps float32 (bfloat16 views failed their held-out gate on trashnet), whatever the CPU."""
    import graft._util.cpu as cpu

    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: True)
    assert bf.views_precision("auto") == bf.views_precision("fp32") == "fp32"
    if importlib.util.find_spec("openvino") is not None:
        assert bf.views_precision("bf16") == "bf16"
    assert bf.views_precision("bf16", "onnxruntime") == "fp32"  # an engine asked for by name
    monkeypatch.setenv("GRAFT_ENGINE", "torch")
    assert bf.views_precision("bf16") == "fp32"
    monkeypatch.delenv("GRAFT_ENGINE")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    bf._say_no_openvino.cache_clear()
    with caplog.at_level(logging.WARNING, logger="graft"):
        assert bf.views_precision("bf16") == bf.views_precision("bf16") == "fp32"
    assert len(caplog.records) == 1 and "pip install 'graft[openvino]'" in caplog.text  # said once
    with pytest.raises(GraftError, match="auto, bf16 or fp32"):
        bf.views_precision("fp16")


@pytest.fixture(scope="module")
def engine_root(tmp_path_factory):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    return tmp_path_factory.mktemp("bf16-engines")


def test_openvino_bf16_is_close_to_float32_and_really_bfloat16(engine_root, default_backbone):
    fast = bf.views_engine(default_backbone, n_images=10_000, cache_root=engine_root, precision="bf16")
    assert fast.name == "openvino-bf16"
    assert bf.min_cosine(default_backbone, fast) >= bf.MIN_COSINE
    x = torch.randn(3, 3, *default_backbone.preprocessing.shape, generator=torch.Generator().manual_seed(5))
    ref = eng.ort_engine(default_backbone, engine_root)(x)  # float32, within 1e-4 of torch's
    got = fast(x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    if cpu_has_native_bf16():  # computed in bfloat16, not silently in float32
        assert float((got - ref).abs().max()) > 10 * eng.TOLERANCE
    # float32 asked, or too few views for the graph: never OpenVINO
    assert bf.views_engine(default_backbone, n_images=10_000, cache_root=engine_root).name == "onnxruntime"
    assert bf.views_engine(default_backbone, n_images=eng.MIN_IMAGES_EXPORTED - 1, cache_root=engine_root,
                           precision="bf16").name == "torch"


def test_a_failed_check_falls_back_to_float32_with_one_warning(engine_root, default_backbone, monkeypatch, caplog):
    import copy

    other = copy.deepcopy(default_backbone)  # its own session, not the one checked above
    monkeypatch.setattr(bf, "MIN_COSINE", 1.01)  # no bfloat16 engine can pass this
    with caplog.at_level(logging.WARNING, logger="graft"):
        picked = bf.views_engine(other, n_images=10_000, cache_root=engine_root, precision="bf16")
        again = bf.views_engine(other, n_images=10_000, cache_root=engine_root, precision="bf16")
    assert picked.name == again.name == "onnxruntime"
    assert len(caplog.records) == 1 and "computing the views in float32" in caplog.text


def test_bf16_views_are_named_apart_from_float32_views(tmp_path):
    from graft.augment import build
    from graft.backbones import resolve_backbone
    from graft.cache import FeatureCache
    from graft.data import scan_photos
    from graft.features.extract import ExtractStats, cache_namespace, extract_views

    photos = make_photo_folder(tmp_path / "photos", per_class=3, seed=4)
    data = scan_photos(photos, cache_dir=tmp_path / "cache")
    source = resolve_backbone("default")
    cache = FeatureCache(tmp_path / "cache", cache_namespace(source))
    pipeline = build("standard", size=source.preprocessing.size)

    def views(precision):
        stats = ExtractStats()
        v = extract_views(source, data.train, cache, pipeline, 2, seed=0, workers=0, progress=False, stats=stats,
                          precision=precision)
        return v, stats

    bf16, first = views("bf16")
    fp32, second = views("fp32")
    assert first.misses == second.misses == 2 * len(data.train)  # nothing of the other's reused
    again, third = views("bf16")
    assert third.misses == 0 and third.hits == 2 * len(data.train)
    np.testing.assert_array_equal(again, bf16)
    assert bf16.shape == fp32.shape == (len(data.train), 2, bf16.shape[-1])
