"""graft.use.calibrate: temperature scaling, the confidence threshold, and `unknown` for photos of
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
from graft.use.calibrate import (accuracy_coverage_curve, calibrate_run, choose_threshold, choose_thresholds,
                                 fit_temperature, keep_with_margin, novelty_table, out_of_fold_logits,
                                 refusals_allowed)
from graft.cli.calibrate import add_parser
from graft.use.inference import UNKNOWN, apply_reject, csv_header, parse_reject, predict_to_csv, predict_with_reject
from graft.errors import GraftError
from graft.report.page import fmt3

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


def test_thresholds_keep_at_least_the_share_asked():
    """200 photos, the 20 least confident of them wrong: the target accuracy 0.99 would refuse
    all 20 (10%), but --keep 0.95 stops the threshold at the refusals the exact binomial bound
    allows (so that new photos are kept 0.95 of the time, nine times in ten: fewer than 10);
    --keep 0.8 lets it reach the target; --keep 0 is the target alone."""
    rng = np.random.default_rng(0)
    conf = np.sort(rng.uniform(0.5, 1.0, 200))[::-1]
    correct = np.arange(200) < 180
    c = choose_thresholds(conf, correct, keep=0.95, target_accuracy=0.99)
    r = refusals_allowed(200, 0.95)
    want = keep_with_margin(0.95, 200)
    assert 0 < r < 10 and want == 1 - r / 200 and c["keep_with_margin"] == pytest.approx(want, abs=1e-6)
    assert c["kept"] == want  # as many refused as the bound allows, no more
    assert c["limited_by"] == "keep" and not c["reached"] and c["threshold"] == np.sort(conf)[r]
    loose = choose_thresholds(conf, correct, keep=0.8, target_accuracy=0.99)
    assert loose["reached"] and loose["limited_by"] == "target accuracy" and loose["kept"] == 181 / 200  # 180 right
    assert loose["threshold"] == choose_threshold(conf, correct, 0.99)["threshold"]
    assert choose_thresholds(conf, correct, keep=0.0)["threshold"] == loose["threshold"]
    everything = choose_thresholds(conf, correct, keep=1.0)
    assert everything["threshold"] == 0.0 and everything["kept"] == 1.0
    assert choose_thresholds(conf, np.ones(200, bool), keep=0.5)["threshold"] == 0.0  # all right: none needed
    with pytest.raises(GraftError, match="--keep"):
        choose_thresholds(conf, correct, keep=1.5)


def test_novelty_takes_its_share_of_the_refusals():
    """Both checks together keep the share asked: by default the novelty check refuses the
    photos beyond its 0.99 quantile (more are kept when --keep leaves less to refuse), and the
    confidence threshold spends what is left of the refusals the bound allows."""
    rng = np.random.default_rng(1)
    n = 1000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < conf  # the less sure, the more often wrong
    novelty = rng.uniform(0.0, 1.0, n)
    c = choose_thresholds(conf, correct, novelty, keep=0.95)
    assert c["novelty_quantile"] == 0.99 and c["refused"]["novelty"] == pytest.approx(0.01, abs=0.002)
    assert c["novelty_threshold"] == pytest.approx(np.quantile(novelty, 0.99), abs=0.01)
    assert keep_with_margin(0.95, n) <= c["kept"] <= keep_with_margin(0.95, n) + 0.002
    strict = choose_thresholds(conf, correct, novelty, keep=0.999)
    assert strict["novelty_quantile"] > 0.999 and strict["kept"] >= 0.999
    table = novelty_table(novelty)
    assert [r["refused"] for r in table] == pytest.approx([r["refused_asked"] for r in table], abs=0.002)
    assert [r["threshold"] for r in table] == sorted((r["threshold"] for r in table), reverse=True)


def test_out_of_fold_logits_never_come_from_a_head_fitted_on_them():
    """Changing one photo's features changes the out-of-fold logits of the photos whose heads it
    helped fit (the other folds) and of itself, never those of the other photos of its own fold:
    their head was fitted without that fold."""
    from graft.heads.folds import stratified_folds
    from graft.run.record import RecipeSettings

    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 20)
    x = (rng.normal(0, 1, (60, 8)) + 2.0 * np.eye(3, 8)[y]).astype(np.float32)
    keys = [f"photo{i}" for i in range(60)]
    for settings in ({"solver": "lbfgs", "strength": 0.1}, {"solver": "adamw", "epochs": 5, "seed": 0}):
        recipe = RecipeSettings(settings)  # model.json's training.head
        before, how = out_of_fold_logits(3, recipe, x, y, keys)
        assert before.shape == (60, 3) and how.startswith("5 folds")
        folds = stratified_folds(y, 5, keys=keys)
        moved = x.copy()
        moved[0] += 5.0
        after, _ = out_of_fold_logits(3, recipe, moved, y, keys)
        own = next(f for f in folds if 0 in f)
        same_fold = [i for i in own if i != 0]
        others = [i for i in range(60) if i not in own]
        np.testing.assert_allclose(after[same_fold], before[same_fold], rtol=1e-6, atol=1e-6)
        assert np.abs(after[others] - before[others]).max() > 1e-4, recipe
        assert np.abs(after[0] - before[0]).max() > 1e-3


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
    split = root / "split"  # PHOTOS/train + PHOTOS/val: validation photos the run never trains on
    for c in ("blue", "red"):
        for i, f in enumerate(sorted((photos / c).iterdir())):
            (split / ("train" if i < 12 else "val") / c).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, split / ("train" if i < 12 else "val") / c / f.name)
    with isolated_env(root):
        run = graft.train(split, root / "run", strategy="head", cache_dir=root / "cache", workers=0,
                          progress=False).run_dir
        cal = calibrate_run(run, split, target_accuracy=0.99, cache_dir=root / "cache", workers=0)
    return types.SimpleNamespace(root=root, photos=photos, split=split, run=run, cal=cal, known=known, odd=odd)


def test_calibration_json(calibrated):
    cal = json.loads((calibrated.run / "calibration.json").read_text())
    assert cal == json.loads(json.dumps(calibrated.cal))
    metrics = json.loads((calibrated.run / "metrics.json").read_text())
    fit = cal["fit"]  # fitted on the training photos, out of fold: never on photos the head was fitted on
    assert fit["photos"] == "training" and fit["n"] == metrics["n_train"] and "out-of-fold" in fit["how"]
    assert "L-BFGS" in fit["how"] or "AdamW" in fit["how"]
    assert cal["temperature"] > 0 and 0 <= cal["threshold"] <= 1 and cal["target_accuracy"] == 0.99
    assert cal["keep"] == 0.95 and fit["kept"] >= fit["keep_with_margin"] > 0.95
    assert fit["refused"]["confidence"] + fit["refused"]["novelty"] >= 1 - fit["kept"] - 1e-9
    assert all(set(p) == {"threshold", "coverage", "accuracy"} for p in cal["curve"])
    assert cal["curve"][-1]["coverage"] == 1.0
    table = cal["keep_table"]  # the trade-off: stricter asks refuse more, never less
    assert [r["keep"] for r in table] == sorted(r["keep"] for r in table) and sum(r["chosen"] for r in table) == 1
    chosen = next(r for r in table if r["chosen"])
    assert chosen["keep"] == 0.95 and chosen["threshold"] == round(cal["threshold"], 6)
    assert all(r["kept"] >= r["keep"] for r in table)
    assert table[-1]["keep"] == 1.0 and table[-1]["kept"] == 1.0
    nov = cal["novelty"]  # the reference is the training photos only: the validation photos stay new
    assert nov["n_reference"] == metrics["n_train"] and nov["threshold"] > 0 and nov["quantile"] >= 0.99
    assert [p["refused_asked"] for p in nov["curve"]][:2] == [0.0, 0.005] and nov["curve"][0]["refused"] == 0.0
    assert (calibrated.run / "calibration.safetensors").is_file()
    unknown, kept = cal["val_unknown"], cal["val_kept"]  # the reported figure: the validation photos, once
    assert unknown["n_val"] == kept["n"] == metrics["n_val"]
    assert 0 <= unknown["novelty"] <= unknown["n_val"] and 0 <= unknown["confidence"] <= unknown["n_val"]
    assert max(unknown["confidence"], unknown["novelty"]) <= unknown["either"] <= unknown["confidence"] + unknown["novelty"]
    assert kept["kept"] == pytest.approx(1 - unknown["either"] / unknown["n_val"], abs=1e-6)
    assert kept["kept_range"][0] <= kept["kept"] <= kept["kept_range"][1] and fit["assurance"] == 0.9
    assert kept["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)


def test_known_photos_get_their_class_and_odd_ones_unknown(calibrated):
    """The novelty threshold is the 0.99 quantile of the training photos' leave-one-out distances:
    with about 26 of them, their largest, so a new photo of a known class lands beyond it about
    once in 27 (exchangeability). So one known photo may be refused, never for low confidence
    (these photos are all classified right, out of fold too), and the odd ones must be."""
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
    (tmp_path / "out").mkdir()  # an output's folder is never created (issue 22)
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
    common = [str(calibrated.run), str(calibrated.split), "--cache-dir", str(calibrated.root / "cache"),
              "--workers", "0"]
    args = parser.parse_args(["calibrate", *common, "--target-accuracy", "0.95", "--keep", "0.8", "--json"])
    assert args.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["target_accuracy"] == 0.95 and printed["keep"] == 0.8
    assert printed["temperature"] == pytest.approx(calibrated.cal["temperature"])  # the same out-of-fold fit
    assert printed["fit"]["keep_with_margin"] < calibrated.cal["fit"]["keep_with_margin"]
    args = parser.parse_args(["calibrate", *common])
    assert args.main(args) == 0
    out = capsys.readouterr().out
    assert "out-of-fold predictions of the" in out and "(asked: at least 0.95 of new photos" in out and "validation photos kept" in out
    with pytest.raises(GraftError, match="--keep"):
        args = parser.parse_args(["calibrate", *common, "--keep", "2"])
        args.main(args)


def test_the_validation_photos_choose_nothing(calibrated, tmp_path):
    """Temperature and thresholds are fitted on the training photos alone: with the label of
    every validation photo swapped (PHOTOS/val/blue <-> PHOTOS/val/red), not one of them moves;
    only the reported figure, the validation check, does."""
    photos, swapped = tmp_path / "photos", tmp_path / "swapped"
    for c, other in (("blue", "red"), ("red", "blue")):
        files = sorted((calibrated.photos / c).iterdir())
        for side, chosen in (("train", files[:12]), ("val", files[12:])):
            for f in chosen:
                for root, folder in ((photos, c), (swapped, other if side == "val" else c)):
                    (root / side / folder).mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, root / side / folder / f.name)
    cache = calibrated.root / "cache"
    with isolated_env(tmp_path):
        run = graft.train(photos, tmp_path / "run", strategy="head", cache_dir=cache, workers=0,
                          progress=False).run_dir
        right = calibrate_run(run, photos, cache_dir=cache, workers=0)
        wrong = calibrate_run(run, swapped, cache_dir=cache, workers=0)
    for key in ("temperature", "threshold", "fit", "curve", "keep_table", "target_reached"):
        assert wrong[key] == right[key], key
    assert wrong["novelty"]["threshold"] == right["novelty"]["threshold"] and right["fit"]["n"] == 24
    assert right["val_kept"]["accuracy"] == 1.0 and wrong["val_kept"]["accuracy"] == 0.0


def test_a_final_run_is_calibrated_on_everything_it_trained_on(calibrated, tmp_path):
    """--final trains on the validation photos too: calibration fits on all of them, out of
    fold, and has no validation photo left to report on."""
    with isolated_env(tmp_path):
        run = graft.train(calibrated.photos, tmp_path / "run", strategy="head", final=True,
                          cache_dir=calibrated.root / "cache", workers=0, progress=False).run_dir
        cal = calibrate_run(run, calibrated.photos, cache_dir=calibrated.root / "cache", workers=0)
    assert cal["final"] and cal["fit"]["n"] == 32 == cal["novelty"]["n_reference"]
    assert cal["val_unknown"] is None and cal["val_kept"] is None


def test_predict_reject_auto_says_the_probabilities_are_calibrated(calibrated, capsys):
    from graft.cli import predict as predict_cli

    parser = argparse.ArgumentParser(prog="graft")
    predict_cli.add_parser(parser.add_subparsers(dest="command"))
    red = str(calibrated.known / "red0.jpg")
    for extra in ([], ["--json"]):
        args = parser.parse_args(["predict", str(calibrated.run), red, "--reject", "auto", "--workers", "0", *extra])
        assert args.main(args) == 0
        captured = capsys.readouterr()
        t = json.loads((calibrated.run / "calibration.json").read_text())["temperature"]
        notes = [line for line in captured.err.splitlines() if "calibrated" in line]
        assert len(notes) == 1 and f"T={t:.3f}" in notes[0], captured.err
    args = parser.parse_args(["predict", str(calibrated.run), red, "--workers", "0"])
    assert args.main(args) == 0
    assert "calibrated" not in capsys.readouterr().err  # plain probabilities: nothing to say


def test_ordinals_in_the_calibration_summary(calibrated):
    from graft.cli.calibrate import calibration_summary
    from graft.report.page import ordinal

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]
    cal = {**calibrated.cal, "novelty": {**calibrated.cal["novelty"], "k": 3}}
    text = calibration_summary(cal, calibrated.run)
    assert "3rd nearest" in text and "3th" not in text


def test_the_report_shows_the_share_kept_where_chosen_and_on_new_photos(calibrated):
    """The promise is about new photos: the report gives the share kept out of fold (where the
    thresholds were chosen) and the share of the validation photos kept, with the range chance
    alone allows on that many photos and whether --keep is within it."""
    from graft.report.calibration import calibration

    html = calibration(calibrated.run, None)
    cal, kept = calibrated.cal, calibrated.cal["val_kept"]
    assert f'id="fit-kept">{fmt3(cal["fit"]["kept"])}<' in html and f'id="val-kept">{fmt3(kept["kept"])}<' in html
    verdict = ("at least" if kept["kept"] >= 0.95 else "below")
    assert f'id="val-kept-verdict">{verdict} --keep 0.95' in html
    assert "at least 0.95 of new photos, 90% of the time, so at least" in html
