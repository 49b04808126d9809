"""Exports onto a full disk (issue 14, item 8): one line, no temp file left."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, _listing, assert_one_line


_FULL_DISK_CLI = ("import resource, signal, sys\n"
                  "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG\n"
                  "resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))\n"
                  "from graft.cli import main\n"
                  "sys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize("fmt, file", [("torchscript", "model.torchscript.pt"), ("onnx", "model.onnx")])
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_no_temp_file(trained_run, tmp_path, fmt, file):
    """It used to abort the process (torch's C++ writer: SIGABRT, exit 134) and leave its temp file."""
    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    before = _listing(run)
    p = subprocess.run([sys.executable, "-c", _FULL_DISK_CLI, "export", str(run), "--format", fmt],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert_one_line(p.returncode, p.stderr, f"could not write {run / file}",
                    "the disk (or a size limit) is full")
    assert _listing(run) == before  # no temp file, no export.json
