"""A run edited after training, and hostile run files (issue 22, items 7 and 12): every file a
command reads from a run is checked, on both engines, and refused in one line.

Item 7: model.json records the SHA-256 of model.safetensors and of its own content; swapping or
renaming classes, another preprocessing, one byte of the weights: each was used before. A
calibration.json with a temperature of 0, NaN or -1, or a threshold of 2, gave NaN, inverted
probabilities or every photo `unknown`. Item 12: 100,000 `[`, a 5,000-digit integer, a FIFO or
/dev/zero under a run's file name: a RecursionError, a ValueError, a hang."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from graft.errors import GraftError

from conftest import assert_one_line, graft_cli, isolated_env, make_photo

CHANGED = "was changed after training"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("photo") / "p.jpg"
    make_photo(np.random.default_rng(0), "red").save(p)
    return p


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The trained run with a fresh ONNX export (the Predictor's onnx engine) and a calibration."""
    from graft.use.calibrate import calibrate_run
    from graft.use.export import export_run

    root = tmp_path_factory.mktemp("exported")
    run = root / "run"
    shutil.copytree(trained_run.run, run)
    with isolated_env(root):
        calibrate_run(run, trained_run.photos, cache_dir=trained_run.cache, workers=0)
        export_run(run, "onnx")
    return run


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))


def _flip(path: Path, at) -> None:
    data = bytearray(path.read_bytes())
    i = at(len(data))
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


# --- item 7: model.json and model.safetensors edited after training ------------------------------

def _set_pre(key, value):
    def edit(d):
        d["preprocessing"][key] = value
    return edit


MODEL_EDITS = {
    "swap-classes": lambda d: d["classes"].reverse(),
    "rename-class": lambda d: d["classes"].__setitem__(0, "cyan"),
    "mean": _set_pre("mean", [0.485, 0.456, 0.406]),
    "mean-one-channel": lambda d: d["preprocessing"]["mean"].__setitem__(0, d["preprocessing"]["mean"][0] + 0.01),
    "std": _set_pre("std", [0.2, 0.2, 0.2]),
    "resize": lambda d: d["preprocessing"].__setitem__("resize", d["preprocessing"]["resize"] + 8),
    "size": lambda d: d["preprocessing"].__setitem__("size", d["preprocessing"]["size"] - 16),
    "interpolation": _set_pre("interpolation", "nearest"),
    "strategy": lambda d: d.__setitem__("strategy", "finetune"),
    "val-split": lambda d: d["training"].__setitem__("val_split", 0.5),
    "seed": lambda d: d["training"]["head"].__setitem__("seed", 99),
    "weights-source": lambda d: d["backbone"].__setitem__("weights_source", "/elsewhere/w.safetensors"),
    "graft-version": lambda d: d.__setitem__("graft_version", "0.0.1"),
    "extra-key": lambda d: d.__setitem__("note", "edited"),
    "drop-training": lambda d: d.pop("training"),
    "model-digest-swapped": lambda d: d.__setitem__("model_sha256", "0" * 64),
    "record-digest-swapped": lambda d: d.__setitem__("record_sha256", "f" * 64),
}


@pytest.mark.parametrize("edit", list(MODEL_EDITS))
@pytest.mark.parametrize("how", ["predictor-torch", "predictor-onnx", "cli-predict"])
def test_22_7_an_edited_model_json_is_refused_on_both_engines(exported, tmp_path, photo, capsys, edit, how):
    import graft

    run = _copy(exported, tmp_path / "run")
    _edit_json(run / "model.json", MODEL_EDITS[edit])
    if how == "cli-predict":
        rc, out, err = graft_cli(["predict", run, photo, "--workers", "0"], capsys)
        assert out == ""
        assert_one_line(rc, err, f"{run / 'model.json'} {CHANGED}", "train it again")
        return
    with pytest.raises(GraftError) as e:
        graft.Predictor(run, engine=how.removeprefix("predictor-")).predict(photo)
    assert CHANGED in str(e.value) and "\n" not in str(e.value)


def test_22_7_an_unedited_run_is_used_on_both_engines(exported, photo):
    import graft

    torch_p, onnx_p = graft.Predictor(exported, engine="torch"), graft.Predictor(exported, engine="onnx")
    assert onnx_p.engine.name == "onnx"
    a, b = torch_p.predict(photo), onnx_p.predict(photo)
    assert a["predictions"][0]["class"] == b["predictions"][0]["class"]


FLIPS = {"first-data-byte": lambda n: n - 64, "middle": lambda n: n // 2 + 17, "last-byte": lambda n: n - 1,
         "header-byte": lambda n: 12}


@pytest.mark.parametrize("where", list(FLIPS))
@pytest.mark.parametrize("engine", ["torch", "onnx", "auto"])
def test_22_7_flipped_weight_byte_refused(exported, tmp_path, photo, where, engine):
    import graft

    run = _copy(exported, tmp_path / "run")
    _flip(run / "model.safetensors", FLIPS[where])
    with pytest.raises(GraftError) as e:
        graft.Predictor(run, engine=engine).predict(photo)
    msg = str(e.value)
    assert "\n" not in msg and ("model.safetensors" in msg or "model.json" in msg), msg
    if where != "header-byte":  # a byte of a tensor: the names and shapes still fit, the digest does not
        assert f"model.safetensors {CHANGED}" in msg and "train it again" in msg


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "report", "calibrate"])
def test_22_7_flipped_weight_byte_refused_by_every_command(exported, trained_run, tmp_path, photo, capsys, command):
    run = _copy(exported, tmp_path / "run")
    _flip(run / "model.safetensors", FLIPS["middle"])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    argv = {"predict": ["predict", run, photo, "--workers", "0"],
            "evaluate": ["evaluate", run, trained_run.photos, "--workers", "0"],
            "export": ["export", run, "--format", "onnx", "--quiet"],
            "report": ["report", run],
            "calibrate": ["calibrate", run, trained_run.photos, "--workers", "0"]}[command]
    rc, out, err = graft_cli(argv, capsys)
    assert_one_line(rc, err, f"model.safetensors {CHANGED}")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing written


def test_22_7_weights_of_another_training_are_refused(exported, trained_run, tmp_path, photo):
    """Same names and shapes (the header check passes), other values: only the digest tells."""
    import torch
    from safetensors.torch import load_file, save_file

    import graft

    run = _copy(exported, tmp_path / "run")
    tensors = load_file(str(run / "model.safetensors"))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, str(run / "model.safetensors"))
    assert all(t.dtype != torch.int64 for t in tensors.values())
    with pytest.raises(GraftError, match=f"model.safetensors {CHANGED}"):
        graft.Predictor(run, engine="torch")


def test_22_7_a_run_of_an_older_graft_without_digests_still_loads(exported, tmp_path, photo):
    import graft

    run = _copy(exported, tmp_path / "run")
    _edit_json(run / "model.json", lambda d: (d.pop("model_sha256"), d.pop("record_sha256")))
    assert graft.Predictor(run, engine="torch").predict(photo)["predictions"]


def test_22_7_model_json_laid_out_another_way_is_not_an_edit(exported, tmp_path, photo):
    """The digest is of the content (canonical JSON), not of the bytes: re-indenting is no edit."""
    import graft

    run = _copy(exported, tmp_path / "run")
    doc = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps(dict(reversed(list(doc.items()))), separators=(",", ":")))
    assert graft.Predictor(run, engine="torch").predict(photo)["predictions"]


def test_22_7_the_record_digest_is_checked_by_the_record_itself(exported):
    from graft.run.record import RunRecord, content_digest

    doc = json.loads((exported / "model.json").read_text())
    assert doc["record_sha256"] == content_digest(doc)
    assert json.loads(json.dumps(RunRecord.from_json(doc).to_json())) == doc
    with pytest.raises(GraftError, match=CHANGED):
        RunRecord.from_json({**doc, "classes": doc["classes"][::-1]})


@pytest.mark.parametrize("value", ["", "abc", "0" * 63, "G" * 64, 12, None, ["0" * 64]])
@pytest.mark.parametrize("key", ["model_sha256", "record_sha256"])
def test_22_7_a_digest_that_is_not_one_is_refused(exported, key, value):
    from graft.run.record import RunRecord

    doc = json.loads((exported / "model.json").read_text())
    with pytest.raises(GraftError, match=f'"{key}" is not a SHA-256 digest'):
        RunRecord.from_json({**doc, key: value})


# --- item 7: calibration.json -----------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
CALIBRATION_EDITS = {
    "temperature-0": ("temperature", 0, '"temperature" is 0'),
    "temperature-negative": ("temperature", -1.0, '"temperature" is -1.0'),
    "temperature-nan": ("temperature", NAN, '"temperature" is nan'),
    "temperature-inf": ("temperature", INF, '"temperature" is inf'),
    "temperature-huge": ("temperature", 1e300, '"temperature" is 1e+300'),
    "temperature-string": ("temperature", "1.5", "\"temperature\" is '1.5'"),
    "temperature-bool": ("temperature", True, '"temperature" is True'),
    "temperature-null": ("temperature", None, '"temperature" is None'),
    "threshold-2": ("threshold", 2, '"threshold" is 2'),
    "threshold-negative": ("threshold", -0.1, '"threshold" is -0.1'),
    "threshold-nan": ("threshold", NAN, '"threshold" is nan'),
    "threshold-list": ("threshold", [0.5], '"threshold" is [0.5]'),
    "classes-empty": ("classes", [], '"classes" is not a list of class names'),
    "classes-numbers": ("classes", [1, 2], '"classes" is not a list of class names'),
    "novelty-list": ("novelty", [], '"novelty" is not an object'),
    "model-digest-missing": ("model_sha256", None, 'no "model_sha256"'),
}
NOVELTY_EDITS = {
    "novelty-k-0": ("k", 0, '"novelty"."k" is 0'),
    "novelty-k-float": ("k", 2.5, '"novelty"."k" is 2.5'),
    "novelty-threshold-negative": ("threshold", -1, '"novelty"."threshold" is -1'),
    "novelty-threshold-nan": ("threshold", NAN, '"novelty"."threshold" is nan'),
    "novelty-file-elsewhere": ("file", "../../etc/passwd", "does not name calibration.safetensors"),
    "novelty-file-model": ("file", "model.safetensors", "does not name calibration.safetensors"),
}


def _cal_predict(run, photo, capsys):
    return graft_cli(["predict", run, photo, "--workers", "0", "--reject", "auto"], capsys)


@pytest.mark.parametrize("edit", list(CALIBRATION_EDITS))
def test_22_7_calibration_values_out_of_range_refused(exported, tmp_path, photo, capsys, edit):
    key, value, says = CALIBRATION_EDITS[edit]
    run = _copy(exported, tmp_path / "run")
    _edit_json(run / "calibration.json", lambda d: d.__setitem__(key, value))
    rc, out, err = _cal_predict(run, photo, capsys)
    assert_one_line(rc, err, "calibration.json is not a usable calibration", says, "graft calibrate")


@pytest.mark.parametrize("edit", list(NOVELTY_EDITS))
def test_22_7_calibration_novelty_out_of_range_refused(exported, tmp_path, photo, capsys, edit):
    key, value, says = NOVELTY_EDITS[edit]
    run = _copy(exported, tmp_path / "run")
    if json.loads((run / "calibration.json").read_text()).get("novelty") is None:
        pytest.skip("this calibration has no novelty check")
    _edit_json(run / "calibration.json", lambda d: d["novelty"].__setitem__(key, value))
    rc, out, err = _cal_predict(run, photo, capsys)
    assert_one_line(rc, err, "calibration.json is not a usable calibration", says)


@pytest.mark.parametrize("edit", ["threshold", "temperature", "classes-swapped", "extra-key"])
def test_22_7_calibration_edited_within_range_refused(exported, tmp_path, photo, capsys, edit):
    """Values a rule can use, but not the ones calibrate fitted: the calibration's own digest."""
    def change(d):
        if edit == "threshold":
            d["threshold"] = min(1.0, d["threshold"] + 0.01)
        elif edit == "temperature":
            d["temperature"] = d["temperature"] * 1.5
        elif edit == "classes-swapped":
            d["classes"].reverse()
        else:
            d["note"] = "mine"

    run = _copy(exported, tmp_path / "run")
    _edit_json(run / "calibration.json", change)
    rc, out, err = _cal_predict(run, photo, capsys)
    assert rc != 0 and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert "calibration.json" in err and ("changed after `graft calibrate`" in err or "other classes" in err), err


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_22_7_an_edited_calibration_is_refused_by_the_predictor_on_both_engines(exported, tmp_path, photo, engine):
    import graft

    run = _copy(exported, tmp_path / "run")
    _edit_json(run / "calibration.json", lambda d: d.__setitem__("temperature", 0))
    p = graft.Predictor(run, engine="torch" if engine == "torch" else "auto")
    assert p.predict(photo)["predictions"]  # without reject="auto" the calibration is not needed
    with pytest.raises(GraftError, match='"temperature" is 0'):
        p.predict(photo, reject="auto")


def test_22_7_an_untouched_calibration_loads(exported):
    from graft.use.calibrate import load_calibration

    cal = load_calibration(exported)
    assert cal["calibration_sha256"] and 0 < cal["temperature"]


# --- item 12: hostile run files ------------------------------------------------------------------

def _nested(n: int) -> str:
    return "[" * n


HOSTILE_JSON = {
    "100000-brackets": _nested(100_000),
    "100000-braces": '{"a":' * 100_000,
    "70-levels": '{"format": 1, "x": ' + "[" * 70 + "]" * 70 + "}",
    "5000-digit-int": '{"format": 1, "cut": ' + "9" * 5000 + "}",
    "5000-digit-negative": '{"format": ' + "-" + "9" * 5000 + "}",
    "empty": "",
    "not-utf8": '{"format": 1, "classes": ["\xff"]}',
    "truncated": '{"format": 1, "classes": ["a", ',
    "nul": "\0" * 100,
    "a-number": "1",
    "a-string": '"model"',
    "null": "null",
}


def _write_hostile(path: Path, name: str) -> None:
    text = HOSTILE_JSON[name]
    path.write_bytes(text.encode("latin-1") if name == "not-utf8" else text.encode())


@pytest.mark.parametrize("name", list(HOSTILE_JSON))
@pytest.mark.parametrize("command", ["predict", "report", "export", "evaluate", "predictor"])
def test_22_12_hostile_model_json_is_one_line(exported, trained_run, tmp_path, photo, capsys, name, command):
    import graft

    run = _copy(exported, tmp_path / "run")
    _write_hostile(run / "model.json", name)
    if command == "predictor":
        with pytest.raises(GraftError) as e:
            graft.Predictor(run)
        assert "\n" not in str(e.value) and "model.json" in str(e.value)
        return
    argv = {"predict": ["predict", run, photo, "--workers", "0"], "report": ["report", run],
            "export": ["export", run, "--format", "onnx", "--quiet"],
            "evaluate": ["evaluate", run, trained_run.photos, "--workers", "0"]}[command]
    rc, out, err = graft_cli(argv, capsys)
    assert_one_line(rc, err, "model.json")


@pytest.mark.parametrize("name", ["100000-brackets", "5000-digit-int", "70-levels"])
def test_22_12_hostile_model_json_in_serve_is_one_line(exported, tmp_path, capsys, name):
    run = _copy(exported, tmp_path / "run")
    _write_hostile(run / "model.json", name)
    rc, out, err = graft_cli(["serve", run, "--port", "0"], capsys)
    assert_one_line(rc, err, "model.json")


@pytest.mark.parametrize("name", list(HOSTILE_JSON))
def test_22_12_hostile_calibration_json_is_one_line(exported, tmp_path, photo, capsys, name):
    run = _copy(exported, tmp_path / "run")
    _write_hostile(run / "calibration.json", name)
    rc, out, err = _cal_predict(run, photo, capsys)
    assert_one_line(rc, err, "calibration.json")


@pytest.mark.parametrize("name", ["100000-brackets", "5000-digit-int", "empty", "a-number"])
def test_22_12_hostile_metrics_json_in_report_is_one_line(exported, tmp_path, capsys, name):
    run = _copy(exported, tmp_path / "run")
    _write_hostile(run / "metrics.json", name)
    rc, out, err = graft_cli(["report", run], capsys)
    assert_one_line(rc, err, "metrics.json")


def _special(kind: str, path: Path, outside: Path) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "dangling":
        os.symlink(outside / "nothing", path)
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(100 << 20)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder", "dangling", "huge"])
@pytest.mark.parametrize("file", ["model.json", "model.safetensors", "calibration.json"])
def test_22_12_a_run_file_that_is_not_a_file_is_one_line_never_a_hang(exported, tmp_path, photo, kind, file):
    import graft
    from conftest import run_with_timeout

    if file == "model.safetensors" and kind == "huge":
        pytest.skip("a 100 MB model.safetensors is a size a stored backbone has")
    run = _copy(exported, tmp_path / "run")
    _special(kind, run / file, tmp_path)

    def attempt():
        try:
            p = graft.Predictor(run, engine="torch")
            p.predict(photo, reject="auto")
        except GraftError as e:
            return str(e)
        return None

    msg = run_with_timeout(attempt, run, timeout=60)
    assert msg is not None and "\n" not in msg, msg


@pytest.mark.parametrize("header", ["deep", "digits"])
def test_22_12_hostile_safetensors_header_is_one_line(exported, tmp_path, photo, header):
    import graft

    run = _copy(exported, tmp_path / "run")
    body = (_nested(100_000) if header == "deep" else '{"a": ' + "9" * 5000 + "}").encode()
    (run / "model.safetensors").write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(GraftError) as e:
        graft.Predictor(run, engine="torch")
    assert "model.safetensors" in str(e.value) and "\n" not in str(e.value)
