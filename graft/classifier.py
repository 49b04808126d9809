"""The grafted classifier: a pretrained backbone (or its first stages) and the new head on top."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone
from .backbones.preprocess import Preprocessing


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

    def batches(self, paths, *, batch_size: int = 32, workers: int | None = None):
        """Yield (indices, features (n, D), [(index, ImageError)]) for image files, batch by batch,
        through the parallel loader and the run's preprocessing; `self.head(features)` scores them."""
        from .loader import image_loader

        pre = self.preprocessing
        self.eval()
        with torch.inference_mode():
            for idx, batch, errors in image_loader(paths, pre.load, batch_size=batch_size, workers=workers):
                feats = None
                if batch is not None:
                    feats = self.features(pre.normalize(batch).contiguous(memory_format=torch.channels_last))
                yield idx, feats, errors
