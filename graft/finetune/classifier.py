"""The grafted network: a pretrained backbone (or its first stages) with the new head on top, as
fine-tuning trains it (GraftedNet: a frozen prefix, trainable stages) and as a run holds it
(Classifier); and the shapes at the seams, probed with one all-zero image."""

from __future__ import annotations

import torch
from torch import nn

from graft.backbones import Backbone
from graft.backbones.preprocess import Preprocessing
from graft.data import BATCH_SIZE


class Classifier(nn.Module):
    """Normalised image batch -> class logits; `classes[i]` names logit i.

    `cut`: when the last stages of the backbone were replaced by new hidden layers, the number of
    backbone stages kept; the head then sees the pooled activations after stage `cut`.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, classes: list[str], cut: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classes = list(classes)
        self.cut = cut

    @property
    def preprocessing(self) -> Preprocessing:
        return self.backbone.preprocessing

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut is None:
            return self.backbone(x)
        return self.backbone.pool(self.backbone.run_stages(x, 0, self.cut))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def batches(self, paths, *, batch_size: int = BATCH_SIZE, workers: int | None = None, mirror: bool = False,
                at=None):
        """Yield (indices, features (n, D), [(index, ImageError)]) for image files, batch by batch,
        through the parallel loader and the run's preprocessing; `self.head(features)` scores them.
        `mirror`, `at`: of another crop than the centre one (backbones.preprocess.CropAt)."""
        from graft.backbones.preprocess import CENTRE, CropAt
        from graft.features.loader import image_loader

        pre = self.preprocessing
        self.eval()
        with torch.inference_mode():
            for idx, batch, errors in image_loader(paths, CropAt(pre, at or CENTRE, mirror), batch_size=batch_size,
                                                   workers=workers):
                feats = None
                if batch is not None:
                    feats = self.features(pre.normalize(batch).contiguous(memory_format=torch.channels_last))
                yield idx, feats, errors


class GraftedNet(nn.Module):
    """backbone stages [0, k) frozen, [k, cut) trainable, pooled, then the new head."""

    def __init__(self, backbone, head: nn.Module, k: int, cut: int | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.k = k  # number of frozen stages
        self.cut = cut  # None: all stages (native forward); else stages [0, cut) are used
        self.frozen = [m for _, ms in backbone.stages[:k] for m in ms]
        for m in self.frozen:
            m.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:  # frozen BatchNorm keeps its running statistics
            m.eval()
        return self

    def prefix(self, x):
        return self.backbone.run_stages(x, 0, self.k)

    def from_boundary(self, z):
        b = self.backbone
        return self.head(b.pool(b.run_stages(z, self.k, self.cut)))

    def forward(self, x, boundary: bool = False):
        if boundary:  # x is the cached activation at the freeze boundary
            return self.from_boundary(x)
        if self.k == 0 and self.cut is None:
            return self.head(self.backbone(x))
        with torch.no_grad():
            z = self.prefix(x)
        return self.from_boundary(z)


def feature_dim(backbone, cut: int | None) -> int:
    """Width of what the head sees: the backbone's features, or the pooled activations after
    `cut` stages (when the last stages were replaced by new hidden layers)."""
    if cut is None:
        return backbone.feature_dim
    with torch.no_grad():
        return int(backbone.pool(stage_output(backbone, cut)).shape[1])


def boundary_activation_shape(backbone, k: int) -> tuple:
    """One image's activations after the k frozen stages: what the boundary cache stores, flat."""
    return tuple(stage_output(backbone, k).shape[1:])


def stage_output(backbone, stop: int) -> torch.Tensor:
    """An all-zero image through stages [0, stop) in eval mode (the backbone's mode is kept)."""
    s = backbone.preprocessing.size
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        out = backbone.run_stages(torch.zeros(1, 3, s, s), 0, stop)
        backbone.train(was)
    return out


def reinitialise(backbone) -> None:
    """Random weights for every layer: timm/torchvision's own initialisers where they exist."""
    for m in backbone.modules():
        if m is not backbone and hasattr(m, "reset_parameters"):
            m.reset_parameters()
