"""graft.check: a generated photo folder with one instance of every problem `graft check` knows;
each is flagged exactly once, with the right code and level, normal photos are not flagged, the
split matches `graft train`'s, mislabelled photos are found with the real default backbone, and
the CLI sub-command prints the report and exits 1 on errors."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import count_backbone_forwards, make_photo, make_photo_folder
from PIL import Image, ImageDraw, ImageFont

from graft.check import CODES, check_photos, format_report
from graft.cli.check import add_parser
from graft.data import scan_photos

SIZE = (256, 240)  # normal photos: neither `tiny` nor a decompression bomb under MAX_PIXELS
MAX_PIXELS = 120_000  # Image.MAX_IMAGE_PIXELS during the test: SIZE is under it, `huge` over it


def _jpeg(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=kw.pop("quality", 90), **kw)
    return path


def _save_bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _placeholder(size=(320, 240)) -> Image.Image:
    """Big dark text on a white background: an 'image not found' picture."""
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((24, 60), "NO IMAGE", fill=(40, 40, 40), font=ImageFont.load_default(size=52))
    d.text((24, 140), "available", fill=(120, 120, 120), font=ImageFont.load_default(size=30))
    return img


def _build_problem_folder(root: Path) -> dict[str, tuple[str, str]]:
    """PHOTOS/train + PHOTOS/val with normal photos and one instance of each problem.

    Returns {relative path: (code, word the message must contain)} for the planted problems.
    """
    rng = np.random.default_rng(3)
    expected: dict[str, tuple[str, str]] = {}
    normal = {"train": 8, "val": 3}
    for split, n in normal.items():
        for cls in ("red", "blue"):
            for i in range(n):
                _jpeg(make_photo(rng, cls, SIZE), root / split / cls / f"{cls}{i}.jpg")
    red, blue = root / "train" / "red", root / "train" / "blue"

    def plant(path: Path, code: str, word: str):
        expected[str(path.relative_to(root))] = (code, word)

    # --- unusable files
    (red / "empty.jpg").write_bytes(b"")
    plant(red / "empty.jpg", "empty_file", "empty")
    data = io.BytesIO()
    make_photo(rng, "red", SIZE).save(data, format="JPEG", quality=90)
    (red / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) * 6 // 10])
    plant(red / "cut.jpg", "truncated", "truncated")
    (red / "notes.jpg").write_text("these are not the photos you are looking for\n")
    plant(red / "notes.jpg", "undecodable", "not an image")
    make_photo(rng, "red", SIZE).save(red / "really_png.jpg", format="PNG")
    plant(red / "really_png.jpg", "extension_mismatch", "PNG")
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(blue / "huge.png")
    plant(blue / "huge.png", "too_large", "too many pixels")
    tall = bytearray(_save_bytes(Image.new("RGB", (20, 14), (200, 30, 40)), "PNG"))
    tall[20:24] = (5000).to_bytes(4, "big")  # a damaged header: 20 x 5,000 pixels
    tall[29:33] = zlib.crc32(bytes(tall[12:29])).to_bytes(4, "big")  # with a valid IHDR checksum
    (blue / "tall.png").write_bytes(bytes(tall))
    plant(blue / "tall.png", "extreme_aspect", "aspect ratio")
    os.symlink(blue, blue / "loop")
    plant(blue / "loop", "symlink_loop", "loop")
    # --- usable, with a warning
    frames = [make_photo(rng, "red", SIZE) for _ in range(3)]
    frames[0].save(red / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    plant(red / "anim.gif", "animated", "3 frames")
    _jpeg(make_photo(rng, "red", SIZE).convert("CMYK"), red / "cmyk.jpg")
    plant(red / "cmyk.jpg", "mode", "CMYK")
    gray16 = np.asarray(make_photo(rng, "red", SIZE).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(red / "deep.png")
    plant(red / "deep.png", "mode", "16-bit")
    pal = make_photo(rng, "blue", SIZE).quantize(64)
    pal.info["transparency"] = 0
    pal.save(blue / "palette.png", transparency=0)
    plant(blue / "palette.png", "mode", "transparency")
    _jpeg(make_photo(rng, "blue", SIZE).convert("L"), blue / "gray.jpg")
    plant(blue / "gray.jpg", "mode", "grayscale")
    exif = Image.Exif()
    exif[0x0112] = 6
    _jpeg(make_photo(rng, "blue", SIZE), blue / "rotated.jpg", exif=exif.tobytes())
    plant(blue / "rotated.jpg", "exif_rotated", "orientation 6")
    _jpeg(make_photo(rng, "blue", (60, 48)), blue / "tiny.jpg")
    plant(blue / "tiny.jpg", "tiny", "60x48")
    (red / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    plant(red / ".DS_Store", "hidden_file", "hidden")
    # --- copies
    shutil.copy(red / "red0.jpg", red / "red0_copy.jpg")
    plant(red / "red0_copy.jpg", "duplicate", "red0.jpg")
    with Image.open(red / "red1.jpg") as im:  # re-encoded, resized: a near copy (kept >= 224)
        _jpeg(im.resize((300, 281), Image.Resampling.BICUBIC), red / "red1_edit.jpg", quality=75)
    plant(red / "red1_edit.jpg", "near_duplicate", "red1.jpg")
    shutil.copy(red / "red2.jpg", root / "val" / "red" / "leaked.jpg")
    plant(root / "val" / "red" / "leaked.jpg", "leakage", "train/red/red2.jpg")
    with Image.open(blue / "blue3.jpg") as im:
        _jpeg(im, root / "val" / "blue" / "blue3_again.jpg", quality=70)
    plant(root / "val" / "blue" / "blue3_again.jpg", "leakage", "train/blue/blue3.jpg")
    # --- not photos
    _placeholder().save(blue / "placeholder.png")
    plant(blue / "placeholder.png", "not_a_photo", "placeholder")
    flat = np.full((SIZE[1], SIZE[0], 3), 128, np.int16) + rng.integers(-2, 3, (SIZE[1], SIZE[0], 1))
    _jpeg(Image.fromarray(flat.astype(np.uint8)), blue / "blank.jpg")
    plant(blue / "blank.jpg", "not_a_photo", "near-constant")
    # --- a class with no photo at all
    (root / "train" / "green").mkdir()
    (root / "val" / "green").mkdir()
    plant(root / "train" / "green", "empty_class", "no usable image")
    return expected


@pytest.fixture
def low_pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", MAX_PIXELS)


def _by_path(report, root):
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(str(Path(f["path"]).relative_to(root)), []).append(f)
    return out


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_every_problem_flagged_once(tmp_path, low_pixel_limit, default_backbone):
    root = tmp_path / "photos"
    expected = _build_problem_folder(root)
    report = check_photos(root, backbone=default_backbone, cache_dir=tmp_path / "cache", workers=0)
    json.dumps(report)  # JSON-able
    assert report["layout"] == "train/val"
    assert report["classes"] == ["blue", "green", "red"]
    found = _by_path(report, root)
    # photos whose pixels graft converts (grayscale: what tells red from blue is gone; 60x48
    # upscaled 5x) may also look like neither class (graft.check.foreign), listed first; no
    # normal photo is called one
    foreign = [f for f in report["findings"] if f["code"] == "foreign"]
    converted = {rel for rel, (code, _) in expected.items() if code in ("mode", "tiny")}
    assert foreign and {str(Path(f["path"]).relative_to(root)) for f in foreign} <= converted, format_report(report)
    assert report["findings"][:len(foreign)] == foreign
    for f in foreign:
        found[str(Path(f["path"]).relative_to(root))].remove(f)
    assert set(found) == set(expected), (sorted(set(found) ^ set(expected)), format_report(report))
    for rel, (code, word) in expected.items():
        items = found[rel]
        assert [f["code"] for f in items] == [code], (rel, items)
        f = items[0]
        assert f["level"] == CODES[code]
        assert rel in f["message"] and word.lower() in f["message"].lower(), f
    levels = {f["code"]: f["level"] for f in report["findings"]}
    assert {c for c, lvl in levels.items() if lvl == "error"} == {
        "empty_file", "truncated", "undecodable", "extension_mismatch", "too_large", "symlink_loop",
        "leakage", "not_a_photo", "empty_class", "extreme_aspect"}
    assert report["summary"] == {"errors": 12, "warnings": 10 + len(foreign), "infos": 0}
    # usable photos per class and split: normal ones + the planted usable ones
    assert report["counts"]["green"] == {"train": 0, "val": 0}
    assert report["counts"]["red"] == {"train": 8 + 5, "val": 3 + 1}
    assert report["counts"]["blue"] == {"train": 8 + 6, "val": 3 + 1}
    # text: grouped by level, one line per finding naming file and problem
    text = format_report(report)
    assert text.index(f"photos of neither class ({len(foreign)})") < text.index("errors (12)") < text.index(
        "other warnings (10)")
    twice = {f["path"] for f in foreign}
    for rel in expected:
        assert sum(rel in line for line in text.splitlines()) == 1 + (str(root / rel) in twice), rel


def test_quick_scan_runs_no_network_and_skips_deep_checks(tmp_path, low_pixel_limit):
    root = tmp_path / "photos"
    expected = _build_problem_folder(root)
    with count_backbone_forwards() as calls:
        report = check_photos(root, deep=False, cache_dir=tmp_path / "cache")
    assert calls == []
    found = _by_path(report, root)
    want = {rel: code for rel, (code, _) in expected.items() if code != "not_a_photo"}
    assert {rel: [f["code"] for f in items] for rel, items in found.items()} == {
        rel: [code] for rel, code in want.items()}
    assert not (tmp_path / "cache").exists()


def test_likely_mislabelled_with_the_real_backbone(tmp_path, default_backbone):
    root = make_photo_folder(tmp_path / "photos", per_class=12, seed=5)
    rng = np.random.default_rng(99)
    make_photo(rng, "red").save(root / "blue" / "blue_really_red.jpg", format="JPEG")
    report = check_photos(root, backbone=default_backbone, cache_dir=tmp_path / "cache", workers=0)
    flagged = [f for f in report["findings"] if f["code"] == "likely_mislabelled"]
    assert [Path(f["path"]).name for f in flagged] == ["blue_really_red.jpg"], format_report(report)
    f = flagged[0]
    assert f["level"] == "warning"
    assert "blue/blue_really_red.jpg" in f["message"] and "'red'" in f["message"]
    # the features went into the same cache graft train uses: a second check is all hits
    with count_backbone_forwards() as calls:
        again = check_photos(root, backbone="default", cache_dir=tmp_path / "cache", workers=0)
    assert calls == []
    assert again["findings"] == report["findings"]


def test_split_matches_graft_train_and_imbalance(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "photos"
    for cls, n in (("blue", 16), ("red", 4)):
        for i in range(n):
            _jpeg(make_photo(rng, cls, SIZE), root / cls / f"{cls}{i:02d}.jpg")
    report = check_photos(root, deep=False)
    data = scan_photos(root, val_split=0.2)
    for label, cls in enumerate(data.classes):
        assert report["counts"][cls] == {"train": sum(s.label == label for s in data.train),
                                         "val": sum(s.label == label for s in data.val)}
    assert report["layout"] == "folders"
    no_val = [c for label, c in enumerate(data.classes) if not any(s.label == label for s in data.val)]
    assert [(f["code"], f["level"], f["path"]) for f in report["findings"]] == [
        ("class_imbalance", "warning", str(root))] + [
        ("no_validation_image", "warning", str(root / c)) for c in no_val]
    assert "'blue' has 16" in report["findings"][0]["message"]


def test_near_copy_across_the_hash_split_is_leakage(tmp_path):
    """PHOTOS/<class>/*: a re-encoded copy that the content hash sends to the other side."""
    rng = np.random.default_rng(12)
    root = tmp_path / "photos"
    for cls in ("blue", "red"):
        for i in range(10):
            _jpeg(make_photo(rng, cls, SIZE), root / cls / f"{cls}{i:02d}.jpg")
    data = scan_photos(root)
    val_side = {s.path.name for s in data.val}
    original = next(p for p in sorted((root / "red").iterdir()) if p.name not in val_side)
    with Image.open(original) as im:  # try qualities until the copy's hash puts it in val
        for q in range(60, 96):
            _jpeg(im, root / "red" / "copy.jpg", quality=q)
            if "copy.jpg" in {s.path.name for s in scan_photos(root).val}:
                break
        else:  # the photos are seeded: a skip here would hide a change in the split, not bad luck
            pytest.fail("no re-encoding landed in val")
    report = check_photos(root, deep=False)
    assert [(f["code"], Path(f["path"]).name) for f in report["findings"]] == [("leakage", "copy.jpg")]
    assert original.name in report["findings"][0]["message"]


def test_self_referencing_symlink_and_missing_root(tmp_path):
    root = make_photo_folder(tmp_path / "photos", per_class=4)
    (root / "red" / "self.jpg").symlink_to("self.jpg")
    report = check_photos(root, deep=False)
    codes = [(f["code"], Path(f["path"]).name) for f in report["findings"]
             if f["code"] not in ("tiny", "no_validation_image")]
    assert codes == [("symlink_loop", "self.jpg")]
    from graft.errors import GraftError

    with pytest.raises(GraftError, match="not found"):
        check_photos(tmp_path / "nope")


def test_cli_prints_report_and_exit_code(tmp_path, capsys, low_pixel_limit):
    parser = argparse.ArgumentParser(prog="graft")
    add_parser(parser.add_subparsers(dest="command"))
    good = tmp_path / "good"
    rng = np.random.default_rng(1)
    for cls in ("blue", "red"):
        for i in range(5):
            _jpeg(make_photo(rng, cls, SIZE), good / cls / f"{cls}{i}.jpg")
    args = parser.parse_args(["check", str(good), "--quick"])
    assert args.main(args) == 0
    assert "0 error(s)" in capsys.readouterr().out

    (good / "red" / "bad.jpg").write_bytes(b"")
    args = parser.parse_args(["check", str(good), "--json", "--quick", "--cache-dir", str(tmp_path / "c")])
    assert args.main(args) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["errors"] == 1
    assert out["findings"][0]["code"] == "empty_file"


def test_other_files_graft_skips(tmp_path):
    """Truncated WebP (found by its RIFF size), unsupported types, hidden folders, broken links."""
    from PIL import features

    rng = np.random.default_rng(4)
    root = tmp_path / "photos"
    for cls in ("blue", "red"):
        for i in range(5):
            _jpeg(make_photo(rng, cls, SIZE), root / cls / f"{cls}{i}.jpg")
    expected = {}
    if features.check("webp"):
        data = _save_bytes(make_photo(rng, "red", SIZE), "WEBP")
        (root / "red" / "cut.webp").write_bytes(data[: len(data) // 2])
        expected["red/cut.webp"] = "truncated"
    (root / "red" / "notes.txt").write_text("shot on a phone")
    expected["red/notes.txt"] = "unsupported_type"
    (root / "red" / ".thumbs").mkdir()
    _jpeg(make_photo(rng, "red", SIZE), root / "red" / ".thumbs" / "t.jpg")
    expected["red/.thumbs"] = "hidden_file"
    (root / "blue" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    expected["blue/gone.jpg"] = "unreadable"
    (root / "README.md").write_text("my photos")
    expected["README.md"] = "not_in_class_folder"
    gif = bytearray(_save_bytes(Image.new("P", (20, 14)), "GIF"))
    gif[6:10] = (9000).to_bytes(2, "little") + (8000).to_bytes(2, "little")  # 72 MP in ~100 bytes
    (root / "blue" / "bomb.gif").write_bytes(bytes(gif))
    expected["blue/bomb.gif"] = "too_large"
    t0 = time.perf_counter()
    report = check_photos(root, deep=False)
    assert time.perf_counter() - t0 < 10  # the bomb is not decoded
    got = {str(Path(f["path"]).relative_to(root)): f["code"] for f in report["findings"]
           if f["code"] != "no_validation_image"}
    assert got == expected
    assert report["counts"]["red"]["train"] + report["counts"]["red"]["val"] == 5


# --- issue 15: the tiny threshold, repeated notes, and train skipping what check calls an error ---------


def test_tiny_is_judged_by_the_shorter_side_against_a_fixed_floor(tmp_path):
    """500x181 (hymenoptera has eight such photos) is resized, not blurry: only a shorter side
    under 64 px is `tiny`, whatever the backbone's input size."""
    rng = np.random.default_rng(21)
    root = tmp_path / "photos"
    for cls in ("blue", "red"):
        for i in range(4):
            _jpeg(make_photo(rng, cls, SIZE), root / cls / f"{cls}{i}.jpg")
    sizes = {"wide.jpg": (500, 181), "small.jpg": (120, 100), "edge.jpg": (64, 90), "thin.jpg": (200, 63),
             "stamp.jpg": (40, 40)}
    for name, size in sizes.items():
        _jpeg(make_photo(rng, "red", size), root / "red" / name)
    for input_size in (None, 384):
        report = check_photos(root, deep=False, input_size=input_size)
        tiny = {Path(f["path"]).name: f["message"] for f in report["findings"] if f["code"] == "tiny"}
        assert sorted(tiny) == ["stamp.jpg", "thin.jpg"], tiny
        assert "200x63" in tiny["thin.jpg"] and "64 px" in tiny["thin.jpg"]


def test_repeated_notes_print_as_one_line_with_a_count(tmp_path):
    """Photos dropped straight into PHOTOS/ (no class sub-folders): one note line, not a hundred;
    the JSON keeps one finding per file, and different notes stay apart."""
    rng = np.random.default_rng(22)
    root = tmp_path / "photos"
    for i in range(100):
        _jpeg(make_photo(rng, "red", (64, 64)), root / f"img{i:03d}.jpg")
    (root / "one").mkdir()
    (root / "one" / "readme.txt").write_text("x")
    (root / "one" / "notes.md").write_text("x")
    report = check_photos(root, deep=False)
    loose = [f for f in report["findings"] if f["code"] == "not_in_class_folder"]
    assert len(loose) == 100 and report["summary"]["infos"] == 102
    text = format_report(report)
    lines = [line for line in text.splitlines() if "[not_in_class_folder]" in line]
    assert len(lines) == 1, lines
    assert "100 files (img000.jpg, img001.jpg, img002.jpg and 97 more)" in lines[0]
    assert "next to the class folders" in lines[0]
    assert "notes (102):" in text
    unsupported = [line for line in text.splitlines() if "[unsupported_type]" in line]
    assert len(unsupported) == 2 and "one/notes.md" in unsupported[0] and "one/readme.txt" in unsupported[1]
    assert sum("[too_few_classes]" in line for line in text.splitlines()) == 1


def _placeholder_gif(path: Path) -> Path:
    """Like hymenoptera's train/ants/imageNotFound.gif: grey words on a light grey GIF."""
    img = Image.new("RGB", (300, 300), (246, 246, 246))
    d = ImageDraw.Draw(img)
    d.line([(0, 0), (299, 299)], fill=(236, 236, 236))
    d.line([(0, 299), (299, 0)], fill=(236, 236, 236))
    d.text((55, 110), "WE'RE SORRY,", fill=(70, 70, 70), font=ImageFont.load_default(size=30))
    d.text((70, 150), "THIS IMAGE COULD NOT", fill=(120, 120, 120), font=ImageFont.load_default(size=16))
    d.text((105, 172), "BE FOUND.", fill=(120, 120, 120), font=ImageFont.load_default(size=16))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(path, format="GIF")
    return path


def test_train_skips_what_check_calls_an_error(tmp_path, default_backbone):
    """Every file graft check calls an error (alone, not its class) is skipped on train's path:
    by the scan (graft.data), by skip_quick_errors (header size, content hash), or by the feature
    decode through RefuseNonPhotos (placeholders, damage only decoding finds); nothing else is."""
    from dataclasses import replace

    from graft.backbones import DEFAULT_PREPROCESSING
    from graft.check import quick_errors, skip_quick_errors
    from graft.data.placeholders import RefuseNonPhotos
    from graft.errors import ImageError

    rng = np.random.default_rng(23)
    root = tmp_path / "photos"
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("blue", "red"):
            for i in range(n):
                _jpeg(make_photo(rng, cls, SIZE), root / split / cls / f"{cls}{i}.jpg")
    red = root / "train" / "red"
    (red / "empty.jpg").write_bytes(b"")
    data = _save_bytes(make_photo(rng, "red", SIZE), "JPEG")
    (red / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])
    (red / "notes.jpg").write_text("not a photo at all\n")
    tall = bytearray(_save_bytes(Image.new("RGB", (20, 14), (200, 30, 40)), "PNG"))
    tall[20:24] = (5000).to_bytes(4, "big")
    tall[29:33] = zlib.crc32(bytes(tall[12:29])).to_bytes(4, "big")
    (red / "tall.png").write_bytes(bytes(tall))
    (red / "self.jpg").symlink_to("self.jpg")
    _placeholder_gif(red / "imageNotFound.gif")
    _placeholder().save(root / "train" / "blue" / "placeholder.png")
    shutil.copy(root / "train" / "blue" / "blue1.jpg", root / "val" / "blue" / "leaked.jpg")

    report = check_photos(root, backbone=default_backbone, cache_dir=tmp_path / "cache", workers=0)
    errors = {Path(f["path"]).name: f["code"] for f in report["findings"] if f["level"] == "error"}
    assert errors == {"empty.jpg": "empty_file", "cut.jpg": "truncated", "notes.jpg": "undecodable",
                      "tall.png": "extreme_aspect", "self.jpg": "symlink_loop", "imageNotFound.gif": "not_a_photo",
                      "placeholder.png": "not_a_photo", "leaked.jpg": "leakage"}, format_report(report)

    scanned = scan_photos(root)
    assert [e["code"] for e in quick_errors(scanned)] == ["extreme_aspect", "leakage"]
    kept = skip_quick_errors(scanned)
    assert kept.skipped[len(scanned.skipped):] == quick_errors(scanned)
    load = RefuseNonPhotos(DEFAULT_PREPROCESSING.load)
    decode_skips = {}
    for s in kept.train + kept.val:
        try:
            x = load(s.path)
        except ImageError as e:
            decode_skips[s.path.name] = e.code
        else:
            assert tuple(x.shape) == (3, DEFAULT_PREPROCESSING.size, DEFAULT_PREPROCESSING.size)
    assert decode_skips == {"cut.jpg": "truncated", "imageNotFound.gif": "not_a_photo",
                            "placeholder.png": "not_a_photo"}
    skipped_by_train = {Path(d["path"]).name for d in kept.skipped} | set(decode_skips)
    assert skipped_by_train == set(errors)
    assert skip_quick_errors(replace(kept, skipped=[])).skipped == []  # nothing left to skip
    import pickle

    in_worker = pickle.loads(pickle.dumps(load))  # it goes to loader worker processes
    with pytest.raises(ImageError) as e:
        in_worker(red / "imageNotFound.gif")
    assert e.value.code == "not_a_photo" and "placeholder" in e.value.reason


def test_a_placeholder_stays_skipped_after_calibrate_and_evaluate(tmp_path):
    """Training skips a placeholder when extraction decodes it; a cached feature is never decoded
    again, so nothing else may put one in the cache: calibrate and evaluate (run_features) refuse
    it too, and the next graft train on the same photos still skips it."""
    import graft
    from conftest import isolated_env, make_photo_folder
    from graft.use.calibrate import calibrate_run

    photos = make_photo_folder(tmp_path / "photos", per_class=8, seed=5)
    _placeholder_gif(photos / "red" / "imageNotFound.gif")
    with isolated_env(tmp_path):
        first = graft.train(photos, tmp_path / "run", strategy="head", workers=0, progress=False, report=False)
        cal = calibrate_run(first.run_dir, photos, workers=0)
        scored = graft.evaluate(first.run_dir, photos, workers=0)
        again = graft.train(photos, tmp_path / "run", strategy="head", workers=0, progress=False, report=False)
    for skipped in (first.metrics["skipped"], again.metrics["skipped"], scored["skipped"]):
        assert [(Path(s["path"]).name, s.get("code")) for s in skipped] == [("imageNotFound.gif", "not_a_photo")]
    assert (again.metrics["n_train"], again.metrics["n_val"]) == (first.metrics["n_train"], first.metrics["n_val"])
    # the photos the model was fitted on (refitted on train + val), the placeholder not among them
    assert cal["novelty"]["n_reference"] == first.metrics["trained_on"]["photos"]


def test_near_pairs_by_matrix_product_equal_brute_force_hamming():
    """The all-pairs pHash comparison is a matrix product of +-1 bits; it must find exactly the
    pairs a bit-by-bit Hamming count finds, at and around both thresholds."""
    from graft.check.duplicates import DHASH_MAX_DISTANCE, PHASH_MAX_DISTANCE, _near_pairs

    rng = np.random.default_rng(0)
    n = 300
    ph = np.repeat(rng.integers(0, 256, (n // 10, 32), dtype=np.uint8), 10, axis=0)
    dh = np.repeat(rng.integers(0, 256, (n // 10, 32), dtype=np.uint8), 10, axis=0)
    bits_p, bits_d = np.unpackbits(ph, axis=1), np.unpackbits(dh, axis=1)
    for bits, most in ((bits_p, 2 * PHASH_MAX_DISTANCE // 2 + 8), (bits_d, DHASH_MAX_DISTANCE // 2 + 8)):
        for row in bits:  # each copy drifts from its cluster's hash by up to about half a threshold and more
            row[rng.choice(256, int(rng.integers(0, most)), replace=False)] ^= 1
    ph, dh = np.packbits(bits_p, axis=1), np.packbits(bits_d, axis=1)
    hp = (bits_p[:, None, :] != bits_p[None, :, :]).sum(-1)
    hd = (bits_d[:, None, :] != bits_d[None, :, :]).sum(-1)
    want = {(i, j) for i in range(n) for j in range(i + 1, n)
            if hp[i, j] <= PHASH_MAX_DISTANCE and hd[i, j] <= DHASH_MAX_DISTANCE}
    got = _near_pairs(dh, ph)
    assert len(got) == len(set(got)) and set(got) == want
    assert 0 < len(want) < n * (n - 1) // 2  # some pairs near, some not: the thresholds are exercised


def test_class_folders_differing_only_in_case_are_one_error(tmp_path):
    """`Ant/` beside `ant/` is one class misspelt: check says so once, naming both, as train refuses."""
    rng = np.random.default_rng(21)
    root = tmp_path / "photos"
    for cls in ("Ant", "ant", "bee"):
        for i in range(3):
            _jpeg(make_photo(rng, "red", SIZE), root / cls / f"{cls}{i}.jpg")
    report = check_photos(root, deep=False)
    clashes = [f for f in report["findings"] if f["code"] == "class_name_clash"]
    assert len(clashes) == 1 and clashes[0]["level"] == "error"
    assert "'Ant'" in clashes[0]["message"] and "'ant'" in clashes[0]["message"]
    assert "rename" in clashes[0]["message"]


def test_label_file_with_train_and_test_rows_only_is_split_as_train_does(tmp_path):
    """A Kaggle-style file (train/test rows, no val): check's sides are train's, drawn by hash."""
    rng = np.random.default_rng(22)
    rows = ["path,label,split"]
    for split, n in (("train", 10), ("test", 2)):
        for cls in ("blue", "red"):
            for i in range(n):
                _jpeg(make_photo(rng, cls, SIZE), tmp_path / split / cls / f"{cls}{i}.jpg")
                rows.append(f"{split}/{cls}/{cls}{i}.jpg,{cls},{split}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    report = check_photos(labels, deep=False, val_split=0.3)
    data = scan_photos(labels, val_split=0.3)
    assert data.val
    for label, cls in enumerate(data.classes):
        assert report["counts"][cls] == {"train": sum(s.label == label for s in data.train),
                                         "val": sum(s.label == label for s in data.val)}
