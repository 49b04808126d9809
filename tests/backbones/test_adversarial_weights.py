"""Weights files (issue 14): the default backbone from any order and format, and bad files given as
--weights, each refused with one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.errors import WeightsError

from conftest import run_with_timeout


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
