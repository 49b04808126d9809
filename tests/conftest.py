"""Shared fixtures: an isolated cache and offline hubs for every test, and tiny photo sets.

Tests never read ../shared: the photos they need are generated here (coloured shapes on noise,
which the real pretrained backbone separates easily).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


def make_photo(rng: np.random.Generator, kind: str, size=(96, 80)) -> Image.Image:
    """A noisy background with a shape whose colour and form depend on `kind`."""
    w, h = size
    base = rng.integers(90, 160, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(base)
    d = ImageDraw.Draw(img)
    x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
    x1, y1 = x0 + w // 2 + int(rng.integers(0, w // 6)), y0 + h // 2 + int(rng.integers(0, h // 6))
    if kind == "red":
        d.ellipse([x0, y0, x1, y1], fill=(220, int(rng.integers(0, 40)), 30))
    elif kind == "blue":
        d.rectangle([x0, y0, x1, y1], fill=(20, 40, 230 - int(rng.integers(0, 40))))
    else:
        d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=(30, 200, int(rng.integers(0, 50))))
    return img


def make_photo_folder(root: Path, classes=("blue", "red"), per_class=12, seed=0, fmt="JPEG") -> Path:
    rng = np.random.default_rng(seed)
    ext = {"JPEG": ".jpg", "PNG": ".png"}[fmt]
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_photo(rng, c).save(root / c / f"{c}{i:03d}{ext}", format=fmt)
    return root


def make_split_folder(photos: Path, *, train: int, val: int, seed: int) -> Path:
    """PHOTOS/train/<class>/* (`train` a class, from `seed`) + PHOTOS/val/<class>/* (`val` a class,
    from seed + 1): the layout where the user gives the validation photos."""
    make_photo_folder(photos / "train", per_class=train, seed=seed)
    make_photo_folder(photos / "val", per_class=val, seed=seed + 1)
    return photos


def swapped_val_copy(photos: Path, dst: Path) -> Path:
    """A copy of a two-class split folder with the val labels swapped after the split: a choice made
    on the training photos alone must come out the same on it."""
    shutil.copytree(photos / "train", dst / "train")
    shutil.copytree(photos / "val" / "blue", dst / "val" / "red")
    shutil.copytree(photos / "val" / "red", dst / "val" / "blue")
    return dst


@pytest.fixture
def photos(tmp_path) -> Path:
    """PHOTOS/<class>/* with two classes of 12 JPEGs each."""
    return make_photo_folder(tmp_path / "photos")


# --- shared, expensive results (built once per session, always with explicit temp folders) -----

import contextlib  # noqa: E402
import types  # noqa: E402


@contextlib.contextmanager
def isolated_env(tmp_root: Path):
    """The `_isolated` environment for fixtures wider than one test (they run before it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_CACHE_DIR", str(tmp_root / "env-cache"))
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TORCH_HOME", str(tmp_root / "env-torch-home"))
        yield


@contextlib.contextmanager
def count_backbone_forwards():
    """Count (and record the inputs of) every forward pass through timm's EfficientNet.

    `forward_features` is what both the default backbone's forward and its size probe call, so a
    count of 0 means the network was neither run nor even built.
    """
    from timm.models.efficientnet import EfficientNet

    calls: list = []
    original = EfficientNet.forward_features

    def counting(self, x):
        calls.append(x.detach().clone())
        return original(self, x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EfficientNet, "forward_features", counting)
        yield calls


def fixed_batch() -> "torch.Tensor":  # noqa: F821
    import torch

    g = torch.Generator().manual_seed(1234)
    return torch.randn(2, 3, 96, 96, generator=g)


@pytest.fixture(scope="session")
def default_backbone():
    """The real default backbone (EfficientNet-Lite1 with ImageNet weights since issue 11), built once."""
    from graft.backbones import load_backbone

    return load_backbone()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, default_backbone):
    """One cold `graft.train` on 2 classes x 10 generated JPEGs, with the built default backbone.

    Records the backbone's state and outputs on a fixed batch before training, so tests can
    check the frozen part is untouched.
    """
    import torch

    import graft

    root = tmp_path_factory.mktemp("trained")
    photos = make_photo_folder(root / "photos", per_class=10, seed=7)
    cache = root / "cache"
    default_backbone.eval()
    state_before = {k: v.detach().clone() for k, v in default_backbone.state_dict().items()}
    grad_before = [p.requires_grad for p in default_backbone.parameters()]
    with torch.inference_mode():
        out_before = default_backbone(fixed_batch()).clone()
    with isolated_env(root):
        result = graft.train(photos, root / "run", backbone=default_backbone, cache_dir=cache,
                             workers=0, progress=False)
    return types.SimpleNamespace(root=root, photos=photos, cache=cache, run=result.run_dir,
                                 metrics=result.metrics, state_before=state_before,
                                 grad_before=grad_before, out_before=out_before)


# --- the adversarial suite's shared helpers (issue 14: tests/*/test_adversarial_*.py) -------------

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import zlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# files named like photos that are not regular files
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


# images whose decoding would not fit the memory budget
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


def _strict_json(path: Path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


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


# the command line, run in this process
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


# --- a live graft serve for the serve tests (tests/use/test_serve.py, test_adversarial_serve.py) ---

import time  # noqa: E402


class ServerThread:
    """uvicorn.Server on its own thread and event loop, on a port the OS picked."""

    def __init__(self, app, config=None):
        import uvicorn

        from graft.use.serve import listen, uvicorn_config

        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, config, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
