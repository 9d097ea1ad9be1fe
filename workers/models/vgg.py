"""VGG with batch normalisation, after Simonyan & Zisserman (2015), "Very deep convolutional
networks for large-scale image recognition", ICLR (arXiv:1409.1556), with BatchNorm after
every conv as in torchvision's ``vgg*_bn``; re-implemented here in plain torch (BSD-3-Clause).

Configurations A (VGG-11) and D (VGG-16): 3x3 padded convs (with bias) + BatchNorm + ReLU
in five blocks, each closed by a 2x2 stride-2 max-pool, so the map shrinks 32x (the
smallest input is 32 px, which ends at 1x1).  Then an adaptive average pool, and
``fc(w) -> ReLU -> dropout -> fc(w) -> ReLU -> dropout -> fc(classes)``.

Adaptations for stamps, both kwargs:

* ``classifier_width`` defaults to 512 instead of the published 4096: with 4096 the two
  hidden layers alone hold ~120 M parameters, far more than a few-class stamp problem
  needs (and most of the run time on the CPU).
* ``pool_size`` defaults to ``max(1, image_size // 32)``, the natural size of the last map
  (7 at 224 px as in torchvision, 2 at 64 px, 4 at 128 px), so small stamps are not
  up-sampled to 7x7 before the classifier.

``classifier_width=4096`` at ``image_size=224`` (or ``pool_size=7``), 3 channels and 1000
classes give torchvision's counts: VGG-11-BN 132,868,840 and VGG-16-BN 138,365,992.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from workers.models._registry import register_model
from workers.models._init import init_weights

__all__ = ["CFGS", "make_vgg_features", "VGG"]

#: Layer lists: an int is a 3x3 conv of that width, "M" a 2x2 stride-2 max-pool.
CFGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


def make_vgg_features(cfg: Sequence[int | str], *, in_chans: int) -> nn.Sequential:
    """Build a VGG conv trunk (``int``: 3x3 conv + BN + ReLU of that width; ``"M"``: max-pool)."""
    layers: list[nn.Module] = []
    chans = in_chans
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            width = int(item)
            layers += [nn.Conv2d(chans, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            chans = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-BN trunk, adaptive average pool and a three-layer classifier.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands.
    image_size : int, default: 64
        Input side in pixels (>= 32); sets the default ``pool_size``.
    cfg : {"A", "D"} or sequence, default: "D"
        Layer list: a key of :data:`CFGS` or a list of widths and ``"M"``.
    classifier_width : int, default: 512
        Width of the two hidden fully connected layers (4096 in the paper).
    pool_size : int or None, default: None
        Side of the adaptive average pool; ``None``: ``max(1, image_size // 32)``.
    drop_rate : float, default: 0.5
        Dropout after each hidden fully connected layer.
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1, image_size: int = 64,
                 cfg: str | Sequence[int | str] = "D", classifier_width: int = 512,
                 pool_size: int | None = None, drop_rate: float = 0.5):
        super().__init__()
        if isinstance(cfg, str):
            if cfg not in CFGS:
                raise ValueError(f"VGG: unknown cfg {cfg!r}; choose one of {sorted(CFGS)} "
                                 "or pass a layer list")
            cfg = CFGS[cfg]
        n_pools = sum(1 for item in cfg if item == "M")
        if image_size < 2 ** n_pools:
            raise ValueError(f"VGG has {n_pools} stride-2 max-pools and needs image_size >= "
                             f"{2 ** n_pools}, got {image_size!r}; resize the stamps")
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.features = make_vgg_features(cfg, in_chans=in_chans)
        chans = [int(item) for item in cfg if item != "M"][-1]
        self.pool_size = max(1, image_size // 32) if pool_size is None else pool_size
        self.pool = nn.AdaptiveAvgPool2d(self.pool_size)
        self.num_features = chans * self.pool_size * self.pool_size
        self.classifier = nn.Sequential(
            nn.Linear(self.num_features, classifier_width), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(classifier_width, classifier_width), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
        )
        self.head = nn.Linear(classifier_width, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the flattened pooled features ``(N, num_features)`` of ``x`` ``(N, C, y, x)``."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        return self.head(self.classifier(self.forward_features(x)))


def _create_vgg(*, num_classes: int, in_chans: int = 1, image_size: int = 64, **kw: Any) -> VGG:
    return VGG(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def vgg11(**kw: Any) -> VGG:
    """VGG-11 (config A) with BatchNorm; classifier width 512 by default."""
    return _create_vgg(cfg="A", **kw)


@register_model
def vgg16(**kw: Any) -> VGG:
    """VGG-16 (config D) with BatchNorm; classifier width 512 by default."""
    return _create_vgg(cfg="D", **kw)
