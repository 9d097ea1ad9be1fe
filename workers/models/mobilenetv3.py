"""MobileNetV3-Small, after Howard et al. (2019), "Searching for MobileNetV3", ICCV
(arXiv:1905.02244); re-implemented here in plain torch (BSD-3-Clause), layer for layer the
torchvision layout (BatchNorm eps 1e-3) except the BatchNorm momentum: 0.1 (:data:`BN_MOMENTUM`,
torch's default), not torchvision's 0.01.

Why not 0.01: torchvision tuned it for ImageNet (hundreds of thousands of steps).  Our
trainings are short, on small survey stores: 5 epochs of 718 stamps in batches of 32 are
115 steps, after which a running statistic still carries 0.99**115 = 32% of its
initial value (mean 0, variance 1), while the stamps' batch variances are as small as
1e-3 (sky-dominated cutouts).  Measured on such a store (6 classes, 32 px, seed 0, after
epoch 5): the network in train-mode BatchNorm scored 0.622 validation accuracy, the same
weights in eval mode 0.151 -- every source one class -- with running/batch variance ratios
up to 491 in single layers.  With momentum 0.1 (0.9**115 ~ 5e-6 of the initial value left)
the ratios are 0.95-1.02 and eval mode scores the train-mode 0.622.

A 3x3 conv stem (16, hard-swish), eleven inverted-residual blocks (1x1 expand -> k x k
depthwise -> optional squeeze-excitation with a hard-sigmoid gate -> 1x1 project, residual
when shape allows; ReLU in the first three, hard-swish after), a 1x1 conv to 576, global
average pooling and ``fc(1024) -> hard-swish -> dropout -> fc(classes)``.

Stem rule (``stem="auto"``, as in :mod:`workers.models.resnet`): the published network
strides 32x, which leaves a 64 px stamp at 2x2 before pooling, so stamps with
``image_size <= 64`` get a stride-1 stem (total stride 16: 64 px ends at 4x4, 32 px at
2x2) -- about 4x the multiply-adds of the stride-2 stem at the same size.  Larger inputs
keep the stride-2 stem.  With the standard stem, 3 channels and 1000 classes the parameter
count is torchvision's: 2,542,856 (about 1.5 M with few classes, most of the rest being
the 576x1024 head layer).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from workers.models._registry import register_model
from workers.models._init import init_weights
from workers.models.resnet import StemKind, resolve_stem

__all__ = ["BN_MOMENTUM", "SMALL_CFG", "BlockCfg", "InvertedResidual", "MobileNetV3",
           "SqueezeExcite", "make_divisible"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never more than 10% below it."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


#: BatchNorm momentum of every layer (torch's default; see the module docstring for why not
#: torchvision's 0.01).
BN_MOMENTUM = 0.1


def _bn(chans: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(chans, eps=1e-3, momentum=BN_MOMENTUM)


class BlockCfg(NamedTuple):
    """One inverted-residual block: kernel, expanded and output widths, SE, activation, stride."""

    kernel: int
    expanded: int
    out: int
    se: bool
    act: str  # "RE" (ReLU) or "HS" (hard-swish)
    stride: int


#: MobileNetV3-Small (Table 2 of the paper); the stem makes 16 channels.
SMALL_CFG: tuple[BlockCfg, ...] = (
    BlockCfg(3, 16, 16, True, "RE", 2),
    BlockCfg(3, 72, 24, False, "RE", 2),
    BlockCfg(3, 88, 24, False, "RE", 1),
    BlockCfg(5, 96, 40, True, "HS", 2),
    BlockCfg(5, 240, 40, True, "HS", 1),
    BlockCfg(5, 240, 40, True, "HS", 1),
    BlockCfg(5, 120, 48, True, "HS", 1),
    BlockCfg(5, 144, 48, True, "HS", 1),
    BlockCfg(5, 288, 96, True, "HS", 2),
    BlockCfg(5, 576, 96, True, "HS", 1),
    BlockCfg(5, 576, 96, True, "HS", 1),
)


def _act(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "RE" else nn.Hardswish(inplace=True)


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 conv (squeeze) -> ReLU -> 1x1 conv -> hard-sigmoid -> scale."""

    def __init__(self, chans: int, squeeze: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(chans, squeeze, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, chans, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` ``(N, C, y, x)`` scaled channel-wise."""
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when no wider) -> depthwise k x k -> [SE] -> 1x1 project (+ input)."""

    def __init__(self, in_chans: int, cfg: BlockCfg):
        super().__init__()
        layers: list[nn.Module] = []
        if cfg.expanded != in_chans:
            layers += [nn.Conv2d(in_chans, cfg.expanded, 1, bias=False), _bn(cfg.expanded),
                       _act(cfg.act)]
        layers += [nn.Conv2d(cfg.expanded, cfg.expanded, cfg.kernel, stride=cfg.stride,
                             padding=cfg.kernel // 2, groups=cfg.expanded, bias=False),
                   _bn(cfg.expanded), _act(cfg.act)]
        if cfg.se:
            layers.append(SqueezeExcite(cfg.expanded, make_divisible(cfg.expanded // 4)))
        layers += [nn.Conv2d(cfg.expanded, cfg.out, 1, bias=False), _bn(cfg.out)]
        self.block = nn.Sequential(*layers)
        self.use_residual = cfg.stride == 1 and in_chans == cfg.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block output for ``x`` ``(N, C, y, x)``."""
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3 trunk, global pooling and the two-layer head.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands.
    image_size : int, default: 64
        Input side in pixels; picks the stem stride under ``stem="auto"``.
    stem : {"auto", "imagenet", "small"}, default: "auto"
        ``"imagenet"``: stride-2 stem; ``"small"``: stride-1 stem; ``"auto"``: small when
        ``image_size <= 64``.
    cfg : sequence of BlockCfg, default: SMALL_CFG
        The inverted-residual blocks.
    stem_chans, last_chans, head_chans : int, default: 16, 576, 1024
        Widths of the stem, the last 1x1 conv and the hidden head layer.
    drop_rate : float, default: 0.2
        Dropout before the last layer.
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, image_size: int = 64,
                 stem: StemKind = "auto", cfg: tuple[BlockCfg, ...] = SMALL_CFG,
                 stem_chans: int = 16, last_chans: int = 576, head_chans: int = 1024,
                 drop_rate: float = 0.2):
        super().__init__()
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.small_stem = resolve_stem(stem, image_size, arch="MobileNetV3")
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_chans, stem_chans, 3, stride=1 if self.small_stem else 2, padding=1,
                      bias=False),
            _bn(stem_chans), nn.Hardswish(inplace=True))]
        chans = stem_chans
        for block in cfg:
            layers.append(InvertedResidual(chans, block))
            chans = block.out
        layers.append(nn.Sequential(nn.Conv2d(chans, last_chans, 1, bias=False), _bn(last_chans),
                                    nn.Hardswish(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.num_features = last_chans
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_chans, head_chans),
                                        nn.Hardswish(inplace=True), nn.Dropout(drop_rate))
        self.head = nn.Linear(head_chans, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled features ``(N, num_features)`` of ``x`` ``(N, C, y, x)``."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        return self.head(self.classifier(self.forward_features(x)))


def _create_mobilenetv3(*, num_classes: int, in_chans: int = 1, image_size: int = 64,
                        **kw: Any) -> MobileNetV3:
    return MobileNetV3(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def mobilenetv3_small(**kw: Any) -> MobileNetV3:
    """MobileNetV3-Small (width 1.0); stride-1 stem for stamps <= 64 px."""
    return _create_mobilenetv3(**kw)
