"""LeNet-5, after LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied
to document recognition", Proc. IEEE 86(11) (re-implemented here, BSD-3-Clause).

The classic layout ``conv5(6) -> pool2 -> conv5(16) -> pool2 -> fc120 -> fc84 -> fc``,
with ReLU and max pooling in place of the original scaled tanh and trainable
sub-sampling, adapted to ``in_chans`` bands and any ``image_size`` >= 16: the
flatten size is computed from the image size (64x64 -> 16 x 13 x 13).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.models._registry import register_model

__all__ = ["LeNet5"]


def _feature_side(image_size: int) -> int:
    """Side of the feature map after the two conv5 (valid) + pool2 stages."""
    return ((image_size - 4) // 2 - 4) // 2


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands.
    image_size : int, default: 64
        Input side in pixels (>= 16); fixes the size of the first fully connected layer.
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, image_size: int = 64):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"LeNet5 needs image_size >= 16, got {image_size!r}")
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = _feature_side(image_size)
        self.num_features = 16 * side * side
        self.classifier = nn.Sequential(
            nn.Linear(self.num_features, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"LeNet5 was built for {self.image_size}x{self.image_size} inputs, "
                             f"got {tuple(x.shape[-2:])!r}; resize the stamps first")
        return self.head(self.classifier(torch.flatten(self.features(x), 1)))


def _create_lenet5(*, num_classes: int, in_chans: int = 1, image_size: int = 64,
                   **kw: Any) -> LeNet5:
    return LeNet5(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def lenet5(**kw: Any) -> LeNet5:
    """LeNet-5 (6-16 conv5, fc 120-84), ReLU + max pooling."""
    return _create_lenet5(**kw)
