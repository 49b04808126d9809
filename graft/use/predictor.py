"""A trained run loaded once, answering for files, PIL images, numpy arrays or encoded bytes.

`graft.predict`, `graft predict` and `graft serve` all answer through a `Predictor`; an
application keeps one and calls it per photo or per batch, from any thread.

Every input reaches the network as the uint8 crop of the run's evaluation preprocessing
(graft.use.inputs: files and bytes through graft.data.images' one door, decoded images through
the same EXIF orientation and RGB conversion). The network runs on one of two engines with the
same answers (graft.use.engines): the run's fresh ONNX export (no torch), or the network rebuilt
with torch; `engine="auto"` (the default) takes onnx when it can; the model card (`describe`)
says which ran.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from graft._util.atomic import read_json
from graft._util.digest import sha256_file
from graft.backbones.preprocess import FIVE_CROPS, FiveCrops, parse_tta
from graft.errors import GraftError
from graft.run.files import CALIBRATION_JSON, METRICS_JSON
from graft.run.store import read_record
from graft.use.calibrate import load_calibration, load_novelty
from graft.use.engines import ENGINES, OnnxEngine, TorchEngine, choose_engine
from graft.use.inputs import crop, crop_batches, input_kind
from graft.use.reject import apply_reject, calibration_for, parse_reject


class Predictor:
    """`Predictor(run).predict(x)`: top-k classes of one input, or of each input of a list.

    `weights`: the backbone weights file, if not where training found it. `cache_dir`: a feature
    cache (as `graft train --cache-dir`): for runs whose backbone stayed frozen, files and bytes
    whose features are already cached skip decoding and the backbone (torch engine). `device`:
    where the torch engine runs (default the CPU). `engine`: "auto", "onnx" or "torch" (graft.use.engines).
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
        self.record = read_record(self.run_dir)
        self.classes = list(self.record.classes)
        self.preprocessing = self.record.preprocessing
        # what each input becomes: the centre crop, or with tta="crops" its five crops stacked
        self._input = FiveCrops(self.preprocessing) if self.tta == "crops" else self.preprocessing
        self.calibration, self._calibration_error = self._load_calibration()
        onnx, why_not = choose_engine(self.run_dir, self.record, self.calibration, engine, cache_dir=cache_dir,
                                      device=device)
        self._lock = threading.Lock()  # one forward pass at a time: the network is shared
        self._cache_lock = threading.Lock()  # FeatureCache's index is not thread-safe
        if threads is not None and threads < 1:
            raise GraftError(f"threads must be at least 1, got {threads}")
        if onnx is not None:
            self.engine = OnnxEngine(onnx, threads=threads)  # the novelty reference is in the graph
        else:
            self.engine = TorchEngine(self.run_dir, weights=weights, device=device, threads=threads)
            self._load_novelty()
        self.engine_reason = "fresh ONNX export" if onnx is not None else why_not
        self._cache = self.engine.open_cache(cache_dir, self.record) if cache_dir is not None else None

    def _load_calibration(self) -> tuple[dict | None, GraftError | None]:
        """(RUN/calibration.json, None) when the run has a usable one, (None, why not) when it has
        a stale or damaged one: that only matters if reject="auto" asks for it (`rejection`)."""
        if not (self.run_dir / CALIBRATION_JSON).is_file():
            return None, None
        try:
            calibration = load_calibration(self.run_dir)
            if calibration["classes"] != self.classes:
                raise GraftError(f"{self.run_dir / CALIBRATION_JSON} is for other classes: "
                                 f"run `graft calibrate {self.run_dir} PHOTOS` again")
        except GraftError as e:
            return None, e
        return calibration, None

    def _load_novelty(self) -> None:
        """The torch engine's novelty check, from the calibration (the ONNX graph holds its own)."""
        if self.calibration is None or not self.calibration.get("novelty"):
            return
        try:
            self.engine.novelty = load_novelty(self.run_dir, self.calibration)
        except GraftError as e:  # as a stale calibration: an error only for reject="auto"
            self.calibration, self._calibration_error = None, e

    # --- inputs ---------------------------------------------------------------------------------
    def prepare(self, item) -> np.ndarray:
        """One input -> the uint8 (size, size, 3) crop the network sees (with tta="crops", its five
        crops stacked top to bottom, (5 * size, size, 3)); ImageError if unusable."""
        return crop(self._input, input_kind(item), item)

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
        check_topk(topk)
        items = list(inputs)
        kinds = [input_kind(x) for x in items]
        keys = [{"path": str(x)} if kind == "path" else {"input": i if names is None else names[i]}
                for i, (kind, x) in enumerate(zip(kinds, items))]
        calibration = self.rejection(reject)
        plain = parse_reject(reject) is None
        pending: dict[int, dict] = {}
        done = 0
        bar = _progress_bar(len(items), progress)
        try:
            todo = list(range(len(items)))
            if self._cache is not None:
                todo = self._from_cache(items, kinds, keys, todo, pending, topk, calibration, plain)
                bar.update(len(items) - len(todo))
            for rows, crops, errors in crop_batches(self._input, todo, items, kinds, batch_size, workers):
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
        record = self.record
        card = {
            "run": str(self.run_dir),
            "classes": self.classes,
            "backbone": {"spec": record.backbone.spec, "arch": record.backbone.arch},
            "strategy": record.strategy,
            "preprocessing": self.preprocessing.to_json(),
            "graft_version": record.graft_version,
            "engine": self.engine.name,
            "device": self.engine.device,
            "tta": self.tta or "none",
        }
        try:  # a regular file within bounds (a FIFO there would hang `graft serve`'s /model)
            m = read_json(self.run_dir / METRICS_JSON, missing="")
        except GraftError:
            m = None
        m = m if isinstance(m, dict) else {}
        card.update({k: m.get(k) if _is_figure(m.get(k)) else None for k in ("val_accuracy", "n_train", "n_val")})
        cal = self.calibration
        card["calibration"] = None if cal is None else {
            "temperature": cal["temperature"], "threshold": cal["threshold"],
            "target_accuracy": cal.get("target_accuracy"),
            "novelty_threshold": (cal.get("novelty") or {}).get("threshold")}
        return card

    # --- internals ------------------------------------------------------------------------------
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


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _is_figure(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _progress_bar(total: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predicting", unit="img", leave=False)


def check_topk(topk) -> None:
    """How many classes to answer with: a whole number >= 1 (more than the run has gives them
    all); 0 or -1 were silently taken as 1."""
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise GraftError(f"topk must be a whole number >= 1, got {topk!r}")
