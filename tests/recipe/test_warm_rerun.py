"""A warm rerun builds nothing: files extraction could not use are remembered by content digest (so
the network is not built to skip them again), and the head chosen by cross-validation is reused."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import graft
from graft.backbones.registry import BackboneSource
from graft.cache import FeatureCache
from conftest import count_backbone_forwards

N = 20  # trained_run: 2 classes x 10


@pytest.fixture
def builds(monkeypatch):
    """Every backbone graft builds, by spec."""
    built, original = [], BackboneSource.build
    monkeypatch.setattr(BackboneSource, "build", lambda self: built.append(self.spec) or original(self))
    return built


def _with_placeholder(trained_run, tmp_path):
    photos = shutil.copytree(trained_run.photos, tmp_path / "photos")
    blank = photos / "red" / "blank.jpg"
    Image.new("RGB", (120, 100), (200, 200, 200)).save(blank, format="JPEG")  # shows nothing
    return photos, blank


def test_a_remembered_placeholder_builds_no_network_on_a_warm_run(trained_run, tmp_path, builds, caplog):
    photos, blank = _with_placeholder(trained_run, tmp_path)
    first = graft.train(photos, tmp_path / "r1", cache_dir=trained_run.cache, workers=0, progress=False,
                        report=False)
    assert [item["path"] for item in first.metrics["skipped"]] == [str(blank)]
    assert builds  # the placeholder had to be decoded once
    builds.clear()
    caplog.set_level(logging.WARNING, logger="graft")
    with count_backbone_forwards() as calls:
        second = graft.train(photos, tmp_path / "r2", cache_dir=trained_run.cache, workers=0, progress=False,
                             report=False)
    assert builds == [] and calls == []  # neither built nor run
    assert second.metrics["skipped"] == first.metrics["skipped"]  # the same path, reason and code
    assert second.metrics["skipped"][0]["code"] == "not_a_photo"
    assert f"skipped {blank}: " in caplog.text
    assert (second.metrics["cache"]["hits"], second.metrics["cache"]["misses"]) == (N, 0)


def test_skips_are_remembered_under_their_rule(tmp_path):
    cache = FeatureCache(tmp_path, {"arch": "x"})
    cache.remember_skips([{"name": "a" * 64, "reason": "shows nothing", "code": "not_a_photo"}], "rule 1")
    (cache.dir / "skipped.jsonl").open("a").write('{"name": "half wr')  # a killed run's last line
    assert cache.skips(["a" * 64, "b" * 64], "rule 1") == {"a" * 64: {"reason": "shows nothing",
                                                                      "code": "not_a_photo"}}
    assert cache.skips(["a" * 64], "rule 2") == {}  # another rule (or graft version) tries it again


def test_a_warm_rerun_reuses_the_head_choice(trained_run, tmp_path, monkeypatch):
    from graft.heads import search

    runs, original = [], search._cross_validated
    monkeypatch.setattr(search, "_cross_validated", lambda *a: runs.append(1) or original(*a))
    results = []
    for name in ("r1", "r2"):
        runs.clear()
        results.append(graft.train(trained_run.photos, tmp_path / name, cache_dir=trained_run.cache, seed=5,
                                   workers=0, progress=False, report=False))
        results[-1].cv_runs = len(runs)
    first, second = results
    assert first.cv_runs >= 1 and second.cv_runs == 0  # not cross-validated again
    for key in ("cv_accuracy", "cv_balanced_accuracy", "head", "candidates", "views", "history"):
        assert second.metrics[key] == first.metrics[key], key
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in results)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert second.metrics["val_accuracy"] == first.metrics["val_accuracy"]
