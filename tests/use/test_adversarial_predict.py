"""Predict on a folder of files that are not photos (issue 14), in process and through the CLI: each
is refused with its reason and the photos beside them are still scored."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EXPECTED, SPECIAL, Children, fill_with_specials, huge_png, make_photo, run_with_timeout


@pytest.fixture(scope="module")
def predict_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    folder = root / "in"
    fill_with_specials(folder, root / "outside")
    (folder / "huge.png").write_bytes(huge_png())
    make_photo(np.random.default_rng(1), "red").save(folder / "good.jpg")
    return folder


@pytest.fixture(scope="module")
def predictions(trained_run, predict_folder):
    import graft

    results = run_with_timeout(lambda: graft.predict(trained_run.run, predict_folder, workers=0), predict_folder.parent)
    return {Path(r["path"]).name: r for r in results}


@pytest.fixture(scope="module")
def children(tmp_path_factory, trained_run, predict_folder):
    """`graft predict` on a folder of traps in a child process, started once the shared trained run is built."""
    kids = Children(tmp_path_factory.mktemp("cli-predict"))
    try:
        kids.start("cli-predict", [sys.executable, "-m", "graft", "predict", str(trained_run.run), str(predict_folder),
                                   "--workers", "0"], timeout=300)
        yield kids
    finally:
        kids.close()


@pytest.mark.parametrize("name", [f"{k}.jpg" for k in SPECIAL] + ["huge.png"])
def test_predict_reports_a_refused_file_and_goes_on(predictions, name):
    r = predictions[name]
    assert "predictions" not in r
    reason = "refused: decoding 9400x9400" if name == "huge.png" else EXPECTED[name.removesuffix(".jpg")]
    assert r["error"].startswith(reason), r
    assert "predictions" in predictions["good.jpg"]  # the good photo in the same batch is scored
    assert "predictions" in predictions["inside.jpg"]  # and the one in the folder named folder.jpg


def test_cli_predict_on_a_folder_of_traps_neither_hangs_nor_prints_a_traceback(children):
    proc = children.result("cli-predict")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0  # one photo was scored
    lines = proc.stdout.splitlines()
    assert sum(": error: refused: " in x for x in lines) == len(SPECIAL) + 1, proc.stdout  # + huge.png
    assert len(lines) == len(SPECIAL) + 3  # + good.jpg and folder.jpg/inside.jpg, scored
