"""graft.export: a head run written as ONNX and TorchScript gives graft's own probabilities.

One tiny head run on generated photos (module fixture); each format is exported once and checked
on a batch of real photos decoded with the run's preprocessing, at a batch size other than the
one traced (the batch dimension is dynamic).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import types
import warnings

import pytest
import torch

import graft
from conftest import isolated_env, make_photo_folder
from graft.errors import GraftError
from graft.cli.export import add_parser
from graft.export import export_run, metadata_path
from graft.run import load_run

TOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    photos = make_photo_folder(root / "photos", per_class=8, seed=11)
    with isolated_env(root):
        result = graft.train(photos, root / "run", strategy="head", cache_dir=root / "cache",
                             workers=0, progress=False)
        model = load_run(result.run_dir)
    pre = model.preprocessing
    paths = sorted(photos.rglob("*.jpg"))[::3]  # 6 photos of both classes
    x = pre.normalize(torch.stack([pre.load(p) for p in paths]))
    with torch.no_grad():
        expected = model(x).softmax(1)
    return types.SimpleNamespace(root=root, dir=result.run_dir, x=x, expected=expected, classes=model.classes)


@pytest.fixture(scope="module")
def torchscript_file(run):
    with isolated_env(run.root):
        return export_run(run.dir, "torchscript")


@pytest.fixture(scope="module")
def onnx_file(run):
    pytest.importorskip("onnx", reason="the onnx package is not installed: torch cannot write ONNX without it")
    with isolated_env(run.root):
        return export_run(run.dir, "onnx")


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_torchscript_gives_grafts_probabilities(run, torchscript_file):
    assert torchscript_file == run.dir / "model.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(torchscript_file))
    with torch.no_grad():
        got = loaded(run.x)
        one = loaded(run.x[:1])
    assert got.shape == run.expected.shape == (6, 2)
    assert (got - run.expected).abs().max().item() < TOL
    assert (one - run.expected[:1]).abs().max().item() < TOL
    assert torch.allclose(got.sum(1), torch.ones(6), atol=1e-5)  # probabilities, not logits


def test_onnx_is_valid_and_gives_grafts_probabilities(run, onnx_file):
    import onnx

    assert onnx_file == run.dir / "model.onnx"
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch size
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: ONNX numeric check skipped "
                              "(the file was still checked by onnx.checker)")
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(["probabilities"], {"input": run.x.numpy()})[0]
    assert got.shape == (6, 2)
    assert abs(got - run.expected.numpy()).max() < TOL


def test_export_json_lets_a_user_reproduce_inputs(run, torchscript_file, onnx_file):
    meta = json.loads((run.dir / "model.json").read_text())
    doc = json.loads((run.dir / "export.json").read_text())
    assert doc["classes"] == run.classes == meta["classes"]
    assert doc["preprocessing"] == meta["preprocessing"]
    assert set(doc["preprocessing"]) == {"size", "resize", "interpolation", "mean", "std"}
    assert doc["input"]["shape"] == ["batch", 3, meta["preprocessing"]["size"], meta["preprocessing"]["size"]]
    assert doc["model_sha256"] == _sha256(run.dir / "model.safetensors")
    files = doc["files"]  # both exports of the same model are listed, each with its digest
    assert set(files) == {"model.onnx", "model.torchscript.pt"}
    assert files["model.onnx"]["sha256"] == _sha256(onnx_file) and files["model.onnx"]["opset"] >= 17
    assert files["model.torchscript.pt"]["sha256"] == _sha256(torchscript_file)
    assert not list(run.dir.glob(".tmp-*"))  # atomic writes leave no temp files


def test_errors_are_graft_errors(run, tmp_path):
    with pytest.raises(GraftError, match="unknown export format 'tflite'.*onnx, torchscript"):
        export_run(run.dir, "tflite")
    with pytest.raises(GraftError, match="run folder not found"):
        export_run(tmp_path / "nope", "onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraftError, match="not a graft run"):
        export_run(tmp_path / "empty", "torchscript")


def test_cli_parses_and_sidecar_location(run, tmp_path):
    parser = argparse.ArgumentParser(prog="graft")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", str(run.dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert (args.command, args.format, args.out) == ("export", "onnx", str(tmp_path / "m.onnx"))
    assert callable(args.run)
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(run.dir), "--format", "tflite"])
    assert metadata_path(run.dir, run.dir / "model.onnx") == run.dir / "export.json"
    assert metadata_path(run.dir, tmp_path / "m.onnx") == tmp_path / "m.onnx.json"
