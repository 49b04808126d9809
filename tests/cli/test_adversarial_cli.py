"""The command line (issue 14, items 5, 6, 9, 10, 12, 14): nonsense arguments and unusable folders
refused with one line before any work; predict's output into a closed pipe, names holding a newline,
an empty folder; what train says once."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys

import numpy as np
import pytest

from graft.errors import GraftError

from conftest import assert_one_line, graft_cli, make_photo, make_photo_folder, read_only


# --- nonsense arguments, one line each, before any work (items 5, 6, 10) -------------------------------

BAD_ARGS = [
    (["--epochs", "0"], "--epochs must be a whole number >= 1"),
    (["--epochs", "-1"], "--epochs must be a whole number >= 1"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1"),
    (["--batch-size", "-5"], "--batch-size must be a whole number >= 1"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--weight-decay", "-5"], "--weight-decay must be a finite number >= 0"),
    (["--label-smoothing", "5"], "--label-smoothing must be a number in [0, 1)"),
    (["--label-smoothing", "1"], "--label-smoothing must be a number in [0, 1)"),
    (["--patience", "-1"], "--patience must be a whole number >= 0"),
    (["--aug-views", "-1"], "--aug-views must be auto or a whole number >= 0 and <= 100"),
    (["--val-split", "0"], "--val-split must be a number in (0, 1)"),
    (["--val-split", "1.5"], "--val-split must be a number in (0, 1)"),
    (["--workers", "-2"], "--workers must be"),
    (["--train-stages", "0"], "--train-stages must be a whole number >= 1"),
    (["--strategy", "partial", "--aug", "rotat=15"], "unknown augment override 'rotat'"),
    (["--strategy", "partial", "--aug", "garbage"], "is not key=value"),
    (["--strategy", "partial", "--aug", "rotate=lots"], "rotate"),
    (["--strategy", "head", "--aug-views", "2", "--aug", "flip=7"], "flip"),
    (["--strategy", "head", "--aug-views", "0", "--aug", "flip=0.5"], "--aug is unused"),
    (["--strategy", "head", "--aug-views", "0", "--augment", "heavy"], "--augment is unused"),
    (["--augment", "extreme"], "unknown augment preset 'extreme'"),
]


@pytest.mark.parametrize("args,says", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_nonsense_train_arguments_are_refused_before_any_work(tmp_path, capsys, args, says):
    """No photo is read (PHOTOS does not even exist) and nothing is written: the check comes first."""
    cache = tmp_path / "cache"
    rc, out, err = graft_cli(["train", tmp_path / "no-photos", "--out", tmp_path / "run", "--cache-dir", cache,
                              "--quiet", *args], capsys)
    assert_one_line(rc, err, says)
    assert not cache.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting,value", [("epochs", 0), ("batch_size", 0), ("lr", float("nan")),
                                           ("label_smoothing", 5.0), ("aug_views", -1), ("epochs", 2.5),
                                           ("batch_size", True)])
def test_the_python_api_validates_the_same(tmp_path, setting, value):
    import graft

    with pytest.raises(GraftError, match="must be"):
        graft.train(tmp_path / "no-photos", tmp_path / "run", **{setting: value})
    assert not (tmp_path / "run").exists()


# --- predict's output: a closed pipe, names holding a newline, an empty folder (item 12) ---------------

def test_predict_into_a_closed_pipe_exits_quietly(trained_run, tmp_path):
    """`graft predict RUN DIR | head -2`: the reader has gone; no BrokenPipeError traceback."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        make_photo(np.random.default_rng(i), "blue", (64, 64)).save(folder / f"{i}.jpg")
    p = subprocess.Popen([sys.executable, "-m", "graft", "predict", str(trained_run.run), str(folder),
                          "--workers", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    p.stdout.close()  # as `head` does once it has its lines: every write now fails with EPIPE
    err = p.stderr.read().decode()
    rc = p.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert rc in (0, 141), (rc, err)


def test_a_file_name_with_a_newline_is_one_line_of_predict(trained_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    make_photo(np.random.default_rng(0), "red").save(folder / "a\nb.jpg")
    (folder / "bad\rname.jpg").write_text("not a photo")
    make_photo(np.random.default_rng(1), "blue").save(folder / "plain.jpg")
    rc, out, err = graft_cli(["predict", trained_run.run, folder, "--workers", "0"], capsys)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 3, out
    assert any(ln.startswith(str(folder / "a\\nb.jpg") + ": ") for ln in lines), out
    assert any(ln.startswith(str(folder / "bad\\rname.jpg") + ": error: ") for ln in lines), out


def test_warnings_are_one_line_whatever_the_file_name():
    from graft.cli import _OneLineFormatter

    record = logging.LogRecord("graft", logging.WARNING, __file__, 1, "skipped %s: %s", ("x\ny.jpg", "bad"), None)
    line = _OneLineFormatter("graft: %(levelname)s: %(message)s").format(record)
    assert line == "graft: WARNING: skipped x\\ny.jpg: bad"


def test_predict_on_an_empty_folder_says_so(trained_run, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photo here")
    rc, out, err = graft_cli(["predict", trained_run.run, tmp_path / "empty"], capsys)
    assert_one_line(rc, err, f"no image found in {tmp_path / 'empty'}")
    assert out == ""


@pytest.mark.parametrize("k", ["0", "-3"])
def test_predict_topk_below_one_is_refused(trained_run, tmp_path, capsys, k):
    make_photo(np.random.default_rng(0), "red").save(tmp_path / "p.jpg")
    rc, out, err = graft_cli(["predict", trained_run.run, tmp_path / "p.jpg", "--topk", k], capsys)
    assert_one_line(rc, err, "--topk must be a whole number >= 1")


# --- caches and run folders that cannot be used as they are (item 9) -----------------------------------

@pytest.mark.parametrize("where", ["file", "inside-a-file"])
def test_a_cache_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, cli_log, where):
    photos = make_photo_folder(tmp_path / "photos", per_class=2)
    (tmp_path / "cachefile").write_text("a file of the user's")
    cache = tmp_path / "cachefile" if where == "file" else tmp_path / "cachefile" / "sub"
    rc, out, err = graft_cli(["train", photos, "--out", tmp_path / "run", "--cache-dir", cache, "--quiet",
                              "--strategy", "head", "--workers", "0"], capsys)
    assert_one_line(rc, err, f"--cache-dir {cache}", "which is a file" if where != "file" else "is a file",
                    "give a folder for graft's cache")
    assert (tmp_path / "cachefile").read_text() == "a file of the user's" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["under-a-file", "deep-under-a-file", "read-only-folder"])
def test_an_out_folder_that_cannot_be_made_is_refused_before_training(tmp_path, capsys, cli_log, where):
    photos = make_photo_folder(tmp_path / "photos", per_class=2)
    (tmp_path / "somefile").write_text("the user's")
    (tmp_path / "ro").mkdir()
    out = {"under-a-file": tmp_path / "somefile" / "run", "deep-under-a-file": tmp_path / "somefile" / "a" / "run",
           "read-only-folder": tmp_path / "ro" / "run"}[where]
    cache = tmp_path / "cache"
    with read_only(tmp_path / "ro") if where == "read-only-folder" else contextlib.nullcontext():
        rc, out_text, err = graft_cli(["train", photos, "--out", out, "--cache-dir", cache, "--quiet",
                                       "--strategy", "head", "--workers", "0"], capsys)
    says = "no permission to write in" if where == "read-only-folder" else "which is a file"
    assert_one_line(rc, err, f"--out {out}", says)
    assert not cache.exists()  # refused before the photos were scanned: no digest index, no feature
    assert (tmp_path / "somefile").read_text() == "the user's"


# --- what train says once (item 14) -------------------------------------------------------------------

def test_cli_train_says_no_validation_photo_once(tmp_path, capsys, cli_log, monkeypatch):
    """The report scans the photos again after training: the warning is still one line."""
    import graft.data.folder as folder

    monkeypatch.setattr(folder, "_warned", set())  # as in a fresh process
    photos = make_photo_folder(tmp_path / "photos", per_class=1, seed=11)
    rc, out, err = graft_cli(["train", photos, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache",
                              "--quiet", "--strategy", "head", "--workers", "0"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert err.count("no validation photo") == 1, err
    assert (tmp_path / "run" / "report.html").is_file()


def test_cli_train_with_a_text_file_as_weights_says_what_it_is(tmp_path, capsys, cli_log):
    photos = make_photo_folder(tmp_path / "photos", per_class=2)
    (tmp_path / "notes.txt").write_text("these are my notes, not weights\n")
    rc, out, err = graft_cli(["train", photos, "--out", tmp_path / "run", "--weights", tmp_path / "notes.txt",
                              "--cache-dir", tmp_path / "cache", "--quiet", "--strategy", "head"], capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("graft: error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "is not a weights file: neither safetensors nor a PyTorch checkpoint" in errors[0], err
    assert str(tmp_path / "notes.txt") in errors[0] and not errors[0].rstrip().endswith(": 101")
    assert not (tmp_path / "run" / "model.json").exists()


# --- issue 22, finding 13: numbers, refused in one line as they are parsed -------------------------------

BAD_NUMBERS_22 = [
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295"),
    (["--seed", "99999999999999999999999"], "--seed must be a whole number from 0 to 4294967295"),
    (["--seed", "4294967296"], "--seed must be a whole number from 0 to 4294967295"),
    (["--backbone", "auto", "--budget", "0"], "--budget must be positive"),
    (["--backbone", "auto", "--budget", "nan"], "--budget must be a finite number of seconds"),
    (["--backbone", "auto", "--budget", "inf"], "--budget must be a finite number of seconds"),
    (["--backbone", "auto", "--budget", "1e400"], "--budget must be a finite number of seconds"),
    (["--budget=-1m"], "--budget must be positive"),
    (["--aug-views", "1000000"], "--aug-views must be auto or a whole number >= 0 and <= 100"),
    (["--aug-views", "101"], "--aug-views must be auto or a whole number >= 0 and <= 100"),
]


@pytest.mark.parametrize("args,says", BAD_NUMBERS_22, ids=[" ".join(a) for a, _ in BAD_NUMBERS_22])
def test_22_13_train_numbers_refused_before_any_work(tmp_path, capsys, args, says):
    """`--seed 99999999999999999999999` crashed inside torch.manual_seed with a traceback; `--seed -1`
    and `--budget nan` were taken."""
    cache = tmp_path / "cache"
    rc, out, err = graft_cli(["train", tmp_path / "no-photos", "--out", tmp_path / "run", "--cache-dir", cache,
                              "--quiet", *args], capsys)
    assert_one_line(rc, err, says)
    assert not cache.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1])
def test_22_13_every_seed_in_range_is_taken(seed):
    from graft.recipe.config import TrainConfig

    assert TrainConfig(seed=seed).seed == seed


BAD_SERVE_22 = [
    (["--port", "99999"], "--port must be a whole number from 0 to 65535"),
    (["--port", "-1"], "--port must be a whole number from 0 to 65535"),
    (["--port", "65536"], "--port must be a whole number from 0 to 65535"),
    (["--port", "80.5"], "--port must be a whole number from 0 to 65535"),
    (["--max-upload", "1e400"], "--max-upload takes a size"),
    (["--max-upload", "0"], "--max-upload must be a size from 1 B to 1.0 GB"),
    (["--max-upload", "2GB"], "--max-upload must be a size from 1 B to 1.0 GB"),
    (["--max-upload", "99999999999999999999TB"], "--max-upload must be a size"),
    (["--batch-window-ms", "nan"], "--batch-window-ms must be a number from 0 to 10000"),
    (["--batch-window-ms", "inf"], "--batch-window-ms must be a number from 0 to 10000"),
    (["--batch-window-ms", "-1"], "--batch-window-ms must be a number from 0 to 10000"),
    (["--max-batch", "0"], "--max-batch must be a whole number from 1 to 1024"),
    (["--max-batch", "1e9"], "--max-batch must be a whole number from 1 to 1024"),
    (["--threads", "0"], "--threads must be a whole number from 1 to 1024"),
    (["--max-megapixels", "0"], "--max-megapixels must be a number above 0"),
    (["--max-megapixels", "nan"], "--max-megapixels must be a number above 0"),
    (["--megapixels-per-s", "-5"], "--megapixels-per-s must be a number above 0"),
    (["--decoders", "0"], "--decoders must be a whole number from 1 to 64"),
    (["--header-timeout", "0"], "--header-timeout must be a number above 0"),
    (["--body-timeout", "inf"], "--body-timeout must be a number above 0"),
]


@pytest.mark.parametrize("args,says", BAD_SERVE_22, ids=[" ".join(a) for a, _ in BAD_SERVE_22])
def test_22_13_serve_numbers_refused_as_parsed(tmp_path, capsys, args, says):
    """Refused while the options are parsed, before RUN is even looked at (it does not exist here):
    `--port 99999` used to reach socket.bind and crash with OverflowError."""
    rc, out, err = graft_cli(["serve", tmp_path / "no-run", *args], capsys)
    assert_one_line(rc, err, says)
    assert "usage:" not in err


def test_22_13_a_port_out_of_range_is_one_line_from_listen_too():
    from graft.use.serve import listen

    with pytest.raises(GraftError, match="cannot listen on 127.0.0.1:99999"):
        listen("127.0.0.1", 99999)


def test_22_13_options_of_serve_reach_its_config(tmp_path):
    from graft.cli import build_parser
    from graft.use.serve import cli_config

    args = build_parser("serve").parse_args(["serve", str(tmp_path), "--max-upload", "512KB", "--port", "0",
                                             "--max-megapixels", "12.5", "--decoders", "3", "--allow-host",
                                             "photos.lan", "--allow-origin", "https://a.example"])
    cfg = cli_config(args)
    assert (cfg.max_upload, cfg.max_pixels, cfg.decoders) == (512 * 1024, 12_500_000, 3)
    assert cfg.allow_hosts == ("photos.lan",) and cfg.allow_origins == ("https://a.example",)


# the file-size limit: a child with RLIMIT_FSIZE of 150 KB, as `ulimit -f 150` sets it
ULIMIT_TRAIN = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (150 * 1024, resource.RLIM_INFINITY))
from graft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_22_13_a_file_size_limit_is_one_line_not_a_worker_crash(tmp_path):
    """`ulimit -f 150`: the loader's workers could not size their shared-memory batches ("File too
    large") and the run ended in a traceback; now one line that names the limit, on a line of its
    own after the progress bar (issue 22: error lines were glued onto the bar)."""
    photos = make_photo_folder(tmp_path / "photos", per_class=6)
    p = subprocess.run([sys.executable, "-c", ULIMIT_TRAIN, "train", str(photos), "--out", str(tmp_path / "run"),
                        "--cache-dir", str(tmp_path / "cache"), "--workers", "2", "--strategy", "head",
                        "--aug-views", "0"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    err = p.stderr
    assert p.returncode == 2 and "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.split("\n") if "graft: error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("graft: error: a file-size limit of 150 KB"), err[-2000:]
    assert "ulimit -f" in errors[0]


@pytest.mark.parametrize("make", [lambda: OSError(27, "File too large"),
                                  lambda: RuntimeError("unable to resize file </torch_1> to the right size: "
                                                       "File too large (27)")])
def test_22_13_file_size_errors_are_named_only_under_a_limit(make):
    """Without a limit an EFBIG is not blamed on one (it stays the bug it is)."""
    import resource

    from graft.cli import file_size_limit

    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        pytest.skip("this process already runs under a file-size limit")
    assert file_size_limit(make()) is None
    assert file_size_limit(OSError(28, "No space left on device")) is None
