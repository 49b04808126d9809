"""graft.backbones.engine: onnxruntime computes the same pooled features as torch (within 1e-4) on
the bundled default backbone, so the feature cache's key can ignore the engine; a session that
disagrees with its torch backbone is never used; "auto" picks it only where it pays."""

from __future__ import annotations

import copy
import logging
import sys

import numpy as np
import pytest
import torch
from conftest import count_backbone_forwards, make_photo_folder

from graft.backbones import engine as eng
from graft.cache import FeatureCache
from graft.data import scan_photos
from graft.errors import GraftError
from graft.features.extract import cache_namespace, extract_features

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, default_backbone):
    """A cache root holding the default backbone's ONNX export (exported once for the module)."""
    root = tmp_path_factory.mktemp("engines")
    assert eng.ort_engine(default_backbone, root) is not None
    assert eng.onnx_path(default_backbone, root).is_file()
    return root


def _features(backbone, root, photos, engine, batch_size=4):
    from graft.backbones import resolve_backbone

    data = scan_photos(photos, cache_dir=root)
    samples = data.train + data.val
    source = resolve_backbone(backbone)
    cache = FeatureCache(root, cache_namespace(source))
    feats, ok, stats = extract_features(source.build, [s.digest for s in samples], [s.path for s in samples], cache,
                                        load=source.preprocessing.load, batch_size=batch_size, workers=0,
                                        progress=False, engine=engine)
    assert ok.all() and stats.misses == len(samples)
    return feats, cache


def test_onnxruntime_features_equal_torch_on_the_default_backbone(tmp_path, exported, default_backbone):
    photos = make_photo_folder(tmp_path / "photos", per_class=5, seed=3)  # 10 photos: batches 4, 4, 2
    with count_backbone_forwards() as calls:
        ort_feats, ort_cache = _features(default_backbone, exported, photos, "onnxruntime")
    assert all(c.shape[0] == 2 and c.shape[-1] == 224 for c in calls)  # at most the session's self-check
    torch_feats, torch_cache = _features(default_backbone, tmp_path / "torch-cache", photos, "torch")
    assert ort_cache.dir.name == torch_cache.dir.name  # one cache key, whichever engine filled it
    assert np.abs(ort_feats - torch_feats).max() <= eng.TOLERANCE
    assert np.abs(torch_feats).max() > 0.5  # real features, not zeros


def test_a_session_that_disagrees_with_its_backbone_falls_back_to_torch(exported, default_backbone, caplog):
    """The export is keyed by the weights' digest; a backbone whose weights were changed in memory
    under the same digest must not be run from the stale export."""
    changed = copy.deepcopy(default_backbone)
    with torch.no_grad():
        changed.net.conv_stem.weight.mul_(1.01)
    with caplog.at_level(logging.WARNING, logger="graft"):
        picked = eng.extraction_engine(changed, n_images=10_000, cache_root=exported)
    assert picked.name == "torch"
    assert "differ from torch's" in caplog.text and len(caplog.records) == 1
    again = eng.extraction_engine(changed, n_images=10_000, cache_root=exported)
    assert again.name == "torch" and len(caplog.records) == 1  # decided once per backbone


def test_auto_rule(exported, default_backbone, monkeypatch):
    def pick(n, engine=None, **kw):
        return eng.extraction_engine(default_backbone, n_images=n, cache_root=exported, engine=engine, **kw).name

    assert pick(10_000) == "onnxruntime"
    assert pick(eng.MIN_IMAGES_EXPORTED) == "onnxruntime"  # exported already
    assert pick(eng.MIN_IMAGES_EXPORTED - 1) == "torch"  # a few images: not worth a session
    assert pick(3, "onnxruntime") == "onnxruntime"  # forced
    assert pick(10_000, "torch") == "torch"
    assert pick(10_000, custom_forward=True) == "torch"  # boundary activations: torch
    monkeypatch.setenv("GRAFT_ENGINE", "torch")
    assert pick(10_000) == "torch"
    monkeypatch.setenv("GRAFT_ENGINE", "tensorrt")
    with pytest.raises(GraftError, match="unknown extraction engine"):
        pick(10_000)
    monkeypatch.delenv("GRAFT_ENGINE")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    assert pick(10_000) == "torch"


def test_auto_waits_for_more_images_before_the_first_export(tmp_path, default_backbone):
    picked = eng.extraction_engine(default_backbone, n_images=eng.MIN_IMAGES - 1, cache_root=tmp_path)
    assert picked.name == "torch"
    assert not (tmp_path / "engines").exists()


def test_a_run_that_exports_anyway_does_not_wait_for_more_images(tmp_path, default_backbone):
    """graft train writes RUN/model.onnx from the backbone's graph: its photos run on onnxruntime
    from MIN_IMAGES_EXPORTED on, not on torch eager until MIN_IMAGES."""
    few = eng.extraction_engine(default_backbone, n_images=eng.MIN_IMAGES_EXPORTED - 1, cache_root=tmp_path,
                                graph_wanted=True)
    assert few.name == "torch" and not (tmp_path / "engines").exists()
    picked = eng.extraction_engine(default_backbone, n_images=eng.MIN_IMAGES_EXPORTED, cache_root=tmp_path,
                                   graph_wanted=True)
    assert picked.name == "onnxruntime" and eng.onnx_path(default_backbone, tmp_path).is_file()


def test_damaged_export_is_written_again(exported, default_backbone, tmp_path):
    path = eng.onnx_path(default_backbone, exported)
    good = path.read_bytes()
    root = tmp_path / "cache"
    damaged = eng.onnx_path(default_backbone, root)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(good[: len(good) // 3])
    picked = eng.ort_engine(default_backbone, root)
    assert picked is not None
    assert damaged.stat().st_size == len(good)


def test_export_writes_same_padding_into_the_convs(exported, default_backbone):
    """timm's `tf_` models pad each strided conv from the input's size at run time; exported as is
    that is a Shape/Ceil/Pad chain onnxruntime cannot fuse (a layout reorder around each pad). The
    input size is fixed, so the export holds the pads as constants of the Conv itself."""
    onnx = pytest.importorskip("onnx")
    from timm.layers.conv2d_same import Conv2dSame

    graph = onnx.load(str(eng.onnx_path(default_backbone, exported))).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Pad", "Shape", "Ceil", "Gather"}, ops
    uneven = [n for n in graph.node if n.op_type == "Conv"
              and any(a.name == "pads" and a.ints[0] != a.ints[2] for a in n.attribute)]
    assert uneven  # TF "same" on an even size pads one more row below than above: kept exact
    same = [m for m in default_backbone.modules() if isinstance(m, Conv2dSame)]
    assert same and all("forward" not in vars(m) for m in same)  # torch's own forward is back


def test_static_padding_is_exact_on_other_input_sizes(tmp_path, default_backbone):
    """The constant pads are those of the preprocessing's size; for an odd size (other pads) the
    export must still agree with torch (the self-check is what guards the feature cache)."""
    from graft.backbones import Backbone
    from graft.backbones.preprocess import Preprocessing

    odd = copy.deepcopy(default_backbone)
    odd.preprocessing = Preprocessing(225, 257)
    assert isinstance(odd, Backbone)
    engine = eng.ort_engine(odd, tmp_path)
    assert engine is not None and eng.self_check(odd, engine) <= eng.TOLERANCE


def test_session_threads_sleep_rather_than_spin(exported, default_backbone):
    """graft's decoding workers share the cores with the forward pass: spinning threads took them."""
    engine = eng.ort_engine(default_backbone, exported)
    opts = engine.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == eng.intra_op_threads() and opts.inter_op_num_threads == 1
