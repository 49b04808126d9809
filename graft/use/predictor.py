"""A trained run loaded once, answering for files, PIL images, numpy arrays or encoded bytes.

`graft.predict`, `graft predict` and `graft serve` all answer through a `Predictor`; an
application keeps one and calls it per photo or per batch, from any thread.

Every input reaches the network as the uint8 crop of the run's evaluation preprocessing
(graft.backbones.preprocess): encoded bytes go through the very door files go through
(`read_image`, with its format, size and decompression-bomb checks), and decoded images (PIL,
numpy) meet the same EXIF orientation, RGB conversion, resize and centre crop.

Two engines run the network, with the same answers (probabilities within 1e-5):
  onnx   the run's own ONNX export (RUN/model.onnx, `graft export RUN --format onnx`) while it is
         fresh: export.json says it was made from this very model.safetensors and calibration,
         and the file still hashes to what export.json recorded. It needs only onnxruntime,
         numpy and Pillow: no torch, no timm, so a one-photo `graft predict` starts in about a
         second instead of ten.
  torch  the run's network rebuilt with torch (graft.run.store.load_run): always possible, and the
         one a feature cache (`cache_dir`: cached features skip the backbone) or a GPU needs.
`engine="auto"` (the default) takes onnx when it can; the model card (`describe`) says which ran.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from graft._util.digest import sha256_file
from graft.backbones.preprocess import FIVE_CROPS, Preprocessing
from graft.use.calibrate import CALIBRATION_JSON, load_calibration
from graft.errors import GraftError, ImageError
from graft.use.reject import apply_reject, calibration_for, parse_reject
from graft.run.store import EXPORT_JSON, parse_tta, read_run_meta

ENGINES = ("auto", "onnx", "torch")
ONNX_FILE = "model.onnx"
EXPORT_FORMAT = 2  # the exported interface this module runs: uint8 NHWC in, logits and novelty out
IN_PROCESS = 16  # fewer inputs than this are decoded in the calling thread (graft.features.loader.auto_workers' rule)
_EXIF_ORIENTATION = 0x0112


class Predictor:
    """`Predictor(run).predict(x)`: top-k classes of one input, or of each input of a list.

    `weights`: the backbone weights file, if not where training found it. `cache_dir`: a feature
    cache (as `graft train --cache-dir`): for runs whose backbone stayed frozen, files and bytes
    whose features are already cached skip decoding and the backbone (torch engine). `device`:
    where the torch engine runs (default the CPU). `engine`: "auto", "onnx" or "torch" (above).
    `threads`: threads of one forward pass (default: the engine's, one per core; torch's
    setting is per process). `tta`: test-time augmentation, None/"none" (default), "flip":
    each input's logits are the mean of its centre crop's and its left-right mirror's (two
    forward passes), or "crops": of its centre and four corner crops (five; torchvision's
    FiveCrop of the resized photo). The novelty check, fitted on centre crops, reads the centre
    crop's; the feature cache, which holds centre crops' features, is then not used.
    """

    def __init__(self, run, *, weights=None, cache_dir=None, device=None, engine: str = "auto",
                 threads: int | None = None, tta=None):
        if engine not in ENGINES:
            raise GraftError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.tta = parse_tta(tta)
        if self.tta is not None:
            cache_dir = None  # cached features are the centre crops': each input needs its mirror too
        self.run_dir = Path(run)
        self.meta = read_run_meta(self.run_dir)
        self.classes = list(self.meta["classes"])
        self.preprocessing = Preprocessing.from_json(self.meta["preprocessing"])
        # what each input becomes: the centre crop, or with tta="crops" its five crops stacked
        self._input = _FiveCrops(self.preprocessing) if self.tta == "crops" else self.preprocessing
        self.calibration = None
        self._calibration_error: GraftError | None = None
        if (self.run_dir / CALIBRATION_JSON).is_file():
            try:  # a stale or damaged calibration only matters if reject="auto" asks for it
                self.calibration = load_calibration(self.run_dir)
                if self.calibration["classes"] != self.classes:
                    raise GraftError(f"{self.run_dir / CALIBRATION_JSON} is for other classes: "
                                     f"run `graft calibrate {self.run_dir} PHOTOS` again")
            except GraftError as e:
                self.calibration, self._calibration_error = None, e
        onnx, why_not = None, "engine='torch' asked for"
        if engine != "torch":
            why_not = ("a feature cache needs the torch engine" if cache_dir is not None else
                       "the onnx engine runs on the CPU" if device not in (None, "cpu") else None)
            if why_not is None:
                onnx, why_not = fresh_onnx_export(self.run_dir, self.meta, self.calibration)
            if engine == "onnx" and onnx is None:
                raise GraftError(f"cannot use the ONNX engine for {self.run_dir}: {why_not}")
        self._lock = threading.Lock()  # one forward pass at a time: the network is shared
        self._cache_lock = threading.Lock()  # FeatureCache's index is not thread-safe
        if threads is not None and threads < 1:
            raise GraftError(f"threads must be at least 1, got {threads}")
        if onnx is not None:
            self.engine = _OnnxNet(onnx, threads=threads)  # the novelty reference is in the graph
        else:
            self.engine = _TorchNet(self.run_dir, weights=weights, device=device, threads=threads)
            if self.calibration is not None and self.calibration.get("novelty"):
                from graft.use.calibrate import load_novelty

                try:
                    self.engine.novelty = load_novelty(self.run_dir, self.calibration)
                except GraftError as e:  # as a stale calibration: an error only for reject="auto"
                    self.calibration, self._calibration_error = None, e
        self.engine_reason = "fresh ONNX export" if onnx is not None else why_not
        self._cache = self.engine.open_cache(cache_dir, self.meta) if cache_dir is not None else None

    # --- inputs ---------------------------------------------------------------------------------
    def prepare(self, item) -> np.ndarray:
        """One input -> the uint8 (size, size, 3) crop the network sees (with tta="crops", its five
        crops stacked top to bottom, (5 * size, size, 3)); ImageError if unusable."""
        return _prepare(self._input, _kind(item), item)

    # --- the network ----------------------------------------------------------------------------
    def forward(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, size, size, 3) crops (`prepare`'s) -> (logits (N, C) float64, novelty
        distances (N,) or None when the run has no novelty check). With tta="flip" the logits are
        the mean of the crops' and their mirrors', with "crops" of the five crops' stacked in each
        input: logits, not probabilities, so that a calibration's
        temperature divides them exactly as it divided the centre crops' it was fitted on."""
        with self._lock:
            if self.tta == "crops":  # (N, 5 * H, W, 3) -> one batch of 5N crops, the centre ones first
                n, v = len(crops), len(FIVE_CROPS)
                views = crops.reshape(n, v, crops.shape[1] // v, *crops.shape[2:]).swapaxes(0, 1)
                logits, novelty = self.engine.run(views.reshape(n * v, *views.shape[2:]))
                return logits.reshape(v, n, -1).mean(0), None if novelty is None else novelty[:n]
            logits, novelty = self.engine.run(crops)
            if self.tta == "flip":
                logits = (logits + self.engine.run(crops[:, :, ::-1])[0]) / 2
            return logits, novelty

    # --- answers --------------------------------------------------------------------------------
    def predict(self, inputs, topk: int = 3, reject=None, *, names: Sequence | None = None,
                batch_size: int = 32, workers: int | None = 0, progress: bool = False):
        """Top-k classes of `inputs`: a path, PIL image, HxWx3 uint8 array or encoded bytes, or a
        list of those (then a list of answers, in order).

        Each answer is {"path" (files) or "input" (the rest: `names[i]`, default the position),
        "predictions": [{"class", "probability"}]} or, for an unusable input, {..., "error"}.
        `reject` as `graft predict --reject`: None (default) or "none"; "auto" (the run's
        calibration: temperature, confidence and novelty thresholds); a probability P. With
        `reject`, answers also carry "class" (the top class or "unknown"), "confidence",
        ["novelty"], ["reason"]. `workers`: decoding processes for long lists (default 0: decode
        in this thread, safe inside a threaded application; None: chosen from the machine).
        """
        single = not isinstance(inputs, (list, tuple))
        out = list(self.iter_predict([inputs] if single else inputs, topk, reject, names=names,
                                     batch_size=batch_size, workers=workers, progress=progress))
        return out[0] if single else out

    def iter_predict(self, inputs, topk: int = 3, reject=None, *, names: Sequence | None = None,
                     batch_size: int = 32, workers: int | None = 0, progress: bool = False):
        """`predict`'s answers for a list, yielded in input order as batches finish (a CSV of
        many photos is written as they come)."""
        items = list(inputs)
        kinds = [_kind(x) for x in items]
        keys = [{"path": str(x)} if kind == "path" else {"input": i if names is None else names[i]}
                for i, (kind, x) in enumerate(zip(kinds, items))]
        calibration = self.rejection(reject)
        plain = parse_reject(reject) is None
        pending: dict[int, dict] = {}
        done = 0
        bar = _progress(len(items), progress)
        try:
            todo = list(range(len(items)))
            if self._cache is not None:
                todo = self._from_cache(items, kinds, keys, todo, pending, topk, calibration, plain)
                bar.update(len(items) - len(todo))
            for rows, crops, errors in self._batches(todo, items, kinds, batch_size, workers):
                for i, reason in errors:
                    pending[i] = {**keys[i], "error": reason}
                if rows:
                    logits, novelty = self.forward(crops)
                    pending.update(zip(rows, self.answers([keys[i] for i in rows], logits, novelty, topk,
                                                          calibration, plain)))
                bar.update(len(rows) + len(errors))
                while done in pending:
                    yield pending.pop(done)
                    done += 1
            while done in pending:
                yield pending.pop(done)
                done += 1
        finally:
            bar.close()

    def answers(self, keys: list[dict], logits, novelty, topk, calibration=None, plain: bool = True) -> list[dict]:
        """Answer dicts for rows of `forward`'s output. `topk`: one k, or one per row.
        `calibration`: from `rejection(reject)`; `plain`: answers as graft.predict's (no "class")."""
        ks = [topk] * len(keys) if isinstance(topk, int) else list(topk)
        use_novelty = novelty is not None and calibration is not None and calibration.get("novelty")
        out = []
        for row, (key, k) in enumerate(zip(keys, ks)):
            (r,) = apply_reject([{"path": None}], logits[row:row + 1], calibration,
                                novelty=novelty[row:row + 1] if use_novelty else None, topk=k, classes=self.classes)
            if plain:
                r = {"predictions": r["predictions"]}
            else:
                del r["path"]  # apply_reject names inputs "path"; ours may be "input"
            out.append({**key, **r})
        return out

    def rejection(self, reject) -> dict | None:
        """The calibration `reject` asks for (see graft.use.reject.calibration_for); None for none."""
        reject = parse_reject(reject)
        if reject == "auto":
            if self._calibration_error is not None:
                raise self._calibration_error
            if self.calibration is None:
                load_calibration(self.run_dir)  # raises its "run graft calibrate" message
            return self.calibration
        return calibration_for(self.run_dir, reject, self.classes)

    def describe(self) -> dict:
        """The model card: what the run is, how it reads photos, how well it did on held-out ones."""
        meta = self.meta
        card = {
            "run": str(self.run_dir),
            "classes": self.classes,
            "backbone": {k: meta["backbone"].get(k) for k in ("spec", "arch")},
            "strategy": meta.get("strategy"),
            "preprocessing": self.preprocessing.to_json(),
            "graft_version": meta.get("graft_version"),
            "engine": self.engine.name,
            "device": self.engine.device,
            "tta": self.tta or "none",
        }
        try:
            m = json.loads((self.run_dir / "metrics.json").read_text())
            card.update({"val_accuracy": m.get("val_accuracy"), "n_train": m.get("n_train"),
                         "n_val": m.get("n_val")})
        except (OSError, ValueError):
            card.update({"val_accuracy": None, "n_train": None, "n_val": None})
        cal = self.calibration
        card["calibration"] = None if cal is None else {
            "temperature": cal["temperature"], "threshold": cal["threshold"],
            "target_accuracy": cal.get("target_accuracy"),
            "novelty_threshold": (cal.get("novelty") or {}).get("threshold")}
        return card

    # --- internals ------------------------------------------------------------------------------
    def _batches(self, todo: list[int], items, kinds, batch_size: int, workers: int | None):
        """Yield (rows, uint8 (n, S, S, 3) crops or None, [(row, reason)]) over `todo`, in order."""
        if workers == 0 or (workers is None and len(todo) < IN_PROCESS):
            for start in range(0, len(todo), batch_size):
                rows, crops, errors = [], [], []
                for i in todo[start:start + batch_size]:
                    try:
                        crops.append(_prepare(self._input, kinds[i], items[i]))
                        rows.append(i)
                    except ImageError as e:
                        errors.append((i, e.reason))
                yield rows, (np.stack(crops) if crops else None), errors
            return
        import functools

        from graft.features.loader import image_loader  # decoding processes: torch's DataLoader

        load = functools.partial(_prepare_tensor, self._input)
        for idx, batch, errors in image_loader([(kinds[i], items[i]) for i in todo], load,
                                               batch_size=batch_size, workers=workers):
            crops = None if batch is None else batch.permute(0, 2, 3, 1).numpy()
            yield [todo[j] for j in idx], crops, [(todo[j], e.reason) for j, e in errors]

    def _from_cache(self, items, kinds, keys, todo, pending, topk, calibration, plain) -> list[int]:
        """Answer the files and bytes whose features are cached; return the indices still to do."""
        import hashlib

        digests = {}
        for i in todo:
            if kinds[i] == "bytes":
                digests[i] = hashlib.sha256(items[i]).hexdigest()
            elif kinds[i] == "path":
                try:
                    digests[i] = sha256_file(items[i])
                except OSError:
                    pass  # decoding reports it
        if not digests:
            return todo
        rows = list(digests)
        with self._cache_lock:
            self._cache.refresh()
            feats, missing = self._cache.get([digests[i] for i in rows])
        hit = sorted(set(range(len(rows))) - set(missing))
        if hit:
            with self._lock:
                logits, novelty = self.engine.from_features(feats[hit])
            found = [rows[j] for j in hit]
            pending.update(zip(found, self.answers([keys[i] for i in found], logits, novelty, topk, calibration, plain)))
        done = {rows[j] for j in hit}
        return [i for i in todo if i not in done]


# --- the engines -------------------------------------------------------------------------------

def fresh_onnx_export(run_dir: Path, meta: dict, calibration: dict | None):
    """-> (path of RUN/model.onnx, None) when it is a graft export of exactly this model (and
    calibration) and onnxruntime is installed, else (None, why not)."""
    path = run_dir / ONNX_FILE
    if not path.is_file():
        return None, f"no {ONNX_FILE} (graft export {run_dir} --format onnx)"
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "onnxruntime is not installed"
    try:
        doc = json.loads((run_dir / EXPORT_JSON).read_text())
        entry = doc["files"][ONNX_FILE]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{EXPORT_JSON} does not describe {ONNX_FILE}"
    cal_sha = sha256_file(run_dir / CALIBRATION_JSON) if calibration is not None else None
    checks = [
        (doc.get("format") == EXPORT_FORMAT, "the export is of an older graft"),
        (doc.get("classes") == meta["classes"] and doc.get("preprocessing") == meta["preprocessing"],
         "the export is of another model"),
        (doc.get("model_sha256") == sha256_file(run_dir / "model.safetensors"), "the model was retrained since the export"),
        (((doc.get("calibration") or {}).get("sha256")) == cal_sha, "the calibration changed since the export"),
        (entry.get("sha256") == sha256_file(path), f"{ONNX_FILE} was changed since graft wrote it"),
    ]
    for ok, why in checks:
        if not ok:
            return None, why
    return path, None


class _OnnxNet:
    """The exported graph on onnxruntime: uint8 NHWC crops in, logits (and novelty) out."""

    name = "onnx"
    device = "cpu"

    def __init__(self, path: Path, *, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # Waiting threads sleep rather than spin: a shared or busy machine (a server decoding
        # uploads beside its forward passes) loses more to spinning than an idle one gains.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, crops: np.ndarray):
        got = dict(zip(self.outputs, self.session.run(None, {"image": np.ascontiguousarray(crops)})))
        novelty = got.get("novelty")
        return got["logits"].astype(np.float64), None if novelty is None else novelty.astype(np.float64)

    def open_cache(self, cache_dir, meta):  # pragma: no cover - the onnx engine is not chosen with a cache
        raise GraftError("a feature cache needs the torch engine")


class _TorchNet:
    """The run's network rebuilt in torch (graft.run.store.load_run), and its novelty check."""

    name = "torch"

    def __init__(self, run_dir: Path, *, weights, device, threads: int | None = None):
        import torch

        from graft.run.store import load_run

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = str(torch.device(device or "cpu"))
        self.model = load_run(run_dir, weights=weights).to(self.device).eval()
        self.novelty = None  # graft.use.calibrate.Novelty, set by the Predictor when the run has one

    def run(self, crops: np.ndarray):
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2)
            x = self.model.preprocessing.normalize(x).contiguous(memory_format=torch.channels_last)
            return self._scores(self.model.features(x))

    def from_features(self, feats: np.ndarray):
        with self.torch.inference_mode():
            return self._scores(self.torch.from_numpy(np.ascontiguousarray(feats)).to(self.device))

    def _scores(self, feats):
        logits = self.model.head(feats).double().cpu().numpy()
        novelty = self.novelty.distance(feats.cpu()) if self.novelty is not None else None
        return logits, novelty

    def open_cache(self, cache_dir, meta):
        if meta["backbone"].get("stored") or self.model.cut is not None:
            return None  # only an untouched pretrained backbone's features are in the cache
        from graft.cache import FeatureCache, cache_root
        from graft.features.extract import cache_namespace

        if meta["backbone"].get("parts"):  # a concatenation: each part's own namespace, rows joined
            from graft.features.concat import JoinedCache

            return JoinedCache(self.model.backbone.parts, cache_root(cache_dir))
        return FeatureCache(cache_root(cache_dir), cache_namespace(self.model.backbone))


# --- inputs ------------------------------------------------------------------------------------

def _kind(item) -> str:
    if isinstance(item, (str, os.PathLike)):
        return "path"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(item, Image.Image):
        return "image"
    if isinstance(item, np.ndarray):
        return "array"
    raise TypeError(f"Predictor takes paths, PIL images, numpy arrays or encoded bytes, not {type(item).__name__}")


class _FiveCrops:
    """--tta crops: an input's centre crop and its four corner crops, stacked top to bottom in
    one uint8 array, so they travel through the loader and `forward` as one crop does."""

    def __init__(self, pre):
        self.pre = pre

    def crop_array(self, img: Image.Image) -> np.ndarray:
        return np.concatenate([self.pre.crop_array(img, at) for at in FIVE_CROPS], axis=0)


def _prepare_tensor(pre: Preprocessing, kind_item):
    """image_loader's `load`: module-level, so decoding workers get the preprocessing, not the model."""
    import torch

    return torch.from_numpy(_prepare(pre, *kind_item)).permute(2, 0, 1)


def _prepare(pre: Preprocessing, kind: str, item) -> np.ndarray:
    from graft.data.images import read_image

    if kind == "path":
        return pre.crop_array(read_image(item))
    if kind == "bytes":
        if not len(item):
            raise ImageError("<bytes>", "empty input (0 bytes)", "empty_file")
        return pre.crop_array(read_image("<bytes>", data=bytes(item)))
    if kind == "array":
        item = _array_image(item)
    return _prepare_image(pre, item)


def _array_image(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ImageError("<array>", f"numpy input must be an HxWx3 uint8 RGB array, got {arr.dtype} "
                                    f"{'x'.join(map(str, arr.shape))}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _prepare_image(pre: Preprocessing, img: Image.Image) -> np.ndarray:
    """A decoded image as read_image leaves a file: EXIF orientation applied, 8-bit RGB."""
    from graft.data.images import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF chatter, as read_image
            img.load()
            if img.getexif().get(_EXIF_ORIENTATION) not in (None, 1):
                img = ImageOps.exif_transpose(img)
        return pre.crop_array(to_rgb(img))
    except ImageError:
        raise
    except Exception as e:  # a lazily opened PIL image can fail now, on its pixels
        raise ImageError("<image>", f"cannot use image ({e or type(e).__name__})") from None


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predicting", unit="img", leave=False)
