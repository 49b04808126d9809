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
