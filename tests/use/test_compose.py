"""graft.use.compose (issue 20, item 2): `graft train` leaves a head run whose RUN/model.onnx is
joined from the cached backbone graph and the run's head, so `graft predict` right after training
runs on onnxruntime; the joined graph gives exactly what `graft export`'s traced one gives
(novelty included), and a Predictor runs it with the torch engine's answers.
"""

from __future__ import annotations

import json
from pathlib import Path
import os
import shutil
import types

import numpy as np
import pytest
import torch

import graft
from conftest import isolated_env, make_photo_folder
from graft.use.calibrate import calibrate_run
from graft.use.compose import composed_model, write_composed
from graft.use.export import export_run
from graft.use.predictor import Predictor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """A head run trained with the onnxruntime extraction engine (so the cache holds the backbone
    graph, as on any set of a few hundred photos), and a calibrated copy of it."""
    root = tmp_path_factory.mktemp("compose")
    photos = make_photo_folder(root / "photos", per_class=12, seed=5)
    before = os.environ.get("GRAFT_ENGINE")
    os.environ["GRAFT_ENGINE"] = "onnxruntime"
    try:
        with isolated_env(root):
            result = graft.train(photos, root / "run", strategy="head", cache_dir=root / "cache", workers=0,
                                 progress=False, report=False)
            cal = root / "calibrated"
            shutil.copytree(result.run_dir, cal)
            calibrate_run(cal, photos, target_accuracy=0.99, cache_dir=root / "cache", workers=0)
    finally:
        if before is None:
            os.environ.pop("GRAFT_ENGINE")
        else:
            os.environ["GRAFT_ENGINE"] = before
    return types.SimpleNamespace(root=root, photos=photos, run=result.run_dir, metrics=result.metrics, calibrated=cal)


def test_train_leaves_a_joined_onnx_export_the_predictor_runs(joined):
    assert joined.metrics["export"] == {"file": "model.onnx", "made": "joined"}
    record = json.loads((joined.run / "export.json").read_text())
    assert record["files"]["model.onnx"]["made"].startswith("joined")
    assert record["files"]["model.onnx"]["backbone_graph"]["sha256"]
    fast, slow = Predictor(joined.run), Predictor(joined.run, engine="torch")
    assert (fast.engine.name, slow.engine.name) == ("onnx", "torch")
    paths = sorted(joined.photos.rglob("*.jpg"))
    got, want = fast.predict(paths, topk=2), slow.predict(paths, topk=2)
    for g, w in zip(got, want, strict=True):
        assert [p["class"] for p in g["predictions"]] == [p["class"] for p in w["predictions"]]
        assert max(abs(p["probability"] - q["probability"]) for p, q in zip(g["predictions"], w["predictions"])) <= 1e-5


@pytest.mark.parametrize("which", ["run", "calibrated"])
def test_joined_graph_gives_the_traced_exports_outputs(joined, which, tmp_path):
    """The same random uint8 crops through both files: probabilities, logits and novelty agree."""
    folder = getattr(joined, which)
    graph = json.loads((joined.run / "export.json").read_text())["files"]["model.onnx"]["backbone_graph"]["path"]
    with isolated_env(joined.root):
        composed = write_composed(folder, graph)  # the calibrated copy: joined again, with its novelty
        traced = export_run(folder, "onnx", out=tmp_path / "traced.onnx")
    a, b = _session(composed), _session(traced)
    assert [o.name for o in a.get_outputs()] == [o.name for o in b.get_outputs()]
    assert ("novelty" in [o.name for o in a.get_outputs()]) == (which == "calibrated")
    size = a.get_inputs()[0].shape[1]
    x = np.random.default_rng(3).integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    for got, want in zip(a.run(None, {"image": x}), b.run(None, {"image": x}), strict=True):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
    assert a.get_modelmeta().custom_metadata_map == b.get_modelmeta().custom_metadata_map


def test_calibrate_refreshes_the_joined_export(joined, tmp_path):
    """After calibration the export is stale (it holds no thresholds); refresh_export, which
    `graft calibrate` runs, joins it again with them: the Predictor is back on onnxruntime."""
    from graft.use.compose import refresh_export

    folder = tmp_path / "cal"
    shutil.copytree(joined.calibrated, folder)
    for name in ("model.onnx", "export.json"):  # the export training wrote, before the calibration
        shutil.copy(joined.run / name, folder / name)
    assert Predictor(folder).engine.name == "torch"  # stale: the calibration changed since
    with isolated_env(joined.root):
        assert refresh_export(folder) == "joined"
    fast = Predictor(folder)
    assert fast.engine.name == "onnx" and fast.calibration is not None
    meta = json.loads((folder / "export.json").read_text())
    assert meta["calibration"]["novelty"] is not None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_hidden_layer_head_is_joined_as_gemm_relu_gemm(tmp_path):
    """composed_model on a small traced backbone and a 2-layer head equals the same maths in torch."""
    from graft.backbones.preprocess import Preprocessing

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "b.onnx"
    torch.onnx.export(backbone, (torch.randn(2, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["features"],
                      dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}})
    head = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    tensors = [t.detach().numpy() for t in (head[0].weight, head[0].bias, head[2].weight, head[2].bias)]
    pre = Preprocessing(16, 18, "bilinear", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    model = composed_model(path, pre, tensors)
    out = tmp_path / "joined.onnx"
    onnx.save(model, str(out))
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    probabilities, logits = _session(out).run(None, {"image": x})
    mean, inv_std = pre.normalize_constants()
    with torch.no_grad():
        want = head(backbone((torch.from_numpy(x).permute(0, 3, 1, 2).float() - mean) * inv_std))
    assert np.abs(logits - want.numpy()).max() <= 1e-5
    assert np.abs(probabilities - want.softmax(1).numpy()).max() <= 1e-6


def test_a_run_of_a_few_photos_with_no_cached_graph_exports_nothing(tmp_path):
    """Under 64 photos, when extraction did not need the graph, training does not pay 10-20 s to
    export it: the run predicts on torch, as before (and says nothing is wrong)."""
    photos = make_photo_folder(tmp_path / "photos", per_class=8, seed=2)
    result = graft.train(photos, tmp_path / "run", strategy="head", workers=0, progress=False, report=False)
    assert result.metrics["export"] is None and not (tmp_path / "run" / "model.onnx").exists()


def test_a_warm_rerun_copies_the_joined_file_kept_in_the_cache(joined, tmp_path, monkeypatch):
    """The same inputs again (a warm rerun's identical head): the kept joined file is copied, not
    joined again; a kept file whose content no longer has the digest its name says is not used."""
    import graft.use.compose as compose

    graph = json.loads((joined.run / "export.json").read_text())["files"]["model.onnx"]["backbone_graph"]["path"]
    folder = tmp_path / "again"
    shutil.copytree(joined.run, folder)
    want = (joined.run / "model.onnx").read_bytes()
    kept = sorted(Path(graph).parent.glob("joined-*.onnx"))
    assert kept  # train kept it

    def refuse(*a, **k):
        raise AssertionError("joined again")

    monkeypatch.setattr(compose, "composed_model", refuse)
    with isolated_env(joined.root):
        write_composed(folder, graph)
    assert (folder / "model.onnx").read_bytes() == want and Predictor(folder).engine.name == "onnx"
    for k in kept:  # damaged: its digest is no longer the one in its name
        k.write_bytes(k.read_bytes()[:-10] + b"0123456789")
    monkeypatch.undo()
    with isolated_env(joined.root):
        write_composed(folder, graph)
    assert (folder / "model.onnx").read_bytes() == want
