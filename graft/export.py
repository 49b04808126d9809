"""`graft export`: a run as one self-contained file for other runtimes (ONNX or TorchScript).

The exported graph takes a NORMALISED float32 batch (N, 3, S, S), RGB, NCHW, with any N, and
returns class probabilities (softmax), column i being `classes[i]`. Decoding and normalising the
photo stay outside the graph (they differ per runtime: JPEG decoders, resizers), so `export.json`
written beside the file records exactly what graft does to a photo first: the classes, the
preprocessing (shorter side resized to `resize` with `interpolation`, centre crop `size`, /255,
minus `mean`, over `std`) and the file's SHA-256.

After writing, the file is loaded back and compared with graft's own forward pass on a random
batch of another batch size (TorchScript: torch.jit.load; ONNX: onnxruntime when installed,
else onnx.checker when onnx is, else nothing, and export.json says which).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ._atomic import atomic_path, write_json
from ._digest import sha256_file
from .errors import GraftError

log = logging.getLogger("graft")

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"
TOLERANCE = 1e-4  # max abs difference in probability tolerated when checking the written file
METADATA_NAME = "export.json"


class Probabilities(nn.Module):
    """Normalised image batch -> softmax over the run's classes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_run(run_dir, fmt: str, out=None, *, weights=None, verify: bool = True) -> Path:
    """Write the run's classifier as `fmt` ("onnx" or "torchscript"); returns the file's path.

    Default file: RUN/model.onnx or RUN/model.torchscript.pt. Metadata goes to RUN/export.json
    (one entry per exported file) when the file is in the run folder, else to `<file>.json`
    (see `metadata_path`). `weights`: the backbone weights file, if not where training found it.
    """
    from .run import load_run

    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise GraftError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GraftError(f"run folder not found: {run_dir}")
    out = Path(out).expanduser() if out else run_dir / FORMATS[fmt]
    if out.is_dir():
        raise GraftError(f"--out {out} is a folder; give a file name, e.g. {out / FORMATS[fmt]}")
    model = load_run(run_dir, weights=weights)
    meta = model.meta
    wrapped = Probabilities(model).eval()
    size = model.preprocessing.size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))

    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _write_onnx(wrapped, example, tmp)
        else:
            _write_torchscript(wrapped, example, tmp)
        check = _verify(fmt, tmp, wrapped, size) if verify else "not checked"
    digest = sha256_file(out)
    _write_metadata(run_dir, out, fmt, digest, meta, check)
    return out


def metadata_path(run_dir, out) -> Path:
    """Where export_run writes the metadata of file `out`."""
    out = Path(out)
    if out.parent.resolve() == Path(run_dir).resolve():
        return out.parent / METADATA_NAME
    return out.with_name(out.name + ".json")


# --- writers ---------------------------------------------------------------------------------

def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript-based exporter (dynamo=False): the torch.export-based one needs onnxscript,
    # which graft does not depend on; this one needs nothing beyond torch.
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings on shapes
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as e:  # the exporter raises its own error type, caused by the failed import
        missing = e if isinstance(e, ModuleNotFoundError) else e.__cause__
        if isinstance(missing, ModuleNotFoundError) and missing.name:
            name = missing.name.split(".")[0]
            raise GraftError(f"ONNX export needs the Python package {name}: pip install {name}") from None
        raise


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # shape arithmetic of fixed-size padding (TracerWarning); torch.jit's deprecation notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


# --- checking the written file -----------------------------------------------------------------

def _verify(fmt: str, path: Path, model: nn.Module, size: int) -> str:
    """Load the written file and compare with `model` on a batch of 3; a description of the check."""
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            got = loaded(x).numpy()
        how = "torch.jit.load"
    else:
        got, how = _run_onnx(path, x.numpy())
        if got is None:
            return how
    diff = float(abs(got - expected).max())
    if not diff < TOLERANCE:
        raise GraftError(f"the exported {fmt} model disagrees with graft's own by {diff:.2g} in probability "
                         f"(tolerance {TOLERANCE:g}); not written")
    return f"{how}: max abs difference {diff:.1e} on a random batch of 3"


def _run_onnx(path: Path, x):
    """-> (outputs or None, description)."""
    try:
        import onnxruntime as ort
    except ImportError:
        try:
            import onnx
        except ImportError:
            log.info("neither onnxruntime nor onnx is installed: the ONNX file was not checked")
            return None, "not checked (install onnxruntime to check it)"
        onnx.checker.check_model(str(path))
        return None, "onnx.checker passed (install onnxruntime to compare outputs)"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0], f"onnxruntime {ort.__version__}"


# --- metadata --------------------------------------------------------------------------------

def _write_metadata(run_dir: Path, out: Path, fmt: str, digest: str, meta: dict, check: str) -> Path:
    from ._version import __version__
    from .backbones.preprocess import Preprocessing

    pre = Preprocessing.from_json(meta["preprocessing"]).to_json()
    classes = list(meta["classes"])
    model_digest = sha256_file(run_dir / "model.safetensors")
    entry = {
        "format": fmt,
        "sha256": digest,
        "bytes": out.stat().st_size,
        **({"opset": OPSET} if fmt == "onnx" else {}),
        "torch_version": torch.__version__,
        "check": check,
    }
    doc = {
        "format": 1,
        "graft_version": __version__,
        "model_sha256": model_digest,  # RUN/model.safetensors the files were made from
        "classes": classes,
        "preprocessing": pre,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, pre["size"], pre["size"]],
                  "layout": "NCHW, RGB, normalised"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(classes)],
                   "meaning": "softmax probabilities; column i is classes[i]"},
        "recipe": (f"decode the image as RGB (EXIF orientation applied); resize so the shorter side is "
                   f"{pre['resize']} px ({pre['interpolation']}); centre-crop {pre['size']}x{pre['size']}; "
                   f"scale to [0, 1]; subtract mean {list(pre['mean'])} and divide by std {list(pre['std'])} "
                   f"per channel; stack as float32 NCHW"),
        "strategy": meta.get("strategy"),
        "backbone": {k: meta["backbone"].get(k) for k in ("spec", "arch", "weights_digest")},
        "files": {},
    }
    target = metadata_path(run_dir, out)
    old = _read_json(target)
    if old and old.get("model_sha256") == model_digest and old.get("classes") == classes:
        for name, e in (old.get("files") or {}).items():  # keep the other exports of this same model
            other = target.parent / name
            if name != out.name and other.is_file() and sha256_file(other) == e.get("sha256"):
                doc["files"][name] = e
    doc["files"][out.name] = entry
    write_json(target, doc)
    return target


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
