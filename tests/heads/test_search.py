"""graft.heads.search: folds are stratified and deterministic, candidates never see their held-out
rows, the AdamW head's epochs are chosen on folds and refitted, the class-imbalance rule, and the
whole choice cannot see the validation photos. Synthetic features: tests of the machinery only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graft.heads.softmax import HeadConfig
from graft.heads.search import (IMBALANCE_RATIO, NotEnoughPhotos, choose_head, class_weights, cross_validate,
                             fit_and_hold_out, refit_head, select_epochs, stratified_folds)
from test_probe import clouds

# --- folds -----------------------------------------------------------------------------------------


def test_folds_partition_the_rows_and_spread_every_class_evenly():
    y = np.array([0] * 23 + [1] * 11 + [2] * 7)
    folds = stratified_folds(y, 5, seed=0)
    assert len(folds) == 5
    rows = np.concatenate(folds)
    assert sorted(rows) == list(range(len(y)))  # every row held out exactly once
    for c in range(3):
        per_fold = [int((y[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_deterministic_and_follow_content_keys():
    y = np.array([0] * 12 + [1] * 9)
    keys = [f"digest{i:02d}" for i in range(len(y))]
    a = stratified_folds(y, 3, keys=keys, seed=0)
    assert all(np.array_equal(f, g) for f, g in zip(a, stratified_folds(y, 3, keys=keys, seed=0)))
    # the same photos listed in another order land in the same folds
    perm = np.random.default_rng(0).permutation(len(y))
    b = stratified_folds(y[perm], 3, keys=[keys[i] for i in perm], seed=0)
    as_keys = lambda folds, order: sorted(sorted(keys[order[i]] for i in f) for f in folds)  # noqa: E731
    assert as_keys(a, np.arange(len(y))) == as_keys(b, perm)
    # another seed draws other folds; no keys: a seeded generator, also repeatable
    c = stratified_folds(y, 3, keys=keys, seed=1)
    assert as_keys(c, np.arange(len(y))) != as_keys(a, np.arange(len(y)))
    d1, d2 = stratified_folds(y, 3, seed=5), stratified_folds(y, 3, seed=5)
    assert all(np.array_equal(f, g) for f, g in zip(d1, d2))


def test_folds_shrink_to_the_smallest_class_and_refuse_a_single_photo():
    assert len(stratified_folds(np.array([0] * 10 + [1] * 3), 5)) == 3
    with pytest.raises(NotEnoughPhotos):
        stratified_folds(np.array([0] * 10 + [1]), 5)


# --- class balance ---------------------------------------------------------------------------------


def test_imbalance_rule():
    even = np.array([0] * 30 + [1] * 10)  # exactly 3x: not weighted
    assert IMBALANCE_RATIO == 3.0
    w, why = class_weights(even, 2, "auto")
    assert w is None and "3.0x" in why
    uneven = np.array([0] * 31 + [1] * 10 + [2] * 20)
    w, why = class_weights(uneven, 3, "auto")
    counts = np.bincount(uneven)
    assert w is not None and "3.1x" in why
    np.testing.assert_allclose(w * counts, [len(uneven) / 3] * 3)  # every class the same total weight
    assert class_weights(uneven, 3, "none")[0] is None
    assert class_weights(even, 2, "balanced")[0] is not None
    with pytest.raises(ValueError):
        class_weights(even, 2, "sometimes")


# --- cross-validation ------------------------------------------------------------------------------


def test_cross_validate_never_shows_a_candidate_its_held_out_rows():
    x, y = clouds(n_per_class=(20, 20), d=5)
    ids = np.arange(len(y), dtype=np.float32)[:, None]
    x = np.concatenate([ids, x], axis=1)  # column 0 names the row
    folds = stratified_folds(y, 4, seed=0)
    seen: list[set] = []

    def spy(xt, yt):
        seen.append({int(v) for v in xt[:, 0]})
        majority = int(np.bincount(yt).argmax())
        return lambda xs: torch.nn.functional.one_hot(torch.full((len(xs),), majority), 2).float()

    rows = cross_validate(x, y, {"majority": spy}, folds=folds, n_classes=2)
    assert len(seen) == 4
    for fit_rows, held in zip(seen, folds):
        assert fit_rows.isdisjoint(set(held.tolist()))
        assert fit_rows | set(held.tolist()) == set(range(len(y)))
    row = rows[0]
    assert row["name"] == "majority" and len(row["accuracy"]["folds"]) == 4
    assert row["balanced_accuracy"]["mean"] == pytest.approx(0.5)  # a constant answer: chance
    assert 0.3 <= row["accuracy"]["mean"] <= 0.7


# --- AdamW epochs ----------------------------------------------------------------------------------


def test_epochs_are_chosen_on_folds_deterministically():
    x, y = clouds(n_per_class=(25, 25), d=20, sep=1.5)
    cfg = HeadConfig(epochs=40, patience=5, lr=1e-2)  # steps large enough for the held-out loss to turn
    folds = stratified_folds(y, 4, seed=0)
    a = select_epochs(x, y, 2, cfg, folds=folds)
    b = select_epochs(x, y, 2, cfg, folds=folds)
    assert a.epochs == b.epochs and a.curve == b.curve
    assert 1 <= a.epochs <= len(a.curve) <= 40
    assert a.curve[a.epochs - 1] == min(a.curve)  # the epoch where the folds' mean loss was lowest
    # stopped once the mean stopped improving: `patience` epochs after its lowest, none of them lower
    assert len(a.curve) == a.epochs + cfg.patience < cfg.epochs, a.curve
    assert min(a.curve[a.epochs:]) >= a.curve[a.epochs - 1] - 1e-6
    assert 0.5 < a.row["accuracy"]["mean"] <= 1.0


def test_refit_trains_exactly_that_many_epochs_on_everything():
    x, y = clouds(n_per_class=(25, 25), d=20)
    cfg = HeadConfig(patience=0)
    one, five, five_again = (refit_head(x, y, 2, cfg, e) for e in (1, 5, 5))
    assert torch.equal(five.weight, five_again.weight)
    assert not torch.equal(one.weight, five.weight)
    assert five.in_features == 20 and five.out_features == 2


# --- the whole choice ------------------------------------------------------------------------------


def test_choose_head_records_every_candidate_and_refits_the_winner():
    x, y = clouds(n_per_class=(30, 30, 30), d=30, sep=2.0)
    keys = [f"d{i}" for i in range(len(y))]
    cfg = HeadConfig(epochs=30, patience=5)
    a = choose_head(x, y, 3, head_cfg=cfg, keys=keys)
    b = choose_head(x, y, 3, head_cfg=cfg, keys=keys)
    assert (a.solver, a.strength, a.epochs) == (b.solver, b.strength, b.epochs)
    assert torch.equal(a.head.weight, b.head.weight)
    solvers = [r["solver"] for r in a.candidates]
    assert solvers.count("lbfgs") == 9 and solvers.count("adamw") == 1
    assert a.score == "accuracy" and a.class_weight is None
    assert a.cv["accuracy"]["mean"] == max(r["accuracy"]["mean"] for r in a.candidates)  # the best won
    j = a.to_json()
    assert set(j["cv_accuracy"]) == {"mean", "std"} and j["solver"] in ("lbfgs", "adamw")
    assert len(j["candidates"]) == 10 and j["folds"] == 5
    only = choose_head(x, y, 3, solvers=("adamw",), head_cfg=cfg, keys=keys)
    assert only.solver == "adamw" and only.epochs >= 1 and only.strength is None


def test_uneven_classes_are_weighted_and_chosen_by_balanced_accuracy():
    x, y = clouds(n_per_class=(80, 20), d=10, sep=2.0)
    c = choose_head(x, y, 2, head_cfg=HeadConfig(epochs=20, patience=5))
    assert c.score == "balanced_accuracy" and c.class_weight is not None and "4.0x" in c.balance
    assert choose_head(x, y, 2, head_cfg=HeadConfig(epochs=20, patience=5), balance="none").class_weight is None


def test_selection_cannot_see_the_validation_photos():
    """Corrupting the validation photos' labels (and features) after the split changes the
    reported figure but not one thing that was chosen, nor the head."""
    x, y = clouds(n_per_class=(40, 40, 40), d=30, sep=2.0)
    keys = [f"d{i}" for i in range(len(y))]
    val_idx = np.arange(len(y))[::4]
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    cfg = HeadConfig(epochs=30, patience=5)
    classes = ["a", "b", "c"]
    choice, val = fit_and_hold_out(x, y, train_idx, val_idx, 3, classes, keys=keys, head_cfg=cfg)

    bad_y = y.copy()
    bad_y[val_idx] = (bad_y[val_idx] + 1) % 3  # every validation label wrong
    bad_x = x.copy()
    bad_x[val_idx] = np.random.default_rng(9).normal(size=bad_x[val_idx].shape)
    bad_keys = [k + "!" if i in set(val_idx.tolist()) else k for i, k in enumerate(keys)]
    choice2, val2 = fit_and_hold_out(bad_x, bad_y, train_idx, val_idx, 3, classes, keys=bad_keys, head_cfg=cfg)

    assert (choice2.solver, choice2.strength, choice2.epochs) == (choice.solver, choice.strength, choice.epochs)
    assert [r["accuracy"] for r in choice2.candidates] == [r["accuracy"] for r in choice.candidates]
    assert torch.equal(choice2.head.weight, choice.head.weight)
    assert val["accuracy"] > 0.8 and val2["accuracy"] < 0.5  # the held-out figure did see them
    assert val["n"] == len(val_idx) and "balanced_accuracy" in val


def test_a_class_with_one_photo_gets_the_default_probe_and_no_cv_figure():
    from graft.heads.search import FALLBACK_STRENGTH

    x, y = clouds(n_per_class=(12, 1), d=8, sep=3.0)
    c = choose_head(x, y, 2, balance="none")
    assert (c.solver, c.strength, c.folds, c.candidates) == ("lbfgs", FALLBACK_STRENGTH, 0, [])
    j = c.to_json()
    assert j["cv_accuracy"] == {"mean": None, "std": None} and "single training photo" in j["balance"]
    assert c.head(torch.from_numpy(x)).shape == (13, 2)


def test_fit_and_hold_out_trains_on_views_of_the_training_rows_only():
    x, y = clouds(n_per_class=(20, 20), d=10, sep=3.0)
    val_idx = np.arange(len(y))[::5]
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    rng = np.random.default_rng(2)
    views = x[train_idx][:, None] + rng.normal(0, 0.5, (len(train_idx), 3, 10)).astype(np.float32)
    cfg = HeadConfig(epochs=10, patience=3)
    plain, _ = fit_and_hold_out(x, y, train_idx, val_idx, 2, ["a", "b"], head_cfg=cfg, solvers=("lbfgs",))
    viewed, val = fit_and_hold_out(x, y, train_idx, val_idx, 2, ["a", "b"], head_cfg=cfg, solvers=("lbfgs",),
                                   views=views)
    assert not torch.equal(plain.head.weight, viewed.head.weight)
    assert val["n"] == len(val_idx) and val["accuracy"] > 0.8
    with pytest.raises(ValueError):  # one set of views per training row, not per photo
        fit_and_hold_out(x, y, train_idx, val_idx, 2, ["a", "b"], views=np.zeros((len(y), 3, 10), np.float32))


def test_a_remembered_choice_comes_back_bit_for_bit_and_only_for_the_same_inputs(tmp_path, monkeypatch):
    from graft.heads import search

    x, y = clouds((20, 20, 20), seed=3)
    runs, original = [], search._cross_validated
    monkeypatch.setattr(search, "_cross_validated", lambda *a: runs.append(1) or original(*a))
    first = choose_head(x, y, 3, memo=tmp_path, seed=0)
    again = choose_head(x, y, 3, memo=tmp_path, seed=0)
    assert len(runs) == 1  # the second was remembered
    assert torch.equal(again.head.weight, first.head.weight) and torch.equal(again.head.bias, first.head.bias)
    assert again.to_json() == first.to_json() and np.array_equal(again.oof_logits, first.oof_logits)
    moved = x.copy()
    moved[0, 0] += 1e-3
    choose_head(moved, y, 3, memo=tmp_path, seed=0)  # other features
    choose_head(x, y, 3, memo=tmp_path, seed=1)  # other folds
    assert len(runs) == 3
    for f in tmp_path.iterdir():  # a damaged record is chosen again, not trusted
        f.write_bytes(b"garbage")
    assert torch.equal(choose_head(x, y, 3, memo=tmp_path, seed=0).head.weight, first.head.weight)
    assert len(runs) == 4
