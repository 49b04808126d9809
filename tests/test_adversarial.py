"""The adversarial suite (issue 14): what a hostile or careless user, a bad disk or a full one does
to graft, each case built here in a temp folder, each kept fixed by a test.

- Files that are not photos but are named like them (a FIFO named x.jpg, a symlink to /dev/zero,
  a socket, a 300 MB sparse file, a folder) through every reader of photos: probe, decode, the
  evaluation preprocessing that predict uses, the folder scan that train uses, and predict
  itself. Readers that could block or read without end run in a child process with a data
  limit and a per-case timeout, so a regression fails its cases instead of hanging the suite.
- Images whose decoding would not fit the memory budget (a 257 KB 9400x9400 PNG).
- Decoded-photo cache entries damaged on disk.
- Training with no validation photo: strict JSON, no validation loss made up.
- Full disks (a file size limit, RLIMIT_FSIZE, and a 64 KB tmpfs where mounting is allowed) under
  every writer: one GraftError line naming the file, no temp file left, the old file intact; and
  the mode of what is written.
- Weights files: the default backbone from safetensors, and bad files given as --weights.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graft._util.atomic import atomic_path, write_bytes, write_json
from graft.cache.layout import MARKER as CACHE_MARKER
from graft.data.decoded import DecodedCache
from graft.data.images import probe_image, read_image
from graft.errors import GraftError, ImageError, WeightsError

from conftest import make_photo, make_photo_folder

ROOT = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 10  # a reader that has not answered by then is hanging
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- files named like photos that are not regular files ------------------------------------------

SPECIAL = ["fifo", "symlink-to-fifo", "symlink-to-dev-zero", "symlink-to-dev-urandom", "symlink-to-dev-null",
           "socket", "folder", "sparse-300MB"]
# what each reader must say about each: the start of its reason
EXPECTED = {kind: "refused: not a regular file" for kind in SPECIAL}
EXPECTED["sparse-300MB"] = "refused: 300 MB is over the 256 MB limit"


def make_special(kind: str, path: Path, outside: Path) -> None:
    """Put a file of `kind` at `path` (helpers, like the FIFO a symlink points to, go in `outside`)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-to-fifo":
        target = outside / f"pipe-{path.stem}"
        os.mkfifo(target)
        path.symlink_to(target)
    elif kind.startswith("symlink-to-dev-"):
        path.symlink_to("/dev/" + kind.removeprefix("symlink-to-dev-"))
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()
    elif kind == "folder":
        path.mkdir()
        make_photo(np.random.default_rng(0), "red").save(path / "inside.jpg")
    elif kind == "sparse-300MB":
        with open(path, "wb") as f:
            f.truncate(300 << 20)  # no disk used; but read whole, 300 MB of memory
    else:
        raise ValueError(kind)


def fill_with_specials(folder: Path, outside: Path, ext: str = ".jpg") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in SPECIAL:
        paths[kind] = folder / f"{kind}{ext}"
        make_special(kind, paths[kind], outside)
    return paths


def unblock_fifos(*folders: Path) -> None:
    """Open every FIFO under `folders` for writing and close it: a reader blocked in open() on
    it gets end-of-file, so a regressed reader fails its test instead of hanging the suite."""
    for folder in folders:
        for p in Path(folder).rglob("*"):
            with contextlib.suppress(OSError):
                if stat.S_ISFIFO(os.stat(p).st_mode):
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))


def run_with_timeout(fn, *unblock: Path, timeout: float = 120):
    """fn() in a thread; if it has not returned after `timeout` s, unblock FIFOs and fail."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for _ in range(50):
            unblock_fifos(*unblock)
            t.join(0.1)
            if not t.is_alive():
                break
        pytest.fail(f"no answer after {timeout} s (hung)")
    if "error" in box:
        raise box["error"]
    return box["result"]


# The readers run in a child process: a data limit turns an unbounded read into a MemoryError
# in a second, a thread per case and FIFO unblocking turn a hang into a failed case.
_READERS_CHILD = textwrap.dedent("""
    import json, os, resource, stat, sys, threading, time, traceback
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))
    from pathlib import Path
    from graft.backbones import DEFAULT_PREPROCESSING
    from graft.data import probe_image, read_image, scan_class_folders
    from graft.errors import ImageError

    def unblock(folder):
        for p in Path(folder).rglob("*"):
            try:
                if stat.S_ISFIFO(os.stat(p).st_mode):
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    READERS = {
        "probe": lambda p: probe_image(p)[1],
        "read": lambda p: read_image(p).size,
        "read-reduced": lambda p: read_image(p, min_short_side=64).size,
        "preprocess": lambda p: tuple(DEFAULT_PREPROCESSING.load(p).shape),
        "scan": lambda p: scan_class_folders(p)[2],
    }
    spec = json.loads(sys.argv[1])
    out = {}
    for case_id, reader, path in spec["cases"]:
        box = {}
        def run():
            t0 = time.perf_counter()
            try:
                box["result"] = {"ok": True, "value": READERS[reader](path)}
            except ImageError as e:
                box["result"] = {"ok": False, "error": "ImageError", "reason": e.reason}
            except BaseException as e:
                box["result"] = {"ok": False, "error": type(e).__name__, "reason": str(e)[:300],
                                 "traceback": traceback.format_exc()[-800:]}
            box["result"]["seconds"] = round(time.perf_counter() - t0, 3)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(spec["timeout"])
        if t.is_alive():
            while t.is_alive():
                unblock(spec["unblock"])
                t.join(0.1)
            box["result"] = {"ok": False, "error": "hang", "reason": f"no answer in {spec['timeout']} s"}
        out[case_id] = box["result"]
    print("RESULTS " + json.dumps(out, default=str))
""")


FILE_READERS = ["probe", "read", "read-reduced", "preprocess"]


class Children:
    """Child processes started together when the module starts: each imports torch, so side by
    side (and beside the in-process tests' own fixtures) they cost about one import."""

    def __init__(self, home: Path):
        self.procs: dict[str, tuple[subprocess.Popen, float]] = {}
        self.done: dict[str, subprocess.CompletedProcess] = {}
        # the tests' isolation (conftest's _isolated) is not set up yet when a module fixture runs
        self.env = {**os.environ, "GRAFT_CACHE_DIR": str(home / "cache"), "GRAFT_OFFLINE": "1",
                    "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(home / "torch-home")}

    def start(self, name: str, argv: list[str], timeout: float) -> None:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env=self.env)
        self.procs[name] = (p, timeout)

    def result(self, name: str) -> subprocess.CompletedProcess:
        if name not in self.done:
            p, timeout = self.procs[name]
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                err += f"\n(killed after {timeout} s: hung)"
            self.done[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        return self.done[name]

    def results_line(self, name: str) -> dict:
        r = self.result(name)
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULTS ")), None)
        assert line, f"{name} child failed (rc {r.returncode}): {r.stderr[-2000:]}"
        return json.loads(line.removeprefix("RESULTS "))

    def close(self) -> None:
        for p, _ in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def children(tmp_path_factory, request):
    """Started at once: every special file through every file reader and a class folder holding
    them all through the scan; every writer under a file size limit; `graft predict` on a folder
    of traps (after the shared trained run is built, beside the first two)."""
    root = tmp_path_factory.mktemp("special")
    kids = Children(root)
    paths = fill_with_specials(root / "files", root / "outside")
    photos = make_photo_folder(root / "photos", per_class=2)
    fill_with_specials(photos / "red", root / "outside-scan")
    cases = [[f"{reader}:{kind}", reader, str(p)] for kind, p in paths.items() for reader in FILE_READERS]
    cases.append(["scan", "scan", str(photos)])
    spec = json.dumps({"cases": cases, "unblock": str(root), "timeout": CASE_TIMEOUT_S})
    kids.start("readers", [sys.executable, "-c", _READERS_CHILD, spec], timeout=120 + len(cases) * CASE_TIMEOUT_S)
    fsize = tmp_path_factory.mktemp("fsize")
    kids.start("fsize", [sys.executable, "-c", _FULL_DISK_CHILD, str(fsize), str(Path(__file__).parent)],
               timeout=300)
    kids.scan_photos = photos
    try:
        run = request.getfixturevalue("trained_run").run
        folder = request.getfixturevalue("predict_folder")
        kids.start("cli-predict", [sys.executable, "-m", "graft", "predict", str(run), str(folder), "--workers", "0"],
                   timeout=300)
        yield kids
    finally:
        kids.close()


@pytest.fixture(scope="module")
def special_results(children):
    return children.results_line("readers"), children.scan_photos


@pytest.mark.parametrize("reader", FILE_READERS)
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_file_that_is_not_a_regular_photo_is_refused_by_every_reader_without_hanging(special_results, reader, kind):
    got = special_results[0][f"{reader}:{kind}"]
    assert got["error"] == "ImageError", got  # not a hang, not a MemoryError, not a traceback
    assert got["reason"].startswith(EXPECTED[kind]), got
    assert got["seconds"] < CASE_TIMEOUT_S


@pytest.mark.parametrize("kind", SPECIAL)
def test_scanning_a_class_folder_skips_a_non_regular_file_with_one_line(special_results, kind):
    got, photos = special_results
    scan = got["scan"]
    assert scan["ok"], scan  # the scan (what train does first) finished: no hang, no MemoryError
    skipped = [s for s in scan["value"] if Path(s["path"]).name == f"{kind}.jpg"]
    if kind == "folder":  # a folder named x.jpg is a folder: its photo is scanned, it is not skipped
        assert not skipped
        return
    assert len(skipped) == 1 and skipped[0]["reason"].startswith(EXPECTED[kind]), scan["value"]
    assert "\n" not in skipped[0]["reason"]


def test_a_sparse_file_is_refused_before_any_byte_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    make_special("sparse-300MB", big, tmp_path)
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(ImageError, match="over the 256 MB limit"):
        probe_image(big)
    from graft.data.images import MAX_FILE_BYTES

    assert not reads and MAX_FILE_BYTES == 256 << 20


# --- predict on a folder of them, in process and through the CLI ----------------------------------

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


# --- images whose decoding would not fit the memory budget ------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def big_blank_png(width: int, height: int, color_type: int = 2, depth: int = 8) -> bytes:
    """A valid PNG of `width` x `height` black pixels, built row by row (never whole in memory)."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    row = b"\0" * (1 + width * channels * depth // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


_HUGE = {}


def huge_png() -> bytes:
    """The issue's file: 9400x9400 RGB, about 257 KB, 265 MB once decoded (just under Pillow's
    decompression-bomb limit, and far under graft's pixels-per-byte density limit)."""
    if "png" not in _HUGE:
        _HUGE["png"] = big_blank_png(9400, 9400)
    return _HUGE["png"]


def test_the_9400_pixel_png_is_small_and_passes_the_older_checks():
    data = huge_png()
    assert 250_000 < len(data) < 270_000
    assert 9400 * 9400 < Image.MAX_IMAGE_PIXELS and 9400 * 9400 < 5_000 * len(data)


@contextlib.contextmanager
def count_decodes():
    """Every call of Pillow's ImageFile.load (what decodes pixels), by file name."""
    from PIL import ImageFile

    calls = []
    real = ImageFile.ImageFile.load

    def load(self):
        calls.append(Path(getattr(self, "filename", "") or "?").name)
        return real(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageFile.ImageFile, "load", load)
        yield calls


@pytest.mark.parametrize("call", ["probe", "read", "read-reduced", "scan"])
def test_a_png_that_would_double_peak_memory_is_refused_before_decoding(tmp_path, call):
    from graft.data import scan_class_folders

    photos = make_photo_folder(tmp_path / "photos", per_class=2)
    path = photos / "red" / "huge.png"
    path.write_bytes(huge_png())
    decodes = count_decodes()
    fn = {"probe": lambda: probe_image(path), "read": lambda: read_image(path),
          "read-reduced": lambda: read_image(path, min_short_side=64)}
    with decodes as decoded:
        if call == "scan":
            _, samples, skipped = scan_class_folders(photos)
            assert [s["path"] for s in skipped] == [str(path)] and len(samples) == 4
            reason = skipped[0]["reason"]
        else:
            with pytest.raises(ImageError) as e:
                fn[call]()
            reason = e.value.reason
    assert "huge.png" not in decoded  # refused from the header (Pillow's PNG getexif() would decode it)
    assert reason.startswith("refused: decoding 9400x9400 RGB pixels takes about 253 MB, over the 192 MB budget")


@pytest.mark.parametrize("exif", [None, 1, 6], ids=["no-exif", "exif-upright", "exif-rotated"])
def test_probing_a_png_never_decodes_it(tmp_path, exif):
    path = tmp_path / "p.png"
    img = Image.new("RGB", (30, 20), (1, 2, 3))
    kw = {}
    if exif:
        e = Image.Exif()
        e[0x0112] = exif
        kw["exif"] = e.tobytes()
    img.save(path, **kw)
    with count_decodes() as decoded:
        fmt, size = probe_image(path)
    assert not decoded and fmt == "PNG"
    assert size == ((20, 30) if exif == 6 else (30, 20))  # Pillow writes EXIF before the pixels: still read
    assert read_image(path).size == size


@pytest.mark.parametrize("kwargs", [{}, {"min_short_side": 16}], ids=["full", "reduced"])
@pytest.mark.parametrize("damage", ["garbage", "zeros"])
def test_a_png_with_damaged_pixel_data_is_refused_not_half_decoded(tmp_path, damage, kwargs):
    # found by bench/fuzz_images.py: 226 of 1,000 mutated PNGs were "read" half decoded, because
    # the EXIF lookup decoded them first and swallowed the error, and the second load returned
    # what the failed one had left
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    mid = data.find(b"IDAT") + 8 + 200
    data[mid:mid + 64] = b"\xff" * 64 if damage == "garbage" else bytes(64)
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    assert probe_image(path) == ("PNG", (64, 48))  # the header is fine
    with pytest.raises(ImageError, match="cannot decode image"):
        read_image(path, **kwargs)


def _jpeg(path: Path, size, mode="RGB") -> Path:
    Image.new(mode, size, 128 if mode == "L" else (200, 30, 40)).save(path, quality=90)
    return path


@pytest.mark.parametrize("kwargs, expected", [
    ({}, (600, 450)),  # full size would be 3.2 MB: 1/2 (810 KB) is the first DCT scale that fits
    ({"min_size": (1200, 900)}, (600, 450)),  # asked for full size: the budget wins
    ({"min_short_side": 100}, (150, 113)),  # asked for less: the reduction asked for
])
def test_a_jpeg_over_the_budget_is_decoded_reduced(tmp_path, monkeypatch, kwargs, expected):
    monkeypatch.setenv("GRAFT_DECODE_BUDGET_MB", "1")
    path = _jpeg(tmp_path / "big.jpg", (1200, 900))
    assert probe_image(path) == ("JPEG", (1200, 900))  # accepted: it can be decoded reduced
    img = read_image(path, **kwargs)
    assert img.size == expected and img.mode == "RGB"


@pytest.mark.parametrize("mode, size, fits", [
    ("RGB", (600, 500), True),  # 3 bytes a pixel: 0.9 MB
    ("RGB", (700, 600), False),  # 1.26 MB
    ("L", (500, 500), True),  # 1 + 3 (its RGB copy): 1.0 MB
    ("L", (600, 500), False),  # 1.2 MB
    ("RGBA", (250, 250), True),  # 15 bytes a pixel through alpha compositing: 0.94 MB
    ("RGBA", (300, 300), False),  # 1.35 MB
    ("I;16", (300, 300), True),  # 10 bytes a pixel: 0.9 MB
    ("I;16", (400, 300), False),  # 1.2 MB
])
def test_the_decode_budget_counts_what_each_mode_costs(tmp_path, monkeypatch, mode, size, fits):
    monkeypatch.setenv("GRAFT_DECODE_BUDGET_MB", "1")
    path = tmp_path / "x.png"
    img = Image.new(mode, size, 7 if mode in ("L", "I;16") else (1, 2, 3, 4)[:len(mode)])
    img.save(path)
    if fits:
        assert probe_image(path)[1] == size and read_image(path).size == size
    else:
        with pytest.raises(ImageError, match="over the 1 MB budget"):
            probe_image(path)
        with pytest.raises(ImageError, match="over the 1 MB budget"):
            read_image(path)


def _webp(kind: str) -> bytes:
    import io

    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    buf = io.BytesIO()
    if kind == "animated-canvas-20x983054":  # found by bench/fuzz_images.py: 150 MB at Image.open
        frames = [Image.new("RGB", (20, 14), (i * 60, 0, 0)) for i in range(2)]
        frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=50)
        data = bytearray(buf.getvalue())
        i = data.find(b"VP8X")
        data[i + 15:i + 18] = (983054 - 1).to_bytes(3, "little")
        return bytes(data)
    if kind == "lossless-declaring-16383x16383":
        Image.new("RGB", (20, 14)).save(buf, "WEBP", lossless=True)
        data = bytearray(buf.getvalue())
        data[21:25] = ((16383 - 1) | (16383 - 1) << 14).to_bytes(4, "little")
        return bytes(data)
    size, mode = {"rgba-300x300": ((300, 300), "RGBA"), "rgb-200x200": ((200, 200), "RGB")}[kind]
    img = Image.new(mode, size, (10, 20, 30, 128)[:len(mode)])
    img.putpixel((0, 0), (200, 0, 0, 7)[:len(mode)])
    img.save(buf, "WEBP", lossless=True)
    return buf.getvalue()


@pytest.mark.parametrize("kind, says", [
    ("animated-canvas-20x983054", "refused: declares 20x983054 pixels in only"),
    ("lossless-declaring-16383x16383", "refused: declares 16383x16383 pixels in only"),
    ("rgba-300x300", "refused: decoding 300x300 WebP pixels takes about 2 MB, over the 1 MB budget"),
    ("rgb-200x200", None),  # 11 bytes a pixel with the decoder's canvases: 0.4 MB, fits
])
def test_a_webp_is_judged_by_its_header_before_pillow_allocates_its_canvas(tmp_path, monkeypatch, kind, says):
    monkeypatch.setenv("GRAFT_DECODE_BUDGET_MB", "1")
    path = tmp_path / "x.webp"
    path.write_bytes(_webp(kind))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    if says is None:
        assert probe_image(path) == ("WEBP", (200, 200)) and read_image(path).size == (200, 200)
        return
    for call in (probe_image, read_image):
        with pytest.raises(ImageError) as e:
            call(path)
        assert e.value.reason.startswith(says), e.value.reason
    assert not opened  # refused from the header: Pillow never saw the file


# --- decoded-photo cache entries damaged on disk -----------------------------------------------------

def _damage(entry: Path, how: str) -> None:
    data = bytearray(entry.read_bytes())
    header = data.index(b"\n") + 1  # the .npy header ends with a newline
    if how == "pixels-zeroed":  # the issue's case: header and size kept
        data[header:-32] = bytes(len(data) - header - 32)
    elif how == "one-bit-flipped":
        data[header + 5] ^= 0x10
    elif how == "checksum-zeroed":
        data[-32:] = bytes(32)
    elif how == "truncated":
        del data[-1:]
    elif how == "extended":
        data += b"\0"
    elif how == "header-garbage":
        data[:header] = b"x" * header
    elif how == "shape-changed":  # same bytes, another shape: the header still parses
        text = data[:header].decode("latin1")
        h, w = (int(v) for v in text[text.index("(") + 1:text.index(")")].split(",")[:2])
        new = text.replace(f"({h}, {w}, 3)", f"({w}, {h}, 3)")
        data[:header] = new.encode("latin1")
    else:
        raise ValueError(how)
    entry.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["pixels-zeroed", "one-bit-flipped", "checksum-zeroed", "truncated", "extended",
                                 "header-garbage", "shape-changed"])
def test_a_damaged_decoded_photo_is_discarded_with_one_warning_and_decoded_again(tmp_path, caplog, how):
    photo = tmp_path / "p.png"
    make_photo(np.random.default_rng(5), "blue", size=(40, 30)).save(photo)
    expected = np.asarray(read_image(photo))
    DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (40, 30), 1)  # decodes and stores
    (entry,) = (tmp_path / "dc").rglob("*.npy")
    _damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="graft"):
        got = DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (40, 30), 1)
        again = DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (40, 30), 1)  # the rewritten entry
    assert np.array_equal(got, expected) and np.array_equal(again, expected)
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and str(entry) in warnings[0], caplog.text
    assert np.array_equal(np.load(entry), expected)  # a standard .npy again, with the right pixels


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-zero", "folder"])
def test_something_else_at_a_decoded_entry_path_is_neither_read_nor_replaced(tmp_path, kind):
    photo = tmp_path / "p.png"
    make_photo(np.random.default_rng(5), "blue", size=(40, 30)).save(photo)
    cache = DecodedCache(tmp_path / "dc")
    cache.load(photo, "cd" * 32, (40, 30), 1)
    (entry,) = (tmp_path / "dc").rglob("*.npy")
    entry.unlink()
    make_special(kind, entry, tmp_path)
    got = run_with_timeout(lambda: DecodedCache(tmp_path / "dc").load(photo, "cd" * 32, (40, 30), 1), tmp_path,
                           timeout=30)
    assert np.array_equal(got, np.asarray(read_image(photo)))
    assert not stat.S_ISREG(os.lstat(entry).st_mode)  # left as it was


def test_a_decoded_photo_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.fstat(fd).st_size)) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", Path(b).name)) or real_replace(a, b))
    photo = tmp_path / "p.png"
    Image.new("RGB", (12, 9), (10, 20, 30)).save(photo)
    DecodedCache(tmp_path / "dc").load(photo, "ef" * 32, (12, 9), 1)
    (entry,) = (tmp_path / "dc").rglob("*.npy")
    assert calls == [("fsync", entry.stat().st_size), ("replace", entry.name)]


# --- no validation photo ------------------------------------------------------------------------------

def _strict_json(path: Path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_training_with_no_validation_photo_writes_strict_json_and_makes_up_no_validation_loss(tmp_path, caplog,
                                                                                             default_backbone):
    import graft

    photos = make_photo_folder(tmp_path / "photos", per_class=1, seed=11)  # 1 photo a class: all train
    with caplog.at_level(logging.WARNING, logger="graft"):
        result = graft.train(photos, tmp_path / "run", backbone=default_backbone, cache_dir=tmp_path / "cache",
                             strategy="head", workers=0, progress=False, report=True)
    m = _strict_json(result.run_dir / "metrics.json")
    assert m["n_val"] == 0 and m["val_accuracy"] is None and m["val_loss"] is None
    assert all(v is None for v in m["history"]["val_loss"] + m["history"]["val_accuracy"])  # no number made up
    # nothing to cross-validate with one photo a class: the default L2 probe, said so, no score made up
    assert m["head"]["folds"] == 0 and "no cross-validation" in m["head"]["balance"]
    assert m["cv_accuracy"] == {"mean": None, "std": None}
    said = [r.getMessage() for r in caplog.records if "no validation photo" in r.getMessage()]
    assert len(said) == 1, said  # the report scans the photos again: still said once
    assert (result.run_dir / "report.html").is_file()


def test_the_head_without_validation_features_keeps_the_last_epoch():
    from graft.heads.softmax import HeadConfig, HeadTrainer, fold_standardisation

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 8)).astype(np.float32), np.arange(12) % 3
    trainer = HeadTrainer(x, y, np.zeros((0, 8), np.float32), [], 3, HeadConfig(epochs=9, patience=2))
    while trainer.epoch < 9:
        assert trainer.run_epoch()  # never stops early
        assert trainer.validate() == (None, None)
    last = fold_standardisation(trainer.layer, trainer.mean, trainer.std)
    res = trainer.result()
    assert res.best_epoch == 9 and res.epochs_run == 9
    assert torch.equal(res.head.weight, last.weight) and torch.equal(res.head.bias, last.bias)
    assert res.history["val_loss"] == [None] * 9 and len(set(res.history["train_loss"])) == 9


def test_fine_tuning_without_validation_photos_reports_no_validation_figures():
    from graft.finetune.loop import _validate

    assert _validate(None, None, None, torch.zeros(0, dtype=torch.long), torch.device("cpu"), None) == (None, None)


@pytest.mark.parametrize("value, written", [
    (float("nan"), None), (float("inf"), None), (-math.inf, None), (np.float64("nan"), None),
    ([1.0, float("nan")], [1.0, None]), ({"a": {"b": (float("inf"), 2)}}, {"a": {"b": [None, 2]}}),
], ids=["nan", "inf", "-inf", "np-nan", "list", "nested"])
def test_json_written_by_graft_is_strict(tmp_path, value, written):
    write_json(tmp_path / "m.json", {"x": value, "ok": 0.5})
    assert _strict_json(tmp_path / "m.json") == {"x": written, "ok": 0.5}


# --- full disks, and one error path for every writer -------------------------------------------------

def _write_shard(d: Path):
    from graft.cache import FeatureCache

    FeatureCache(d / "cache", {"arch": "t"}).put([f"n{i}" for i in range(100)], np.ones((100, 1280), np.float32))


def _write_model(d: Path):
    from torch import nn

    from graft.backbones import resolve_backbone
    from graft.run.store import save_run

    save_run(d / "run", head=nn.Linear(1280, 50), classes=[f"c{i}" for i in range(50)],
             source=resolve_backbone("default"), strategy="head")


def _write_checkpoint(d: Path):
    from torch import nn

    from graft.finetune.loop import FinetuneConfig, _save_checkpoint

    net = nn.Linear(1280, 50)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    _save_checkpoint(d / "run" / "checkpoint.pt", net, opt, sched, {"epoch": 1}, None, FinetuneConfig())


def _write_json(d: Path):
    write_json(d / "run" / "metrics.json", {"history": list(range(40_000))})


def _write_bytes(d: Path):
    write_bytes(d / "run" / "report.html", b"<p>" * 100_000)


# writer -> (the file it writes, or None for a new name each time; how it writes it)
WRITERS = {"shard": (None, _write_shard), "model.safetensors": ("run/model.safetensors", _write_model),
           "checkpoint": ("run/checkpoint.pt", _write_checkpoint), "json": ("run/metrics.json", _write_json),
           "bytes": ("run/report.html", _write_bytes)}
PREVIOUS = b"the previous version"


def attempt_write(name: str, d: Path) -> dict:
    """Run one writer into `d` over a previous version of its file; what it raised, and what it left."""
    target, write = WRITERS[name]
    old = d / target if target else None
    if old is not None:
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_bytes(PREVIOUS)
    try:
        write(d)
        outcome = {"error": None}
    except GraftError as e:
        outcome = {"error": "GraftError", "message": str(e)}
    except BaseException as e:  # noqa: BLE001 - reported
        outcome = {"error": type(e).__name__, "message": str(e)[:500]}
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    return {**outcome, "files": files, "old": old.read_bytes().decode("latin1")[:40] if old else None}


_FULL_DISK_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import test_adversarial as t
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    root = Path(sys.argv[1])
    for name in t.WRITERS:
        (root / name).mkdir()
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))  # the previous versions fit
    print("RESULTS " + json.dumps({name: t.attempt_write(name, root / name) for name in t.WRITERS}))
""")


@pytest.fixture(scope="module")
def rlimit_results(children):
    """Every writer under a 64 KB file size limit (`ulimit -f`), in a child process."""
    return children.results_line("fsize")


@pytest.fixture(scope="module")
def tiny_tmpfs(tmp_path_factory):
    """A 64 KB tmpfs (a real full disk: ENOSPC), where this user may mount one."""
    where = tmp_path_factory.mktemp("tmpfs")
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


def _check_failed_write(name: str, got: dict, why: str) -> None:
    assert got["error"] == "GraftError", got  # not a SafetensorError, RuntimeError, or a crash
    msg = got["message"]
    assert msg.startswith("could not write ") and "\n" not in msg, msg
    assert why in msg and "free space on" in msg, msg  # what to do
    assert not [f for f in got["files"] if ".tmp-" in f], got["files"]  # no temp file left
    if name == "shard":
        assert not [f for f in got["files"] if f.endswith(".safetensors")], got["files"]
        assert ".safetensors" in msg
    else:
        assert got["old"] == PREVIOUS.decode(), got  # the previous file is intact
        assert WRITERS[name][0] in msg


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_file_size_limit_gives_one_line_for_every_writer(rlimit_results, name):
    _check_failed_write(name, rlimit_results[name], "the disk (or a size limit) is full")


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_full_disk_gives_one_line_for_every_writer(tiny_tmpfs, name):
    d = tiny_tmpfs / name
    d.mkdir()
    try:
        got = attempt_write(name, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    _check_failed_write(name, got, "the disk (or a size limit) is full")


def test_a_full_disk_under_the_decoded_photo_cache_costs_a_decode_not_the_run(tiny_tmpfs):
    photo = tiny_tmpfs.parent / "p.png"
    Image.new("RGB", (200, 150), (1, 2, 3)).save(photo)  # 90 KB decoded: does not fit
    arr = DecodedCache(tiny_tmpfs / "dc").load(photo, "12" * 32, (200, 150), 1)
    left = [p for p in (tiny_tmpfs / "dc").rglob("*") if p.is_file() and p.name != CACHE_MARKER]
    assert arr.shape == (150, 200, 3) and not left, left  # the folder's graft marker aside


def test_a_folder_that_is_a_file_gives_one_line(tmp_path):
    (tmp_path / "out").write_text("a file of the user's")
    with pytest.raises(GraftError, match=r"could not write .*out/run/metrics.json: .*is a file, not a folder"):
        write_json(tmp_path / "out" / "run" / "metrics.json", {})
    assert (tmp_path / "out").read_text() == "a file of the user's"


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_a_read_only_folder_gives_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(GraftError, match="no permission to write in"):
            write_json(ro / "metrics.json", {})
    finally:
        ro.chmod(0o755)


def test_a_bug_inside_atomic_path_keeps_its_traceback_and_leaves_no_temp_file(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_path(tmp_path / "x.safetensors") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("a bug, not a full disk")
    assert os.listdir(tmp_path) == []


# --- the mode of what graft writes ---------------------------------------------------------------------

def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


@pytest.mark.parametrize("name", list(WRITERS) + ["decoded"])
def test_files_graft_writes_are_as_readable_as_the_umask_allows(tmp_path, name):
    if name == "decoded":
        photo = tmp_path / "p.png"
        Image.new("RGB", (12, 9)).save(photo)
        DecodedCache(tmp_path / "dc").load(photo, "ab" * 32, (12, 9), 1)
    else:
        WRITERS[name][1](tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "p.png"]
    assert written
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_umask(), p


# --- weights files -------------------------------------------------------------------------------------

def _bundled_pth() -> Path:
    """The default backbone's bundled .pth (lukemelas names and order)."""
    import importlib

    from graft.backbones import BUNDLED, DEFAULT_BUNDLED

    module = importlib.import_module(BUNDLED[DEFAULT_BUNDLED][1])
    return Path(getattr(module, f"EfficientnetLite{DEFAULT_BUNDLED[-1]}ModelFile").get_model_file_path())


def _weights_file(kind: str, d: Path) -> Path:
    """A weights file for the default backbone, as a user might convert or rename one."""
    from safetensors.torch import save_file

    sd = torch.load(_bundled_pth(), map_location="cpu", weights_only=True)
    if kind == "safetensors-lukemelas-names":  # the issue's: what graft's own message tells users to do
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "lite0.safetensors"))
        return d / "lite0.safetensors"
    if kind == "pth-reversed-order":
        torch.save(dict(reversed(list(sd.items()))), d / "lite0.pth")
        return d / "lite0.pth"
    if kind == "safetensors-timm-names":
        import timm

        from graft.backbones import lukemelas_ordered

        from graft.backbones import DEFAULT_ARCH

        net = timm.create_model(DEFAULT_ARCH.removeprefix("timm:"), pretrained=False)
        timm_sd = dict(zip(net.state_dict(), lukemelas_ordered(sd, what="x").values()))
        save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(d / "timm.safetensors"))
        return d / "timm.safetensors"
    if kind == "torch-file-named-safetensors":
        torch.save(sd, d / "misnamed.safetensors")
        return d / "misnamed.safetensors"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["safetensors-lukemelas-names", "pth-reversed-order", "safetensors-timm-names",
                                  "torch-file-named-safetensors"])
def test_the_default_backbone_loads_its_weights_in_any_order_and_format(tmp_path, default_backbone, kind):
    from graft.backbones import resolve_backbone

    built = resolve_backbone("default", _weights_file(kind, tmp_path)).build()
    want = default_backbone.net.state_dict()
    got = built.net.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def _bad_weights(kind: str, d: Path) -> tuple[Path, str]:
    """(a file given as --weights, the part of graft's one line about it)."""
    from safetensors.torch import save_file

    if kind.startswith("text"):
        p = d / ("notes" + kind.removeprefix("text"))
        p.write_text("these are not weights\n")
        return p, "is not a weights file: neither safetensors nor a PyTorch checkpoint (it begins b'these"
    if kind == "empty":
        (d / "empty.pth").write_bytes(b"")
        return d / "empty.pth", "(it is empty)"
    if kind == "random-bytes":
        (d / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096).replace(b"\x80", b"\x81")
                                      .replace(b"PK", b"QK"))
        return d / "noise.pth", "is not a weights file"
    if kind == "fifo":
        os.mkfifo(d / "pipe.pth")
        return d / "pipe.pth", "is not a regular file but a named pipe"
    if kind == "folder":
        (d / "dir.safetensors").mkdir()
        return d / "dir.safetensors", "is not a regular file but a folder"
    sd = {k: v.contiguous() for k, v in torch.load(_bundled_pth(), map_location="cpu", weights_only=True).items()}
    if kind == "unknown-tensor-name":
        sd["_blocks.0._strange.weight"] = sd.pop("_blocks.0._depthwise_conv.weight")
        save_file(sd, str(d / "odd.safetensors"))
        return d / "odd.safetensors", "a tensor named '_blocks.0._strange.weight'"
    if kind == "missing-tensor":
        n = len(sd)
        del sd["_conv_head.weight"]
        save_file(sd, str(d / "short.safetensors"))
        return d / "short.safetensors", f"have {n - 1} tensors, the network has {n}"
    if kind == "wrong-shape":
        sd["_conv_head.weight"] = sd["_conv_head.weight"][:, :10].contiguous()
        save_file(sd, str(d / "shape.safetensors"))
        return d / "shape.safetensors", "do not fit: _conv_head.weight has shape (1280, 10, 1, 1)"  # Lite0-2 alike
    if kind == "truncated-safetensors":
        save_file(sd, str(d / "cut.safetensors"))
        data = (d / "cut.safetensors").read_bytes()
        (d / "cut.safetensors").write_bytes(data[: len(data) // 2])
        return d / "cut.safetensors", "(a damaged safetensors file?)"
    raise ValueError(kind)


BAD_WEIGHTS = ["text.txt", "text.pth", "text.safetensors", "empty", "random-bytes", "fifo", "folder",
               "unknown-tensor-name", "missing-tensor", "wrong-shape", "truncated-safetensors"]


@pytest.mark.parametrize("kind", BAD_WEIGHTS)
def test_a_bad_weights_file_gets_one_clear_line(tmp_path, kind):
    from graft.backbones import resolve_backbone

    path, says = _bad_weights(kind, tmp_path)
    with pytest.raises(WeightsError) as e:
        run_with_timeout(lambda: resolve_backbone("default", path).build(), tmp_path, timeout=60)
    msg = str(e.value)
    assert says in msg and str(path) in msg and "\n" not in msg, msg
    assert not msg.rstrip().endswith(": 101")


def test_timms_load_error_is_shown_whole_on_one_line(tmp_path):
    from graft.backbones import resolve_backbone

    with pytest.raises(WeightsError) as e:
        resolve_backbone("timm:resnet18", _bundled_pth()).build()
    msg = str(e.value)
    assert "\n" not in msg and "Missing key(s)" in msg and "Unexpected key(s)" in msg
    assert '"fc.weight"' in msg and '"_fc.weight"' in msg  # the last of each list: nothing cut


# --- the command line: nonsense arguments, one line each, before any work (items 5, 6, 10) ------------

def graft_cli(argv, capsys) -> tuple[int, str, str]:
    """Run `graft ARGV` in this process: (exit status, stdout, stderr). An escaping exception (a
    traceback for the user) fails the test by itself."""
    from graft.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc, err, *says):
    assert rc not in (0, None), err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for s in says:
        assert s in err, err


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
    (["--aug-views", "-1"], "--aug-views must be auto or a whole number >= 0"),
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


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    """A checkpoint made with batch size 8 and lr 1e-3 is not continued with 4 and 1e-2 (issue 14, item
    5: it used to run to the end and record the new values)."""
    from graft.finetune.loop import FinetuneConfig, _load_checkpoint

    made = FinetuneConfig(batch_size=8, lr=1e-3, epochs=5)
    torch.save({"config": made.to_json(), "model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(GraftError) as e:
        _load_checkpoint(tmp_path / "checkpoint.pt", FinetuneConfig(batch_size=4, lr=1e-2, epochs=5))
    msg = str(e.value)
    assert "batch_size=8 (now 4)" in msg and "lr=0.001 (now 0.01)" in msg and "epochs" not in msg, msg
    assert _load_checkpoint(tmp_path / "checkpoint.pt", made)["config"] == made.to_json()


# --- graft cache prune deletes only what graft provably made (item 1) ----------------------------------

def _users_pca_and_decoded(root: Path) -> list[Path]:
    """The issue's repro: folders of the user's that happen to be called pca/ and decoded/."""
    (root / "pca").mkdir(parents=True)
    (root / "decoded" / "e").mkdir(parents=True)
    (root / "pca" / "r.json").write_text("{}")
    np.save(root / "decoded" / "e" / "s.npy", np.arange(9))
    (root / "decoded" / "ab").mkdir()
    np.save(root / "decoded" / "ab" / "notes.npy", np.arange(3))
    (root / "pca" / ".tmp-mine").write_text("x")
    old = 1_000_000_000  # 2001: older than any --older-than
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        os.utime(p, (old, old))
    return files


@pytest.mark.parametrize("how", ["cli", "api", "api-dry-run"])
def test_prune_never_deletes_a_users_pca_or_decoded_folder(tmp_path, capsys, how):
    from graft.cache.admin import prune, usage

    files = _users_pca_and_decoded(tmp_path / "P")
    if how == "cli":
        rc, out, err = graft_cli(["cache", "prune", "--cache-dir", tmp_path / "P", "--older-than", "0d"], capsys)
        assert rc == 0 and "Traceback" not in err, err
    else:
        r = prune(tmp_path / "P", older_than=0, dry_run=how == "api-dry-run")
        assert r.deleted_files == 0 and r.paths == []
    assert all(p.exists() for p in files)
    assert {a.kind for a in usage(tmp_path / "P")} == {"other"}


def test_prune_in_a_marked_folder_deletes_only_graft_named_files(tmp_path):
    """Even under graft's marker, a file of the user's put there keeps; graft's entries go."""
    from graft.cache.admin import prune
    from graft.cache.layout import MARKER, mark

    root = tmp_path / "P"
    users = _users_pca_and_decoded(root)
    mark(root / "decoded", "decoded")
    mark(root / "pca", "pca")
    ours = [root / "decoded" / "ab" / f"ab{'0' * 62}-r1.sha256.npy", root / "pca" / f"{'0' * 16}.json"]
    for p in ours:
        p.write_bytes(b"graft's")
        os.utime(p, (1_000_000_000, 1_000_000_000))
    r = prune(root, older_than=0)
    assert sorted(r.paths) == sorted(map(str, ours))
    assert all(p.exists() for p in users) and (root / "decoded" / MARKER).exists()


def test_prune_takes_an_unmarked_cache_graft_made_before_the_marker(tmp_path):
    """Caches made before the marker: a file named as graft names its own is the proof."""
    from graft.cache.admin import prune

    entry = tmp_path / "P" / "decoded" / "cd" / f"cd{'1' * 62}-r0.npy"  # the earlier entry format
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"old")
    os.utime(entry, (1_000_000_000, 1_000_000_000))
    mine = tmp_path / "P" / "decoded" / "cd" / "mine.npy"
    mine.write_bytes(b"mine")
    os.utime(mine, (1_000_000_000, 1_000_000_000))
    assert prune(tmp_path / "P", older_than=0).paths == [str(entry)]
    assert mine.exists()


def test_the_decoded_photo_cache_marks_its_folder(tmp_path):
    from graft._util.digest import sha256_file
    from graft.cache.layout import DECODED, marked

    photo = tmp_path / "p.jpg"
    make_photo(np.random.default_rng(0), "blue", (40, 30)).save(photo)
    DecodedCache(tmp_path / "decoded").load(photo, sha256_file(photo), (40, 30), 1)
    assert marked(tmp_path / "decoded", DECODED)


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

class _CurrentStderr:
    """Writes to whatever sys.stderr is when it writes (capsys replaces it for each test)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


@pytest.fixture
def cli_log(monkeypatch):
    """The CLI's log lines on this test's captured stderr, as `graft` prints them: the CLI sets up
    its handler once per process (bound to the stderr of the test that ran first), and pytest adds
    its own handlers to the logger, so this one is set up here; the logger is restored afterwards."""
    from graft.cli import _OneLineFormatter

    logger = logging.getLogger("graft")
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(_OneLineFormatter("graft: %(levelname)s: %(message)s"))
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` read-only for this process: a read-only bind mount as root (chmod does not stop root),
    file modes otherwise; skips the test where neither is possible."""
    folder = Path(folder)
    if not IS_ROOT:
        paths = [folder, *folder.rglob("*")]
        modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
        for p in reversed(paths):
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p in paths:
                p.chmod(modes[p])
        return
    if shutil.which("mount") is None:
        pytest.skip("no mount command for a read-only bind mount")
    r = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot bind-mount here: {r.stderr.decode().strip()}")
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only here: {r.stderr.decode().strip()}")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


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


def test_the_cache_root_from_the_environment_that_is_a_file_is_refused(tmp_path, monkeypatch):
    from graft.cache import cache_root

    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "f"))
    with pytest.raises(GraftError, match=r"GRAFT_CACHE_DIR or the default\) .*/f is a file"):
        cache_root()
    assert cache_root(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"  # not there yet: fine


def _read_only_warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "cannot be written" in ln]


@pytest.mark.parametrize("state", ["empty", "warm-plus-one-new-photo"])
def test_training_on_a_read_only_cache_computes_what_is_missing_and_says_so_once(tmp_path, capsys, cli_log,
                                                                                 default_backbone, state):
    import graft

    photos = make_photo_folder(tmp_path / "photos", per_class=3, seed=4)
    cache = tmp_path / "cache"
    cache.mkdir()
    if state != "empty":
        graft.train(photos, tmp_path / "warm-run", backbone=default_backbone, cache_dir=cache, strategy="head",
                    workers=0, progress=False)
        make_photo(np.random.default_rng(99), "red").save(photos / "red" / "new.jpg")
    before = _listing(cache)
    with read_only(cache):
        rc, out, err = graft_cli(["train", photos, "--out", tmp_path / "run", "--cache-dir", cache, "--json",
                                  "--strategy", "head", "--workers", "0"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    said = _read_only_warnings(err)
    assert len(said) == 1 and "WARNING" in said[0] and str(cache) in said[0], err
    assert "not kept" in said[0] and "give a writable --cache-dir" in said[0]
    metrics = json.loads(out)
    assert metrics["cache"]["misses"] == (6 if state == "empty" else 1), metrics["cache"]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert _listing(cache) == before  # nothing written into the read-only cache


def test_a_read_only_feature_cache_keeps_new_features_for_its_own_life_only(tmp_path, monkeypatch):
    """In process, whatever the user: the lock cannot be opened (EROFS), so new shards go to a
    temporary folder that FeatureRows keeps alive and that goes with the cache."""
    import gc

    from graft.cache import FeatureCache
    from graft.cache import features as fc_module
    from graft.cache.rows import FeatureRows

    cache_dir = tmp_path / "cache"
    FeatureCache(cache_dir, {"arch": "t"}).put(["a"], np.ones((1, 4), np.float32))  # a warm entry
    before = _listing(cache_dir)
    real_open = open

    def no_write(path, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(fc_module, "open", no_write, raising=False)
    cache = FeatureCache(cache_dir, {"arch": "t"})
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("graft").addHandler(handler)
    try:
        for _ in range(2):
            with cache.extraction_lock():
                cache.put(["b"], np.full((1, 4), 2, np.float32))
        with pytest.raises(GraftError, match="under torchrun the ranks share features"):
            with FeatureCache(cache_dir, {"arch": "t"}).extraction_lock(shared=True):
                pass
    finally:
        logging.getLogger("graft").removeHandler(handler)
    assert cache.read_only and len([r for r in records if "cannot be written" in r.getMessage()]) == 1
    rows = FeatureRows(cache, ["a", "b"])
    spill = Path(cache._spill.name)
    del cache
    gc.collect()
    assert np.array_equal(np.asarray(rows), [[1] * 4, [2] * 4]) and spill.is_dir()
    del rows
    gc.collect()
    assert not spill.exists() and _listing(cache_dir) == before


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
    says = "no permission to write in" if where == "read-only-folder" else f"which is a file"
    assert_one_line(rc, err, f"--out {out}", says)
    assert not cache.exists()  # refused before the photos were scanned: no digest index, no feature
    assert (tmp_path / "somefile").read_text() == "the user's"


# --- tampered runs: refused where a run is read, for every command (item 11) ----------------------------

def _tamper(run: Path, how: str) -> None:
    from safetensors.torch import load_file, save_file

    meta = json.loads((run / "model.json").read_text())
    tensors = load_file(str(run / "model.safetensors"))
    if how == "3-classes":  # the issue's: predict failed with "index out of range", export wrote 3 classes
        meta["classes"].append("green")
    elif how == "3-classes-3-outputs":  # consistent in model.json, not with the tensors
        meta["classes"].append("green")
        meta["head"]["out_features"] = 3
    elif how == "no-head":
        del meta["head"]
    elif how.startswith("size-"):
        meta["preprocessing"]["size"] = int(how.removeprefix("size-"))
    elif how == "backbone-tensors":  # fine-tuned tensors in a head-only run
        tensors["backbone.net.conv_stem.weight"] = torch.zeros(32, 3, 3, 3)
    elif how == "stray-tensor":
        tensors["extra.weight"] = torch.zeros(2)
    elif how == "stored-without-backbone":
        meta["backbone"]["stored"] = True
    elif how == "classes-not-a-list":
        meta["classes"] = "blue,red"
    else:
        raise ValueError(how)
    (run / "model.json").write_text(json.dumps(meta))
    save_file(tensors, str(run / "model.safetensors"))


TAMPERED = {"3-classes": '"classes" lists 3 classes but the head has 2 outputs',
            "3-classes-3-outputs": "the head's tensors do not fit the head it describes (head.weight: shape [2, 1280], model.json's head needs [3, 1280])",
            "no-head": 'no "head"',
            "size-0": 'preprocessing "size" is 0, not a whole number in 16..4096',
            "size-30000": 'preprocessing "size" is 30000, not a whole number in 16..4096',
            "backbone-tensors": "backbone tensors in a run whose model.json says the backbone is not stored",
            "stray-tensor": "tensors model.json does not declare: extra.weight",
            "stored-without-backbone": "says the backbone is stored, but it holds no backbone tensor",
            "classes-not-a-list": '"classes" is not a list of class names'}


@pytest.fixture
def tampered(trained_run, tmp_path, request):
    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    _tamper(run, request.param)
    return run, TAMPERED[request.param]


@pytest.mark.parametrize("tampered", list(TAMPERED), indirect=True)
@pytest.mark.parametrize("command", ["predict", "export", "evaluate", "predictor"])
def test_a_tampered_run_is_refused_with_one_line_by_every_command(tampered, trained_run, tmp_path, capsys, command):
    import graft

    run, says = tampered
    photo = tmp_path / "p.jpg"
    make_photo(np.random.default_rng(0), "red").save(photo)
    before = sorted(p.name for p in run.iterdir())
    if command == "predictor":
        with pytest.raises(GraftError) as e:
            graft.Predictor(run, engine="torch").predict([photo])
        err, rc = str(e.value), 2
    else:
        argv = {"predict": ["predict", run, photo, "--workers", "0"],
                "export": ["export", run, "--format", "onnx", "--quiet"],
                "evaluate": ["evaluate", run, trained_run.photos, "--workers", "0",
                             "--cache-dir", tmp_path / "cache"]}[command]
        rc, out, err = graft_cli(argv, capsys)
        assert out == ""
    assert_one_line(rc, err, says, str(run))
    assert "altered or damaged" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing exported from it


@pytest.mark.parametrize("spec", [{"type": "linear", "in_features": 1280, "out_features": 5},
                                  {"type": "mlp", "in_features": 64, "out_features": 3, "hidden": [32, 16],
                                   "dropout": 0.2}], ids=["linear", "mlp"])
def test_the_run_check_knows_the_heads_tensors_without_torch(spec):
    from graft.heads.softmax import head_from_spec
    from graft.run.store import head_tensor_shapes

    built = {f"head.{k}": list(v.shape) for k, v in head_from_spec(spec).state_dict().items()}
    assert head_tensor_shapes(spec) == built


def test_a_run_with_a_huge_head_in_model_json_is_refused_before_building_it(trained_run, tmp_path):
    from graft.run.store import read_run_meta

    run = tmp_path / "run"
    shutil.copytree(trained_run.run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["head"].update(type="mlp", hidden=[1 << 20, 1 << 20])  # 4 TB of float32
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(GraftError, match=r'"head" has layer widths .*: over 268435456 parameters'):
        read_run_meta(run)


# --- exports onto a full disk (item 8) --------------------------------------------------------------------

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


# --- check and train agree; what the CLI says once (item 14) ---------------------------------------------

def test_check_and_train_agree_on_extreme_and_merely_thin_images(tmp_path, default_backbone):
    """A 5000x2 image that decodes fine: check calls it an error ("not decoded, remove it") and train
    indeed skips it, with the same code and reason; a 400x20 one (20:1, the limit) is a warning
    for check and a training photo for train."""
    import graft
    from graft.check import check_photos

    photos = make_photo_folder(tmp_path / "photos", per_class=4, seed=3)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (2, 5000, 3), dtype=np.uint8)).save(photos / "red" / "thin.png")
    Image.fromarray(rng.integers(0, 255, (20, 400, 3), dtype=np.uint8)).save(photos / "red" / "wide.png")
    assert read_image(photos / "red" / "thin.png").size == (5000, 2)  # it does decode
    report = check_photos(photos, deep=False, backbone=default_backbone, workers=0)
    said = {Path(f["path"]).name: f for f in report["findings"] if Path(f["path"] or ".").suffix == ".png"}
    assert said["thin.png"]["level"] == "error" and said["thin.png"]["code"] == "extreme_aspect"
    assert said["wide.png"]["level"] != "error"
    result = graft.train(photos, tmp_path / "run", backbone=default_backbone, cache_dir=tmp_path / "cache",
                         strategy="head", workers=0, progress=False)
    skipped = {Path(s["path"]).name: s for s in result.metrics["skipped"]}
    assert set(skipped) == {"thin.png"} and skipped["thin.png"]["code"] == "extreme_aspect"
    assert said["thin.png"]["message"].endswith(skipped["thin.png"]["reason"])
    assert result.metrics["n_train"] + result.metrics["n_val"] == 9  # the 8 photos and wide.png


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


def test_no_safetensors_file_graft_keeps_is_written_by_save_file(tmp_path, monkeypatch):
    """safetensors' save_file makes its own temp file beside the target (".tmpXXXXXX"); a kill
    during it left one in the run folder, and --resume then refused the folder as not graft's
    (found by test_faults). Every safetensors file graft keeps goes through _atomic.write_safetensors."""
    import safetensors.numpy
    import safetensors.torch
    from torch import nn

    from graft.backbones import resolve_backbone
    from graft.cache import FeatureCache
    from graft.run.store import save_run

    def refuse(*a, **k):
        raise AssertionError("save_file writes a temp file of its own beside the target")

    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    monkeypatch.setattr(safetensors.numpy, "save_file", refuse)
    save_run(tmp_path / "run", head=nn.Linear(4, 2), classes=["a", "b"], source=resolve_backbone("default"),
             strategy="head")
    cache = FeatureCache(tmp_path / "cache", {"arch": "test", "point": "pooled"})
    cache.put(["x", "y"], np.ones((2, 3), np.float32))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "model.safetensors" in names and not [n for n in names if n.startswith(".tmp")], names
    feats, missing = FeatureCache(tmp_path / "cache", {"arch": "test", "point": "pooled"}).get(["x", "y"])
    assert missing == [] and feats.sum() == 6
