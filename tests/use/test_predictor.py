"""graft.use.predictor.Predictor: one load, any input kind, the same answers as graft.predict.

A photo given as a path, as its encoded bytes, as a PIL image and as a numpy array reaches the
network as the very same uint8 crop; lists answer like one-by-one calls; unusable inputs come
back as error entries; threads sharing one Predictor get the serial answers.
"""

from __future__ import annotations

import io
import shutil
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

import graft
from conftest import count_backbone_forwards, make_photo
from graft.data.images import read_image
from graft.errors import GraftError
from graft.use.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor(trained_run.run)


@pytest.fixture(scope="module")
def photos(trained_run, tmp_path_factory):
    """Two of the run's small JPEGs (no resize-on-decode shortcut applies) and a large PNG, which
    exercises the shorter-side resize of the evaluation preprocessing."""
    big = tmp_path_factory.mktemp("big") / "big-red.png"
    make_photo(np.random.default_rng(3), "red", size=(700, 520)).save(big)
    return [trained_run.photos / "red" / "red000.jpg", trained_run.photos / "blue" / "blue003.jpg", big]


def strip_key(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("path", "input")}


def as_bytes(path) -> bytes:
    return path.read_bytes()


def as_pil(path) -> Image.Image:
    return Image.open(path)


def as_array(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_every_input_kind_is_the_same_crop_and_answer(predictor, photos, trained_run):
    reference = graft.predict(trained_run.run, photos)
    for path, ref in zip(photos, reference):
        crop = predictor.prepare(path)
        side = predictor.preprocessing.size  # the run's backbone's square (240 for the default lite1)
        assert crop.dtype == np.uint8 and crop.shape == (side, side, 3)
        assert np.array_equal(crop, predictor.preprocessing.crop(read_image(path)).permute(1, 2, 0).numpy())
        for convert in (str, as_bytes, as_pil, as_array):
            assert np.array_equal(predictor.prepare(convert(path)), crop), convert.__name__
            r = predictor.predict(convert(path))
            assert strip_key(r) == strip_key(ref), convert.__name__
        assert predictor.predict(path) == ref  # a path answers with its "path", as graft.predict


def test_a_sideways_photo_is_turned_upright_whatever_the_input_kind(predictor, tmp_path):
    """EXIF orientation has one home (graft.data.images.upright): a file, its bytes and the PIL
    image opened from it all give the crop of the photo as displayed, not as stored."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display needs a 90 degree clockwise turn
    path = tmp_path / "sideways.jpg"
    make_photo(np.random.default_rng(8), "red", size=(320, 200)).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # an array carries no EXIF
        stored = np.asarray(im.convert("RGB"))
    crop = predictor.prepare(shown)
    for convert in (str, as_bytes, as_pil):
        assert np.array_equal(predictor.prepare(convert(path)), crop), convert.__name__
    assert not np.array_equal(predictor.prepare(stored), crop)


def test_a_list_answers_like_one_call_per_input(predictor, photos):
    inputs = [photos[0], as_bytes(photos[1]), as_pil(photos[2]), as_array(photos[0]), str(photos[1])]
    batched = predictor.predict(inputs, topk=2)
    assert [r.get("path", r.get("input")) for r in batched] == [str(photos[0]), 1, 2, 3, str(photos[1])]
    for x, b in zip(inputs, batched):
        one = predictor.predict(x, topk=2)
        assert [p["class"] for p in one["predictions"]] == [p["class"] for p in b["predictions"]]
        for p, q in zip(one["predictions"], b["predictions"]):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-5)
    named = predictor.predict([as_bytes(photos[0])], names=["upload.jpg"])
    assert named[0]["input"] == "upload.jpg"
    assert predictor.predict(photos[0])["predictions"][0]["class"] == "red"
    assert predictor.predict(photos[1])["predictions"][0]["class"] == "blue"


def test_unusable_inputs_are_error_entries_not_exceptions(predictor, photos):
    good = as_bytes(photos[0])
    png = io.BytesIO()
    make_photo(np.random.default_rng(0), "blue", size=(300, 200)).save(png, format="PNG")
    out = predictor.predict([b"this is not an image", good, b"", png.getvalue()[:400],
                             np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
    assert "not an image" in out[0]["error"] and "predictions" not in out[0]
    assert out[1]["predictions"][0]["class"] == "red"
    assert "empty" in out[2]["error"]
    assert "truncated" in out[3]["error"] or "damaged" in out[3]["error"]
    assert "HxWx3 uint8" in out[4]["error"] and "HxWx3 uint8" in out[5]["error"]
    assert all(set(r) == {"input", "error"} for i, r in enumerate(out) if i != 1)
    missing = predictor.predict(photos[0].parent / "no-such.jpg")
    assert set(missing) == {"path", "error"} and "cannot read" in missing["error"]
    with pytest.raises(TypeError, match="not int"):
        predictor.predict([good, 42])


def test_threads_sharing_one_predictor_get_the_serial_answers(predictor, photos):
    work = [[photos[i % 3], as_bytes(photos[(i + 1) % 3]), as_array(photos[(i + 2) % 3])] for i in range(6)]
    serial = [predictor.predict(w) for w in work]
    got: dict[int, list] = {}
    errors = []
    start = threading.Barrier(len(work))

    def client(i):
        try:
            start.wait()
            for _ in range(3):
                got.setdefault(i, []).append(predictor.predict(work[i]))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for i in range(len(work)):
        assert got[i] == [serial[i]] * 3


def test_reject_as_graft_predict_reject(trained_run, photos, tmp_path):
    from graft.use.calibrate import calibrate_run
    from graft.use.inference import predict_with_reject

    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)  # calibration writes into the run: not the shared one
    with pytest.raises(GraftError, match="graft calibrate"):
        Predictor(run).predict(photos[0], reject="auto")
    sure = Predictor(run).predict(photos[:2], reject=1.0)  # nothing reaches probability 1
    assert [r["class"] for r in sure] == ["unknown", "unknown"] and all("low confidence" in r["reason"] for r in sure)
    calibrate_run(run, trained_run.photos, cache_dir=trained_run.cache, workers=0)
    p = Predictor(run)
    for reject in ("auto", 0.75, "none"):
        # `graft predict --reject none` is plain graft.predict (no "class"/"confidence")
        want = graft.predict(run, photos) if reject == "none" else predict_with_reject(run, photos, reject=reject,
                                                                                      workers=0)
        got = p.predict(photos, reject=reject)
        assert got == want
        from_bytes = p.predict([as_bytes(x) for x in photos], reject=reject)
        assert [strip_key(r) for r in from_bytes] == [strip_key(r) for r in want]
    assert p.predict(photos[0], reject="auto")["novelty"] >= 0
    noise = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    odd = p.predict(noise, reject="auto")
    assert odd["class"] == "unknown" and "unlike the training photos" in odd["reason"]
    assert p.describe()["calibration"]["temperature"] == pytest.approx(p.calibration["temperature"])


def test_cached_features_skip_the_backbone(trained_run, photos, predictor):
    cached = Predictor(trained_run.run, cache_dir=trained_run.cache)
    train_photos = sorted((trained_run.photos / "red").glob("*.jpg"))[:4]
    with count_backbone_forwards() as calls:
        got = cached.predict(train_photos + [as_bytes(train_photos[0])])
    assert calls == []
    for g, w in zip(got, predictor.predict(train_photos + [as_bytes(train_photos[0])])):
        assert g.keys() == w.keys()
        assert [p["class"] for p in g["predictions"]] == [p["class"] for p in w["predictions"]]
        for a, b in zip(g["predictions"], w["predictions"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    with count_backbone_forwards() as calls:  # a photo the cache has not seen runs the network
        cached.predict(photos[2])
    assert len(calls) == 1


def test_model_card(predictor, trained_run):
    card = predictor.describe()
    assert card["classes"] == ["blue", "red"]
    assert card["val_accuracy"] == trained_run.metrics["val_accuracy"]
    assert card["backbone"]["spec"] == "default" and card["calibration"] is None
    assert card["engine"] == "torch" and predictor.engine_reason.startswith("no model.onnx")  # never exported


# --- test-time augmentation ----------------------------------------------------------------------

def test_tta_flip_averages_a_photo_and_its_mirror(trained_run):
    """With tta="flip" a photo and its mirror image get the same logits (the mean of the two
    crops', in either order), which are the mean of what each gets without it; without it they
    differ. The photo is a square of the side the preprocessing resizes to, with an even margin,
    so the centre crop of its mirror is exactly the mirror of its centre crop."""
    plain = Predictor(trained_run.run, engine="torch")
    tta = Predictor(trained_run.run, engine="torch", tta="flip")
    pre = plain.preprocessing
    assert (pre.resize - pre.size) % 2 == 0
    img = np.asarray(make_photo(np.random.default_rng(8), "red", size=(pre.resize, pre.resize)))
    mirror = np.ascontiguousarray(img[:, ::-1])
    (a, _), (b, _) = (plain.forward(plain.prepare(x)[None]) for x in (img, mirror))
    assert np.abs(a - b).max() > 1e-3  # the network is not mirror-symmetric
    (ta, _), (tb, _) = (tta.forward(tta.prepare(x)[None]) for x in (img, mirror))
    np.testing.assert_allclose(ta, tb, atol=1e-5)
    np.testing.assert_allclose(ta, (a + b) / 2, atol=1e-5)
    z = (a + b)[0] / 2
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    top = tta.predict(img, topk=1)["predictions"][0]
    assert top["class"] == plain.classes[int(p.argmax())] and top["probability"] == pytest.approx(p.max(), abs=1e-5)
    assert tta.describe()["tta"] == "flip" and plain.describe()["tta"] == "none"
    with pytest.raises(GraftError, match="--tta takes none, flip, crops"):
        Predictor(trained_run.run, tta="zoom")


def test_tta_crops_are_torchvisions_five_crops_and_their_logits_averaged(trained_run):
    """The five crops are torchvision's FiveCrop of the resized photo (centre first), and
    tta="crops" answers with the mean of the five crops' logits; the novelty is the centre's."""
    from torchvision.transforms.v2 import functional as TF

    from graft.backbones.preprocess import FIVE_CROPS

    plain = Predictor(trained_run.run, engine="torch")
    five = Predictor(trained_run.run, engine="torch", tta="crops")
    pre = plain.preprocessing
    img = make_photo(np.random.default_rng(9), "blue", size=(150, 110))
    resized = TF.resize(img, pre.resize, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    tl, tr, bl, br, centre = (np.asarray(c) for c in TF.five_crop(resized, pre.size))
    stacked = five.prepare(img)
    assert stacked.shape == (5 * pre.size, pre.size, 3)
    views = stacked.reshape(5, pre.size, pre.size, 3)
    for got, want in zip(views, (centre, tl, tr, bl, br)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(views[0], plain.prepare(img))
    each = [plain.forward(v[None])[0] for v in views]
    assert max(np.abs(e - each[0]).max() for e in each) > 1e-3  # the crops do see different things
    got, _ = five.forward(np.stack([stacked, stacked[::-1].copy()]))  # a batch of two inputs stays apart
    np.testing.assert_allclose(got[0], np.mean(each, axis=0)[0], atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-4
    assert len(FIVE_CROPS) == 5 and five.describe()["tta"] == "crops"


def test_evaluate_with_tta_crops_agrees_with_the_predictor(trained_run):
    kw = dict(cache_dir=trained_run.cache, workers=0)
    first = graft.evaluate(trained_run.run, trained_run.photos, tta="crops", **kw)
    with count_backbone_forwards() as calls:
        again = graft.evaluate(trained_run.run, trained_run.photos, tta="crops", **kw)
    assert not calls and again == first and first["tta"] == "crops"  # the corners' features were cached
    from graft.data import scan_class_folders

    _, samples, _ = scan_class_folders(trained_run.photos, cache_dir=trained_run.cache)
    answers = Predictor(trained_run.run, engine="torch", tta="crops").predict([s.path for s in samples], topk=1)
    classes = trained_run.metrics["classes"]
    right = [classes.index(r["predictions"][0]["class"]) == s.label for r, s in zip(answers, samples)]
    assert first["n"] == len(samples) and first["accuracy"] == pytest.approx(np.mean(right))


def test_evaluate_with_tta_flip_caches_the_mirrors_and_agrees_with_the_predictor(trained_run, capsys):
    import argparse
    import json

    from graft.cli import evaluate as evaluate_cli
    from graft.data import scan_class_folders
    from graft.use.features import run_features

    kw = dict(cache_dir=trained_run.cache, workers=0)
    first = graft.evaluate(trained_run.run, trained_run.photos, tta="flip", **kw)
    with count_backbone_forwards() as calls:
        again = graft.evaluate(trained_run.run, trained_run.photos, tta="flip", **kw)
    assert not calls and again == first and first["tta"] == "flip"  # the mirrors' features were cached
    _, samples, _ = scan_class_folders(trained_run.photos, cache_dir=trained_run.cache)
    plain, _, _, _ = run_features(trained_run.run, samples, **kw)
    mirrored, _, _, _ = run_features(trained_run.run, samples, mirror=True, **kw)
    assert np.abs(plain - mirrored).max() > 1e-3  # cached apart: never the plain crops' features
    answers = Predictor(trained_run.run, engine="torch", tta="flip").predict([s.path for s in samples], topk=1)
    classes = trained_run.metrics["classes"]
    right = [classes.index(r["predictions"][0]["class"]) == s.label for r, s in zip(answers, samples)]
    assert first["n"] == len(samples) and first["accuracy"] == pytest.approx(np.mean(right))
    parser = argparse.ArgumentParser(prog="graft")
    evaluate_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", str(trained_run.run), str(trained_run.photos), "--tta", "flip", "--json",
                              "--cache-dir", str(trained_run.cache), "--workers", "0"])
    assert args.main(args) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == first["accuracy"]


def test_predict_cli_takes_tta(trained_run, capsys, monkeypatch):
    import argparse
    import json

    from graft.cli import predict as predict_cli

    seen = []
    init = Predictor.__init__

    def spy(self, *a, **kw):
        init(self, *a, **kw)
        seen.append(self.tta)

    monkeypatch.setattr(Predictor, "__init__", spy)
    parser = argparse.ArgumentParser(prog="graft")
    predict_cli.add_parser(parser.add_subparsers(dest="command"))
    photo = trained_run.photos / "red" / "red001.jpg"
    for extra in ([], ["--reject", "0.5"]):
        args = parser.parse_args(["predict", str(trained_run.run), str(photo), "--tta", "flip", "--json",
                                  "--workers", "0", *extra])
        assert args.main(args) == 0
        (printed,) = json.loads(capsys.readouterr().out)
        want = Predictor(trained_run.run, engine="torch", tta="flip").predict(photo)
        assert [p["class"] for p in printed["predictions"]] == [p["class"] for p in want["predictions"]]
        assert printed["predictions"][0]["probability"] == pytest.approx(want["predictions"][0]["probability"], abs=1e-5)
    assert seen == ["flip"] * 4  # the CLI's Predictor and the reference one, twice
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", str(trained_run.run), str(photo), "--tta", "zoom"])


def test_a_plain_corner_does_not_drop_a_real_photo_from_tta_crops(trained_run, tmp_path):
    """Only the centre crop is judged for placeholders: a wide photo whose left side is a white
    wall keeps its place in `evaluate --tta crops`, as the Predictor answers for it."""
    rng = np.random.default_rng(21)
    img = np.full((300, 900, 3), 255, np.uint8)
    img[:, 450:] = rng.integers(0, 256, (300, 450, 3), dtype=np.uint8)
    for c in trained_run.metrics["classes"]:
        (tmp_path / "photos" / c).mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "photos" / c / "wide.png")
    m = graft.evaluate(trained_run.run, tmp_path / "photos", cache_dir=tmp_path / "cache", workers=0, tta="crops")
    assert m["n"] == 2 and m["skipped"] == []
    assert Predictor(trained_run.run, engine="torch", tta="crops").predict(img)["predictions"]


def test_a_run_keeps_its_own_crops_when_its_backbones_configuration_changed(trained_run, tmp_path):
    """A timm or torchvision upgrade may change a network's pretrained crop settings with the
    same weights: the run's recorded preprocessing stays what its photos are cropped by."""
    import json

    from graft.backbones.preprocess import Preprocessing
    from graft.run.record import RunRecord, content_digest
    from graft.run.store import run_backbone_source

    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["preprocessing"]["resize"] += 8  # as if trained under another version's configuration
    meta["record_sha256"] = content_digest(meta)  # as graft would have recorded it then: no edit
    (run / "model.json").write_text(json.dumps(meta))
    recorded = Preprocessing.from_json(meta["preprocessing"])
    record = RunRecord.from_json(meta)
    source = run_backbone_source(record.backbone, record.preprocessing)
    assert source.preprocessing == recorded and source.build().preprocessing == recorded
    predictor = Predictor(run, engine="torch")
    assert predictor.preprocessing == recorded and predictor.engine.model.preprocessing == recorded
    photo = trained_run.photos / "red" / "red001.jpg"
    assert predictor.predict(photo)["predictions"]


def test_a_run_recorded_as_default_when_default_was_lite0_is_found_by_its_architecture():
    from graft.backbones import resolve_backbone
    from graft.run.record import BackboneRecord
    from graft.run.store import run_backbone_source

    lite0 = resolve_backbone("lite0")
    recorded = BackboneRecord(spec="default", arch=lite0.arch, weights_source=lite0.weights.source,
                              weights_digest=lite0.weights.digest)
    source = run_backbone_source(recorded, lite0.preprocessing)
    assert source.arch == lite0.arch and source.weights.digest == lite0.weights.digest
