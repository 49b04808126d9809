"""graft/recipe/settings.py and config.py: every setting is a TrainConfig field, and graft.train's
keywords, signature and docstring are made from the fields (the command line's options are tested
in tests/cli/test_cli.py)."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

import graft
from graft.errors import GraftError
from graft.recipe.config import TrainConfig


def test_every_setting_is_a_keyword_of_graft_train_with_its_default_and_its_help():
    params = inspect.signature(graft.train).parameters
    assert list(params) == ["photos", "out", *(f.name for f in fields(TrainConfig))]
    for f in fields(TrainConfig):
        p = params[f.name]
        assert p.kind is p.KEYWORD_ONLY and p.default == f.default and p.annotation is not p.empty, f.name
        assert f"{f.name}={f.default!r}: " in graft.train.__doc__, f.name  # help(graft.train) lists it
        assert f.metadata["help"], f.name


def test_graft_train_hands_every_keyword_to_the_config(tmp_path, monkeypatch):
    import graft.recipe as recipe

    seen = []
    monkeypatch.setattr(recipe, "run_recipe", lambda photos, out, cfg: seen.append((photos, out, cfg)))
    graft.train(tmp_path / "photos", tmp_path / "run", **{f.name: f.default for f in fields(TrainConfig)})
    graft.train(tmp_path / "photos", tmp_path / "run", epochs=3, inner_split=0.3, report=False, decode_once=False,
                boundary_cache=False, solver="lbfgs")
    assert seen[0][2] == TrainConfig()
    cfg = seen[1][2]
    assert (cfg.epochs, cfg.inner_split, cfg.report, cfg.decode_once, cfg.boundary_cache, cfg.solver) == (
        3, 0.3, False, False, False, "lbfgs")


def test_an_unknown_keyword_is_refused_in_one_line_naming_the_settings(tmp_path):
    with pytest.raises(GraftError) as e:
        graft.train(tmp_path / "photos", tmp_path / "run", epoch=3)
    message = str(e.value)
    assert "\n" not in message and "'epoch'" in message and "did you mean epochs?" in message
    assert all(f.name in message for f in fields(TrainConfig))
    assert not (tmp_path / "run").exists()
    with pytest.raises(GraftError, match="unknown setting 'colour'; the settings are: backbone, "):
        graft.train(tmp_path / "photos", tmp_path / "run", colour="red")


@pytest.mark.parametrize("setting,value,says", [
    ("inner_split", 0.0, "--inner-split must be a number in (0, 1)"),
    ("inner_split", float("nan"), "--inner-split must be a number in (0, 1)"),
    ("balance", "some", "balance must be auto or none, not 'some'"),
    ("solver", "sgd", "solver must be auto, lbfgs or adamw, not 'sgd'"),
    ("aug_device", "gpu", "aug_device must be workers, cpu or cuda, not 'gpu'"),
    ("workers", 1.5, "--workers must be a whole number >= 0"),
])
def test_each_field_says_what_it_takes(tmp_path, setting, value, says):
    with pytest.raises(GraftError) as e:
        graft.train(tmp_path / "photos", tmp_path / "run", **{setting: value})
    assert says in str(e.value)


def test_the_help_quotes_the_trainers_own_defaults():
    """epochs, lr and patience default to the trainer's own; their help says those figures without
    importing the trainers (torch), so this holds the figures to the trainers' configs."""
    from graft.finetune.config import FinetuneConfig
    from graft.heads.softmax import HeadConfig
    from graft.recipe.settings import help_text

    helps = {f.name: help_text(f) for f in fields(TrainConfig)}
    assert f"(default: head {HeadConfig.epochs}, fine-tuning {FinetuneConfig.epochs})" in helps["epochs"]
    assert f"(default: head {HeadConfig.patience}, fine-tuning {FinetuneConfig.patience})" in helps["patience"]
    assert HeadConfig.lr == FinetuneConfig.lr
    assert f"(default {FinetuneConfig.lr:g}; pretrained layers get 1/{1 / FinetuneConfig.backbone_lr_mult:g})" \
        in helps["lr"]
