"""graft.use.export: an exported run gives graft's own answers from the uint8 crop, and carries all a
client needs (classes, preprocessing, calibration) in the file itself; the written reference client
prints what graft prints; graft's evaluation preprocessing is torchvision's standard recipe.

One tiny head run on generated photos (module fixture), and a copy of it calibrated with a novelty
check; each is exported once per format.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import graft
from conftest import isolated_env, make_photo, make_photo_folder
from graft.backbones.preprocess import RECIPE, Preprocessing
from graft.use.calibrate import calibrate_run
from graft.data.images import read_image
from graft.errors import GraftError
from graft.cli.export import add_parser
from graft.use.export import export_run, metadata_path, read_onnx_metadata
from graft.use.inference import UNKNOWN, predict_with_reject
from graft.use.predictor import Predictor
from graft.run.store import load_run

TOL = 1e-4

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed: torch cannot write ONNX without it")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the exported files cannot be run")


def _probabilities(results, classes) -> np.ndarray:
    """graft.predict's results (top-k = all classes) as an (N, C) array in class order."""
    rows = []
    for r in results:
        p = {d["class"]: d["probability"] for d in r["predictions"]}
        rows.append([p[c] for c in classes])
    return np.array(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    photos = make_photo_folder(root / "photos", per_class=12, seed=11)
    rng = np.random.default_rng(4)
    odd = root / "odd"
    odd.mkdir()
    for i in range(2):  # photos of neither class, for the calibrated run's `unknown`
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(odd / f"noise{i}.png")
        make_photo(rng, "green").save(odd / f"green{i}.jpg")
    # taller and wider than the crop, odd margins, a transparent PNG: the resize and crop rounding matter
    make_photo(rng, "red", size=(517, 301)).save(root / "wide.jpg", quality=92)
    make_photo(rng, "blue", size=(263, 1001)).convert("RGBA").save(root / "tall.png")
    with isolated_env(root):
        plain = graft.train(photos, root / "run", strategy="head", cache_dir=root / "cache",
                            workers=0, progress=False).run_dir
        cal_dir = root / "calibrated"
        shutil.copytree(plain, cal_dir)
        calibrate_run(cal_dir, photos, target_accuracy=0.99, cache_dir=root / "cache", workers=0)
        paths = sorted(photos.rglob("*.jpg"))[::4] + [root / "wide.jpg", root / "tall.png"] + sorted(odd.iterdir())
        model = load_run(plain)
        predicted = graft.predict(plain, paths, topk=len(model.classes), workers=0)
        rejected = predict_with_reject(cal_dir, paths, topk=len(model.classes), reject="auto", workers=0)
    return types.SimpleNamespace(root=root, dir=plain, calibrated=cal_dir, paths=paths, classes=model.classes,
                                 pre=model.preprocessing, expected=_probabilities(predicted, model.classes),
                                 rejected=rejected)


def _crops(run) -> np.ndarray:
    return np.stack([run.pre.crop_array(read_image(p)) for p in run.paths])


@pytest.fixture(scope="module")
def exports(run):
    """{(run folder name, format): file}; the calibrated run's ONNX file goes elsewhere (--out)."""
    with isolated_env(run.root):
        return {("run", "onnx"): export_run(run.dir, "onnx"),
                ("run", "torchscript"): export_run(run.dir, "torchscript"),
                ("calibrated", "onnx"): export_run(run.calibrated, "onnx")}


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the files give graft's probabilities from the uint8 crop -----------------------------------

def test_onnx_takes_the_uint8_crop_and_gives_grafts_probabilities(run, exports):
    path = exports["run", "onnx"]
    assert path == run.dir / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch size
    assert [d.dim_value for d in dims[1:]] == [run.pre.size, run.pre.size, 3]  # NHWC
    assert [o.name for o in model.graph.output] == ["probabilities", "logits"]  # no calibration: no novelty
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    crops = _crops(run)
    probs, logits = sess.run(None, {"image": crops})
    assert probs.shape == run.expected.shape == (len(run.paths), 2)
    assert abs(probs - run.expected).max() < TOL
    z = logits - logits.max(1, keepdims=True)
    assert abs(np.exp(z) / np.exp(z).sum(1, keepdims=True) - probs).max() < 1e-6
    one = sess.run(["probabilities"], {"image": crops[:1]})[0]
    assert abs(one - run.expected[:1]).max() < TOL


def test_torchscript_takes_the_uint8_crop_and_gives_grafts_probabilities(run, exports):
    path = exports["run", "torchscript"]
    assert path == run.dir / "model.torchscript.pt"
    extra = {"graft.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), _extra_files=extra)
    with torch.no_grad():
        probs, logits = loaded(torch.from_numpy(_crops(run)))
    assert abs(probs.numpy() - run.expected).max() < TOL
    assert torch.allclose(probs.sum(1), torch.ones(len(run.paths)), atol=1e-5)  # probabilities, not logits
    doc = json.loads(extra["graft.json"])
    assert doc["classes"] == run.classes and doc["input"]["dtype"] == "uint8"


# --- everything a client needs is in the file --------------------------------------------------

def test_onnx_metadata_holds_classes_preprocessing_and_calibration(run, exports):
    meta = read_onnx_metadata(exports["run", "onnx"])
    run_meta = json.loads((run.dir / "model.json").read_text())
    assert meta["classes"] == run.classes == run_meta["classes"]
    assert meta["preprocessing"] == run_meta["preprocessing"] == json.loads(json.dumps(run.pre.to_json()))
    assert meta["preprocessing"]["recipe"] == RECIPE
    assert meta["input"]["shape"] == ["batch", run.pre.size, run.pre.size, 3] and meta["input"]["dtype"] == "uint8"
    assert meta["calibration"] is None  # this run was never calibrated
    # the same document beside the file, plus the files and the client
    doc = json.loads((run.dir / "export.json").read_text())
    assert {k: doc[k] for k in meta} == meta
    assert doc["model_sha256"] == _sha256(run.dir / "model.safetensors")
    files = doc["files"]  # both exports of the same model are listed, each with its digest
    assert set(files) == {"model.onnx", "model.torchscript.pt"}
    assert files["model.onnx"]["sha256"] == _sha256(exports["run", "onnx"]) and files["model.onnx"]["opset"] >= 17
    assert files["model.torchscript.pt"]["sha256"] == _sha256(exports["run", "torchscript"])
    assert doc["client"] == {"file": "predict_onnx.py", "sha256": _sha256(run.dir / "predict_onnx.py")}
    assert not list(run.dir.glob(".tmp-*"))  # atomic writes leave no temp files

    cal_file = exports["calibrated", "onnx"]
    cal = json.loads((run.calibrated / "calibration.json").read_text())
    meta = read_onnx_metadata(cal_file)
    assert meta["classes"] == run.classes and meta["preprocessing"] == run_meta["preprocessing"]
    assert meta["calibration"]["temperature"] == cal["temperature"] != 1.0
    assert meta["calibration"]["threshold"] == cal["threshold"]
    assert meta["calibration"]["novelty"] == {"threshold": cal["novelty"]["threshold"], "k": cal["novelty"]["k"]}
    assert meta["calibration"]["sha256"] == _sha256(run.calibrated / "calibration.json")
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "logits", "novelty"]


def test_calibrated_export_gives_grafts_novelty_and_unknowns(run, exports):
    sess = ort.InferenceSession(str(exports["calibrated", "onnx"]), providers=["CPUExecutionProvider"])
    probs, logits, novelty = sess.run(None, {"image": _crops(run)})
    assert abs(probs - run.expected).max() < TOL  # the same network as the plain run
    graft_novelty = np.array([r["novelty"] for r in run.rejected])
    assert abs(novelty - graft_novelty).max() < TOL
    assert any(r["class"] == UNKNOWN for r in run.rejected)  # the odd photos exercise the reject rule


# --- the reference client ------------------------------------------------------------------------

def _client(model_file, photos, top=2) -> list[tuple[str, list[tuple[str, float]]]]:
    out = subprocess.run([sys.executable, str(model_file.parent / "predict_onnx.py"), str(model_file),
                          *map(str, photos), "--top", str(top)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answers = []
    for line, photo in zip(out.stdout.splitlines(), photos, strict=True):
        m = re.fullmatch(rf"{re.escape(str(photo))}: (\S+)  (.*)", line)
        assert m, line
        pairs = m.group(2).split("  ")
        answers.append((m.group(1), [(c, float(p)) for c, p in (s.rsplit(" ", 1) for s in pairs)]))
    return answers


def test_reference_client_prints_grafts_answer(run, exports):
    picked = [0, len(run.paths) - 6, len(run.paths) - 5]  # a training-folder photo, wide.jpg, tall.png
    for (label, ranked), i in zip(_client(run.dir / "model.onnx", [run.paths[i] for i in picked]), picked):
        top = int(np.argmax(run.expected[i]))
        assert label == ranked[0][0] == run.classes[top]
        assert abs(ranked[0][1] - run.expected[i, top]) < TOL
        assert len(ranked) == 2


def test_reference_client_rejects_as_graft_predict_reject_auto(run, exports):
    cal_file = exports["calibrated", "onnx"]
    answers = _client(cal_file, run.paths, top=1)
    for (label, ranked), r in zip(answers, run.rejected):
        assert label == r["class"], (r, label)  # `unknown` exactly where graft says it
        assert ranked[0][0] == r["predictions"][0]["class"]
        assert abs(ranked[0][1] - r["predictions"][0]["probability"]) < TOL  # temperature-scaled


def test_client_written_by_someone_else_is_left_alone(run, exports, tmp_path, caplog):
    mine = tmp_path / "predict_onnx.py"
    mine.write_text("print('my own client')\n")
    with isolated_env(run.root), caplog.at_level(logging.WARNING, logger="graft"):
        out = export_run(run.dir, "onnx", tmp_path / "m.onnx")
    assert mine.read_text() == "print('my own client')\n"
    assert "not written by graft" in caplog.text
    sidecar = json.loads(metadata_path(run.dir, out).read_text())
    assert sidecar["client"] is None and sidecar["files"]["m.onnx"]["sha256"] == _sha256(out)
    mine.unlink()  # gone: the next export writes graft's client there
    with isolated_env(run.root):
        export_run(run.dir, "onnx", tmp_path / "m.onnx")
    assert mine.read_bytes() == (run.dir / "predict_onnx.py").read_bytes()


def test_stale_calibration_is_not_exported(run, tmp_path, caplog):
    stale = tmp_path / "stale"
    shutil.copytree(run.calibrated, stale)
    cal = json.loads((stale / "calibration.json").read_text())
    cal["model_sha256"] = "0" * 64  # as if the run had been retrained since
    (stale / "calibration.json").write_text(json.dumps(cal))
    with isolated_env(run.root), caplog.at_level(logging.WARNING, logger="graft"):
        out = export_run(stale, "torchscript")
    assert "without the 'unknown' thresholds" in caplog.text and "retrained" in caplog.text
    assert json.loads((stale / "export.json").read_text())["calibration"] is None
    assert out.is_file()


# --- graft predict / graft.Predictor run a fresh export, without torch -------------------------------

def test_predictor_runs_a_fresh_onnx_export_with_the_torch_engines_answers(run, exports):
    k, unknowns = len(run.classes), {}
    for folder, reject in ((run.dir, None), (run.calibrated, "auto"), (run.calibrated, 0.9)):
        fast, slow = Predictor(folder), Predictor(folder, engine="torch")
        assert (fast.engine.name, fast.describe()["engine"], slow.engine.name) == ("onnx", "onnx", "torch")
        got, want = fast.predict(run.paths, topk=k, reject=reject), slow.predict(run.paths, topk=k, reject=reject)
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys() and g.get("class") == w.get("class"), (g, w)
            assert [p["class"] for p in g["predictions"]] == [p["class"] for p in w["predictions"]]
            assert max(abs(p["probability"] - q["probability"]) for p, q in zip(g["predictions"], w["predictions"])) <= 1e-5
            assert abs(g.get("novelty", 0) - w.get("novelty", 0)) <= 1e-5
        unknowns[reject] = sum(r.get("class") == UNKNOWN for r in got)
    assert unknowns["auto"] > 0  # the odd photos: rejected by both engines


def test_graft_predict_on_an_exported_run_imports_no_torch(run, exports):
    """The CLI's predict, in a fresh interpreter, answers from the ONNX export and never loads
    torch or timm (which is most of a cold start)."""
    code = ("import json, sys; from graft.cli import main; rc = main(sys.argv[1:]); "
            "print(json.dumps({'rc': rc, 'loaded': [m for m in ('torch', 'timm') if m in sys.modules]}), file=sys.stderr)")
    photos = [str(p) for p in run.paths[-6:-4]]
    out = subprocess.run([sys.executable, "-c", code, "predict", str(run.calibrated), *photos, "--json", "-k", "2",
                          "--reject", "auto"], capture_output=True, text=True, timeout=300)
    assert json.loads(out.stderr.strip().splitlines()[-1]) == {"rc": 0, "loaded": []}, out.stderr
    got = json.loads(out.stdout)
    for g, w in zip(got, run.rejected[-6:-4], strict=True):
        assert g["path"] == w["path"] and g["class"] == w["class"]
        assert abs(g["predictions"][0]["probability"] - w["predictions"][0]["probability"]) <= 1e-5


def test_a_stale_export_is_not_run(run, exports, tmp_path):
    """An export that no longer is the run's model or calibration is passed over (auto) or
    refused (engine="onnx"), with the reason."""
    def copy(name):
        folder = tmp_path / name
        shutil.copytree(run.calibrated, folder)
        return folder

    changed = copy("changed")
    with open(changed / "model.onnx", "ab") as f:
        f.write(b"\0")
    recalibrated = copy("recalibrated")  # the same thresholds written again: another calibration file
    cal = json.loads((recalibrated / "calibration.json").read_text())
    (recalibrated / "calibration.json").write_text(json.dumps(cal, indent=1))
    retrained = copy("retrained")
    doc = json.loads((retrained / "export.json").read_text())
    doc["model_sha256"] = "0" * 64
    (retrained / "export.json").write_text(json.dumps(doc))
    for folder, why in ((changed, "changed since graft wrote it"), (recalibrated, "calibration changed"),
                        (retrained, "retrained")):
        p = Predictor(folder)
        assert p.engine.name == "torch" and why in p.engine_reason, (folder, p.engine_reason)
        with pytest.raises(GraftError, match=why):
            Predictor(folder, engine="onnx")


def test_training_over_a_run_removes_its_stale_exports_and_calibration(run, exports, tmp_path, caplog):
    target = tmp_path / "run"
    shutil.copytree(run.calibrated, target)
    (target / "notes.txt").write_text("mine")
    doc = json.loads((target / "export.json").read_text())
    made = {*doc["files"], "export.json", "calibration.json", "calibration.safetensors"}
    client = target / doc["client"]["file"]
    with open(client, "a") as f:  # edited by its user since: no longer graft's file, so it stays
        f.write("# my change\n")
    assert made <= {p.name for p in target.iterdir()} and Predictor(target).engine.name == "onnx"
    with isolated_env(run.root), caplog.at_level(logging.WARNING, logger="graft"):
        graft.train(run.root / "photos", target, strategy="head", cache_dir=run.root / "cache", seed=1,
                    workers=0, progress=False, report=False)
    assert not made & {p.name for p in target.iterdir()}
    assert (target / "notes.txt").read_text() == "mine" and client.read_text().endswith("# my change\n")
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert len(said) == 1 and all(name in said[0] for name in made), said
    assert Predictor(target).engine.name == "torch"
    with pytest.raises(GraftError, match="no calibration"):
        Predictor(target).predict(run.paths[0], reject="auto")


# --- graft's evaluation preprocessing is the standard recipe -------------------------------------

def _torchvision(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    resized = F.resize(img, [pre.resize], InterpolationMode(pre.interpolation), antialias=True)
    return np.array(F.center_crop(resized, [pre.size]))


@pytest.mark.parametrize("pre", [Preprocessing(224, 256, "bicubic"), Preprocessing(240, 274, "bilinear"),
                                 Preprocessing(224, 224, "bicubic")])
def test_eval_preprocessing_is_torchvisions_resize_and_center_crop(pre):
    rng = np.random.default_rng(7)
    # odd and even margins, portrait and landscape, long sides that torchvision truncates, a square,
    # and images smaller than the crop (padded)
    sizes = [(640, 480), (480, 640), (517, 301), (301, 517), (263, 1001), (1000, 999), (256, 256),
             (333, 250), (97, 131), (2000, 257)]
    for w, h in sizes:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        got = pre.crop_array(img)
        assert got.shape == (pre.size, pre.size, 3)
        assert np.array_equal(got, _torchvision(img, pre)), (w, h)
        assert torch.equal(pre.crop(img), torch.from_numpy(got).permute(2, 0, 1))


def test_a_very_thin_image_is_cropped_without_the_full_resize():
    """20000x60 would resize to 85333x256: only the crop's region is resized, within a level."""
    pre = Preprocessing()
    img = make_photo(np.random.default_rng(1), "red", size=(20000, 60))
    got = pre.crop_array(img).astype(int)
    ref = _torchvision(img, pre).astype(int)
    assert got.shape == ref.shape == (224, 224, 3)
    assert abs(got - ref).max() <= 1 and abs(got - ref).mean() < 0.01


def test_eval_preprocessing_decodes_the_whole_jpeg(tmp_path):
    """A JPEG big enough for a reduced (draft) decode is still read in full, with its EXIF turn."""
    pre = Preprocessing()
    rng = np.random.default_rng(3)
    img = make_photo(rng, "red", size=(1200, 900))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "big.jpg", quality=90, exif=exif)
    full = ImageOps.exif_transpose(Image.open(tmp_path / "big.jpg")).convert("RGB")
    assert full.size == (900, 1200)
    assert torch.equal(pre.load(tmp_path / "big.jpg"), torch.from_numpy(_torchvision(full, pre)).permute(2, 0, 1))


def test_the_recipe_is_in_the_feature_cache_key():
    """Features computed from the pixels of an earlier recipe are never reused."""
    from graft.cache import FeatureCache

    pre = Preprocessing()
    assert pre.to_json()["recipe"] == RECIPE >= 2 and Preprocessing.from_json(pre.to_json()) == pre
    old = {k: v for k, v in pre.to_json().items() if k != "recipe"}  # what recipe 1 wrote
    ns = {"arch": "a", "weights_digest": "d", "point": "pooled"}
    assert FeatureCache("/nonexistent", {**ns, "preprocessing": old}).key != \
        FeatureCache("/nonexistent", {**ns, "preprocessing": pre.to_json()}).key
    assert Preprocessing.from_json(old).to_json() == pre.to_json()  # an old run now gets the new recipe


# --- errors and the command line -------------------------------------------------------------------

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
    assert callable(args.main)
    with pytest.raises(SystemExit):
        parser.parse_args(["export", str(run.dir), "--format", "tflite"])
    assert metadata_path(run.dir, run.dir / "model.onnx") == run.dir / "export.json"
    assert metadata_path(run.dir, tmp_path / "m.onnx") == tmp_path / "m.onnx.json"
