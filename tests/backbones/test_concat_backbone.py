"""A concatenated backbone (`--backbone lite0+lite1`) end to end: the tiled crop that carries
each part's centre crop, training on the parts' cached features, and a run that predicts,
exports, serves its ONNX client and calibrates with the very features it was trained on."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import graft
from conftest import isolated_env, make_split_folder
from graft.backbones.preprocess import Preprocessing, Tiled
from graft.errors import GraftError

SMALL, LARGE = Preprocessing(4, 6), Preprocessing(8, 10, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))


def photo(w=37, h=23, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_each_tile_is_its_parts_own_crop_centred_on_one_canvas():
    pre = Tiled((SMALL, LARGE))
    img = photo()
    canvas = pre.crop_array(img)
    assert canvas.shape == (12, 8, 3) and pre.shape == (12, 8) and pre.size == 8
    np.testing.assert_array_equal(canvas[0:4, 2:6], SMALL.crop_array(img))
    np.testing.assert_array_equal(canvas[4:12], LARGE.crop_array(img))
    assert not canvas[0:4, :2].any() and not canvas[0:4, 6:].any()  # zero beside the narrow tile
    # mirroring the canvas mirrors every tile in place: what --tta flip does to a concatenated run
    flipped = torch.from_numpy(canvas[:, ::-1].copy()).permute(2, 0, 1)[None]
    for tile, part in zip(pre.split(flipped), (SMALL, LARGE)):
        np.testing.assert_array_equal(tile[0].permute(1, 2, 0).numpy(), part.crop_array(img)[:, ::-1])
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None]
    got = pre.normalize(x.clone())
    for tile, part in zip(pre.split(got), (SMALL, LARGE)):
        alone = part.normalize(torch.from_numpy(part.crop_array(img)).permute(2, 0, 1)[None])
        torch.testing.assert_close(tile, alone, rtol=0, atol=0)
    assert Preprocessing.from_json(json.loads(json.dumps(pre.to_json()))) == pre
    assert torch.equal(pre.crop(img), x[0])


def test_tiles_of_both_parities_are_refused_in_one_line():
    with pytest.raises(GraftError) as e:
        Tiled((SMALL, Preprocessing(5, 6)))
    assert "even or all odd" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def concat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("concat")
    photos = root / "photos"
    make_split_folder(photos, train=6, val=3, seed=51)
    with isolated_env(root):
        result = graft.train(photos, root / "run", backbone="lite0+lite1", cache_dir=root / "cache",
                             workers=0, progress=False, report=False)
        yield root, photos, result.metrics


def test_a_concatenated_run_trains_the_head_and_records_its_parts(concat_run):
    root, photos, m = concat_run
    assert m["strategy"] == "head" and "concatenates frozen features" in m["strategy_reason"]
    meta = json.loads((root / "run" / "model.json").read_text())
    assert meta["backbone"]["spec"] == "lite0+lite1" and not meta["backbone"]["stored"]
    assert [p["spec"] for p in meta["backbone"]["parts"]] == ["lite0", "lite1"]
    assert [t["size"] for t in meta["preprocessing"]["tiles"]] == [224, 240]
    assert meta["head"]["in_features"] == 2560
    # the parts' features are in their own namespaces: a lite1 run on these photos computes nothing
    with isolated_env(root):
        again = graft.train(photos, root / "run-lite1", backbone="lite1", cache_dir=root / "cache",
                            workers=0, progress=False, report=False).metrics
    assert again["cache"]["misses"] == 0


def test_predict_time_features_are_the_trained_ones_on_every_engine(concat_run):
    """The Predictor's tiled crop through the concatenated network (torch), the ONNX export and
    the standalone client all give the probabilities of the head on the cached features."""
    from graft.use.export import export_run
    from graft.backbones import resolve_backbone
    from graft.features.concat import JoinedCache, source_features
    from graft.use.predictor import Predictor
    from graft.run.photos import photos_split
    from graft.run.store import load_head, read_record

    root, photos, m = concat_run
    run = root / "run"
    data = photos_split(read_record(run), photos)
    source = resolve_backbone("lite0+lite1")
    feats, ok, _ = source_features(source, data.val, JoinedCache(source.parts, root / "cache"), workers=0,
                                   progress=False)
    assert ok.all()
    with torch.inference_mode():
        expected = load_head(run)(torch.from_numpy(feats)).softmax(1).numpy()
    paths = [s.path for s in data.val]
    torch_p = Predictor(run, engine="torch").predict(paths, topk=2)
    export_run(run, "onnx")
    onnx_pred = Predictor(run)
    assert onnx_pred.engine.name == "onnx"
    onnx_p = onnx_pred.predict(paths, topk=2)
    classes = read_record(run).classes
    for answers in (torch_p, onnx_p):
        got = np.array([[{p["class"]: p["probability"] for p in a["predictions"]}[c] for c in classes]
                        for a in answers])
        np.testing.assert_allclose(got, expected, atol=2e-4)  # answers are rounded to 6 places
    out = subprocess.run([sys.executable, str(run / "predict_onnx.py"), str(run / "model.onnx"), str(paths[0])],
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == onnx_p[0]["predictions"][0]["class"]
    flipped = Predictor(run, tta="flip").predict(paths[:2])
    assert all(a["predictions"] for a in flipped)


def test_a_predictor_with_the_cache_answers_extracted_photos_without_the_networks(concat_run):
    from conftest import count_backbone_forwards
    from graft.use.predictor import Predictor

    root, photos, _ = concat_run
    paths = sorted((photos / "val").rglob("*.jpg"))
    plain = Predictor(root / "run", engine="torch").predict(paths, topk=2)
    cached = Predictor(root / "run", engine="torch", cache_dir=root / "cache")
    with count_backbone_forwards() as calls:
        got = cached.predict(paths, topk=2)
    assert calls == []  # every val photo's parts were extracted by training
    for a, b in zip(plain, got):
        assert a["predictions"][0]["class"] == b["predictions"][0]["class"]
        assert a["predictions"][0]["probability"] == pytest.approx(b["predictions"][0]["probability"], abs=2e-4)
    new = photos.parent / "new.jpg"
    Image.open(paths[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new)
    with count_backbone_forwards() as calls:
        (answer,) = cached.predict([new])
    assert calls and answer["predictions"]  # a photo no part has seen goes through the networks


def test_evaluate_reads_the_parts_caches_and_reports_what_training_reported(concat_run):
    root, photos, m = concat_run
    ev = graft.evaluate(root / "run", photos, cache_dir=root / "cache")
    assert ev["accuracy"] == pytest.approx(m["val_accuracy"])


@pytest.mark.parametrize("settings, words", [
    ({"strategy": "partial"}, "--strategy head"),
    ({"strategy": "full"}, "--strategy head"),
    ({"aug_views": 2}, "single backbone"),
    ({"weights": "x.pth"}, "--weights"),
])
def test_what_a_concatenation_cannot_do_is_one_line_before_any_photo(tmp_path, photos, settings, words):
    with pytest.raises(GraftError) as e:
        graft.train(photos, tmp_path / "run", backbone="lite0+lite2", cache_dir=tmp_path / "cache",
                    progress=False, report=False, **settings)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_a_run_whose_parts_and_tiles_disagree_is_refused(concat_run, tmp_path):
    import shutil

    from graft.use.predictor import Predictor

    root, _, _ = concat_run
    invalid, unlike = "not a valid graft run", "tiles in model.json are not its parts'"
    for change, says in (("drop parts", invalid), ("drop a tile", invalid), ("odd tile", invalid),
                         ("nested tile", invalid), ("nested part", invalid), ("swap tiles", unlike)):
        run = tmp_path / change.replace(" ", "-")
        shutil.copytree(root / "run", run)
        meta = json.loads((run / "model.json").read_text())
        tiles, parts = meta["preprocessing"]["tiles"], meta["backbone"]["parts"]
        if change == "drop parts":
            del meta["backbone"]["parts"]
        elif change == "drop a tile":
            tiles.pop()
        elif change == "odd tile":
            tiles[0]["size"] = 223
        elif change == "nested tile":
            tiles[0]["tiles"] = [dict(tiles[0]), dict(tiles[1])]
        elif change == "nested part":
            parts[0]["spec"] = "lite0+lite2"
        else:  # same canvas (464 x 240), but each network would read the other's rows
            tiles.reverse()
        meta.pop("record_sha256", None)  # as an older graft wrote it: the shape checks must catch it
        (run / "model.json").write_text(json.dumps(meta))
        with pytest.raises(GraftError, match=says) as e:
            Predictor(run, engine="torch")
        assert "\n" not in str(e.value)


def test_auto_weighs_concatenations_only_for_runs_that_can_use_one(tmp_path):
    from graft.data import Dataset, Sample
    from graft.recipe.config import TrainConfig
    from graft.recipe.backbone_choice import concat_allowed

    def data(per_class):
        return Dataset(tmp_path, ["a", "b"], [Sample(tmp_path / f"{c}{i}.jpg", c, f"{c}{i}")
                                             for c in (0, 1) for i in range(per_class)], [])

    assert concat_allowed(TrainConfig(backbone="auto"), data(30))
    assert concat_allowed(TrainConfig(backbone="auto", strategy="head", aug_views=0), data(300))
    assert not concat_allowed(TrainConfig(backbone="auto"), data(300))  # auto may fine-tune there
    assert not concat_allowed(TrainConfig(backbone="auto", strategy="partial"), data(30))
    assert not concat_allowed(TrainConfig(backbone="auto", strategy="head", aug_views=2), data(30))


def test_odd_specs_and_tiles_are_one_line(concat_run):
    from graft.backbones import resolve_backbone
    from graft.run.record import record_problem

    with pytest.raises(GraftError, match="names one network twice"):
        resolve_backbone("default+lite1")  # default is lite1
    root, _, _ = concat_run
    meta = json.loads((root / "run" / "model.json").read_text())
    single = {**meta, "backbone": meta["backbone"]["parts"][0],
              "preprocessing": {**meta["preprocessing"]["tiles"][0], "tiles": None}}
    assert record_problem(single) == 'preprocessing "tiles" is not a list'
    del single["backbone"]["weights_source"]
    assert "weights_source" in record_problem(single)
