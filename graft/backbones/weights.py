"""Find, verify and read pretrained weight files, safely and offline-first.

Every file is hashed (SHA-256) and checked against the package's small manifest of known digests
(or the hash prefix torchvision puts in its file names); the digest goes into the feature cache
key and the saved run. Files are read as safetensors or with `torch.load(weights_only=True)`, so a
weights file can never run code. Hub downloads are tried only when nothing usable is cached and
GRAFT_OFFLINE is not set; every failure becomes one WeightsError that says how to supply weights.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from functools import lru_cache
from pathlib import Path

import torch

from graft._util.digest import sha256_file as _file_sha256
from graft._util.files import kind_of
from graft.errors import WeightsError


@lru_cache(maxsize=1)
def manifest() -> dict[str, str]:
    data = json.loads((Path(__file__).with_name("manifest.json")).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return _file_sha256(path)


def sha256_file(path) -> str:
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def verify(path, *, what: str) -> str:
    """Hash `path`; raise WeightsError if the manifest or its name says it should be different."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = kind_of(path.stat().st_mode)
        raise WeightsError(f"weights file {path} for {what} is not a regular file but {kind}")
    if not path.is_file():
        raise WeightsError(f"weights file for {what} not found: {path}")
    digest = sha256_file(path)
    expected = manifest().get(path.name)
    if expected is None:
        m = re.search(r"-([0-9a-f]{8,64})\.(pth|pt|bin|safetensors)$", path.name)
        if m and _looks_like_torchvision_name(path.name):
            if not digest.startswith(m.group(1)):
                raise WeightsError(
                    f"weights file {path} for {what} is damaged or not what its name says: "
                    f"its SHA-256 is {digest[:12]}..., the name promises {m.group(1)}...; "
                    f"delete it and let graft fetch it again, or pass --weights FILE"
                )
        return digest
    if digest != expected:
        raise WeightsError(
            f"weights file {path} for {what} failed its checksum: SHA-256 {digest[:12]}..., "
            f"expected {expected[:12]}...; reinstall it or pass --weights FILE"
        )
    return digest


def read_state_dict(path, *, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file, or a torch file with weights_only=True (no code can run).

    The format is told by the content, not the suffix; a file that is neither is refused by name
    before any loader sees it (torch.load on a text file says only "101")."""
    path = Path(path)
    kind = sniff_weights(path)
    if kind is None:
        raise WeightsError(
            f"{path} is not a weights file: neither safetensors nor a PyTorch checkpoint "
            f"({_preview(path)}); pass a .safetensors file or a .pth/.pt state dict for {what}")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:  # a file object: given a path named .safetensors, torch.load would hand it to safetensors
            with open(path, "rb") as f:
                sd = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"refusing to load {path} for {what}: it is a pickle that needs code to run, which graft "
            f"never executes ({str(e).splitlines()[0][:200]}); convert it to safetensors"
        ) from None
    except Exception as e:
        raise WeightsError(f"cannot read weights file {path} for {what} (a damaged {kind} file?): "
                           f"{one_line(e)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} for {what} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def sniff_weights(path) -> str | None:
    """"safetensors", "torch" (zip, or a legacy pickle) or None, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    return None


def _preview(path) -> str:
    with open(path, "rb") as f:
        head = f.read(24)
    if not head:
        return "it is empty"
    return f"it begins {head!r}"


def one_line(e: BaseException) -> str:
    """An exception's whole message on one line (loaders' messages span lines and lists)."""
    msg = " ".join(str(e).split())
    if not msg or msg.isdigit() or len(msg) < 8:
        return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg


def offline() -> bool:
    return bool(os.environ.get("GRAFT_OFFLINE") or os.environ.get("HF_HUB_OFFLINE"))


def missing_weights_error(what: str, looked: list[str], cause: str | None = None) -> WeightsError:
    where = "; ".join(looked) if looked else "no local cache"
    msg = (
        f"no pretrained weights for {what} are available offline (looked in: {where})"
        + (f"; download failed: {cause}" if cause else "")
        + ". Supply them by: (1) --weights FILE (a .safetensors, or a .pth state dict), "
        "(2) putting the file in that cache (run once with internet: timm uses the Hugging Face "
        "cache, HF_HOME; torchvision uses TORCH_HOME/hub/checkpoints), or "
        "(3) using --backbone default, whose weights ship with graft."
    )
    return WeightsError(msg)


def _looks_like_torchvision_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_.]+-[0-9a-f]{8}\.pth", name) is not None
