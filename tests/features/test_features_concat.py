"""graft.features.concat: `lite0+lite1` features are each part's cached features side by side,
every part in its own cache namespace (nothing recomputed), a single backbone is read the same way
(its one part), and fine-tuning a concatenation is refused."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import count_backbone_forwards, make_photo_folder
from graft.backbones import resolve_backbone
from graft.cache import FeatureCache
from graft.data import scan_class_folders
from graft.errors import GraftError
from graft.features.extract import cache_namespace, extract_features
from graft.backbones.spec import split_spec
from graft.features.concat import JoinedCache, source_features
from graft.recipe.config import TrainConfig


@pytest.fixture
def samples(tmp_path):
    root = make_photo_folder(tmp_path / "photos", per_class=2)
    (root / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    _, found, skipped = scan_class_folders(root)
    return found, skipped


@pytest.fixture(scope="module")
def source():
    """lite0+lite1, resolved once: its parts keep their network once built."""
    return resolve_backbone("lite0+lite1")


def joined(src, samples, cache_root, **kw):
    """`src`'s features through graft.features.concat, part by part."""
    return source_features(src, samples, JoinedCache(src.parts, cache_root), workers=0, progress=False, **kw)


def alone(src, samples, cache_root):
    cache = FeatureCache(cache_root, cache_namespace(src))
    return extract_features(src.build, [s.digest for s in samples], [s.path for s in samples], cache,
                            load=src.preprocessing.load, workers=0, progress=False)


def test_concatenation_is_each_part_side_by_side_and_reuses_each_cache(source, samples, tmp_path):
    found, _ = samples
    cache_root = tmp_path / "cache"
    lite0, ok0, _ = alone(source.parts[0], found, cache_root)  # lite0 already cached, as after a lite0 run
    feats, ok, stats = joined(source, found, cache_root)
    assert stats.parts["lite0"].misses == 0 and stats.parts["lite0"].hits == len(found)
    assert stats.parts["lite1"].misses == len(found)  # only the new part ran
    lite1, ok1, st1 = alone(resolve_backbone("lite1"), found, cache_root)  # as a lite1 run would
    assert st1.misses == 0  # ...into lite1's own namespace, which a lite1 run reads
    assert feats.shape == (len(found), lite0.shape[1] + lite1.shape[1]) == (len(found), 2560)
    np.testing.assert_array_equal(feats, np.concatenate([lite0, lite1], axis=1))
    assert ok.all() and ok0.all() and ok1.all()
    with count_backbone_forwards() as calls:  # warm, from the spec alone: no network is built or run
        again, _, stats2 = joined(resolve_backbone("lite0+lite1"), found, cache_root)
    assert calls == [] and stats2.misses == 0
    np.testing.assert_array_equal(again, feats)

    # a photo is kept only if every part read it, and reported once, not once per part
    broken = found[0].__class__(found[0].path.with_name("broken.jpg"), 1, "f" * 64)
    feats2, ok2, stats3 = joined(source, [*found, broken], cache_root)
    assert ok2[:-1].all() and not ok2[-1] and not feats2[-1].any()
    np.testing.assert_array_equal(feats2[:-1], feats)
    assert [s["path"] for s in stats3.skipped] == [str(broken.path)]


def test_the_tiled_crop_through_the_concatenated_network_gives_the_cached_features(source, samples, tmp_path):
    """What a concatenated run computes at predict time (one tiled crop through ConcatBackbone)
    is what training read from the parts' caches."""
    import torch

    found, _ = samples
    feats, _, _ = joined(source, found, tmp_path / "cache")
    net = source.build().eval()
    pre = net.preprocessing
    assert pre.shape == (224 + 240, 240) and net.feature_dim == 2560
    with torch.inference_mode():
        x = torch.stack([pre.load(s.path) for s in found])
        direct = net(pre.normalize(x).contiguous(memory_format=torch.channels_last)).numpy()
    np.testing.assert_allclose(direct, feats, rtol=1e-4, atol=1e-4)
    d = source.describe_parts()
    assert source.frozen_only and [p.parts for p in source.parts] == [(p,) for p in source.parts]
    assert [p["spec"] for p in d] == ["lite0", "lite1"] and all(len(p["weights_digest"]) == 64 for p in d)


def test_bad_specs_and_fine_tuning_are_one_clear_line():
    with pytest.raises(GraftError, match="empty part"):
        split_spec("lite0+")
    with pytest.raises(GraftError, match="twice"):
        split_spec("lite0+lite0")
    with pytest.raises(GraftError, match="unknown backbone"):
        resolve_backbone("lite0+lite9")
    with pytest.raises(GraftError, match="--weights"):
        resolve_backbone("lite0+lite2", weights="x.pth")
    for strategy in ("partial", "full"):
        with pytest.raises(GraftError) as e:
            TrainConfig(backbone="lite0+lite2", strategy=strategy)
        assert "\n" not in str(e.value) and "--strategy head" in str(e.value)
    TrainConfig(backbone="lite0+lite2", strategy="head")
    TrainConfig(backbone="lite2", strategy="full")  # a single backbone fine-tunes as before


def test_a_single_backbone_is_its_one_part_read_as_extraction_reads_it(source, samples, tmp_path):
    """The one function a concatenation's features come from gives a single backbone's exactly
    as extract_features does, in the same namespace; with keep=False they stay in the cache."""
    found, _ = samples
    lite0 = source.parts[0]
    assert lite0.parts == (lite0,) and not lite0.frozen_only and lite0.describe_parts() == []
    expected, ok0, _ = alone(lite0, found, tmp_path / "cache")
    with count_backbone_forwards() as calls:
        feats, ok, stats = joined(lite0, found, tmp_path / "cache")
        rows, ok_rows, _ = joined(lite0, found, tmp_path / "cache", keep=False)
    assert calls == [] and list(stats.parts) == ["lite0"] and stats.misses == 0 and stats.hits == len(found)
    np.testing.assert_array_equal(feats, expected)
    np.testing.assert_array_equal(ok, ok0)
    np.testing.assert_array_equal(ok_rows, ok0)
    picked = [i for i in range(len(found)) if ok0[i]][::-1]
    np.testing.assert_array_equal(np.asarray(rows[picked]), expected[picked])
    # the predictor's cache over a built backbone's parts answers the same rows
    cache = JoinedCache(lite0.build().parts, tmp_path / "cache")
    got, missing = cache.get([s.digest for s in found])
    assert missing == [] and cache.parts[0].dir == FeatureCache(tmp_path / "cache", cache_namespace(lite0)).dir
    np.testing.assert_array_equal(got, expected)
