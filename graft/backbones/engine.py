"""Which runtime computes the frozen backbone's pooled features: torch, or onnxruntime on the CPU.

On this machine's CPU onnxruntime runs EfficientNet-Lite0's forward pass 2x faster than torch
eager, even with graft's malloc tuning and channels_last (`bench/engine.py` measures both,
interleaved in one run). So for extraction on the CPU, when onnxruntime is installed, graft
exports the frozen backbone to ONNX once per (architecture, weights digest, preprocessing, torch
version) into `<cache>/engines/` and runs that; on a GPU, for other activations than the pooled
features (the fine-tuning boundary), or for a few images (the export and session cost more than
they save), torch runs.

The feature cache's key does not name the engine, so the engines must agree: every session
is checked when built, on a fixed random batch, against torch's forward pass of the very
backbone object in hand, and is used only if no output differs by more than `TOLERANCE`;
otherwise graft warns once and uses torch. (tests/backbones/test_engine.py checks the same on real photos.)

`engine`: "auto" (the rule above), "torch" or "onnxruntime" (ONNX whatever the count; still
checked, still falls back); default from GRAFT_ENGINE, else "auto".

Two things keep the session near this CPU's limit (bench/extraction.py measures them):
- timm's TF-ported models ("same" padding: every `tf_` EfficientNet) compute each strided
  conv's padding from the input's size at run time. Exported as is, that is a Shape/Ceil/Pad
  chain before 5 convs, which onnxruntime cannot fold into them: each one breaks its blocked
  (NCHWc) layout into a reorder, a pad and a reorder back. The input's size is fixed by the
  preprocessing (it is in the export's key), so the export writes those pads as constants of
  the Conv itself (`static_same_padding`): the same arithmetic, one fused graph.
- waiting threads sleep instead of spinning: graft's decoding workers share the cores with the
  forward pass, and a spinning thread takes the core a worker needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from graft._util.atomic import atomic_path
from graft.cache.layout import ENGINES as ENGINES_DIR, touch
from graft.errors import GraftError
from graft.backbones._base import Backbone

log = logging.getLogger("graft")

ENGINES = ("auto", "torch", "onnxruntime")
TOLERANCE = 1e-4  # max |difference| of any feature between the engines
OPSET = 17
GRAPH = 2  # version of what `export` writes: 2, "same" padding as constants (see the module doc)
# Below this many images to compute, "auto" keeps torch: on first use the export (about 20 s on
# 2 busy cores) costs what onnxruntime saves on ~8 batches of 32; later, building the session
# and checking it costs what it saves on ~2 (bench/engine.py prints both).
MIN_IMAGES = 256
MIN_IMAGES_EXPORTED = 64

# backbone object -> {(onnx file, threads): OrtEngine, or None when its check failed}
_sessions: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Engine:
    """`forward(x)`: a normalised float32 batch (N, 3, S, S) -> pooled features (N, D) tensor."""

    name = "torch"
    channels_last = True  # the input layout the engine is fastest with

    def __init__(self, backbone):
        self.backbone = backbone

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class OrtEngine(Engine):
    name = "onnxruntime"
    channels_last = False  # ONNX takes NCHW; a channels_last tensor would be copied first

    def __init__(self, session, path: Path):
        self.session, self.path = session, path
        self.input = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: arr})[0])


def requested(engine: str | None = None) -> str:
    engine = engine or os.environ.get("GRAFT_ENGINE") or "auto"
    if engine not in ENGINES:
        raise GraftError(f"unknown extraction engine {engine!r}; available: {', '.join(ENGINES)}")
    return engine


def extraction_engine(backbone, *, n_images: int, cache_root, engine: str | None = None,
                      custom_forward: bool = False, graph_wanted: bool = False) -> Engine:
    """The engine that computes `backbone`'s pooled features for `n_images` images (see module).
    `graph_wanted`: the caller will export the graph anyway (graft train writes RUN/model.onnx
    from it), so its cost is no reason to wait for MIN_IMAGES images: onnxruntime from
    MIN_IMAGES_EXPORTED on, and the photos extracted before it no longer run on torch eager."""
    if not runs_graph(backbone, n_images=n_images, cache_root=cache_root, engine=engine,
                      custom_forward=custom_forward, graph_wanted=graph_wanted):
        return Engine(backbone)
    ort = ort_engine(backbone, cache_root)
    return ort if ort is not None else Engine(backbone)


def runs_graph(backbone, *, n_images: int, cache_root, engine: str | None = None, custom_forward: bool = False,
               graph_wanted: bool = False) -> bool:
    """Whether the exported graph (onnxruntime's, or graft.backbones.bf16_engine's) computes these
    features rather than torch (see extraction_engine)."""
    engine = requested(engine)
    if engine == "torch" or custom_forward or not isinstance(backbone, Backbone):
        return False  # (a bare module has no identity to key an export by)
    if not all(p.device.type == "cpu" for p in backbone.parameters()):
        return False
    if engine == "auto" and (n_images < MIN_IMAGES_EXPORTED or (n_images < MIN_IMAGES and not graph_wanted
                                                                and not onnx_path(backbone, cache_root).is_file())):
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if engine == "onnxruntime":
            log.warning("onnxruntime is not installed (pip install onnxruntime): extracting with torch")
        return False
    return True


def ort_engine(backbone, cache_root) -> OrtEngine | None:
    """An onnxruntime session for `backbone` that passed the check, or None (warned once)."""
    path = onnx_path(backbone, cache_root)
    threads = intra_op_threads()
    known = _sessions.setdefault(backbone, {})
    key = (str(path), threads)
    if key in known:
        return known[key]
    engine = None
    try:
        session = _session(backbone, path, threads)
        diff = self_check(backbone, OrtEngine(session, path))
        if diff <= TOLERANCE:
            engine = OrtEngine(session, path)
        else:
            log.warning("onnxruntime's features differ from torch's by %.2g (> %g) for %s: extracting with torch",
                        diff, TOLERANCE, backbone.arch)
    except Exception as e:  # an exporter or runtime failure is never fatal: torch still works
        log.warning("cannot run %s with onnxruntime (%s): extracting with torch", backbone.arch,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
    known[key] = engine
    return engine


def onnx_path(backbone, cache_root) -> Path:
    """One file per (architecture, weights digest, preprocessing, exporter): what fixes the graph."""
    ident = {"arch": backbone.arch, "weights_digest": backbone.weights.digest,
             "preprocessing": backbone.preprocessing.to_json(), "torch": torch.__version__, "opset": OPSET,
             "output": "pooled", "graph": GRAPH}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in backbone.arch)
    return Path(cache_root).expanduser() / ENGINES_DIR / f"{slug}-{key}.onnx"


def intra_op_threads() -> int:
    """The cores this process may use (torchrun's OMP_NUM_THREADS when it splits a machine)."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def self_check(backbone, engine: Engine, batch: int = 2) -> float:
    """Max |difference| between `engine` and torch's forward of `backbone` on a fixed random batch."""
    ref, got = side_by_side(backbone, engine, batch)
    return float((ref - got).abs().max()) if ref.shape == got.shape else float("inf")


def side_by_side(backbone, engine: Engine, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(torch's, `engine`'s) features of `backbone`, (batch, D) float32, on a fixed random batch."""
    x = torch.randn(batch, 3, *backbone.preprocessing.shape, generator=torch.Generator().manual_seed(20240613))
    was = backbone.training
    backbone.eval()
    with torch.inference_mode():
        ref = backbone(x.contiguous(memory_format=torch.channels_last)).flatten(1).float()
        got = engine(x).flatten(1).float()
    backbone.train(was)
    return ref, got


def _session(backbone, path: Path, threads: int):
    import onnxruntime as ort

    if not path.is_file():
        export(backbone, path)
    touch(path)  # a use, for `graft cache prune`'s least-recently-used order
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_cpu_mem_arena = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # decoders share the cores
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception:  # a damaged file (a disk full, a foreign write): export again, once
        export(backbone, path)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export(backbone, path: Path) -> Path:
    """Write `backbone`'s pooled-feature graph (any batch size) to `path`, atomically."""
    example = torch.randn(2, 3, *backbone.preprocessing.shape, generator=torch.Generator().manual_seed(0))
    was = backbone.training
    backbone.eval()
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), \
                static_same_padding(backbone, example):
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer chatter
            # the TorchScript-based exporter: the torch.export-based one needs onnxscript
            torch.onnx.export(backbone, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["features"],
                              dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                              do_constant_folding=True)
    finally:
        backbone.train(was)
    log.info("exported %s to %s for onnxruntime", backbone.arch, path)
    return path


class _SameConv(torch.autograd.Function):
    """A TF "same"-padded conv whose pads are known: torch pads then convolves; the ONNX exporter
    writes one Conv carrying the (possibly uneven) pads, which onnxruntime fuses like any other."""

    @staticmethod
    def forward(ctx, x, weight, pads, stride, dilation, groups):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), weight, None, stride, 0,
                                          dilation, groups)

    @staticmethod
    def symbolic(g, x, weight, pads, stride, dilation, groups):
        left, right, top, bottom = pads
        return g.op("Conv", x, weight, strides_i=list(stride), pads_i=[top, left, bottom, right],
                    dilations_i=list(dilation), group_i=groups)


@contextmanager
def static_same_padding(backbone, example: torch.Tensor):
    """While exporting: each timm Conv2dSame (bias-free, as in every `tf_` model) of `backbone`
    pads by constants, computed from the size its input has when `example` goes through; its own
    forward is back afterwards. Other modules, and backbones without such convs, are untouched."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:  # not a timm model
        yield
        return
    convs = [m for m in backbone.modules() if isinstance(m, Conv2dSame) and m.bias is None]
    sizes = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: sizes.__setitem__(m, tuple(args[0].shape[-2:])))
             for m in convs]
    try:
        backbone(example)
    finally:
        for h in hooks:
            h.remove()
    for m, (ih, iw) in sizes.items():
        (kh, kw), (sh, sw), (dh, dw) = m.weight.shape[-2:], m.stride, m.dilation
        ph, pw = get_same_padding(ih, kh, sh, dh), get_same_padding(iw, kw, sw, dw)
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        m.forward = (lambda m, pads: lambda x: _SameConv.apply(x, m.weight, pads, tuple(m.stride),
                                                               tuple(m.dilation), m.groups))(m, pads)
    try:
        yield
    finally:
        for m in sizes:
            del m.forward  # the class's own forward again
