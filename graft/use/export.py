"""`graft export`: a run as one self-contained file for other runtimes (ONNX or TorchScript).

The exported graph takes the crop the network sees, as the bytes any decoder gives: uint8
(N, S, S, 3), RGB, NHWC, any N; scaling to [0, 1] and the mean/std normalisation happen inside,
with graft's own float operations. Outputs: `probabilities` (N, C) (softmax, column i is
`classes[i]`), `logits` (N, C) and, for a run calibrated with a novelty check, `novelty` (N,):
the cosine distance to the k-th nearest training photo (the reference features are in the graph).

Only the decode, resize and centre crop stay outside the graph, and they are the standard recipe
graft itself uses (graft.backbones.preprocess). The ONNX file's `metadata_props` (each value JSON) and the
`export.json` beside it record the classes, that recipe, the calibration (temperature, confidence
and novelty thresholds) and the input/output layout; TorchScript files carry the same document
as the extra file `graft.json`. An ONNX export also writes `predict_onnx.py` beside the file: a
Pillow + numpy + onnxruntime client that reads that metadata and prints graft's answers.

After writing, the file is loaded back and compared with graft's own path (the run's
normalisation, features, head and novelty check) on a random batch of another batch size
(TorchScript: torch.jit.load; ONNX: onnxruntime when installed, else onnx.checker).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from graft._util.atomic import atomic_path, write_json
from graft._util.digest import sha256_file
from graft._util.output import not_regular
from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, EXPORT_FORMAT, EXPORT_JSON, MODEL_TENSORS, ONNX_CLIENT, ONNX_MODEL, TORCHSCRIPT_MODEL

log = logging.getLogger("graft")

FORMATS = {"onnx": ONNX_MODEL, "torchscript": TORCHSCRIPT_MODEL}
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits")
NOVELTY_NAME = "novelty"
TOLERANCE = 1e-4  # max abs difference in probability tolerated when checking the written file
METADATA_NAME = EXPORT_JSON
TORCHSCRIPT_METADATA = "graft.json"  # the extra file inside a TorchScript export
CLIENT_NAME = ONNX_CLIENT
CLIENT_SOURCE = Path(__file__).with_name("export_client.py")


class Exported(nn.Module):
    """uint8 NHWC crops -> (probabilities, logits[, novelty]), by the run's own operations."""

    def __init__(self, model: nn.Module, novelty=None):
        super().__init__()
        self.model = model
        pre = model.preprocessing
        # the constants of Preprocessing.normalize, the very tensors: the same float32 inputs
        mean, inv_std = pre.normalize_constants()
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", inv_std)
        self.novelty = novelty is not None
        if self.novelty:
            self.register_buffer("reference", novelty.reference.float().contiguous())  # unit rows
            self.k = min(int(novelty.k), novelty.reference.shape[0])

    def forward(self, image: torch.Tensor):
        x = (image.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        feats = self.model.features(x)
        logits = self.model.head(feats)
        out = (torch.softmax(logits, dim=1), logits)
        if self.novelty:  # graft.use.calibrate.Novelty.distance
            f = feats.float()
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out = out + (1.0 - (f @ self.reference.T).topk(self.k, dim=1).values[:, -1],)
        return out


def export_run(run_dir, fmt: str, out=None, *, weights=None, verify: bool = True) -> Path:
    """Write the run's classifier as `fmt` ("onnx" or "torchscript"); returns the file's path.

    Default file: RUN/model.onnx or RUN/model.torchscript.pt. Metadata goes to RUN/export.json
    (one entry per exported file) when the file is in the run folder, else to `<file>.json`
    (see `metadata_path`); an ONNX export also writes the client predict_onnx.py beside the file.
    The run's calibration (RUN/calibration.json), when current, is exported with it.
    `weights`: the backbone weights file, if not where training found it.
    """
    from graft.run.store import load_run

    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise GraftError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GraftError(f"run folder not found: {run_dir}")
    given = out
    out = Path(out).expanduser() if out else run_dir / FORMATS[fmt]
    if out.is_dir():
        raise GraftError(f"--out {out} is a folder; give a file name, e.g. {out / FORMATS[fmt]}")
    out = check_targets(run_dir, out, "--out" if given else "the export", weights)
    model = load_run(run_dir, weights=weights)
    cal, novelty = export_calibration(run_dir, model.classes)
    wrapped = Exported(model, novelty).eval()
    info = describe(run_dir, model.record, cal, wrapped.novelty)
    h, w = model.preprocessing.shape
    example = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))

    # TorchScript is made whole in memory first: torch's C++ file writer, failing on a full disk,
    # aborts the process (SIGABRT) from a destructor, while a failed Python write is one GraftError
    data = _torchscript_bytes(wrapped, example, info) if fmt == "torchscript" else None
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _write_onnx(wrapped, example, tmp, info)
        else:
            tmp.write_bytes(data)
            del data
        check = _verify(fmt, tmp, model, novelty) if verify else "not checked"
    record_export(run_dir, out, fmt, info, {"torch_version": torch.__version__, "check": check})
    return out


def record_export(run_dir: Path, out: Path, fmt: str, info: dict, how: dict) -> None:
    """The written file's entry in its metadata (export.json), and an ONNX export's client."""
    entry = {"format": fmt, "sha256": sha256_file(out), "bytes": out.stat().st_size,
             **({"opset": OPSET} if fmt == "onnx" else {}), **how}
    target = metadata_path(run_dir, out)
    old = _read_json(target)
    client = _write_client(out.parent, old) if fmt == "onnx" else None
    _write_metadata(target, out, info, entry, old, client)


def check_targets(run_dir: Path, out: Path, flag: str, weights) -> Path:
    """Refuse, before any work, an export or metadata path graft may not replace
    (graft.run.guard.check_output): an existing export is graft's while the metadata beside it
    records its SHA-256, the metadata while it is graft's export record. -> the file to write: a
    link's target (its record and client go beside it)."""
    from graft.run.guard import check_output

    if out.is_symlink():
        check_output(out, flag, inputs=[weights] if weights else (), is_ours=lambda real: True)  # what it is
        out = Path(os.path.realpath(out))
    meta = metadata_path(run_dir, out)
    old = _read_json(meta) if not_regular(meta) is None else None
    old = old if isinstance(old, dict) and {"files", "model_sha256"} <= old.keys() else None
    recorded = (((old or {}).get("files") or {}).get(out.name) or {}).get("sha256")
    check_output(out, flag, inputs=[weights] if weights else (), run=run_dir, run_files=set(FORMATS.values()),
                 is_ours=lambda real: recorded is not None and sha256_file(real) == recorded)
    check_output(meta, f"{flag}'s record", run=run_dir, run_files={METADATA_NAME},
                 is_ours=lambda real: old is not None)
    return out


def metadata_path(run_dir, out) -> Path:
    """Where export_run writes the metadata of file `out`."""
    out = Path(out)
    if out.parent.resolve() == Path(run_dir).resolve():
        return out.parent / METADATA_NAME
    return out.with_name(out.name + ".json")


def read_onnx_metadata(path) -> dict:
    """The graft metadata of an exported ONNX file (its metadata_props, values decoded)."""
    import onnx

    return {p.key: json.loads(p.value) for p in onnx.load(str(path), load_external_data=False).metadata_props}


# --- what is exported ------------------------------------------------------------------------

def export_calibration(run_dir: Path, classes: list[str]):
    """(calibration dict, Novelty or None) of a run, or (None, None) when it has none that fits."""
    from graft.use.calibrate import load_calibration, load_novelty

    if not (run_dir / CALIBRATION_JSON).is_file():
        return None, None
    try:
        cal = load_calibration(run_dir)
        if cal.get("classes") != list(classes):
            raise GraftError(f"{run_dir / CALIBRATION_JSON} is for other classes")
        return cal, load_novelty(run_dir, cal)
    except GraftError as e:
        log.warning(f"exported without the 'unknown' thresholds: {e}")
        return None, None


def describe(run_dir: Path, record, cal: dict | None, novelty: bool) -> dict:
    """The document that goes into the file's metadata and export.json (`record`: the run's RunRecord)."""
    from graft._version import __version__

    pre = record.preprocessing
    classes, (h, w) = list(record.classes), pre.shape
    outputs = [
        {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(classes)],
         "meaning": "softmax of the logits (temperature 1); column i is classes[i]"},
        {"name": "logits", "dtype": "float32", "shape": ["batch", len(classes)],
         "meaning": "divide by calibration.temperature, then softmax: the calibrated probabilities"},
    ]
    if novelty:
        outputs.append({"name": NOVELTY_NAME, "dtype": "float32", "shape": ["batch"],
                        "meaning": "cosine distance to the k-th nearest training photo in feature space"})
    calibration = None
    if cal is not None:
        nov = cal.get("novelty") if novelty else None
        calibration = {
            "temperature": float(cal["temperature"]),
            "threshold": float(cal["threshold"]),
            "novelty": {"threshold": float(nov["threshold"]), "k": int(nov["k"])} if nov else None,
            "target_accuracy": cal.get("target_accuracy"),
            "sha256": sha256_file(run_dir / CALIBRATION_JSON),
            "rule": "unknown when the top calibrated probability < threshold, or novelty > novelty.threshold",
        }
    doc = {
        "format": EXPORT_FORMAT,
        "graft_version": __version__,
        "model_sha256": sha256_file(run_dir / MODEL_TENSORS),  # the run's model the files were made from
        "classes": classes,
        "preprocessing": pre.to_json(),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", h, w, 3],
                  "layout": "NHWC, RGB, 0-255: the centre crop as decoded; normalisation is inside the model"},
        "outputs": outputs,
        "recipe": _recipe(pre),
        "calibration": calibration,
        "strategy": record.strategy,
        "backbone": {"spec": record.backbone.spec, "arch": record.backbone.arch,
                     "weights_digest": record.backbone.weights_digest},
    }
    return json.loads(json.dumps(doc))  # as read back: lists, not tuples, so it compares with export.json


def _recipe(pre) -> str:
    """How a client makes the uint8 input from a photo, in words (export.json's "recipe")."""
    def crop(t) -> str:
        s = t.size
        return (f"resize with Pillow's {t.interpolation} filter so the shorter side is {t.resize} px and the "
                f"longer int({t.resize} * long / short); centre-crop {s}x{s} at offset int(round((side - {s}) / 2)): "
                f"torchvision.transforms.v2 Resize({t.resize}, {t.interpolation}, antialias=True) + CenterCrop({s}) "
                f"on a PIL image")
    start = ("decode the whole image (no reduced-size JPEG decoding), apply its EXIF orientation, convert to "
             "RGB (transparency over white); ")
    h, w = pre.shape
    if not hasattr(pre, "tiles"):
        return start + crop(pre) + f"; feed the uint8 crop as (N, {h}, {w}, 3)"
    tiles = "; ".join(f"tile {i} (rows {top}-{top + s - 1}, columns {left}-{left + s - 1}): {crop(t)}"
                      for i, (t, (top, left, s)) in enumerate(zip(pre.tiles, pre.boxes())))
    return (start + f"then, for a concatenation of {len(pre.tiles)} backbones, make each one's crop and place "
            f"them top to bottom on a zero {h}x{w} canvas, each centred across: {tiles}; feed the uint8 canvas "
            f"as (N, {h}, {w}, 3)")


# --- writers ---------------------------------------------------------------------------------

def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, info: dict) -> None:
    # The TorchScript-based exporter (dynamo=False): the torch.export-based one needs onnxscript,
    # which graft does not depend on; this one needs nothing beyond torch (and onnx, which it
    # imports, as does writing the metadata below).
    names = [o["name"] for o in info["outputs"]]
    try:
        import onnx

        from graft.backbones.engine import static_same_padding

        # timm's tf_ convs pad by the input size at run time; the input size is fixed here, so the
        # pads go into the Conv as constants: the fused graph onnxruntime runs 1.3-2x faster
        with torch.no_grad(), warnings.catch_warnings(), static_same_padding(model, example):
            warnings.simplefilter("ignore")  # its deprecation notice and tracer warnings on shapes
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=names,
                dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
                do_constant_folding=True,
            )
    except Exception as e:  # the exporter raises its own error type, caused by the failed import
        missing = e if isinstance(e, ModuleNotFoundError) else e.__cause__
        if isinstance(missing, ModuleNotFoundError) and missing.name:
            name = missing.name.split(".")[0]
            raise GraftError(f"ONNX export needs the Python package {name}: pip install {name}") from None
        raise
    proto = onnx.load(str(path))
    stamp(proto, info)
    onnx.save(proto, str(path))


def stamp(proto, info: dict) -> None:
    """The export's document into an ONNX model's metadata_props (each value JSON) and doc string."""
    del proto.metadata_props[:]
    for key, value in info.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    proto.doc_string = info["recipe"]


def _torchscript_bytes(model: nn.Module, example: torch.Tensor, info: dict) -> bytes:
    """The traced model as a TorchScript file's bytes (torch.jit.save into memory)."""
    with torch.no_grad(), warnings.catch_warnings():
        # shape arithmetic of fixed-size padding (TracerWarning); torch.jit's deprecation notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_METADATA: json.dumps(info)})
    return buf.getvalue()


def _write_client(folder: Path, old: dict | None) -> dict | None:
    """Copy the reference client beside the export, unless a predict_onnx.py there is not one graft
    wrote (then it is left alone, and said). -> {"file", "sha256"} of the client written."""
    source = CLIENT_SOURCE.read_bytes()
    target = folder / CLIENT_NAME
    if not_regular(target) is not None:
        log.warning(f"{target} is {not_regular(target)}: left as it is; the reference client was not written")
        return None
    if target.exists():
        digest = sha256_file(target)
        ours = {sha256_file(CLIENT_SOURCE), ((old or {}).get("client") or {}).get("sha256")}
        if digest not in ours:
            log.warning(f"{target} was not written by graft (or was changed since): left as it is; "
                        f"the reference client was not written")
            return None
    with atomic_path(target) as tmp:
        tmp.write_bytes(source)
    return {"file": CLIENT_NAME, "sha256": sha256_file(target)}


# --- checking the written file -----------------------------------------------------------------

def _verify(fmt: str, path: Path, model: nn.Module, novelty) -> str:
    """Load the written file and compare it with graft's own path on a batch of 3 random crops."""
    h, w = model.preprocessing.shape
    x = torch.randint(0, 256, (3, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.features(model.preprocessing.normalize(x.permute(0, 3, 1, 2)))
        logits = model.head(feats)
        expected = [logits.softmax(1).numpy()]
        if novelty is not None:
            expected.append(novelty.distance(feats))
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            got = [t.numpy() for t in loaded(x)]
        how = "torch.jit.load"
    else:
        got, how = _run_onnx(path, x.numpy())
        if got is None:
            return how
    got = [got[0]] + ([got[2]] if novelty is not None else [])
    diff = max(float(abs(g - e).max()) for g, e in zip(got, expected))
    if not diff < TOLERANCE:
        raise GraftError(f"the exported {fmt} model disagrees with graft's own by {diff:.2g} "
                         f"(tolerance {TOLERANCE:g}); not written")
    return f"{how}: max abs difference {diff:.1e} on a random batch of 3"


def _run_onnx(path: Path, x):
    """-> (outputs or None, description)."""
    try:
        import onnxruntime as ort
    except ImportError:
        import onnx

        onnx.checker.check_model(str(path))
        return None, "onnx.checker passed (install onnxruntime to compare outputs)"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: x}), f"onnxruntime {ort.__version__}"


# --- metadata --------------------------------------------------------------------------------

def _write_metadata(target: Path, out: Path, info: dict, entry: dict, old: dict | None, client: dict | None) -> None:
    doc = {**info, "client": client, "files": {}}
    same = {k: info[k] for k in ("format", "model_sha256", "classes", "preprocessing", "calibration")}
    if old and all(old.get(k) == v for k, v in same.items()):
        for name, e in (old.get("files") or {}).items():  # keep the other exports of this same model
            other = target.parent / name
            if name != out.name and other.is_file() and sha256_file(other) == e.get("sha256"):
                doc["files"][name] = e
        kept = old.get("client") or {}
        if client is None and (target.parent / str(kept.get("file"))).is_file() and \
                sha256_file(target.parent / kept["file"]) == kept.get("sha256"):
            doc["client"] = kept
    doc["files"][out.name] = entry
    write_json(target, doc)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

