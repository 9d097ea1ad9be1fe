"""ResNet, after He, Zhang, Ren & Sun (2016), "Deep residual learning for image recognition",
CVPR (arXiv:1512.03385); re-implemented here in plain torch (BSD-3-Clause), layer for layer
the torchvision layout ("ResNet v1.5": the stride of a Bottleneck sits on its 3x3 conv).

``BasicBlock`` (two 3x3 convs, ResNet-18/34) and ``Bottleneck`` (1x1 -> 3x3 -> 1x1 with 4x
expansion, ResNet-50); four stages of 64-128-256-512 base widths, the last three starting
with stride 2; a 1x1 conv + BatchNorm projection where a shortcut changes shape; global
average pooling and a linear head.

Stem rule (``stem="auto"``, the default): stamps with ``image_size <= 64`` get a 3x3
stride-1 conv and no max-pool (as for CIFAR), so a 64 px stamp ends at 8x8 instead of
2x2; larger inputs get the standard 7x7 stride-2 conv + 3x3 stride-2 max-pool (a 128 px
input ends at 4x4).  ``stem="imagenet"`` or ``"small"`` forces one.  With the standard
stem, 3 channels and 1000 classes the parameter counts are torchvision's exactly
(ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032).

:func:`resolve_stem` is shared by the other zoo files that apply the same rule.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

from workers.models._registry import register_model
from workers.models._init import init_weights

__all__ = ["SMALL_STEM_MAX", "resolve_stem", "BasicBlock", "Bottleneck", "ResNet"]

#: Largest ``image_size`` that gets the small (stride-1, no max-pool) stem under ``stem="auto"``.
SMALL_STEM_MAX = 64

StemKind = Literal["auto", "imagenet", "small"]


def resolve_stem(stem: str, image_size: int | tuple[int, int], *, arch: str) -> bool:
    """Return whether the small-stamp stem applies.

    Parameters
    ----------
    stem : {"auto", "imagenet", "small"}
        ``"auto"`` picks the small stem when the input's larger side is <= :data:`SMALL_STEM_MAX`.
    image_size : int or (int, int)
        Input side, or ``(H, W)``.
    arch : str
        Architecture name, for the error message.

    Raises
    ------
    ValueError
        ``stem`` is not one of the three choices.
    """
    if stem not in ("auto", "imagenet", "small"):
        raise ValueError(f"{arch}: stem must be 'auto', 'imagenet' or 'small', got {stem!r}")
    if stem == "auto":
        side = max(image_size) if isinstance(image_size, tuple) else image_size
        return side <= SMALL_STEM_MAX
    return stem == "small"


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm, ReLU, identity (or projected) shortcut; expansion 1."""

    expansion = 1

    def __init__(self, in_chans: int, width: int, *, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for ``x`` ``(N, C, y, x)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carrying the stride) -> 1x1 expand (x4), each with BatchNorm."""

    expansion = 4

    def __init__(self, in_chans: int, width: int, *, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        out_chans = width * self.expansion
        self.conv1 = nn.Conv2d(in_chans, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chans, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for ``x`` ``(N, C, y, x)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + shortcut)


class ResNet(nn.Module):
    """ResNet with a stem chosen by input size, four stages, global pooling and a linear head.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands.
    image_size : int, default: 64
        Input side in pixels; picks the stem under ``stem="auto"`` (the network itself
        takes any size thanks to the global pooling).
    block : {"basic", "bottleneck"}, default: "basic"
        Residual block type.
    layers : sequence of 4 int, default: (2, 2, 2, 2)
        Blocks per stage.
    stem : {"auto", "imagenet", "small"}, default: "auto"
        ``"small"``: 3x3 stride-1 conv, no max-pool; ``"imagenet"``: 7x7 stride-2 conv and
        3x3 stride-2 max-pool; ``"auto"``: small when ``image_size <= 64``.
    drop_rate : float, default: 0.0
        Dropout before the head (torchvision has none).
    zero_init_residual : bool, default: False
        Zero the last BatchNorm of each block, so each block starts as the identity.
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, image_size: int = 64,
                 block: Literal["basic", "bottleneck"] = "basic",
                 layers: Sequence[int] = (2, 2, 2, 2), stem: StemKind = "auto",
                 drop_rate: float = 0.0, zero_init_residual: bool = False):
        super().__init__()
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in blocks:
            raise ValueError(f"ResNet: block must be 'basic' or 'bottleneck', got {block!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"ResNet: layers must be 4 positive block counts, "
                             f"got {tuple(layers)!r}")
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.small_stem = resolve_stem(stem, image_size, arch="ResNet")
        block_cls = blocks[block]
        if self.small_stem:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.act = nn.ReLU(inplace=True)
        self._chans = 64
        self.layer1 = self._make_stage(block_cls, 64, int(layers[0]), stride=1)
        self.layer2 = self._make_stage(block_cls, 128, int(layers[1]), stride=2)
        self.layer3 = self._make_stage(block_cls, 256, int(layers[2]), stride=2)
        self.layer4 = self._make_stage(block_cls, 512, int(layers[3]), stride=2)
        self.num_features = self._chans
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_stage(self, block_cls: type[BasicBlock] | type[Bottleneck], width: int, depth: int,
                    *, stride: int) -> nn.Sequential:
        out_chans = width * block_cls.expansion
        downsample = None
        if stride != 1 or self._chans != out_chans:
            downsample = nn.Sequential(
                nn.Conv2d(self._chans, out_chans, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chans))
        stage = [block_cls(self._chans, width, stride=stride, downsample=downsample)]
        self._chans = out_chans
        stage += [block_cls(out_chans, width) for _ in range(depth - 1)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        init_weights(self, linear_std=None)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled features ``(N, num_features)`` of ``x`` ``(N, C, y, x)``."""
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        return self.fc(self.drop(self.forward_features(x)))


def _create_resnet(*, num_classes: int, in_chans: int = 1, image_size: int = 64,
                   **kw: Any) -> ResNet:
    return ResNet(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def resnet18(**kw: Any) -> ResNet:
    """ResNet-18: BasicBlock (2, 2, 2, 2); 11.7 M parameters at 1000 classes, 3 bands."""
    return _create_resnet(block="basic", layers=(2, 2, 2, 2), **kw)


@register_model
def resnet34(**kw: Any) -> ResNet:
    """ResNet-34: BasicBlock (3, 4, 6, 3); 21.8 M parameters at 1000 classes, 3 bands."""
    return _create_resnet(block="basic", layers=(3, 4, 6, 3), **kw)


@register_model
def resnet50(**kw: Any) -> ResNet:
    """ResNet-50: Bottleneck (3, 4, 6, 3); 25.6 M parameters at 1000 classes, 3 bands."""
    return _create_resnet(block="bottleneck", layers=(3, 4, 6, 3), **kw)
