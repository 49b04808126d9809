"""graft/recipe/trial.py: `--strategy auto` weighs fine-tuning by a short trial on an inner split of
the TRAINING photos, against the head on the same photos, within a budget. The verdict's rules are
checked on figures (decide, estimate_seconds); the trial itself runs once on a tiny generated set
with the real default backbone (one epoch, a few photos: TrialPlan's sizes are made small), and
again with the validation photos' labels corrupted: nothing it chooses or measures may change.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from conftest import isolated_env, make_split_folder
from graft.recipe.config import TrainConfig
from graft.recipe.strategy import StrategyChoice, choose_strategy
from graft.recipe.trial import (AUTO_BUDGET_S, TrialPlan, decide, estimate_seconds, smallest_clear_gain,
                                weigh_finetuning)

TINY = TrialPlan(min_per_class=3, per_class=6, val_per_class=3, epochs=1)


def _trial(head=0.80, tuned=0.90, se=0.02, n=200, prefix=0.1, step=0.01, n_all=1000, n_val_all=150) -> dict:
    return {"head_accuracy": head, "finetune_accuracy": tuned, "noise_se": se, "inner_val": n,
            "prefix_s_per_photo": prefix, "step_s_per_photo": step, "inner_train_all": n_all,
            "inner_val_all": n_val_all}


def _decide(trial, budget=1e6, views=0, epochs=None, plan=TrialPlan()):
    estimate = estimate_seconds(trial, epochs, views)
    return decide(trial, estimate, budget, f"--budget {budget:g} s", "probe", plan, {"trial": trial}), estimate


def test_estimate_extrapolates_the_measured_costs():
    t = _trial(prefix=0.1, step=0.01, n_all=1000, n_val_all=150)
    today = estimate_seconds(t, None)  # fine-tuning's default 15 epochs, the prefix every epoch
    assert today["epochs"] == 15 and today["photos"] == 1000 and today["per_epoch_s"] == pytest.approx(110.0)
    assert today["seconds"] == pytest.approx(150 * 0.1 + 15 * 1000 * 0.11)
    views = estimate_seconds(t, 10, views=4)  # the prefix 4 times a photo, once; epochs run the top only
    assert views["seconds"] == pytest.approx(150 * 0.1 + 4 * 1000 * 0.1 + 10 * 1000 * 0.01)
    assert views["seconds"] < estimate_seconds(t, 10)["seconds"]


def test_a_gain_within_the_noise_keeps_the_head():
    for tuned, se in ((0.80, 0.02), (0.81, 0.02), (0.82, 0.02), (0.85, 0.06)):
        choice, _ = _decide(_trial(head=0.80, tuned=tuned, se=se))
        assert choice.strategy == "head" and "no clear gain" in choice.reason
        assert f"{tuned:.3f} vs head 0.800" in choice.reason and "200 inner photos" in choice.reason
        assert choice.evidence["decision"] == "head" and choice.evidence["why"] == choice.reason
    stricter = TrialPlan(z=2.0)
    assert _decide(_trial(tuned=0.83, se=0.02), plan=stricter)[0].strategy == "head"
    assert _decide(_trial(tuned=0.83, se=0.02))[0].strategy == "partial"


def test_a_clear_gain_fine_tunes_within_the_budget_and_says_its_cost_first():
    choice, estimate = _decide(_trial(tuned=0.90), budget=10_000)
    assert (choice.strategy, choice.train_stages) == ("partial", 2)
    assert f"estimated {estimate['seconds']:.0f} s" in choice.reason and "up to 15 epochs" in choice.reason
    assert choice.evidence["decision"] == "partial"


def test_a_budget_below_the_estimate_falls_back_to_the_head_in_one_line():
    choice, estimate = _decide(_trial(tuned=0.90), budget=60)
    assert choice.strategy == "head"
    assert f"budget 60 s < estimated {estimate['seconds']:.0f} s" in choice.reason
    assert "\n" not in choice.reason
    # the same trial, cheaper with boundary views, fits a budget that today's loop does not
    cheap = _decide(_trial(tuned=0.90), budget=800, views=4)[0]
    assert cheap.strategy == "partial" and _decide(_trial(tuned=0.90), budget=800)[0].strategy == "head"


def test_choose_strategy_asks_the_trial_only_under_auto():
    from test_strategy import fake_data

    asked = []

    def trial():
        asked.append(1)
        return StrategyChoice("partial", 2, "by evidence", {"trial": {}})

    data = fake_data(300, 300)
    assert choose_strategy("auto", data, 0.9, trial=trial).reason == "by evidence" and asked == [1]
    for requested in ("head", "partial", "full"):
        assert choose_strategy(requested, data, 0.9, trial=trial).strategy == requested
    assert choose_strategy("auto", data, 0.9, trial=trial, frozen_only="joined").strategy == "head"
    assert asked == [1]
    assert choose_strategy("auto", data, 0.5).evidence is None  # without a trial: the fixed rule


# --- the trial on real photos ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """A run's job and features on PHOTOS/train (2 classes x 14) + PHOTOS/val (2 x 3)."""
    from graft.recipe.extraction import extract
    from graft.recipe.steps import scan, start

    root = tmp_path_factory.mktemp("trial")
    photos = root / "photos"
    make_split_folder(photos, train=14, val=3, seed=41)
    cfg = TrainConfig(batch_size=4, workers=0, progress=False, cache_dir=root / "cache", aug_views=0)
    with isolated_env(root):
        job = start(cfg, root / "run", photos)
        feats = extract(job, scan(job, photos))
        choice = weigh_finetuning(job, feats, 0.5, plan=TINY)
    yield types.SimpleNamespace(root=root, job=job, feats=feats, choice=choice)
    if job.epoch_log is not None:
        job.epoch_log.close()


def test_the_trial_weighs_head_and_fine_tuning_on_the_same_inner_photos(tiny_job):
    choice = tiny_job.choice
    assert choice.strategy in ("head", "partial") and choice.train_stages == 2
    ev = choice.evidence
    trial = ev["trial"]
    n_val = trial["inner_val"]
    assert trial["inner_train"] == 2 * TINY.per_class and 2 <= n_val <= 2 * TINY.val_per_class
    assert trial["inner_train_all"] + trial["inner_val_all"] == 28  # training photos only: no val photo
    for key in ("head_accuracy", "finetune_accuracy"):
        assert round(trial[key] * n_val) == pytest.approx(trial[key] * n_val, abs=1e-3)  # a share of the photos
    assert trial["boundary_computed"] == trial["inner_train"] + n_val  # a cold cache: each photo's prefix once
    assert trial["prefix_s_per_photo"] > 0 and trial["step_s_per_photo"] > 0
    assert ev["budget_s"] == AUTO_BUDGET_S and "default budget" in ev["budget_from"]
    assert ev["estimate"]["photos"] == trial["inner_train_all"] and ev["decision"] == choice.strategy
    assert "inner photos" in choice.reason and ev["why"] == choice.reason


def test_corrupted_validation_labels_change_no_choice(tiny_job):
    """The trial reads the training photos alone: the validation photos' labels scrambled (and
    their features replaced by noise) change neither the verdict nor any figure it rests on."""
    from graft.recipe.trial import weigh_finetuning as weigh

    f = tiny_job.feats
    assert len(f.data.val) == 6
    rng = np.random.default_rng(0)
    flipped = [dataclasses.replace(s, label=1 - s.label) for s in f.data.val]
    data = dataclasses.replace(f.data, val=flipped)
    corrupted = dataclasses.replace(f, data=data, y_val=1 - f.y_val,
                                    x_val=rng.normal(size=np.shape(f.x_val)).astype(np.float32))
    with isolated_env(tiny_job.root):
        again = weigh(tiny_job.job, corrupted, 0.5, plan=TINY)
    figures = ("inner_train", "inner_val", "head_accuracy", "finetune_accuracy", "noise_se")
    assert again.strategy == tiny_job.choice.strategy
    assert {k: again.evidence["trial"][k] for k in figures} == {k: tiny_job.choice.evidence["trial"][k] for k in figures}
    assert again.evidence["trial"]["boundary_computed"] == 0  # the rerun read the boundary cache


def test_the_gates_skip_the_trial(tiny_job):
    few = weigh_finetuning(tiny_job.job, tiny_job.feats, 0.5, plan=TrialPlan())  # 14 a class < 50
    assert few.strategy == "head" and few.evidence["trial"] is None
    assert "< 50" in few.reason and "0.500" in few.reason
    easy = weigh_finetuning(tiny_job.job, tiny_job.feats, 0.99, plan=TINY)
    assert easy.strategy == "head" and easy.evidence["trial"] is None and ">= 0.97" in easy.reason
    given = weigh_finetuning(tiny_job.job, tiny_job.feats, 0.5, budget=0.001, plan=TINY)
    assert given.evidence["budget_from"] == "--budget 0.001 s"
    assert given.strategy == "head"  # no clear gain, or a budget below any estimate
    assert "no clear gain" in given.reason or "budget 0 s < estimated" in given.reason


def test_smallest_clear_gain_is_decides_own_test():
    for n in (2, 5, 28, 240):
        need = smallest_clear_gain(n, 1.0)
        trial = _trial(head=0.5, tuned=0.5 + need / n, se=float(np.std(np.r_[np.ones(need), np.zeros(n - need)], ddof=1)
                                                                / np.sqrt(n)), n=n)
        assert _decide(trial)[0].strategy == "partial"  # `need` fixes pass decide
        if need > 1:
            fewer = np.r_[np.ones(need - 1), np.zeros(n - need + 1)]
            trial = _trial(head=0.5, tuned=0.5 + (need - 1) / n, se=float(np.std(fewer, ddof=1) / np.sqrt(n)), n=n)
            assert _decide(trial)[0].strategy == "head"  # one fewer does not
    assert smallest_clear_gain(1, 1.0) == 2  # one photo can never tell


def test_a_head_too_good_for_the_trial_to_tell_skips_it(tiny_job):
    """4 inner photos (2 a class) and a head at 0.9: 0.4 expected misses, and a trial must show 2
    fixes: no trial, and the line says why."""
    choice = weigh_finetuning(tiny_job.job, tiny_job.feats, 0.9, plan=TINY)
    assert choice.strategy == "head" and choice.evidence["trial"] is None
    assert "expected to miss 0.4 of the trial's 4 inner photos" in choice.reason and "fix 2" in choice.reason
    ran = weigh_finetuning(tiny_job.job, tiny_job.feats, 0.5, plan=TINY)  # 2 expected misses: it runs
    assert ran.evidence["trial"] is not None


def test_the_trial_can_train_on_augmented_boundary_views(tiny_job):
    """TrialPlan.views K: the trial's photos are seen through K augmented views of their
    boundary activations (the fine-tune's own augmentation), cached; the same inner photos."""
    plan = dataclasses.replace(TINY, views=2)
    with isolated_env(tiny_job.root):
        choice = weigh_finetuning(tiny_job.job, tiny_job.feats, 0.5, plan=plan)
        again = weigh_finetuning(tiny_job.job, tiny_job.feats, 0.5, plan=plan)
    trial, clean = choice.evidence["trial"], tiny_job.choice.evidence["trial"]
    assert choice.strategy in ("head", "partial") and trial["views_s"] > 0
    assert {k: trial[k] for k in ("inner_train", "inner_val", "head_accuracy")} == \
        {k: clean[k] for k in ("inner_train", "inner_val", "head_accuracy")}
    assert again.evidence["trial"]["finetune_accuracy"] == trial["finetune_accuracy"]  # the same views, reread
