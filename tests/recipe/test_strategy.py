"""graft/recipe/strategy.py: `--strategy auto` picks how much of the network to train from the size of the
smallest class and the linear probe's accuracy; explicit strategies pass through. The rule is
checked on fake data sets (labels only, no images); one end-to-end run checks that graft.train
records the choice and its reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import graft
from conftest import make_split_folder
from graft.data import Dataset, Sample
from graft.errors import GraftError
from graft.recipe.strategy import PROBE_GOOD_ENOUGH, STRATEGIES, choose_strategy


def fake_data(*per_class: int) -> Dataset:
    """A Dataset with `per_class[i]` training samples of class i (one shared Sample per class)."""
    classes = [f"c{i}" for i in range(len(per_class))]
    train = []
    for label, n in enumerate(per_class):
        train += [Sample(Path(f"/nowhere/c{label}.jpg"), label, f"{label:064x}", (64, 64))] * n
    val = [Sample(Path(f"/nowhere/v{label}.jpg"), label, f"v{label:063x}", (64, 64)) for label in range(len(classes))]
    return Dataset(Path("/nowhere"), classes, train, val)


def _plain(text: str) -> str:
    return text.replace(",", "")


@pytest.mark.parametrize("requested", ["head", "partial", "full"])
def test_explicit_strategy_passes_through(requested):
    for data in (fake_data(3, 3), fake_data(30000, 30000)):
        for probe in (0.1, 1.0):
            choice = choose_strategy(requested, data, probe, train_stages=4)
            assert (choice.strategy, choice.train_stages) == (requested, 4)
            assert f"--strategy {requested}" in choice.reason


def test_unknown_strategy_is_a_graft_error():
    with pytest.raises(GraftError, match="unknown strategy 'most'"):
        choose_strategy("most", fake_data(5, 5), 0.5)
    assert set(STRATEGIES) == {"auto", "head", "partial", "full"}


@pytest.mark.parametrize("n", [1, 5, 20, 249])
@pytest.mark.parametrize("probe", [0.0, 0.5, 1.0])
def test_auto_little_data_is_head(n, probe):
    choice = choose_strategy("auto", fake_data(n, n + 7), probe, train_stages=3)
    assert (choice.strategy, choice.train_stages) == ("head", 3)
    assert f"{n} training images" in choice.reason and "250" in choice.reason
    assert f"{probe:.3f}" in choice.reason


@pytest.mark.parametrize("n", [250, 1000, 2499])
def test_auto_middle_band_follows_the_probe(n):
    good = choose_strategy("auto", fake_data(n, 5000), PROBE_GOOD_ENOUGH)
    assert good.strategy == "head"
    assert str(n) in good.reason and "250-2499" in _plain(good.reason) and "0.970" in good.reason
    better = choose_strategy("auto", fake_data(n, n), 0.999)
    assert better.strategy == "head"
    for probe in (0.969, 0.5):
        weak = choose_strategy("auto", fake_data(n, n), probe, train_stages=5)
        assert (weak.strategy, weak.train_stages) == ("partial", 2)  # the rule's own stage count
        assert str(n) in weak.reason and "250-2499" in _plain(weak.reason)
        assert f"{probe:.3f}" in weak.reason and "2 stages" in weak.reason


@pytest.mark.parametrize("n", [2500, 10000, 24999])
@pytest.mark.parametrize("probe", [0.1, 0.99])
def test_auto_lots_of_data_is_partial_3_stages(n, probe):
    choice = choose_strategy("auto", fake_data(n, 30000), probe, train_stages=1)
    assert (choice.strategy, choice.train_stages) == ("partial", 3)
    assert str(n) in choice.reason and "2500-24999" in _plain(choice.reason) and "3 stages" in choice.reason


@pytest.mark.parametrize("probe", [0.1, 0.99])
def test_auto_very_much_data_is_full(probe):
    for n in (25000, 26000):
        choice = choose_strategy("auto", fake_data(n, n + 1, n + 2), probe)
        assert choice.strategy == "full"
        assert str(n) in choice.reason and "25000+" in _plain(choice.reason)


def test_auto_looks_at_the_smallest_class():
    assert choose_strategy("auto", fake_data(30000, 100), 0.1).strategy == "head"
    assert choose_strategy("auto", fake_data(30000, 3000, 26000), 0.1).train_stages == 3
    assert choose_strategy("auto", fake_data(2499, 2500), 0.1).train_stages == 2
    only_val = fake_data(40, 40)
    only_val.train = [s for s in only_val.train if s.label == 0]  # a class with no training image
    choice = choose_strategy("auto", only_val, 0.9)
    assert choice.strategy == "head" and "0 training images" in choice.reason


def test_train_auto_on_a_tiny_folder_picks_head(tmp_path):
    photos = tmp_path / "photos"
    make_split_folder(photos, train=6, val=2, seed=31)
    res = graft.train(photos, tmp_path / "run", strategy="auto", batch_size=4, workers=0, progress=False)
    m = json.loads((res.run_dir / "metrics.json").read_text())
    assert m["strategy"] == "head"
    assert "6 training images" in m["strategy_reason"] and "(< 50)" in m["strategy_reason"]
    assert f"{m['probe_cv_accuracy']:.3f}" in m["strategy_reason"]  # cv on the training photos, not val
    assert "finetune" not in m
    meta = json.loads((res.run_dir / "model.json").read_text())
    assert meta["strategy"] == "head" and meta["backbone"]["stored"] is False


@pytest.mark.parametrize("n", [5, 1000])
def test_the_reason_names_the_figure_it_quotes(n):
    """The figure `auto` reads is the frozen head's cross-validated accuracy (whatever solver and
    views won), not the L-BFGS probe's curve: the reason calls it that (issue 20)."""
    for frozen_only in (None, "a joined backbone"):
        reason = choose_strategy("auto", fake_data(n, n), 0.975, frozen_only=frozen_only).reason
        assert "linear probe" not in reason and "frozen head's cross-validated accuracy 0.975" in reason
