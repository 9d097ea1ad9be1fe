"""SmallCNN: the bundled default classifier of skysieve (original to this project, BSD-3-Clause).

A plain VGG-like stack built for 64x64 single-band stamps on the CPU: four
stride-2 stages of 3x3 conv + BatchNorm + ReLU (widths 16-32-64-96 by default,
the last stage two convs deep), global average pooling, dropout and a linear
head.  About 0.16 M parameters and 4.7 M multiply-adds per 64x64 image (a 16-wide
first stage ran ~2x faster than a 24-wide one on AVX2 with oneDNN).  Every
stage halves the resolution, so any ``image_size`` >= 16 works (the pooling is
global); a 32x32 stamp ends at 2x2.  Run it in ``channels_last`` on the CPU
(see ``workers.inference``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from workers.models._registry import register_model
from workers.models._init import init_weights

__all__ = ["ConvBNAct", "SmallCNN"]


class ConvBNAct(nn.Sequential):
    """``Conv2d(k x k, no bias) -> BatchNorm2d -> ReLU``, padded to keep ``ceil(size / stride)``."""

    def __init__(self, in_chans: int, out_chans: int, *, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
        )


class SmallCNN(nn.Module):
    """Stride-2 conv stages, global average pooling, dropout and a linear head.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands.
    image_size : int, default: 64
        Input side in pixels (>= 16); recorded, the network itself is size-agnostic.
    widths : sequence of int, default: (16, 32, 64, 96)
        Channels of each stage; each stage starts with a stride-2 conv.
    depths : sequence of int, default: (1, 1, 1, 2)
        Convs per stage.
    drop_rate : float, default: 0.2
        Dropout before the head.
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, image_size: int = 64,
                 widths: Sequence[int] = (16, 32, 64, 96), depths: Sequence[int] = (1, 1, 1, 2),
                 drop_rate: float = 0.2):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"SmallCNN needs image_size >= 16, got {image_size!r}")
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"SmallCNN: widths {tuple(widths)!r} and depths {tuple(depths)!r} "
                             "must be non-empty and of the same length")
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        stages: list[nn.Module] = []
        chans = in_chans
        for width, depth in zip(widths, depths):
            blocks = [ConvBNAct(chans, width, stride=2)]
            blocks += [ConvBNAct(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            chans = width
        self.features = nn.Sequential(*stages)
        self.num_features = chans
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(chans, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled features ``(N, num_features)`` of ``x`` ``(N, C, y, x)``."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        return self.head(self.drop(self.forward_features(x)))


def _create_smallcnn(*, num_classes: int, in_chans: int = 1, image_size: int = 64,
                     **kw: Any) -> SmallCNN:
    return SmallCNN(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def smallcnn(**kw: Any) -> SmallCNN:
    """SmallCNN 16-32-64-96 (depths 1-1-1-2): the bundled default, ~0.16 M parameters."""
    return _create_smallcnn(**kw)
