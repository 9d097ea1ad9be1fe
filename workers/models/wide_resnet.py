"""Wide ResNet, after Zagoruyko & Komodakis (2016), "Wide residual networks", BMVC
(arXiv:1605.07146); re-implemented here in plain torch (BSD-3-Clause).  In skysieve it is
the stronger *teacher* for knowledge distillation into the small CPU models.

WRN-d-k: a 3x3 conv to 16 channels, three groups of ``n = (d - 4) / 6`` pre-activation
basic blocks (BatchNorm -> ReLU -> conv3x3 -> BatchNorm -> ReLU -> dropout -> conv3x3, with
a 1x1 projection shortcut where the shape changes) of widths 16k, 32k, 64k at strides 1, 2,
2, then BatchNorm -> ReLU -> global average pooling -> linear head.  WRN-16-4 holds ~2.7 M
parameters; WRN-28-10 with 3 bands and 10 classes holds 36,479,194 (the paper's 36.5 M).

Stem rule (``stem="auto"``, as in :mod:`workers.models.resnet`): the CIFAR layout (stride-1
first conv) for ``image_size <= 64`` (64 px -> 64, 32, 16), a stride-2 first conv above
(128 px -> 64, 32, 16), which keeps a 128 px input at the cost of a 64 px one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.models._registry import register_model
from workers.models._init import init_weights
from workers.models.resnet import StemKind, resolve_stem

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus shortcut."""

    def __init__(self, in_chans: int, out_chans: int, *, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.shortcut = (None if stride == 1 and in_chans == out_chans
                         else nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for ``x`` ``(N, C, y, x)``."""
        pre = self.act(self.bn1(x))
        # The projection sees the pre-activated input, as in the reference implementation.
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.drop(self.act(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen_factor with pre-activation blocks.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands.
    image_size : int, default: 64
        Input side in pixels; picks the stem stride under ``stem="auto"``.
    depth : int, default: 16
        Total depth; ``(depth - 4)`` must be a multiple of 6.
    widen_factor : int, default: 4
        Width multiplier k of the three groups (16k, 32k, 64k).
    stem : {"auto", "imagenet", "small"}, default: "auto"
        ``"small"``: stride-1 first conv (CIFAR); ``"imagenet"``: stride 2; ``"auto"``: small
        when ``image_size <= 64``.
    drop_rate : float, default: 0.0
        Dropout between the two convs of each block (0.3 in some of the paper's runs).
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, image_size: int = 64,
                 depth: int = 16, widen_factor: int = 4, stem: StemKind = "auto",
                 drop_rate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), "
                             f"got {depth!r}")
        if widen_factor < 1:
            raise ValueError(f"WideResNet: widen_factor must be >= 1, got {widen_factor!r}")
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.depth, self.widen_factor = depth, widen_factor
        self.small_stem = resolve_stem(stem, image_size, arch="WideResNet")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1 if self.small_stem else 2, padding=1,
                               bias=False)
        groups: list[nn.Module] = []
        chans = 16
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = [WideBasicBlock(chans, width, stride=stride, drop_rate=drop_rate)]
            blocks += [WideBasicBlock(width, width, drop_rate=drop_rate) for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            chans = width
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(chans)
        self.act = nn.ReLU(inplace=True)
        self.num_features = chans
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)
        init_weights(self, linear_std=None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled features ``(N, num_features)`` of ``x`` ``(N, C, y, x)``."""
        x = self.act(self.bn(self.groups(self.conv1(x))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        return self.fc(self.forward_features(x))


def _create_wide_resnet(*, num_classes: int, in_chans: int = 1, image_size: int = 64,
                        **kw: Any) -> WideResNet:
    return WideResNet(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def wide_resnet16_4(**kw: Any) -> WideResNet:
    """WRN-16-4 (widths 64-128-256, two blocks a group): the distillation teacher, ~2.7 M params."""
    return _create_wide_resnet(depth=16, widen_factor=4, **kw)
