"""graft/finetune/boundary_views.py with the real default backbone on a tiny generated set: the
boundary activations of K augmented views are the prefix's output on those very draws, cached (a
second call computes nothing); each photo is seen through every view once every K epochs, the same
after a resume; fine-tuning over them trains the last stages and never runs the frozen ones.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from conftest import isolated_env, make_split_folder
from graft.augment import build
from graft.backbones import load_backbone
from graft.data import scan_photos
from graft.errors import GraftError
from graft.features.concat import JoinedCache
from graft.features.extract import ExtractStats
from graft.features.loader import AugmentedLoad, mix_seed
from graft.finetune.boundary_views import EpochViews, boundary_views, finetune_on_views, phases
from graft.finetune.config import FinetuneConfig

K_VIEWS, TRAIN_STAGES = 3, 2


@pytest.fixture(scope="module")
def views_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bviews")
    photos = root / "photos"
    make_split_folder(photos, train=4, val=2, seed=51)
    backbone = load_backbone()
    backbone.eval()
    k = len(backbone.stage_names) - TRAIN_STAGES
    pipeline = build("light", None, size=backbone.preprocessing.size)
    with isolated_env(root):
        data = scan_photos(photos, cache_dir=root / "cache")
        cache = JoinedCache(backbone.parts, root / "cache", f"boundary:{backbone.stage_names[k - 1]}").parts[0]
        first, again = ExtractStats(), ExtractStats()
        views = boundary_views(backbone, data.train, cache, pipeline, K_VIEWS, k, seed=3, batch_size=4, workers=0,
                               progress=False, stats=first)
        cache.refresh()
        reread = boundary_views(backbone, data.train, cache, pipeline, K_VIEWS, k, seed=3, batch_size=4, workers=0,
                                progress=False, stats=again)
    return types.SimpleNamespace(root=root, data=data, backbone=backbone, k=k, pipeline=pipeline, cache=cache,
                                 views=views, reread=reread, first=first, again=again)


def test_views_are_the_prefix_of_each_draw_and_cached(views_setup):
    s = views_setup
    n = len(s.data.train)
    assert s.views.shape[:2] == (n, K_VIEWS)
    assert s.first.misses == n * K_VIEWS and s.again.misses == 0  # the second call read the cache
    np.testing.assert_array_equal(s.views, s.reread)
    key = s.pipeline.config().key()
    load = AugmentedLoad(s.pipeline, s.backbone.preprocessing)
    photo = s.data.train[1]
    for v in range(K_VIEWS):
        img = load((photo.path, photo.size, mix_seed(3, photo.digest, key, v), photo.digest))
        with torch.inference_mode():
            want = s.backbone.run_stages(s.backbone.preprocessing.normalize(img[None]), 0, s.k).flatten(1)[0]
        np.testing.assert_allclose(s.views[1, v], want.numpy(), atol=1e-4, rtol=1e-4)
    assert not np.allclose(s.views[1, 0], s.views[1, 1])  # distinct draws


def test_every_view_once_every_k_epochs_whatever_the_phase():
    views = np.arange(5 * 4 * 2, dtype=np.float32).reshape(5, 4, 2)
    ev = EpochViews(views, (2,), np.array([0, 1, 2, 3, 1]))
    seen = []
    for epoch in range(8):
        ev.epoch = epoch
        seen.append(ev.view_of(torch.arange(5)).tolist())
        got = ev[[4, 0]]
        assert torch.equal(got[0], torch.from_numpy(views[4, (epoch + 1) % 4]))
    seen = np.array(seen)
    for i in range(5):
        assert sorted(seen[:4, i]) == [0, 1, 2, 3] and list(seen[4:, i]) == list(seen[:4, i])
    assert len(set(seen[0])) > 1  # one epoch mixes view indices


def test_phases_depend_on_the_photo_not_its_position(views_setup):
    train = views_setup.data.train
    assert list(phases(train[::-1], 0, 4)) == list(phases(train, 0, 4))[::-1]
    assert all(0 <= p < 4 for p in phases(train, 0, 4))


def test_fine_tuning_over_views_trains_the_top_and_never_runs_the_frozen_stages(views_setup, tmp_path):
    s = views_setup
    k = s.k
    backbone = s.backbone
    frozen_before = [p.detach().clone() for _, ms in backbone.stages[:k] for m in ms for p in m.parameters()]
    top_before = [p.detach().clone() for _, ms in backbone.stages[k:] for m in ms for p in m.parameters()]
    calls = []
    original = backbone.run_stages

    def recording(x, start, stop):
        calls.append(start)
        return original(x, start, stop)

    def views_of(samples, k_stages):
        assert k_stages == k and samples == s.data.train
        return s.views

    def extract(samples, k_stages, forward, desc):  # the validation photos' clean boundary activations
        with torch.inference_mode():
            return np.concatenate([forward(backbone, backbone.preprocessing.normalize(
                backbone.preprocessing.load(p.path)[None])).flatten(1).numpy() for p in samples])

    cfg = FinetuneConfig(strategy="partial", train_stages=TRAIN_STAGES, epochs=2, batch_size=4, patience=0,
                         boundary_views=K_VIEWS)
    backbone.run_stages = recording
    try:
        res = finetune_on_views(backbone, s.data, cfg, views_of=views_of, extract=extract,
                                checkpoint=tmp_path / "ck.pt", workers=0, progress=False)
    finally:
        del backbone.run_stages
    assert res.epochs_run == 2 and res.boundary_cache is True and len(res.history["val_accuracy"]) == 2
    training_calls = [c for c in calls if c != 0]
    assert training_calls and set(calls) == {0, k}
    assert calls.count(0) == len(s.data.val) + 1  # from 0: the validation photos' prefix and the shape probe
    frozen_after = [p for _, ms in backbone.stages[:k] for m in ms for p in m.parameters()]
    top_after = [p for _, ms in backbone.stages[k:] for m in ms for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, frozen_after))
    assert any(not torch.equal(a, b) for a, b in zip(top_before, top_after))
    ck = torch.load(tmp_path / "ck.pt", map_location="cpu", weights_only=True)
    assert ck["config"]["boundary_views"] == K_VIEWS  # a resume with another K is refused


def test_views_need_frozen_stages_and_a_view(views_setup, tmp_path):
    s = views_setup
    full = FinetuneConfig(strategy="full", epochs=1, boundary_views=2)
    with pytest.raises(GraftError, match="--strategy partial"):
        finetune_on_views(load_backbone(), s.data, full, views_of=None, extract=lambda *a: None,
                          checkpoint=tmp_path / "ck.pt", workers=0, progress=False)
    none = FinetuneConfig(strategy="partial", epochs=1, boundary_views=0)
    with pytest.raises(GraftError, match="at least one view"):
        finetune_on_views(load_backbone(), s.data, none, views_of=None, extract=lambda *a: None,
                          checkpoint=tmp_path / "ck.pt", workers=0, progress=False)


def test_graft_train_fine_tunes_over_boundary_views(tmp_path):
    """`graft train --strategy partial --boundary-views K`: the recipe takes the cached-views path,
    records K, and the run it writes predicts; a second run computes no view again."""
    import graft

    photos = tmp_path / "photos"
    make_split_folder(photos, train=6, val=2, seed=61)
    kw = dict(strategy="partial", train_stages=1, boundary_views=2, epochs=2, batch_size=4,
              cache_dir=tmp_path / "cache", workers=0, progress=False, report=False)
    with isolated_env(tmp_path):
        first = graft.train(photos, tmp_path / "run", **kw).metrics
        again = graft.train(photos, tmp_path / "run2", **kw).metrics
        answers = graft.predict(tmp_path / "run", [next((photos / "val" / "red").iterdir())], workers=0)
    assert first["finetune"]["boundary_views"] == 2 and first["epochs_run"] == 2
    assert first["cache"]["misses"] > again["cache"]["misses"] == 0
    assert answers[0]["predictions"][0]["class"] in ("blue", "red")


@pytest.mark.parametrize("bad", [dict(augment="none"), dict(new_hidden=(8,)), dict(strategy="full"),
                                 dict(strategy="head")])
def test_boundary_views_without_what_they_need_is_one_line(tmp_path, bad):
    import graft

    kw = {**dict(strategy="partial", boundary_views=2, workers=0, progress=False), **bad}
    with pytest.raises(GraftError, match="--boundary-views K caches augmented views"):
        graft.train(tmp_path / "none", tmp_path / "run", **kw)
