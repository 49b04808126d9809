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

from ..preprocess import Preprocessing


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # file the weights came from, or "random"
    digest: str  # sha256 of that file, or "random"


class Backbone(nn.Module):
    """`net` must already return pooled features (its classifier removed)."""

    def __init__(self, net: nn.Module, *, spec: str, arch: str, preprocessing: Preprocessing,
                 weights: WeightsInfo, stage_names: list[tuple[str, list[str]]],
                 pretrained_classifier: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.spec = spec  # what the user asked for: "default", "timm:resnet50", ...
        self.arch = arch  # what rebuilds the architecture: "timm:tf_efficientnet_lite0", ...
        self.preprocessing = preprocessing
        self.weights = weights
        self._stage_names = stage_names
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
    def stages(self) -> list[tuple[str, list[nn.Module]]]:
        """[(name, modules)] from input to output; every parameter belongs to exactly one."""
        return [(name, [self.net.get_submodule(p) for p in paths]) for name, paths in self._stage_names]

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "arch": self.arch,
            "weights_source": self.weights.source,
            "weights_digest": self.weights.digest,
            "feature_dim": self.feature_dim,
            "stages": [name for name, _ in self._stage_names],
        }


def find_stages(net: nn.Module) -> list[tuple[str, list[str]]]:
    """Name the stages of common families; other models fall back to their top-level children."""
    children = dict(net.named_children())

    def present(*names):
        return [n for n in names if n in children and _has_params(children[n])]

    if "blocks" in children and "conv_stem" in children:  # timm EfficientNet / MobileNet
        stages = [("stem", present("conv_stem", "bn1"))]
        stages += [(f"blocks.{i}", [f"blocks.{i}"]) for i in range(len(children["blocks"]))]
        stages.append(("head", present("conv_head", "bn2", "norm_head")))
    elif "layer1" in children and "conv1" in children:  # ResNet family (timm and torchvision)
        stages = [("stem", present("conv1", "bn1"))]
        stages += [(n, [n]) for n in ("layer1", "layer2", "layer3", "layer4") if n in children]
        stages.append(("head", present("fc_norm", "head_norm")))
    elif "stages" in children and "stem" in children:  # ConvNeXt, RegNet, ... in timm
        stages = [("stem", ["stem"])]
        stages += [(f"stages.{i}", [f"stages.{i}"]) for i in range(len(children["stages"]))]
        stages.append(("head", present("norm_pre", "head", "final_conv")))
    elif "features" in children and isinstance(children["features"], nn.Sequential):  # torchvision
        feats = children["features"]
        stages = [(f"features.{i}", [f"features.{i}"]) for i, m in enumerate(feats) if _has_params(m)]
        stages.append(("head", present("avgpool", "classifier")))
    else:
        stages = [(n, [n]) for n, m in children.items() if _has_params(m)]
    covered = {p for _, paths in stages for p in paths}
    leftover = [n for n, m in children.items() if n not in covered and _has_params(m)
                and not any(n.startswith(c + ".") or c.startswith(n + ".") for c in covered)]
    if leftover:  # never lose a parameter: put what we did not recognise into the head
        stages[-1] = (stages[-1][0], stages[-1][1] + leftover)
    return [(n, p) for n, p in stages if p]


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())
