"""graft.calibrate: temperature scaling, the confidence threshold, and `unknown` for photos of
neither class (the lecture's Tigger / Misty / neither), end to end on generated photos.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import types

import numpy as np
import pytest
from PIL import Image

import graft
from conftest import isolated_env, make_photo, make_photo_folder
from graft.calibrate import accuracy_coverage_curve, calibrate_run, choose_threshold, fit_temperature
from graft.cli.calibrate import add_parser
from graft.inference import UNKNOWN, apply_reject, csv_header, parse_reject, predict_to_csv, predict_with_reject
from graft.errors import GraftError

# --- pure functions --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0.4, 3.0])
def test_fit_temperature_recovers_a_known_temperature(k):
    rng = np.random.default_rng(0)
    true = rng.normal(0, 2.0, size=(4000, 5))
    p = np.exp(true - true.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) < rng.random((len(p), 1))).sum(1).clip(max=4)  # one draw from each row
    t = fit_temperature(true * k, labels)  # logits k times too sharp (or too flat): T = k undoes it
    assert t == pytest.approx(k, rel=0.06)


def test_fit_temperature_stays_finite_on_perfectly_separated_photos():
    logits = np.array([[6.0, -6.0], [-5.0, 5.0], [7.0, -7.0]])
    t = fit_temperature(logits, [0, 1, 0])
    assert 0.05 < t < 1.0  # sharper than 1, but the prior keeps it from running to 0
    with pytest.raises(GraftError, match="zero photos"):
        fit_temperature(np.zeros((0, 2)), [])


def test_threshold_is_the_smallest_reaching_the_target():
    conf = [0.6, 0.99, 0.8, 0.9, 0.7, 0.95]
    correct = [False, True, False, True, True, True]
    # highest first: 0.99 ok, 0.95 ok, 0.9 ok, 0.8 WRONG, 0.7 ok, 0.6 WRONG
    assert accuracy_coverage_curve(conf, correct) == [
        {"threshold": 0.99, "coverage": 1 / 6, "accuracy": 1.0},
        {"threshold": 0.95, "coverage": 2 / 6, "accuracy": 1.0},
        {"threshold": 0.9, "coverage": 3 / 6, "accuracy": 1.0},
        {"threshold": 0.8, "coverage": 4 / 6, "accuracy": 0.75},
        {"threshold": 0.7, "coverage": 5 / 6, "accuracy": 0.8},
        {"threshold": 0.6, "coverage": 1.0, "accuracy": 4 / 6},
    ]
    assert choose_threshold(conf, correct, 0.99) == {"threshold": 0.9, "accuracy": 1.0, "coverage": 0.5,
                                                     "reached": True}
    assert choose_threshold(conf, correct, 0.8)["threshold"] == 0.7  # smallest, not the first met
    assert choose_threshold(conf, correct, 0.6) == {"threshold": 0.0, "accuracy": 4 / 6, "coverage": 1.0,
                                                    "reached": True}  # all photos already reach it
    # unreachable: the best accuracy on offer, at its smallest threshold
    assert choose_threshold([0.9, 0.8, 0.7], [False, True, True], 0.99) == {
        "threshold": 0.7, "accuracy": 2 / 3, "coverage": 1.0, "reached": False}
    # equal confidences stand or fall together
    assert choose_threshold([0.9, 0.9, 0.5], [True, False, True], 0.6)["threshold"] == 0.0
    assert choose_threshold([0.95, 0.9, 0.9, 0.5], [True, True, False, True], 0.99)["threshold"] == 0.95


def test_apply_reject_rescales_and_marks_unknown():
    results = [{"path": "a"}, {"path": "b", "error": "truncated"}, {"path": "c"}, {"path": "d"}]
    logits = np.array([[4.0, 0.0, 0.0], [0.2, 0.0, 0.1], [3.0, 0.0, 0.0]])  # rows of a, c, d
    cal = {"classes": ["x", "y", "z"], "temperature": 2.0, "threshold": 0.6, "novelty": {"threshold": 0.3}}
    out = apply_reject(results, logits, cal, novelty=[0.1, 0.1, 0.5], topk=2)
    assert out[1] == results[1]
    a, c, d = out[0], out[2], out[3]
    p = math.exp(2) / (math.exp(2) + 2)  # softmax of logits / T
    assert a["class"] == "x" and a["confidence"] == pytest.approx(p, abs=1e-6) and "reason" not in a
    assert [q["class"] for q in a["predictions"]] == ["x", "y"] and len(a["predictions"]) == 2
    assert c["class"] == UNKNOWN and "low confidence" in c["reason"]
    assert c["predictions"][0]["class"] == "x"  # still lists the classes
    assert d["class"] == UNKNOWN and "unlike the training photos" in d["reason"] and d["novelty"] == 0.5
    assert apply_reject(results, logits, None, topk=1, classes=["x", "y", "z"])[2]["class"] == "x"


def test_parse_reject():
    assert parse_reject("auto") == "auto" and parse_reject("none") is None and parse_reject("0.8") == 0.8
    for bad in ("maybe", "1.5"):
        with pytest.raises(GraftError, match="--reject"):
            parse_reject(bad)


# --- end to end: red circles vs blue squares, then grey, noise and green triangles -----------


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    photos = make_photo_folder(root / "photos", classes=("blue", "red"), per_class=16, seed=3)
    rng = np.random.default_rng(5)
    known, odd = root / "known", root / "odd"
    known.mkdir()
    odd.mkdir()
    for i in range(3):
        make_photo(rng, "red").save(known / f"red{i}.jpg")
        make_photo(rng, "blue").save(known / f"blue{i}.jpg")
        Image.fromarray(np.full((80, 96, 3), int(rng.integers(60, 200)), np.uint8)).save(odd / f"grey{i}.png")
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(odd / f"noise{i}.png")
        make_photo(rng, "green").save(odd / f"green{i}.jpg")  # a shape of neither class
    with isolated_env(root):
        run = graft.train(photos, root / "run", strategy="head", cache_dir=root / "cache", workers=0,
                          progress=False).run_dir
        cal = calibrate_run(run, photos, target_accuracy=0.99, cache_dir=root / "cache", workers=0)
    return types.SimpleNamespace(root=root, photos=photos, run=run, cal=cal, known=known, odd=odd)


def test_calibration_json(calibrated):
    cal = json.loads((calibrated.run / "calibration.json").read_text())
    assert cal == json.loads(json.dumps(calibrated.cal))
    for key in ("temperature", "threshold", "target_accuracy", "val_accuracy_at_threshold",
                "coverage_at_threshold", "curve"):
        assert key in cal, key
    assert cal["temperature"] > 0 and 0 <= cal["threshold"] <= 1 and cal["target_accuracy"] == 0.99
    assert cal["n_val"] >= 2 and cal["val_accuracy_at_threshold"] >= 0.99
    assert all(set(p) == {"threshold", "coverage", "accuracy"} for p in cal["curve"])
    assert cal["curve"][-1]["coverage"] == 1.0
    assert cal["novelty"]["n_reference"] == 32 and cal["novelty"]["threshold"] > 0
    assert (calibrated.run / "calibration.safetensors").is_file()
    unknown = cal["val_unknown"]  # what each check would refuse among the validation photos
    assert unknown["n_val"] == cal["n_val"]
    assert unknown["confidence"] == round(cal["n_val"] * (1 - cal["coverage_at_threshold"]))
    assert 0 <= unknown["novelty"] <= cal["n_val"]
    assert max(unknown["confidence"], unknown["novelty"]) <= unknown["either"] <= unknown["confidence"] + unknown["novelty"]


def test_known_photos_get_their_class_and_odd_ones_unknown(calibrated):
    """The novelty threshold is the 0.99 quantile of the training photos' leave-one-out distances:
    with 32 of them, their largest, so a new photo of a known class lands beyond it about once in
    33 (exchangeability; measured: 1 of these 6 with lite1, 0 with lite0). So one known photo may be
    refused, never for low confidence, and the odd ones must be."""
    results = predict_with_reject(calibrated.run, [calibrated.known, calibrated.odd], topk=3, workers=0)
    by_name = {r["path"].split("/")[-1]: r for r in results}
    assert len(by_name) == 15
    known_refused = []
    for name, r in by_name.items():
        assert len(r["predictions"]) == 2 and r["predictions"][0]["class"] in ("blue", "red")
        if name.startswith(("red", "blue")):
            truth = name[:-5].rstrip("0123456789")
            assert r["predictions"][0]["class"] == truth, r
            if r["class"] == UNKNOWN:
                assert r["reason"].startswith("unlike the training photos"), r
                known_refused.append(name)
            else:
                assert r["class"] == truth, r
    assert len(known_refused) <= 1, known_refused
    odd = [r for n, r in by_name.items() if n.startswith(("grey", "noise", "green"))]
    unknown = [r for r in odd if r["class"] == UNKNOWN]
    assert len(unknown) >= 7, [(r["path"], r["class"], r.get("novelty")) for r in odd]
    assert all(r["reason"] for r in unknown)


def test_reject_needs_a_calibration_or_takes_a_probability(calibrated, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.json", "model.safetensors", "metrics.json"):
        shutil.copy(calibrated.run / f, bare / f)
    with pytest.raises(GraftError, match=r"graft calibrate .*bare PHOTOS"):
        predict_with_reject(bare, [calibrated.known], reject="auto")
    with isolated_env(tmp_path):
        (res,) = predict_with_reject(bare, [calibrated.known / "red0.jpg"], reject=0.5, workers=0)
    assert res["class"] == "red" and "novelty" not in res  # a 2-class top probability is >= 0.5
    stale = json.loads((calibrated.run / "calibration.json").read_text())
    stale["model_sha256"] = "0" * 64
    (bare / "calibration.json").write_text(json.dumps(stale))
    with pytest.raises(GraftError, match="retrained"):
        predict_with_reject(bare, [calibrated.known], reject="auto")


def test_predict_to_csv(calibrated, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = predict_to_csv(calibrated.run, [calibrated.known, calibrated.odd / "grey0.png", broken],
                         tmp_path / "out" / "pred.csv", topk=3, reject="auto", workers=1, progress=False)
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == csv_header(2) == [
        "path", "label", "confidence", "class_1", "probability_1", "class_2", "probability_2",
        "novelty", "reason", "error"]
    assert len(rows) == 8  # one per file, in order
    by_name = {r["path"].split("/")[-1]: r for r in rows}
    assert by_name["red1.jpg"]["label"] == "red" and by_name["blue2.jpg"]["label"] == "blue"
    assert by_name["grey0.png"]["label"] == UNKNOWN and by_name["grey0.png"]["reason"]
    assert by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["label"] == ""
    assert float(by_name["red1.jpg"]["probability_1"]) > float(by_name["red1.jpg"]["probability_2"])
    assert not list(out.parent.glob(".tmp-*"))


def test_calibrate_cli(calibrated, capsys):
    parser = argparse.ArgumentParser(prog="graft")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", str(calibrated.run), str(calibrated.photos), "--target-accuracy",
                              "0.95", "--cache-dir", str(calibrated.root / "cache"), "--workers", "0", "--json"])
    assert args.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["target_accuracy"] == 0.95 and printed["temperature"] == pytest.approx(calibrated.cal["temperature"])


def test_predict_reject_auto_says_the_probabilities_are_calibrated(calibrated, capsys):
    from graft.cli import predict as predict_cli

    parser = argparse.ArgumentParser(prog="graft")
    predict_cli.add_parser(parser.add_subparsers(dest="command"))
    red = str(calibrated.known / "red0.jpg")
    for extra in ([], ["--json"]):
        args = parser.parse_args(["predict", str(calibrated.run), red, "--reject", "auto", "--workers", "0", *extra])
        assert args.run(args) == 0
        captured = capsys.readouterr()
        t = json.loads((calibrated.run / "calibration.json").read_text())["temperature"]
        notes = [line for line in captured.err.splitlines() if "calibrated" in line]
        assert len(notes) == 1 and f"T={t:.3f}" in notes[0], captured.err
    args = parser.parse_args(["predict", str(calibrated.run), red, "--workers", "0"])
    assert args.run(args) == 0
    assert "calibrated" not in capsys.readouterr().err  # plain probabilities: nothing to say


def test_ordinals_in_the_calibration_summary(calibrated):
    from graft.cli.calibrate import calibration_summary
    from graft.report.page import ordinal

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]
    cal = {**calibrated.cal, "novelty": {**calibrated.cal["novelty"], "k": 3}}
    text = calibration_summary(cal, calibrated.run)
    assert "3rd nearest" in text and "3th" not in text
