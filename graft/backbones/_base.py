"""A pretrained network with its softmax cut off: images in, pooled feature vectors out.

Whatever the source (the embedded default, timm, torchvision), graft sees one `Backbone`: a
module whose forward returns the pooled features, its evaluation preprocessing, its named stages
(stem, blocks..., head) for freezing by stage, and where its weights came from (file and SHA-256)
so the feature cache and saved runs can say exactly which network produced what.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from graft.backbones.preprocess import Preprocessing


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # file the weights came from, or "random"
    digest: str  # sha256 of that file, or "random"


class Backbone(nn.Module):
    """`net` must already return pooled features (its classifier removed)."""

    def __init__(self, net: nn.Module, *, spec: str, arch: str, preprocessing: Preprocessing,
                 weights: WeightsInfo, pretrained_classifier: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.spec = spec  # what the user asked for: "default", "timm:resnet50", ...
        self.arch = arch  # what rebuilds the architecture: "timm:tf_efficientnet_lite0", ...
        self.preprocessing = preprocessing
        self.weights = weights
        self._stage_names, self._pool = find_stages(net)
        # Kept outside the module tree: not saved, not trained; only for checking the weights.
        self.__dict__["pretrained_classifier"] = pretrained_classifier
        with torch.inference_mode():
            was = net.training
            net.eval()
            s = preprocessing.size
            self.feature_dim = int(net(torch.zeros(1, 3, s, s)).shape[-1])
            net.train(was)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def parts(self) -> tuple[Backbone, ...]:
        """The one part of itself (a ConcatBackbone's are its networks): what names its cache
        namespaces (graft.features.concat.JoinedCache)."""
        return (self,)

    @property
    def stages(self) -> list[tuple[str, list[nn.Module]]]:
        """[(name, modules)] from input to output; every parameter belongs to exactly one."""
        return [(name, [self.net.get_submodule(p) for p in paths]) for name, paths in self._stage_names]

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self._stage_names]

    @property
    def sequential(self) -> bool:
        """True when running the stages in order, then `pool`, is the network's forward pass."""
        return self._pool is not None

    def run_stages(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """The activations after stages[start:end], given those before stage `start`."""
        if not self.sequential:
            raise RuntimeError(f"{self.arch}: graft does not know this architecture's stage-by-stage forward")
        for _, paths in self._stage_names[start:end]:
            for p in paths:
                x = self.net.get_submodule(p)(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global pooling of the last activations to feature vectors (N, D)."""
        for p in self._pool or []:
            x = self.net.get_submodule(p)(x)
        return torch.flatten(x, 1)

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "arch": self.arch,
            "weights_source": self.weights.source,
            "weights_digest": self.weights.digest,
            "feature_dim": self.feature_dim,
            "stages": self.stage_names,
        }


def find_stages(net: nn.Module) -> tuple[list[tuple[str, list[str]]], list[str] | None]:
    """-> (stages, pool). Stages are [(name, module paths)] from input to output; every
    parameter belongs to exactly one. For the families graft knows (timm EfficientNet/MobileNet
    and ResNet, torchvision ResNet and `features` models) the stages, run in order and followed
    by the `pool` modules, ARE the network's forward pass, which is what freezing by stage and
    caching activations at a stage boundary need; for other models `pool` is None and only the
    parameter grouping is known.
    """
    children = dict(net.named_children())

    def present(*names):
        return [n for n in names if n in children]

    if "blocks" in children and "conv_stem" in children:  # timm EfficientNet / MobileNet
        stages = [("stem", present("conv_stem", "bn1"))]
        stages += [(f"blocks.{i}", [f"blocks.{i}"]) for i in range(len(children["blocks"]))]
        stages.append(("head", present("conv_head", "bn2", "norm_head")))
        pool = present("global_pool")
    elif "layer1" in children and "conv1" in children:  # ResNet family (timm and torchvision)
        stages = [("stem", present("conv1", "bn1", "act1", "relu", "maxpool"))]
        stages += [(n, [n]) for n in ("layer1", "layer2", "layer3", "layer4") if n in children]
        pool = present("global_pool", "avgpool")
    elif "features" in children and isinstance(children["features"], nn.Sequential):  # torchvision
        stages = [(f"features.{i}", [f"features.{i}"]) for i in range(len(children["features"]))]
        pool = present("avgpool")
    else:
        stages = [(n, [n]) for n, m in children.items() if _has_params(m)]
        pool = None
    covered = {p for _, paths in stages for p in paths}
    leftover = [n for n, m in children.items() if _has_params(m)
                and n not in covered and not any(c.startswith(n + ".") for c in covered)]
    if leftover:  # never lose a parameter; but then the stages no longer spell out the forward
        stages.append(("rest", leftover))
        pool = None
    # merge parameter-free stages (e.g. a pooling layer) into their predecessor
    merged: list[tuple[str, list[str]]] = []
    for name, paths in stages:
        if merged and not any(_has_params(net.get_submodule(p)) for p in paths):
            merged[-1] = (merged[-1][0], merged[-1][1] + paths)
        elif paths:
            merged.append((name, paths))
    return merged, pool


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())
