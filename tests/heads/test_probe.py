"""graft.heads.probe: the L-BFGS logistic-regression probe solves its problem, chooses its L2 strength
by cross-validation deterministically, beats a trivial baseline, and returns a head in graft's
usual format. Features here are synthetic Gaussian clouds: enough to test a solver, not a
quality measure (bench/quality_study.py measures quality on real photos)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graft.heads.probe import STRENGTHS, _Problem, fit_probe, train_probe


def clouds(n_per_class=(30, 30, 30), d=40, sep=3.0, seed=0):
    """Gaussian clouds, one per class, centres `sep` apart along random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per_class), d))
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.concatenate([rng.normal(size=(n, d)) + centres[c] for c, n in enumerate(n_per_class)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x = x * rng.uniform(0.5, 20, size=d) + rng.normal(0, 5, size=d)  # unequal scales and offsets
    return x.astype(np.float32), y


def test_fit_probe_reaches_the_optimum():
    """At the returned head the gradient of the regularised objective is (nearly) zero."""
    x, y = clouds(sep=1.5)
    strength = 0.05
    fit = fit_probe(x, y, 3, strength)
    prob = _Problem(x, y, 3)
    # the head works on raw features; undo the folded standardisation to get W on standardised ones
    w = (fit.head.weight.detach().double() * prob.std).requires_grad_(True)
    b = (fit.head.bias.detach().double() + fit.head.weight.detach().double() @ prob.mean).requires_grad_(True)
    loss = nn.functional.cross_entropy(prob.z @ w.T + b, prob.y) + 0.5 * strength * (w * w).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4
    assert fit.iterations > 0


def test_stronger_regularisation_shrinks_the_weights():
    x, y = clouds(sep=1.5)
    norms = [fit_probe(x, y, 3, s).head.weight.norm().item() for s in (1e-3, 1e-1, 10.0)]
    assert norms[0] > norms[1] > norms[2]


def test_probe_is_deterministic_and_independent_of_row_order():
    x, y = clouds(sep=1.5)
    keys = [f"photo{i}" for i in range(len(y))]
    a = train_probe(x, y, 3, keys=keys)
    b = train_probe(x, y, 3, keys=keys)
    assert torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.bias, b.head.bias)
    assert a.strength == b.strength and a.table == b.table
    # the same photos listed in another order: folds follow the content keys, so the same choice
    perm = np.random.default_rng(1).permutation(len(y))
    c = train_probe(x[perm], y[perm], 3, keys=[keys[i] for i in perm])
    assert c.strength == a.strength
    assert [r["accuracy"]["mean"] for r in c.table] == [r["accuracy"]["mean"] for r in a.table]
    torch.testing.assert_close(c.head.weight, a.head.weight, rtol=1e-3, atol=1e-4)


def test_probe_beats_the_majority_baseline_on_held_out_data():
    x, y = clouds(n_per_class=(60, 30, 30), sep=4.0)
    rng = np.random.default_rng(3)
    test = rng.permutation(len(y))[:40]
    train = np.setdiff1d(np.arange(len(y)), test)
    res = train_probe(x[train], y[train], 3)
    majority = np.bincount(y[train]).max() / len(train)
    assert res.cv["accuracy"]["mean"] > majority + 0.2
    pred = res.head(torch.from_numpy(x[test])).argmax(1).numpy()
    assert (pred == y[test]).mean() >= 0.95


def test_probe_cv_table_covers_the_grid_and_records_the_choice():
    x, y = clouds()
    res = train_probe(x, y, 3, k=4)
    assert sorted(r["strength"] for r in res.table) == sorted(STRENGTHS)
    assert res.folds == 4 and res.strength in STRENGTHS
    chosen = next(r for r in res.table if r["strength"] == res.strength)
    assert res.cv is chosen
    assert all(chosen["accuracy"]["mean"] >= r["accuracy"]["mean"] for r in res.table)
    assert len(chosen["accuracy"]["folds"]) == 4
    assert res.oof_logits.shape == (len(y), 3)  # the chosen strength's out-of-fold predictions
    per_fold = chosen["accuracy"]["folds"]
    assert np.mean(per_fold) == pytest.approx(chosen["accuracy"]["mean"], abs=1e-6)


def test_probe_head_has_the_usual_format():
    from graft.heads.softmax import head_from_spec, head_spec

    x, y = clouds()
    head = train_probe(x, y, 3).head
    assert isinstance(head, nn.Linear) and head.weight.dtype == torch.float32
    assert head_spec(head) == {"type": "linear", "in_features": 40, "out_features": 3}
    again = head_from_spec(head_spec(head))
    again.load_state_dict(head.state_dict())
    assert torch.equal(again(torch.from_numpy(x)), head(torch.from_numpy(x)))


def test_balanced_class_weights_lift_the_small_class():
    """Overlapping clouds, 10x more of class 0: weighting raises the small class's recall."""
    x, y = clouds(n_per_class=(200, 20), d=10, sep=1.5, seed=4)
    plain = fit_probe(x, y, 2, 0.1).head
    counts = np.bincount(y)
    weighted = fit_probe(x, y, 2, 0.1, class_weight=len(y) / (2 * counts)).head
    xs = torch.from_numpy(x)
    recall = [(h(xs).argmax(1).numpy()[y == 1] == 1).mean() for h in (plain, weighted)]
    assert recall[1] > recall[0] + 0.2


def test_probe_trains_on_augmented_views():
    """(N, K, D) views: every view is a training row; the clean view scores held-out rows."""
    x, y = clouds()
    rng = np.random.default_rng(0)
    views = np.stack([x, x + rng.normal(0, 1, x.shape).astype(np.float32)], axis=1)
    res = train_probe(views, y, 3)
    clean = train_probe(x, y, 3)
    assert res.head.in_features == x.shape[1]
    assert res.cv["accuracy"]["mean"] > 0.8
    assert not torch.equal(res.head.weight, clean.head.weight)  # the noisy views were trained on
