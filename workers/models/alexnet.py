"""AlexNet, after Krizhevsky, Sutskever & Hinton (2012), "ImageNet classification with deep
convolutional neural networks", NeurIPS; re-implemented here in plain torch (BSD-3-Clause) in
the single-tower torchvision layout (the "one weird trick" widths 64-192-384-256-256, no
local response normalisation).

``conv(64) -> pool3/2 -> conv5(192) -> pool3/2 -> conv3(384) -> conv3(256) -> conv3(256) ->
pool3/2 -> adaptive average pool 6x6 -> dropout, fc(4096), ReLU, dropout, fc(4096), ReLU ->
fc(classes)``.

Stem rule (``stem="auto"``, as in :mod:`workers.models.resnet`): the 11x11 stride-4 first
conv would leave a 32 px stamp with nothing after the third pooling, so stamps with
``image_size <= 64`` get a 5x5 stride-2 first conv instead (64 px -> 32 -> 15 -> 7 -> 3,
then the adaptive pool to 6x6); larger inputs keep the 11x11/4 conv (128 px -> 31 -> 15 ->
7 -> 3).  The smallest input is 29 px with the small stem and 63 px with the standard one;
smaller sizes are refused.  ``classifier_width`` (default 4096, as published) sets the two
hidden fully connected layers.  With the standard stem, 3 channels and 1000 classes the
parameter count is torchvision's: 61,100,840.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.models._init import init_weights
from workers.models._registry import register_model
from workers.models.resnet import StemKind, resolve_stem

__all__ = ["AlexNet"]


def _pool(side: int) -> int:
    return (side - 3) // 2 + 1


def _feature_side(image_size: int, *, small_stem: bool) -> int:
    """Side of the map after the last max-pool (0 or less: the input is too small)."""
    side = (image_size + 4 - 5) // 2 + 1 if small_stem else (image_size + 4 - 11) // 4 + 1
    return _pool(_pool(_pool(side)))


class AlexNet(nn.Module):
    """AlexNet (torchvision layout) with a small-stamp stem.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands.
    image_size : int, default: 64
        Input side in pixels; picks the stem and is checked against the minimum.
    stem : {"auto", "imagenet", "small"}, default: "auto"
        ``"imagenet"``: 11x11 stride-4 conv; ``"small"``: 5x5 stride-2 conv; ``"auto"``:
        small when ``image_size <= 64``.
    classifier_width : int, default: 4096
        Width of the two hidden fully connected layers.
    pool_size : int, default: 6
        Side of the adaptive average pool before the classifier.
    drop_rate : float, default: 0.5
        Dropout before each hidden fully connected layer.
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, image_size: int = 64,
                 stem: StemKind = "auto", classifier_width: int = 4096, pool_size: int = 6,
                 drop_rate: float = 0.5):
        super().__init__()
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.small_stem = resolve_stem(stem, image_size, arch="AlexNet")
        if _feature_side(image_size, small_stem=self.small_stem) < 1:
            low = next(n for n in range(1, 256)
                       if _feature_side(n, small_stem=self.small_stem) >= 1)
            raise ValueError(f"AlexNet with the {'small' if self.small_stem else 'imagenet'} stem "
                             f"needs image_size >= {low}, got {image_size!r}; resize the stamps")
        first = (nn.Conv2d(in_chans, 64, 5, stride=2, padding=2) if self.small_stem
                 else nn.Conv2d(in_chans, 64, 11, stride=4, padding=2))
        self.features = nn.Sequential(
            first, nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.num_features = 256 * pool_size * pool_size
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate), nn.Linear(self.num_features, classifier_width),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate), nn.Linear(classifier_width, classifier_width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(classifier_width, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the flattened pooled features ``(N, num_features)`` of ``x`` ``(N, C, y, x)``."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        return self.head(self.classifier(self.forward_features(x)))


def _create_alexnet(*, num_classes: int, in_chans: int = 1, image_size: int = 64,
                    **kw: Any) -> AlexNet:
    return AlexNet(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def alexnet(**kw: Any) -> AlexNet:
    """AlexNet 64-192-384-256-256, fc 4096-4096; 5x5/2 stem for stamps <= 64 px."""
    return _create_alexnet(**kw)
