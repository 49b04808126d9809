"""A trained run loaded once, answering for files, PIL images, numpy arrays or encoded bytes.

`graft.predict` reloads the run at every call (imports, model build, weight loading: seconds);
an application keeps one `Predictor` and calls it per photo or per batch, from any thread.

Every input reaches the network through the run's evaluation preprocessing exactly as a file
does: encoded bytes go through the very door files go through (`read_image`, with its format,
size and decompression-bomb checks), and decoded images (PIL, numpy) meet the same resize and
centre crop (`Preprocessing.prepare`). The forward pass runs under a lock, so threads share one
model; decoding, which is most of the work for a large photo, runs in the callers' threads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .calibrate import (CALIBRATION_JSON, apply_reject, calibration_for, load_calibration, load_novelty,
                        parse_reject)
from .errors import GraftError, ImageError

_EXIF_ORIENTATION = 0x0112


class Predictor:
    """`Predictor(run).predict(x)`: top-k classes of one input, or of each input of a list.

    `weights`: the backbone weights file, if not where training found it. `cache_dir`: a feature
    cache (as `graft train --cache-dir`): for runs whose backbone stayed frozen, files and bytes
    whose features are already cached skip decoding and the backbone. `device`: where the
    network runs (default the CPU, where the numbers equal `graft predict`'s).
    """

    def __init__(self, run, *, weights=None, cache_dir=None, device=None):
        from .model import load_run

        self.run_dir = Path(run)
        self.device = torch.device(device or "cpu")
        model = load_run(self.run_dir, weights=weights)
        self.model = model.to(self.device).eval()
        self.meta = model.meta
        self.classes = list(model.classes)
        self.preprocessing = model.preprocessing
        self._lock = threading.Lock()  # one forward at a time: the model is shared
        self._cache = self._open_cache(cache_dir)
        self._cache_lock = threading.Lock()  # FeatureCache's index is not thread-safe
        self.calibration = self.novelty = None
        self._calibration_error: GraftError | None = None
        if (self.run_dir / CALIBRATION_JSON).is_file():
            try:  # a stale or damaged calibration only matters if reject="auto" asks for it
                self.calibration = load_calibration(self.run_dir)
                if self.calibration["classes"] != self.classes:
                    raise GraftError(f"{self.run_dir / CALIBRATION_JSON} is for other classes: "
                                     f"run `graft calibrate {self.run_dir} PHOTOS` again")
                self.novelty = load_novelty(self.run_dir, self.calibration)
            except GraftError as e:
                self.calibration, self._calibration_error = None, e

    # --- inputs ---------------------------------------------------------------------------------
    def prepare(self, item) -> torch.Tensor:
        """One input -> the uint8 (3, size, size) crop the network sees; ImageError if unusable."""
        return _prepare(self.preprocessing, _check_kind(item), item)

    # --- the network ----------------------------------------------------------------------------
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, size, size) crops -> (features (N, D), logits (N, C)), on the CPU."""
        pre = self.preprocessing
        with self._lock, torch.inference_mode():
            x = pre.normalize(batch.to(self.device)).contiguous(memory_format=torch.channels_last)
            feats = self.model.features(x)
            logits = self.model.head(feats)
        return feats.cpu(), logits.cpu()

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            return self.model.head(feats.to(self.device)).cpu()

    # --- answers --------------------------------------------------------------------------------
    def predict(self, inputs, topk: int = 3, reject=None, *, names: Sequence | None = None,
                batch_size: int = 32, workers: int | None = 0):
        """Top-k classes of `inputs`: a path, PIL image, HxWx3 uint8 array or encoded bytes, or a
        list of those (then a list of answers, in order).

        Each answer is {"path" (files) or "input" (the rest: `names[i]`, default the position),
        "predictions": [{"class", "probability"}]} or, for an unusable input, {..., "error"}.
        `reject` as `graft predict --reject`: None (default) or "none"; "auto" (the run's
        calibration: temperature, confidence and novelty thresholds); a probability P. With
        `reject`, answers also carry "class" (the top class or "unknown"), "confidence",
        ["novelty"], ["reason"]. `workers`: decoding processes for long lists (default 0: decode
        in this thread, safe inside a threaded application; None: automatic, as graft.predict).
        """
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        kinds = [_check_kind(x) for x in items]
        keys = [_key(kind, x, i if names is None else names[i]) for i, (kind, x) in enumerate(zip(kinds, items))]
        cal, novelty = self._rejection(reject)
        out: list[dict | None] = [None] * len(items)
        todo = list(range(len(items)))
        if self._cache is not None:
            todo = self._from_cache(items, kinds, keys, todo, out, topk, cal, novelty)
        if todo:
            from .loader import image_loader

            load = functools.partial(_prepare_item, self.preprocessing)
            loader = image_loader([(kinds[i], items[i]) for i in todo], load, batch_size=batch_size,
                                  workers=workers)
            for idx, batch, errors in loader:
                for j, e in errors:
                    out[todo[j]] = {**keys[todo[j]], "error": e.reason}
                if batch is not None:
                    feats, logits = self.forward(batch)
                    rows = [todo[j] for j in idx]
                    for i, r in zip(rows, self.answers([keys[i] for i in rows], feats, logits, topk, cal, novelty)):
                        out[i] = r
        return out[0] if single else out

    def answers(self, keys: list[dict], feats, logits, topk, calibration=None, novelty=None) -> list[dict]:
        """Result dicts for rows of `forward`'s output. `topk`: one k, or one per row.
        `calibration`/`novelty`: from `rejection(reject)`; None: plain top-k as graft.predict."""
        ks = [topk] * len(keys) if isinstance(topk, int) else list(topk)
        ks = [max(1, min(int(k), len(self.classes))) for k in ks]
        if calibration is None:
            probs = logits.float().softmax(1)  # as graft.predict: same ops, same numbers
            out = []
            for row, (key, k) in enumerate(zip(keys, ks)):
                top = probs[row].topk(k)
                out.append({**key, "predictions": [{"class": self.classes[c], "probability": round(float(p), 6)}
                                                   for p, c in zip(top.values, top.indices)]})
            return out
        z = logits.double().numpy()
        dist = novelty.distance(feats) if novelty is not None else None
        out = []
        for row, (key, k) in enumerate(zip(keys, ks)):
            (r,) = apply_reject([{"path": None}], z[row:row + 1], calibration,
                                novelty=None if dist is None else dist[row:row + 1], topk=k, classes=self.classes)
            del r["path"]  # apply_reject names inputs "path"; ours may be "input"
            out.append({**key, **r})
        return out

    def rejection(self, reject):
        """(calibration, novelty) that `reject` asks for; (None, None) for none."""
        return self._rejection(reject)

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
            "device": str(self.device),
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
    def _rejection(self, reject):
        reject = parse_reject(reject)
        if reject is None:
            return None, None
        if reject == "auto":
            if self._calibration_error is not None:
                raise self._calibration_error
            if self.calibration is None:
                load_calibration(self.run_dir)  # raises its "run graft calibrate" message
            return self.calibration, self.novelty
        return calibration_for(self.run_dir, reject, self.classes), None

    def _open_cache(self, cache_dir):
        if cache_dir is None or self.meta["backbone"].get("stored") or self.model.cut is not None:
            return None  # only an untouched pretrained backbone's features are in the cache
        from .cache import FeatureCache
        from .extract import cache_namespace

        return FeatureCache(Path(cache_dir).expanduser(), cache_namespace(self.model.backbone))

    def _from_cache(self, items, kinds, keys, todo, out, topk, cal, novelty) -> list[int]:
        """Answer the files and bytes whose features are cached; return the indices still to do."""
        from ._digest import sha256_file

        digests = {}
        for i in todo:
            if kinds[i] == "bytes":
                digests[i] = hashlib.sha256(items[i]).hexdigest()
            elif kinds[i] == "path":
                try:
                    digests[i] = sha256_file(items[i])
                except OSError:
                    pass  # the loader reports it
        if not digests:
            return todo
        rows = list(digests)
        with self._cache_lock:
            self._cache.refresh()
            feats, missing = self._cache.get([digests[i] for i in rows])
        hit = sorted(set(range(len(rows))) - set(missing))
        if hit:
            f = torch.from_numpy(feats[hit])
            found = [rows[j] for j in hit]
            for i, r in zip(found, self.answers([keys[i] for i in found], f, self.head(f), topk, cal, novelty)):
                out[i] = r
        done = {rows[j] for j in hit}
        return [i for i in todo if i not in done]


def _check_kind(item) -> str:
    if isinstance(item, (str, os.PathLike)):
        return "path"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(item, Image.Image):
        return "image"
    if isinstance(item, np.ndarray):
        return "array"
    raise TypeError(f"Predictor takes paths, PIL images, numpy arrays or encoded bytes, not {type(item).__name__}")


def _key(kind: str, item, name) -> dict:
    return {"path": str(item)} if kind == "path" else {"input": name}


def _prepare_item(pre, kind_item):
    """image_loader's `load`: module-level, so decoding workers get the preprocessing, not the model."""
    return _prepare(pre, *kind_item)


def _prepare(pre, kind: str, item) -> torch.Tensor:
    if kind == "path":
        return pre.load(item)
    if kind == "bytes":
        return _load_bytes(pre, bytes(item))
    if kind == "array":
        item = _array_image(item)
    return _prepare_image(pre, item)


def _load_bytes(pre, data: bytes) -> torch.Tensor:
    """Encoded bytes through the same door as files: read_image reads a path, so the bytes are
    written to a private temp file (deleted on return) and read back with every check files get."""
    if not data:
        raise ImageError("<bytes>", "empty input (0 bytes)")
    with tempfile.NamedTemporaryFile(prefix="graft-predict-") as f:
        f.write(data)
        f.flush()
        try:
            return pre.load(f.name)
        except ImageError as e:
            raise ImageError("<bytes>", e.reason) from None


def _array_image(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ImageError("<array>", f"numpy input must be an HxWx3 uint8 RGB array, got {arr.dtype} "
                                    f"{'x'.join(map(str, arr.shape))}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _prepare_image(pre, img: Image.Image) -> torch.Tensor:
    """A decoded image as read_image leaves a file: EXIF orientation applied, 8-bit RGB."""
    from .data.images import to_rgb

    try:
        img.load()
        if img.getexif().get(_EXIF_ORIENTATION) not in (None, 1):
            img = ImageOps.exif_transpose(img)
        return pre.prepare(to_rgb(img))
    except ImageError:
        raise
    except Exception as e:  # a lazily opened PIL image can fail now, on its pixels
        raise ImageError("<image>", f"cannot use image ({e or type(e).__name__})") from None
