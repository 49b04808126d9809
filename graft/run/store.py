"""The run folder on disk: writing a trained classifier, reading it back, and what training
recorded beside it.

A run folder holds `model.json` (classes, backbone identity and weights digest, preprocessing,
strategy, head shape) and `model.safetensors` (the trained tensors), written atomically. For the
head strategy only the head is stored: the frozen backbone is exactly the pretrained one, which is
found again from its spec and must hash to the recorded digest, so a 5 KB head does not drag an
18 MB copy of unchanged weights along. Strategies that train the backbone store it whole.
`val_predictions.npz` keeps the validation photos' probabilities as training computed them, so
the report needs neither the photos nor a forward pass.

Reading a run's description (`read_run_meta`) imports no torch: graft.use.predictor runs a fresh
ONNX export of the run without it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graft._util.atomic import atomic_path, read_json, write_json, write_safetensors
from graft._version import __version__
from graft.backbones.preprocess import Preprocessing
from graft.errors import GraftError

if TYPE_CHECKING:  # the network's modules import torch: loaded where a network is built
    from torch import nn

    from graft.backbones import Backbone, BackboneSource
    from graft.finetune.classifier import Classifier
    from graft.data import Dataset

FORMAT = 1
VAL_PREDICTIONS = "val_predictions.npz"
MARKER = {"written_by": "graft"}  # in model.json: what makes a folder a graft run (see check_out)
EXPORT_JSON = "export.json"  # graft.use.export's record of the files it made from the run's model
CALIBRATION_JSON = "calibration.json"  # graft.use.calibrate's thresholds (they name their own reference file)
CHECKPOINT = "checkpoint.pt"  # graft.finetune.loop's, before a model is written
LOG_CSV, TENSORBOARD = "log.csv", "tensorboard"  # graft.recipe.log's, written as epochs end
# What a run killed before its model leaves (and --resume continues from): not the user's files.
IN_PROGRESS = frozenset({CHECKPOINT, LOG_CSV, TENSORBOARD})


def save_run(run_dir, *, head: nn.Module, classes: list[str], source: BackboneSource,
             strategy: str, backbone: Backbone | None = None, cut: int | None = None,
             extra: dict | None = None) -> None:
    """Write model.safetensors then model.json (the json last: it is what marks a run complete)."""
    from graft.heads.softmax import head_spec

    run_dir = Path(run_dir)
    tensors = {f"head.{k}": v.detach().contiguous() for k, v in head.state_dict().items()}
    if backbone is not None:
        tensors.update({f"backbone.{k}": v.detach().contiguous() for k, v in backbone.state_dict().items()})
    write_safetensors(run_dir / "model.safetensors", tensors)
    meta = {
        **MARKER,
        "format": FORMAT,
        "graft_version": __version__,
        "classes": list(classes),
        "strategy": strategy,
        "backbone": {"spec": source.spec, "arch": source.arch,
                     "weights_source": source.weights.source, "weights_digest": source.weights.digest,
                     "stored": backbone is not None,
                     **({"parts": source.describe_parts()} if hasattr(source, "describe_parts") else {})},
        "preprocessing": source.preprocessing.to_json(),
        "head": head_spec(head),
        "cut": cut,
        **(extra or {}),
    }
    write_json(run_dir / "model.json", meta)


def read_run_meta(run_dir) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "model.json"
    meta = read_json(path, missing=f"{run_dir} is not a graft run (no model.json); train one with `graft train`")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
        raise GraftError(f"{path} has format {got}, this graft reads format {FORMAT}")
    problem = meta_problem(meta)
    if problem:
        raise GraftError(f"{path} is not a valid graft run: {problem}; it was altered or damaged: "
                         f"train the run again or restore its files")
    _check_model_file(run_dir / "model.safetensors", meta)
    return meta


# What a run's model.json may say: bounds that keep a tampered file from building a nonsense
# network or allocating gigabytes before any check (a 30000-pixel crop is 10.8 GB a batch).
SIZE_RANGE = (16, 4096)  # preprocessing size (the square the network sees)
RESIZE_RANGE = (16, 8192)  # the shorter side before the crop
MAX_WIDTH = 1 << 20  # a head layer's inputs or outputs
MAX_HEAD_PARAMETERS = 1 << 28  # 1 GiB of float32
MAX_TILES = 8  # backbones one concatenation joins
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")


def _whole(v, lo, hi) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def preprocessing_problem(pre: dict) -> str | None:
    """What is wrong with one (untiled) preprocessing entry, or None."""
    if not _whole(pre.get("size"), *SIZE_RANGE):
        return f'preprocessing "size" is {pre.get("size")!r}, not a whole number in {SIZE_RANGE[0]}..{SIZE_RANGE[1]}'
    if not _whole(pre.get("resize"), *RESIZE_RANGE):
        return (f'preprocessing "resize" is {pre.get("resize")!r}, not a whole number in '
                f'{RESIZE_RANGE[0]}..{RESIZE_RANGE[1]}')
    if pre.get("interpolation") not in INTERPOLATIONS:
        return f'preprocessing "interpolation" is {pre.get("interpolation")!r}, not one of {", ".join(INTERPOLATIONS)}'
    for key in ("mean", "std"):
        v = pre.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(_number(x) for x in v) or (
                key == "std" and not all(x > 0 for x in v)):
            return f'preprocessing "{key}" is not three {"positive " if key == "std" else ""}numbers'
    return None


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a run description (model.json), in a few words, or None. Checked
    wherever a run is read (read_run_meta): predict, evaluate, export, serve, the Predictor."""
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        return '"classes" is not a list of class names'
    if len(set(classes)) != len(classes):
        return '"classes" names a class twice'
    bb = meta.get("backbone")
    if not isinstance(bb, dict) or not all(isinstance(bb.get(k), str)
                                           for k in ("spec", "arch", "weights_source", "weights_digest")):
        return 'no "backbone" with its spec, arch, weights_source and weights_digest'
    if not isinstance(bb.get("stored", False), bool):
        return '"backbone"."stored" is not true or false'
    parts = bb.get("parts")
    if parts is not None and not (isinstance(parts, list) and len(parts) >= 2 and all(
            isinstance(q, dict) and all(isinstance(q.get(k), str)
                                        for k in ("spec", "arch", "weights_source", "weights_digest"))
            and "parts" not in q and "+" not in q["spec"] for q in parts)):
        return ('"backbone"."parts" is not a list of two or more single backbones with their spec, arch and '
                'weights_digest')
    pre = meta.get("preprocessing")
    if not isinstance(pre, dict):
        return 'no "preprocessing"'
    tiles = pre.get("tiles")
    if "tiles" in pre and not isinstance(tiles, list):
        return 'preprocessing "tiles" is not a list'
    if (parts is None) != (tiles is None) or (parts is not None and (
            not isinstance(tiles, list) or len(tiles) != len(parts) or bb.get("stored"))):
        return 'the "backbone" parts and the "preprocessing" tiles do not match'
    if tiles is not None:
        if len(tiles) > MAX_TILES:
            return f'preprocessing has {len(tiles)} tiles, over {MAX_TILES}'
        for tile in tiles:
            problem = (preprocessing_problem(tile) if isinstance(tile, dict) and "tiles" not in tile
                       else 'a preprocessing tile is not one plain preprocessing')
            if problem:
                return problem
        if len({t["size"] % 2 for t in tiles}) > 1:
            return 'preprocessing tiles have sizes of both parities'
    else:
        problem = preprocessing_problem(pre)
        if problem:
            return problem
    head = meta.get("head")
    if not isinstance(head, dict):
        return 'no "head" (the shape of the trained top)'
    hidden = head.get("hidden", [])
    if head.get("type") not in ("linear", "mlp") or not isinstance(hidden, list):
        return f'"head" has type {head.get("type")!r}, not linear or mlp'
    widths = [head.get("in_features"), *hidden, head.get("out_features")]
    if not all(_whole(w, 1, MAX_WIDTH) for w in widths):
        return f'"head" has layer widths {widths}, not whole numbers in 1..{MAX_WIDTH}'
    if sum((a + 1) * b for a, b in zip(widths, widths[1:])) > MAX_HEAD_PARAMETERS:
        return f'"head" has layer widths {widths}: over {MAX_HEAD_PARAMETERS} parameters'
    if not (_number(head.get("dropout", 0.0)) and 0 <= head.get("dropout", 0.0) < 1):
        return f'"head" has dropout {head.get("dropout")!r}, not a number in [0, 1)'
    if widths[-1] != len(classes):
        return f'"classes" lists {len(classes)} classes but the head has {widths[-1]} outputs'
    if meta.get("cut") is not None and not _whole(meta.get("cut"), 0, 1000):
        return f'"cut" is {meta.get("cut")!r}, not a whole number'
    return None


def run_backbone_source(meta: dict, weights=None):
    """The backbone a head-only run was trained on (a BackboneSource, or a ConcatSource whose
    every part is), verified against the recorded digests."""
    from graft.backbones import resolve_backbone

    info = meta["backbone"]
    recorded = Preprocessing.from_json(meta["preprocessing"]) if "preprocessing" in meta else None
    if info.get("parts"):  # a concatenation: each part found and checked as a single backbone is
        from graft.backbones.concat import ConcatSource

        if weights is not None:
            raise GraftError(f"--weights names one file, but this run concatenates {info['spec']}: "
                             f"each part's weights are found as training found them")
        source = ConcatSource(info["spec"], [run_backbone_source({"backbone": part}) for part in info["parts"]])
        if recorded is not None and recorded != source.preprocessing:  # each network would read another's crop
            raise GraftError(f"the run's preprocessing tiles in model.json are not its parts' ({info['spec']}): "
                             f"the run was altered or damaged; train it again or restore its files")
        return source
    source = resolve_backbone(_recorded_spec(info), weights or _recorded_weights(info))
    if source.weights.digest != info["weights_digest"]:
        raise GraftError(
            f"the backbone weights found now ({source.weights.source}, SHA-256 "
            f"{source.weights.digest[:12]}...) are not the ones this run was trained on "
            f"({info['weights_digest'][:12]}...); pass the original file with --weights"
        )
    if recorded is not None and recorded != source.preprocessing:
        # the network's pretrained configuration changed since training (a timm or torchvision
        # upgrade, same weights): the run's own crops stay the truth, for features and predictions
        source = _with_preprocessing(source, recorded)
    return source


def _recorded_spec(info: dict) -> str:
    """The spec to find a single run's backbone by: "default" as it was when the run was trained
    (the alias moved from lite0 to lite1; the recorded architecture says which it was)."""
    from graft.backbones import BUNDLED

    if info["spec"] != "default":
        return info["spec"]
    return next((name for name, entry in BUNDLED.items() if entry[0] == info["arch"]), "default")


def _with_preprocessing(source, pre: Preprocessing):
    """`source`, whose built network carries `pre` (what the run was trained on) as its preprocessing."""
    import dataclasses

    build = source._build

    def rebuilt():
        backbone = build()
        backbone.preprocessing = pre
        return backbone

    return dataclasses.replace(source, preprocessing=pre, _build=rebuilt, _built=None)


def load_run(run_dir, *, weights=None) -> Classifier:
    """Rebuild the classifier of a run folder with no other input."""
    from safetensors.torch import load_file

    from graft.backbones import rebuild_backbone
    from graft.finetune.classifier import Classifier
    from graft.heads.softmax import head_from_spec

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    path = run_dir / "model.safetensors"
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:
        raise GraftError(f"cannot read {path}: {e}") from None
    pre = Preprocessing.from_json(meta["preprocessing"])
    if meta["backbone"].get("stored"):
        backbone = rebuild_backbone(meta["backbone"], pre)
        _load_state(path, backbone, _prefixed(tensors, "backbone."), "backbone")
    else:
        backbone = run_backbone_source(meta, weights).build()
    head = head_from_spec(meta["head"])
    _load_state(path, head, _prefixed(tensors, "head."), "head")
    model = Classifier(backbone, head, meta["classes"], cut=meta.get("cut"))
    model.eval()
    model.meta = meta
    return model


def load_head(run_dir) -> nn.Module:
    """Just the trained top of a run (for head runs, scoring cached features needs nothing else)."""
    from safetensors import safe_open

    from graft.heads.softmax import head_from_spec

    meta = read_run_meta(run_dir)
    head = head_from_spec(meta["head"])
    path = Path(run_dir) / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k[5:]: f.get_tensor(k) for k in f.keys() if k.startswith("head.")}
    except Exception as e:
        raise GraftError(f"cannot read {path}: {e}") from None
    _load_state(path, head, state, "head")
    return head.eval()


def head_tensor_shapes(spec: dict) -> dict[str, list[int]]:
    """The tensors graft.heads.softmax.make_head's module for `spec` has, as model.safetensors names them
    (`head.` + its state_dict keys) with their shapes; computed here without torch."""
    widths = [spec["in_features"], *spec.get("hidden", []), spec["out_features"]]
    if len(widths) == 2:  # nn.Linear
        return {"head.weight": [widths[1], widths[0]], "head.bias": [widths[1]]}
    shapes = {}  # nn.Sequential of (Dropout, Linear, ReLU) per hidden layer, then Dropout, Linear
    for j, (a, b) in enumerate(zip(widths, widths[1:])):
        shapes[f"head.{3 * j + 1}.weight"], shapes[f"head.{3 * j + 1}.bias"] = [b, a], [b]
    return shapes


def _check_model_file(path: Path, meta: dict) -> None:
    """model.safetensors holds exactly what model.json declares: the head it describes, tensor for
    tensor and shape for shape, and the backbone's tensors only when the run stored it (a
    head-only run's backbone is the pretrained one: tensors of a fine-tuned one there would be
    either used silently or ignored silently). Reads the file's header only (no torch)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            if not 0 < n <= 100_000_000:
                raise ValueError("not a safetensors file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("not a safetensors file")
        shapes = {k: v.get("shape") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    except (OSError, ValueError) as e:
        raise GraftError(f"cannot read {path}: {e}") from None
    stored = bool(meta["backbone"].get("stored"))
    foreign = sorted(k for k in shapes if not (k.startswith("head.") or (stored and k.startswith("backbone."))))
    want = head_tensor_shapes(meta["head"])
    got = {k: v for k, v in shapes.items() if k.startswith("head.")}
    problem = None
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        undeclared = " (backbone tensors in a run whose model.json says the backbone is not stored)" if any(
            k.startswith("backbone.") for k in foreign) else ""
        problem = f"it holds tensors model.json does not declare: {shown}{undeclared}"
    elif stored and not any(k.startswith("backbone.") for k in shapes):
        problem = "model.json says the backbone is stored, but it holds no backbone tensor"
    elif got != want:
        wrong = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        k = wrong[0]
        problem = (f"the head's tensors do not fit the head it describes ({k}: "
                   f"{'shape ' + str(got[k]) if k in got else 'missing'}, model.json's head "
                   f"{'needs ' + str(want[k]) if k in want else 'has no such tensor'})")
    if problem:
        raise GraftError(f"{path} does not match model.json: {problem}; the run was altered or damaged: "
                         f"train it again or restore its files")


def _load_state(path: Path, module: nn.Module, state: dict, what: str) -> None:
    """module.load_state_dict(state), every key and shape checked; a mismatch is one GraftError line."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        why = " ".join(str(e).split())
        why = why if len(why) <= 400 else why[:400] + "..."
        raise GraftError(f"{path} does not match model.json: the {what}'s tensors do not fit the network "
                         f"it describes ({why}); the run was altered or damaged: train it again or restore "
                         f"its files") from None


# test-time augmentation: the centre crop alone, averaged with its mirror, or with the four corners
TTA_MODES = ("none", "flip", "crops")


def parse_tta(value) -> str | None:
    """--tta / tta=: None or "none" (the centre crop alone), "flip" (the centre crop and its
    left-right mirror), "crops" (the centre crop and the four corner crops of the resized photo,
    torchvision's FiveCrop), their logits averaged. -> None, "flip" or "crops"; else a GraftError."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text not in TTA_MODES:
        raise GraftError(f"--tta takes {', '.join(TTA_MODES)}, got {value!r}")
    return None if text == "none" else text


def tta_views(tta) -> list[tuple[tuple[float, float], bool]]:
    """The (at, mirror) crops whose logits --tta averages, the centre crop first."""
    from graft.backbones.preprocess import CENTRE, FIVE_CROPS

    tta = parse_tta(tta)
    if tta == "flip":
        return [(CENTRE, False), (CENTRE, True)]
    if tta == "crops":
        return [(at, False) for at in FIVE_CROPS]
    return [(CENTRE, False)]


def run_features(run_dir, samples, *, cache_dir=None, weights=None, batch_size: int = 32,
                 workers: int | None = None, progress: bool = False, mirror: bool = False, at=None):
    """-> (features (N, D) float32, ok mask, head, skipped [{path, reason}]) for data.Samples.

    What evaluation, calibration and the report all need. Frozen-backbone runs read the feature
    cache (no forward pass for photos training saw); other runs push the photos through the
    stored network. `mirror`, `at`: the features of another crop than the centre one (--tta:
    mirrored, or at a corner, graft.backbones.preprocess.CropAt; cached apart from the plain ones)."""
    from graft.backbones.preprocess import CENTRE, CropAt

    at = CENTRE if at is None else tuple(at)
    desc = "features" + (" (mirrored)" if mirror else "") + (f" (crop at {at[0]:g},{at[1]:g})" if at != CENTRE else "")
    meta = read_run_meta(run_dir)
    paths = [s.path for s in samples]
    if not meta["backbone"].get("stored"):
        from graft.cache import FeatureCache, cache_root
        from graft.features.extract import cache_namespace, extract_features

        from graft.data.placeholders import RefuseNonPhotos

        head = load_head(run_dir)  # checked against model.json before any photo is read
        source = run_backbone_source(meta, weights)
        # placeholders refused as training refuses them: a placeholder's features in the cache
        # would be used, undecoded and so unchecked, by the next graft train on these photos.
        # Only the centre crop is judged (the one training caches): a corner of a real photo may
        # well be plain sky or a studio wall.
        def load_for(pre):
            crop = CropAt(pre, at, mirror)
            return RefuseNonPhotos(crop) if (at, mirror) == (CENTRE, False) else crop

        point = "pooled" + (":mirrored" if mirror else "") + (f":at{at[0]:g},{at[1]:g}" if at != CENTRE else "")
        if meta["backbone"].get("parts"):  # each part's own cache namespace (graft.features.concat)
            from graft.features.concat import concat_features

            feats, ok, stats = concat_features(source, samples, cache_root(cache_dir), batch_size=batch_size,
                                               workers=workers, progress=progress, point=point,
                                               load_for=load_for, desc=desc)
            return feats, ok, head, stats.skipped
        cache = FeatureCache(cache_root(cache_dir), cache_namespace(source, point))
        feats, ok, stats = extract_features(source.build, [s.digest for s in samples], paths, cache,
                                            load=load_for(source.preprocessing), batch_size=batch_size,
                                            workers=workers, progress=progress, desc=desc)
        return feats, ok, head, stats.skipped
    model = load_run(run_dir, weights=weights)
    feats, ok, skipped = None, np.ones(len(samples), bool), []
    for idx, f, errors in model.batches(paths, batch_size=batch_size, workers=workers, mirror=mirror, at=at):
        for i, e in errors:
            ok[i] = False
            skipped.append({"path": e.path, "reason": e.reason})
        if f is not None:
            if feats is None:
                feats = np.zeros((len(samples), f.shape[1]), np.float32)
            feats[idx] = f.float().numpy()
    return (feats if feats is not None else np.zeros((len(samples), 0), np.float32)), ok, model.head, skipped


# --- training over a folder: what may be written there, and what no longer fits --------------

def is_graft_run(folder) -> bool:
    """A folder whose model.json graft wrote (the marker; before it, graft's own keys)."""
    try:
        meta = read_json(Path(folder) / "model.json", missing="")
    except GraftError:
        return False
    return isinstance(meta, dict) and (meta.get("written_by") == MARKER["written_by"] or
                                       {"format", "graft_version", "classes", "backbone", "head"} <= meta.keys())


def check_out(out, photos) -> None:
    """Refuse a training --out that would overwrite or mix with what graft did not make: the
    photos themselves or a folder inside them, a file or a path inside one, a folder that cannot be
    written, or a non-empty folder that is not a graft run (a fine-tuning killed before its model,
    which --resume continues, leaves only its checkpoint and its epoch log: IN_PROGRESS). A
    GraftError says which and what to give instead, before any photo is read."""
    out, photos = Path(out).expanduser(), Path(photos).expanduser()
    o, p = out.resolve(), photos.resolve()
    if o == p or p in o.parents:
        raise GraftError(f"--out {out} is {'the photo folder' if o == p else 'inside the photo folder'} {photos}: "
                         f"the run would mix with the photos; give a folder outside it, e.g. runs/{p.name}")
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out} is a file; give a folder for the run")
    made = next(q for q in (out, *out.parents) if q.exists() or q == q.parent)  # what is there already
    if not made.is_dir():
        raise GraftError(f"--out {out} is inside {made}, which is a file; give a folder for the run")
    if not os.access(made, os.W_OK | os.X_OK):
        raise GraftError(f"--out {out}: no permission to write in {made}; make it writable or give another folder")
    if not out.is_dir() or is_graft_run(out):
        return
    entries = sorted(e.name for e in out.iterdir() if not e.name.startswith(".tmp-"))
    if not set(entries) <= IN_PROGRESS:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise GraftError(f"--out {out} is a folder that is not a graft run (it holds {shown}); graft "
                         f"writes a run only into a new or empty folder, or over a run it made")


def remove_stale(run_dir) -> list[str]:
    """Before a new model replaces the one in `run_dir`: delete what was made from the old one
    and would no longer match it, and only what graft can prove it made: the exports export.json
    lists (each file only while it has the digest recorded there; export.json itself) and the
    calibration (calibration.json; its reference features while they have their recorded
    digest). Returns the names removed."""
    from graft._util.digest import sha256_file

    run_dir = Path(run_dir)
    removed: list[str] = []

    def drop(name: str, digest=None) -> None:
        path = run_dir / str(name)
        if path.parent != run_dir or not path.is_file():
            return
        if digest is not None and sha256_file(path) != digest:
            return
        path.unlink()
        removed.append(path.name)

    doc = _graft_json(run_dir / EXPORT_JSON, "files")
    if doc is not None:
        for name, entry in (doc.get("files") or {}).items():
            drop(name, (entry or {}).get("sha256") or "-")
        client = doc.get("client") or {}
        if client.get("file"):
            drop(client["file"], client.get("sha256") or "-")
        drop(EXPORT_JSON)
    cal = _graft_json(run_dir / CALIBRATION_JSON, "model_sha256")
    if cal is not None:
        novelty = cal.get("novelty") or {}
        if novelty.get("file"):
            drop(novelty["file"], novelty.get("sha256") or "-")
        drop(CALIBRATION_JSON)
    return removed


def _graft_json(path: Path, key: str) -> dict | None:
    """The JSON object in `path` if it is one graft wrote (it has `key`), else None."""
    try:
        doc = read_json(path, missing="")
    except GraftError:
        return None
    return doc if isinstance(doc, dict) and key in doc else None


def photos_split(meta: dict, photos, *, cache_dir=None):
    """The run's train/val split of `photos` found again exactly as training drew it: the same
    content-hash share (model.json's training.val_split), or PHOTOS/train + PHOTOS/val. A plain
    class folder given to a run trained on train/ + val/ is all validation. -> graft.data.Dataset
    with the run's classes (a GraftError if the photos have others). `cache_dir`: where the
    photos' digest index lives (graft.data.digests; default: graft's cache)."""
    from graft.data import Dataset, is_label_file, scan_class_folders, scan_photos

    photos = Path(photos).expanduser()
    training = meta.get("training") or {}
    classes = list(meta["classes"])
    split_layout = (photos / "train").is_dir() and (photos / "val").is_dir()
    if training.get("layout") == "train/val" and not split_layout and not is_label_file(photos):
        _, val, skipped = scan_class_folders(photos, classes=classes, cache_dir=cache_dir)
        return Dataset(photos, classes, [], val, skipped)
    data = scan_photos(photos, val_split=float(training.get("val_split", 0.2)), cache_dir=cache_dir)
    if data.classes != classes:
        raise GraftError(f"{photos} has classes {', '.join(data.classes)}; the run was trained on "
                         f"{', '.join(classes)}: give the photos the run was trained on")
    return data


def inner_split(data: Dataset, share: float, seed: int = 0) -> Dataset:
    """Fine-tuning's early-stopping photos, carved from the TRAINING photos: per class, the
    `share` with the lowest hash of (seed, content digest), at least one when the class has two
    or more photos. A hash of its own (not the train/val hash, which placed every training
    photo above val_split), so the carve does not depend on file order. Here, beside
    photos_split, because calibration finds these photos again too."""
    import hashlib

    from graft.data import Dataset

    train, held = [], []
    for label in range(len(data.classes)):
        members = sorted((s for s in data.train if s.label == label),
                         key=lambda s: hashlib.sha256(f"inner:{seed}:{s.digest}".encode()).digest())
        n = min(max(int(round(share * len(members))), 1), len(members) - 1) if len(members) > 1 else 0
        held += members[:n]
        train += members[n:]
    return Dataset(data.root, data.classes, train, held, data.skipped, data.layout)


def save_val_predictions(run_dir, paths, labels, probabilities) -> None:
    """RUN/val_predictions.npz: each validation photo's path, true label and class probabilities
    as training scored them (a row of NaN for a photo that could not be read)."""
    with atomic_path(Path(run_dir) / VAL_PREDICTIONS) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, paths=np.array([str(p) for p in paths], dtype=str),
                            labels=np.asarray(labels, dtype=np.int64),
                            probabilities=np.asarray(probabilities, dtype=np.float32))


def read_val_predictions(run_dir) -> dict | None:
    """{"paths", "labels", "probabilities"} as save_val_predictions wrote them; None for a run
    trained before graft kept them."""
    path = Path(run_dir) / VAL_PREDICTIONS
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"paths": [str(p) for p in z["paths"]], "labels": z["labels"],
                    "probabilities": z["probabilities"]}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:
        raise GraftError(f"cannot read {path}: {e}") from None


def _recorded_weights(info: dict):
    """A --weights file recorded in the run; a bundled backbone's packaged file (default, lite0,
    lite1, lite2) is found afresh, so a run does not pin one site-packages path (the digest
    check still proves it is the same file)."""
    from graft.backbones import BUNDLED

    packaged = info["spec"] == "default" or info["spec"] in BUNDLED
    return None if packaged else info["weights_source"]


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
