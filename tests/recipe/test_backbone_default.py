"""The default backbone weighs the others only where the training photos say one could pay
(graft.recipe.backbone_choice.weigh_for_default, issue 23 item 3), and that choice never sees the
validation photos."""

from __future__ import annotations


import pytest

import graft
import graft.recipe.backbone_choice as choice_mod
import graft.recipe.strategy as strategy_mod
from conftest import isolated_env, make_photo_folder, make_split_folder, swapped_val_copy


def test_a_small_easy_set_stays_on_one_fast_network(tmp_path):
    photos = make_photo_folder(tmp_path / "photos", per_class=8, seed=51)
    with isolated_env(tmp_path):
        m = graft.train(photos, tmp_path / "run", cache_dir=tmp_path / "cache", strategy="head", aug_views=0,
                        workers=0, progress=False, report=False).metrics
    assert m["backbone"]["spec"] == "default"
    assert m["backbone_weighed"]["weighed"] is False and "too few" in m["backbone_weighed"]["why"]
    assert "backbone_candidates" not in m
    assert not any(p.name.startswith("lite") for p in (tmp_path / "cache").iterdir())  # no other network's features


def test_a_head_that_misses_enough_weighs_the_others_blind_to_the_validation_photos(tmp_path, monkeypatch):
    """With the gates lowered (no synthetic set here is hard enough for 20 misses), the default
    weighs lite0, lite2 and the concatenations as --backbone auto does, on the training photos
    alone: the same folder with every validation label swapped weighs and chooses the same."""
    monkeypatch.setattr(choice_mod, "MIN_MISSES_TO_WEIGH", 0)
    monkeypatch.setattr(strategy_mod, "PROBE_GOOD_ENOUGH", 1.01)
    photos = tmp_path / "photos"
    make_split_folder(photos, train=8, val=3, seed=52)
    corrupt = tmp_path / "corrupt"
    swapped_val_copy(photos, corrupt)
    runs = {}
    with isolated_env(tmp_path):
        for name, folder in (("clean", photos), ("corrupt", corrupt)):
            runs[name] = graft.train(folder, tmp_path / f"run-{name}", cache_dir=tmp_path / "cache", strategy="head",
                                     aug_views=0, workers=0, progress=False, report=False).metrics
    clean, bad = runs["clean"], runs["corrupt"]
    table = {r["backbone"]: r for r in clean["backbone_candidates"]}
    assert {"lite0", "lite1", "lite2", "lite0+lite2"} <= set(table)
    assert table["lite1"]["computed"] == 0  # the default's own training features, extracted just before
    assert clean["backbone_weighed"]["weighed"] is True and "weighed the bundled backbones" in clean["backbone_weighed"]["why"]
    figures = ("backbone", "cv_accuracy", "cv_accuracy_std", "relative_cost", "chosen", "skipped")
    assert [{k: r.get(k) for k in figures} for r in clean["backbone_candidates"]] == \
        [{k: r.get(k) for k in figures} for r in bad["backbone_candidates"]]  # the figures and the choice alike
    assert clean["backbone"] == bad["backbone"] and clean["backbone_weighed"] == bad["backbone_weighed"]
    assert bad["val_accuracy"] == pytest.approx(1 - clean["val_accuracy"])  # the swap was seen by the figure only


def test_the_default_weighs_nothing_where_its_head_is_good_enough(tmp_path):
    """48 training photos could show 20 misses, but the default's head misses next to none."""
    photos = make_photo_folder(tmp_path / "photos", per_class=30, seed=54)
    with isolated_env(tmp_path):
        m = graft.train(photos, tmp_path / "run", cache_dir=tmp_path / "cache", strategy="head", aug_views=0,
                        workers=0, progress=False, report=False).metrics
    w = m["backbone_weighed"]
    assert w["weighed"] is False and "no other backbone weighed" in w["why"] and w["cv"] == m["probe_cv_accuracy"]
    assert "backbone_candidates" not in m and m["backbone"]["spec"] == "default"
    # the training photos are looked up twice (this check, then the feature step): counted once each
    assert (m["cache"]["misses"], m["cache"]["hits"]) == (60, 0)
    with isolated_env(tmp_path):
        again = graft.train(photos, tmp_path / "run2", cache_dir=tmp_path / "cache", strategy="head", aug_views=0,
                            workers=0, progress=False, report=False).metrics
    assert (again["cache"]["misses"], again["cache"]["hits"]) == (0, 60)


def test_within_a_small_budget_the_default_costs_nothing_and_is_kept_under_its_name(tmp_path, monkeypatch):
    """The default's own features are in the cache (estimated at 0 s); the others' estimates pass
    a tiny --budget and are skipped: the run stays `default`, and says it kept it."""
    monkeypatch.setattr(choice_mod, "MIN_MISSES_TO_WEIGH", 0)
    monkeypatch.setattr(strategy_mod, "PROBE_GOOD_ENOUGH", 1.01)
    photos = make_photo_folder(tmp_path / "photos", per_class=8, seed=55)
    with isolated_env(tmp_path):
        m = graft.train(photos, tmp_path / "run", cache_dir=tmp_path / "cache", strategy="head", aug_views=0,
                        budget=1e-3, workers=0, progress=False, report=False).metrics
    table = {r["backbone"]: r for r in m["backbone_candidates"]}
    assert "budget" in table["lite0"]["skipped"] and "budget" in table["lite2"]["skipped"]
    assert table["lite1"]["chosen"] and table["lite1"]["computed"] == 0
    assert m["backbone"]["spec"] == "default" and m["backbone_weighed"]["why"].endswith("kept the default")
