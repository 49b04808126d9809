"""graft/cli/: help for every sub-command, one-line errors with exit status 2 and no traceback,
and `graft predict --json`.

The error cases each run the real `graft` executable; they are started together (module fixture)
so their interpreter start-ups overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_photo_folder
from graft.cli import build_parser, main

GRAFT = str(Path(sys.executable).with_name("graft"))
MAIN_COMMANDS = ("train", "predict", "evaluate", "demo")


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: graft")
    for cmd in _subcommands():
        assert cmd in out, cmd
    assert set(MAIN_COMMANDS) <= set(_subcommands())


@pytest.mark.parametrize("cmd", _subcommands())
def test_subcommand_help(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: graft {cmd}")
    assert "--help" in out


# --- graft train's options: TrainConfig's fields ----------------------------------------------------

def _train_options() -> dict:
    parser = build_parser("train")
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in action.choices["train"]._actions}


def test_every_setting_is_a_train_option_or_says_why_not():
    from dataclasses import fields

    from graft.recipe.config import TrainConfig
    from graft.recipe.settings import flags

    options = _train_options()
    for f in fields(TrainConfig):
        if "no_flag" in f.metadata:  # deliberately none: the reason is written beside the field
            assert f.name not in options and f.metadata["no_flag"], f.name
            continue
        option = options[f.name]
        assert option.option_strings[:len(flags(f))] == list(flags(f)), f.name
        assert option.default == f.default and option.help, f.name
        assert option.choices == f.metadata.get("choices"), f.name
    assert [f.name for f in fields(TrainConfig) if "no_flag" in f.metadata] == ["progress"]


# Command-line text for the settings whose option reads a form of its own, and what graft.train gets
TEXT = {"new_hidden": ("512,256", (512, 256)), "budget": ("2m", 120.0), "workers": ("3", 3), "aug_views": ("3", 3),
        "log": ("tensorboard", "tensorboard")}


def _other_than_the_default(f) -> tuple[list[str], object]:
    """(words after the option's name, what graft.train should get) for a value that is not the default."""
    if f.name in TEXT:
        text, value = TEXT[f.name]
        return [text], value
    if isinstance(f.default, bool):
        return [], not f.default
    if f.metadata.get("choices"):
        value = next(c for c in reversed(f.metadata["choices"]) if c != f.default)
        return [value], value
    kind = f.metadata.get("type") or (type(f.default) if f.default is not None else str)
    value = {int: 3, float: 0.3, str: "sample"}[kind]
    return [str(value)], value


def test_every_option_reaches_graft_train_as_its_setting(monkeypatch, capsys):
    """Each option given on the command line (a value other than its default) reaches graft.train
    as the value of its setting; none is dropped, renamed or left as text."""
    from dataclasses import fields

    import graft.recipe
    from graft.recipe.config import TrainConfig
    from graft.recipe.settings import flags

    got = {}

    def fake_train(photos, out, **settings):
        got.update(settings)
        return argparse.Namespace(metrics={"fake": True}, run_dir=out)

    monkeypatch.setattr(graft.recipe, "train", fake_train)
    argv, expected = ["train", "PHOTOS", "--out", "RUN", "--json"], {}
    for f in fields(TrainConfig):
        if "no_flag" in f.metadata:
            continue
        words, expected[f.name] = _other_than_the_default(f)
        flag = flags(f)[0] if words or not f.default else "--no-" + flags(f)[0][2:]
        argv += [flag, *words]
    assert main(argv) == 0 and json.loads(capsys.readouterr().out) == {"fake": True}
    assert {k: v for k, v in got.items() if k != "progress"} == expected and got["progress"] is False
    assert all(expected[name] != f.default for f in fields(TrainConfig) if (name := f.name) in expected)


@pytest.mark.parametrize("words, says", [
    (["--budget", "abc"], "--budget takes seconds like 90, 90s or 2m, got 'abc'"),
    (["--budget", "0"], "--budget must be positive"),
    (["--new-hidden", "512,x"], "--new-hidden takes sizes like 512 or 512,256"),
    (["--inner-split", "1"], "--inner-split must be a number in (0, 1)"),
])
def test_a_setting_given_as_nonsense_text_is_one_line(tmp_path, capsys, words, says):
    from conftest import assert_one_line, graft_cli

    rc, out, err = graft_cli(["train", tmp_path / "no-photos", "--out", tmp_path / "run", *words], capsys)
    assert_one_line(rc, err, says)
    assert rc == 2 and not (tmp_path / "run").exists()


def test_version(capsys):
    import graft

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"graft {graft.__version__}"


# --- the executable: errors and --json --------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, trained_run):
    root = tmp_path_factory.mktemp("cli")
    photos = make_photo_folder(root / "photos", per_class=2)
    one_class = make_photo_folder(root / "one-class", classes=("red",), per_class=2)
    empty_class = make_photo_folder(root / "empty-class", classes=("red",), per_class=2)
    (empty_class / "blue").mkdir()
    run = str(trained_run.run)
    image = str(trained_run.photos / "red" / "red002.jpg")
    out = str(root / "out")
    cases = {
        "missing-folder": ["train", str(root / "nowhere"), "--out", out],
        "one-class": ["train", str(one_class), "--out", out],
        "empty-class": ["train", str(empty_class), "--out", out],
        "workers": ["train", str(photos), "--out", out, "--workers", "-3"],
        "predict-non-run": ["predict", str(photos), image],
        "predict-url": ["predict", run, "https://x/y.jpg"],
        "evaluate-missing": ["evaluate", run, str(root / "nowhere")],
        "predict-json": ["predict", run, image, "--json", "--workers", "0"],
    }
    env = {**os.environ, "GRAFT_CACHE_DIR": str(root / "cache"), "GRAFT_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(root / "torch-home")}
    procs = {name: subprocess.Popen([GRAFT, *argv], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, argv in cases.items()}
    results = {}
    try:
        for name, p in procs.items():
            stdout, stderr = p.communicate(timeout=300)
            results[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    results["_root"] = root
    return results


@pytest.mark.parametrize("case, words", [
    ("missing-folder", ["not found", "nowhere"]),
    ("one-class", ["at least two", "red"]),
    ("empty-class", ["no usable image", "blue"]),
    ("workers", ["--workers", "-3"]),
    ("predict-non-run", ["not a graft run", "model.json"]),
    ("predict-url", ["https://x/y.jpg", "url"]),
    ("evaluate-missing", ["not found", "nowhere"]),
])
def test_errors_are_one_line_exit_2(cli_runs, case, words):
    r = cli_runs[case]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("graft: error: ")
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    assert r.stdout == ""
    assert not (cli_runs["_root"] / "out").exists()


def test_predict_json(cli_runs, trained_run):
    r = cli_runs["predict-json"]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    results = json.loads(r.stdout)
    assert isinstance(results, list) and len(results) == 1
    item = results[0]
    assert item["path"] == str(trained_run.photos / "red" / "red002.jpg")
    preds = item["predictions"]
    assert [p["class"] for p in preds][0] == "red"
    assert {p["class"] for p in preds} == {"red", "blue"}
    assert sum(p["probability"] for p in preds) <= 1.0 + 1e-5


def test_predict_csv_with_reject_and_cache_dir(trained_run, tmp_path, capsys):
    import csv

    photos = make_photo_folder(tmp_path / "photos", per_class=2)
    image = trained_run.photos / "red" / "red002.jpg"  # its features are in the training cache
    argv = ["predict", str(trained_run.run), str(image), str(photos), "--csv", str(tmp_path / "out.csv"),
            "--reject", "0.5", "--cache-dir", str(trained_run.cache), "--workers", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'out.csv'}\n"
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 + 4  # the image, then the 4 photos of the folder
    assert rows[0]["path"] == str(image) and rows[0]["label"] == "red"
    for row in rows[1:]:
        assert row["label"] in ("red", "blue", "unknown") and float(row["probability_1"]) >= float(row["probability_2"])
        assert row["label"] != "unknown" or float(row["confidence"]) < 0.5


def test_commands_that_need_no_network_import_no_torch(tmp_path):
    """`graft --help`, `graft augment list` and `graft cache` start without torch (seconds of
    imports): checked in a fresh interpreter, through graft's own entry point."""
    code = ("import sys\nfrom graft.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules), file=sys.stderr)")
    (tmp_path / "cache").mkdir()
    for argv in (["--help"], ["train", "--help"], ["augment", "list"],
                 ["cache", "--cache-dir", str(tmp_path / "cache")],
                 ["cache", "--cache-dir", str(tmp_path / "cache"), "prune", "--older-than", "30d", "--dry-run"],
                 ["predict", "--help"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
        assert out.stderr.strip().splitlines()[-1] == "LOADED []", (argv, out.stderr)
        assert out.stdout.strip(), argv  # it did print its help, table or cache summary


def test_graft_names_load_on_first_use():
    """`import graft` loads no torch; each public name loads its module when first used, and
    `graft.train` is the function (its package is graft.recipe, so nothing can shadow it)."""
    code = """
import sys, types
import graft
assert "torch" not in sys.modules and graft.GraftError and graft.__version__
assert sorted(set(graft.__all__) - set(dir(graft))) == []
import graft.recipe.config  # the recipe package: importing it does not touch the function graft.train
assert isinstance(graft.train, types.FunctionType) and graft.train.__module__ == "graft.recipe"
from graft import train, predict, evaluate, Predictor, cache_usage, prune_cache
assert graft.predict is predict and Predictor.__name__ == "Predictor" and callable(cache_usage)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_calibrated_probabilities_note_is_one_line_whatever_the_run_is_called(tmp_path, capsys):
    """`graft predict --reject auto` says on stderr that probabilities are temperature-scaled,
    naming the calibration file: a run folder named with a newline stays one line."""
    import argparse
    import json

    from graft.cli.predict import say_calibrated

    run = tmp_path / "run\nnamed"
    run.mkdir()
    (run / "calibration.json").write_text(json.dumps({"temperature": 0.5}))
    say_calibrated(argparse.Namespace(reject="auto", run_dir=str(run)))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "T=0.500" in err and "run\\nnamed" in err
    say_calibrated(argparse.Namespace(reject=None, run_dir=str(run)))
    assert capsys.readouterr().err == ""
