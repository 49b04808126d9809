"""Issue 23, item 4: every photo the user gave trains the model they get. Given one folder, graft
holds out a share for the validation figure, then fits the chosen head again on training +
validation photos for the model it writes; a user's own val/ stays held out. The figure is the
train-only model's (conservative), and the choices never see the validation photos.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import graft
from conftest import make_photo_folder
from graft.use.predictor import Predictor


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit")
    photos = make_photo_folder(root / "photos", per_class=14, seed=9)
    result = graft.train(photos, root / "run", strategy="head", cache_dir=root / "cache", workers=0,
                         progress=False, report=False)
    return root, photos, result


def test_a_folder_run_writes_a_model_fitted_on_every_photo(folder_run):
    root, photos, result = folder_run
    m = result.metrics
    on = m["trained_on"]
    assert on["val"] == m["n_val"] > 0 and on["train"] == m["n_train"]
    assert on["photos"] == m["n_train"] + m["n_val"] == len(list(photos.rglob("*.jpg")))
    assert "why_not_val" not in on
    record = json.loads((result.run_dir / "model.json").read_text())
    assert record["training"]["final"] is True  # calibrate must not take the val photos as unseen


def test_the_figure_is_the_train_only_models_and_the_written_model_differs(folder_run):
    """val_predictions.npz (what val_accuracy counts) came from the head fitted on the training
    photos; the written model, fitted on more photos, gives other probabilities for them."""
    root, photos, result = folder_run
    saved = np.load(result.run_dir / "val_predictions.npz", allow_pickle=False)
    paths = [str(p) for p in saved["paths"]]
    probs = saved["probabilities"]
    now = Predictor(result.run_dir, engine="torch").predict(paths, topk=2)
    classes = result.metrics["classes"]
    written = np.array([[{d["class"]: d["probability"] for d in r["predictions"]}[c] for c in classes] for r in now])
    assert written.shape == probs.shape
    # (the photos are easy: compare log-probabilities, which the saturated probabilities hide)
    assert np.abs(np.log(written + 1e-9) - np.log(probs + 1e-9)).max() > 0.05


def test_a_given_val_folder_stays_held_out(tmp_path):
    photos = make_photo_folder(tmp_path / "flat", per_class=14, seed=9)
    split = tmp_path / "split"
    for c in ("blue", "red"):
        files = sorted((photos / c).iterdir())
        (split / "train" / c).mkdir(parents=True)
        (split / "val" / c).mkdir(parents=True)
        for i, f in enumerate(files):
            shutil.copy(f, split / ("val" if i % 4 == 0 else "train") / c / f.name)
    m = graft.train(split, tmp_path / "run", strategy="head", workers=0, progress=False, report=False).metrics
    assert m["trained_on"]["val"] == 0 and m["trained_on"]["photos"] == m["n_train"]
    assert "given" in m["trained_on"]["why_not_val"]
    assert json.loads((tmp_path / "run" / "model.json").read_text())["training"]["final"] is False


def test_a_warm_rerun_refits_nothing(folder_run, tmp_path, monkeypatch):
    """The refit is remembered by the digest of its inputs, like the head's choice."""
    root, photos, result = folder_run
    import graft.heads.probe as probe
    import graft.heads.search as search

    calls = []
    monkeypatch.setattr(probe, "fit_probe", lambda *a, **k: calls.append("lbfgs"))
    monkeypatch.setattr(search, "refit_head", lambda *a, **k: calls.append("adamw"))
    again = graft.train(photos, tmp_path / "again", strategy="head", cache_dir=root / "cache", workers=0,
                        progress=False, report=False)
    assert calls == []
    a = (result.run_dir / "model.safetensors").read_bytes()
    assert a == (again.run_dir / "model.safetensors").read_bytes()
