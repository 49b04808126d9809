"""A bfloat16 engine for the augmented views' pooled features, asked for with --precision bf16:
OpenVINO's CPU plugin, fastest on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX).

Why OpenVINO: onnxruntime's CPU provider has no bfloat16 convolution, and torch's bfloat16
autocast ran EfficientNet-Lite only 1.07x faster than onnxruntime in float32 here. OpenVINO, given
the graph graft already exports for onnxruntime with its inference precision set to bf16, ran
Lite0/1/2's forward pass 1.7-1.8x faster (bench/engine.py --gate).

Why opt-in, and only for the views: bfloat16 moves a photo's features (cosine to float32: mean
0.998, 1% below 0.988-0.993 on real photos), past the 0.995 graft's gate asks of clean features
(bench/engine.py --gate), so the features the model, its choices and its figures are made of stay
float32, exactly what `graft predict` computes. For the views the gate is the held-out accuracy of
a head trained on them: equal on ants/bees, but 1.1 points lower on trashnet (bench/views_bf16.py),
past its 0.3, so `--precision auto` keeps the views in float32 too; --precision bf16 trades that
for views computed 1.3-1.7x faster. Views computed so are named apart
(graft.features.extract.extract_views), so they never stand in for float32 ones. Each session is
checked on a fixed random batch against torch's float32 forward (every image's cosine >=
MIN_COSINE) and otherwise not used: graft warns once and computes the views in float32.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import weakref

import numpy as np
import torch

from graft.backbones.engine import (Engine, export, extraction_engine, intra_op_threads, onnx_path, requested,
                                    runs_graph, side_by_side)
from graft.cache.layout import touch
from graft.errors import GraftError

log = logging.getLogger("graft")

PRECISIONS = ("auto", "bf16", "fp32")
MIN_COSINE = 0.99  # of each image's features to torch's float32 ones, on the self-check's batch
_compiled: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # backbone -> {key: engine or None}


def views_precision(precision: str = "auto", engine: str | None = None) -> str:
    """'bf16' where the augmented views are computed in bfloat16: only --precision bf16 (auto failed
    the views' gate, see the module), with OpenVINO installed and no engine asked for by name
    (GRAFT_ENGINE=torch or onnxruntime)."""
    if precision not in PRECISIONS:
        raise GraftError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "bf16" or requested(engine) != "auto":
        return "fp32"
    if importlib.util.find_spec("openvino") is None:
        _say_no_openvino()
        return "fp32"
    return "bf16"


@functools.cache
def _say_no_openvino() -> None:
    log.warning("--precision bf16: OpenVINO is not installed (pip install 'graft[openvino]'): the augmented "
                "views are computed in float32")


def views_engine(backbone, *, n_images: int, cache_root, precision: str = "fp32") -> Engine:
    """The engine for `n_images` augmented views: with `precision` "bf16" OpenVINO in bfloat16 where
    the exported graph would run (graft.backbones.engine.runs_graph) and it passes its check; else
    extraction_engine's."""
    if precision == "bf16" and runs_graph(backbone, n_images=n_images, cache_root=cache_root):
        fast = bf16_engine(backbone, cache_root)
        if fast is not None:
            return fast
    return extraction_engine(backbone, n_images=n_images, cache_root=cache_root)


class OpenVinoEngine(Engine):
    name = "openvino-bf16"
    channels_last = False  # the ONNX graph takes NCHW

    def __init__(self, compiled):
        self.request = compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.request.infer({0: arr})[0].copy())


def bf16_engine(backbone, cache_root) -> OpenVinoEngine | None:
    """OpenVINO in bfloat16 for `backbone`, compiled once per process from the exported graph and
    checked; None (warned once) where it cannot run or its check fails."""
    path, threads = onnx_path(backbone, cache_root), intra_op_threads()
    known = _compiled.setdefault(backbone, {})
    if (str(path), threads) in known:
        return known[(str(path), threads)]
    engine = None
    try:
        import openvino as ov

        if not path.is_file():
            export(backbone, path)
        touch(path)  # a use, for `graft cache prune`'s least-recently-used order
        compiled = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": False})  # the decoding workers share these cores
        engine = OpenVinoEngine(compiled)
        worst = min_cosine(backbone, engine)
        if worst < MIN_COSINE:
            log.warning("OpenVINO's bfloat16 features of %s are off (cosine %.4f < %g): computing the views "
                        "in float32", backbone.arch, worst, MIN_COSINE)
            engine = None
    except Exception as e:  # a missing or failing runtime is never fatal: float32 still works
        log.warning("cannot run %s with OpenVINO in bfloat16 (%s): computing the views in float32", backbone.arch,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        engine = None
    known[(str(path), threads)] = engine
    return engine


def min_cosine(backbone, engine: Engine, batch: int = 4) -> float:
    """The smallest cosine between `engine`'s and torch's float32 features on a fixed random batch."""
    ref, got = side_by_side(backbone, engine, batch)
    if ref.shape != got.shape:
        return float("-inf")
    return float(torch.nn.functional.cosine_similarity(ref.double(), got.double(), dim=1).min())
