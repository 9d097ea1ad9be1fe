"""HR-CelestialNet, after Zhang, Cao, Wang et al. (2024), "Scientific preparation for CSST:
classification of galaxy and nebula/star cluster based on deep learning", MNRAS 527, 11935
(arXiv:2312.04948); re-implemented here in plain torch (BSD-3-Clause) from the layer list
of the paper and the authors' published network
(github.com/YooQuuAN/Classification_of_galaxy_and_NSC, ``HR-CelestialNet.py``).

It classifies whole high-resolution HST exposures (about 2048x4096 px, one band) with no
padding anywhere.  Stages (conv = conv + BatchNorm + ReLU, pool = max-pool kernel/stride)::

    conv7(32)  -> pool 8/4
    conv7(64)  -> pool 4/2
    conv5(128), conv5(128) -> pool 2/2
    conv3(256), conv3(256) -> pool 2/2
    conv3(256), conv3(256) -> pool 2/2
    conv3(512), conv3(512) -> pool 2/2
    conv3(512), conv3(512) -> pool 2/2
    flatten -> fc(4096) -> ReLU -> fc(4096) -> ReLU -> fc(classes)

The flatten size follows from the input size by arithmetic: a 2048x4096 (H x W) exposure
ends at 512 x 3 x 11 = 16,896 features, so the first fully connected layer alone holds
69.2 M of the 97.0 M parameters (2 classes).  ``image_size`` is an int or an ``(H, W)``
tuple; a side below 1,322 px leaves nothing after the last pooling and is refused with
that minimum.  The built model only takes inputs of the size it was built for.

``hr_celestialnet_cutout`` is this project's variant for 32-128 px cutouts, which the full
form cannot take: the same conv widths and kernels, but every conv is padded to keep its
size, the two stem poolings are 2x2 stride 2 (instead of 8/4 and 4/2), all poolings use
``ceil_mode`` (a 1x1 map stays 1x1, so 32 px works), and the head is an adaptive average
pool to 1x1 followed by ``fc(512) -> fc(512) -> fc(classes)`` with dropout: it takes any
input size.  About 11.6 M parameters, ~0.36 G multiply-adds at 64 px.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import nn

from workers.models._registry import register_model

__all__ = ["STAGES", "EXPOSURE_POOLS", "CUTOUT_POOLS", "feature_shape", "min_input_side",
           "HRCelestialNet"]

#: Conv layers of each stage as ``(kernel, width)``; every stage ends with a max-pool.
STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((7, 32),),
    ((7, 64),),
    ((5, 128), (5, 128)),
    ((3, 256), (3, 256)),
    ((3, 256), (3, 256)),
    ((3, 512), (3, 512)),
    ((3, 512), (3, 512)),
)
#: Max-pool ``(kernel, stride)`` after each stage, as published (whole exposures).
EXPOSURE_POOLS: tuple[tuple[int, int], ...] = ((8, 4), (4, 2)) + ((2, 2),) * 5
#: Max-pool ``(kernel, stride)`` after each stage in the cutout variant.
CUTOUT_POOLS: tuple[tuple[int, int], ...] = ((2, 2),) * 7


def _side(side: int, *, pools: Sequence[tuple[int, int]]) -> int:
    """Side of the last map of the unpadded stack for an input side (0: too small)."""
    for convs, (k_pool, s_pool) in zip(STAGES, pools):
        side -= sum(kernel - 1 for kernel, _ in convs)  # valid convs
        if side < k_pool:
            return 0
        side = (side - k_pool) // s_pool + 1
    return side


def feature_shape(image_size: int | tuple[int, int], *,
                  pools: Sequence[tuple[int, int]] = EXPOSURE_POOLS) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` of the last map of the unpadded stack for an input ``(H, W)``.

    Parameters
    ----------
    image_size : int or (int, int)
        Input side, or ``(H, W)`` = (rows, columns).
    pools : sequence of (kernel, stride), default: EXPOSURE_POOLS
        Max-pool after each stage.

    Examples
    --------
    >>> feature_shape((2048, 4096))
    (512, 3, 11)
    """
    h, w = _hw(image_size)
    return (STAGES[-1][-1][1], _side(h, pools=pools),
            _side(w, pools=pools))


@lru_cache(maxsize=8)
def min_input_side(pools: tuple[tuple[int, int], ...] = EXPOSURE_POOLS) -> int:
    """Return the smallest input side the unpadded stack accepts (1,322 px as published)."""
    side = 1
    while _side(side, pools=pools) < 1:
        side += 1
    return side


def _hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        h, w = image_size
    else:
        h = w = image_size
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"HRCelestialNet: image_size must be a positive int or an (H, W) "
                             f"pair of them, got {image_size!r}")
    return h, w


class HRCelestialNet(nn.Module):
    """HR-CelestialNet: unpadded conv stages with large poolings and a three-layer head.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_chans : int, default: 1
        Input bands (the paper uses one).
    image_size : int or (int, int), default: (2048, 4096)
        Input side or ``(H, W)`` = (rows, columns) in pixels.  In the whole-exposure form
        it fixes the size of the first fully connected layer; each side must be at least
        :func:`min_input_side` (1,322 px).
    cutout : bool, default: False
        Build the cutout variant (padded convs, ``pools=CUTOUT_POOLS`` with ``ceil_mode``,
        adaptive average pooling to ``pool_size``): any input size works.
    pools : sequence of (kernel, stride) or None, default: None
        Max-pool after each of the seven stages; ``None``: ``EXPOSURE_POOLS`` or ``CUTOUT_POOLS``.
    fc_widths : (int, int) or None, default: None
        Hidden fully connected widths; ``None``: (4096, 4096), or (512, 512) for cutouts.
    pool_size : int, default: 1
        Cutout variant only: side of the adaptive average pool before the head.
    drop_rate : float, default: 0.0
        Dropout before each hidden fully connected layer (none in the paper).

    Raises
    ------
    ValueError
        An input side too small for the unpadded stack; the message gives the minimum.
    """

    def __init__(self, num_classes: int, *, in_chans: int = 1,
                 image_size: int | tuple[int, int] = (2048, 4096), cutout: bool = False,
                 pools: Sequence[tuple[int, int]] | None = None,
                 fc_widths: tuple[int, int] | None = None, pool_size: int = 1,
                 drop_rate: float = 0.0):
        super().__init__()
        h, w = _hw(image_size)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.image_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else image_size
        self.cutout = cutout
        pools = tuple(tuple(p) for p in (pools or (CUTOUT_POOLS if cutout else EXPOSURE_POOLS)))
        if len(pools) != len(STAGES):
            raise ValueError(f"HRCelestialNet: pools needs {len(STAGES)} (kernel, stride) pairs, "
                             f"got {pools!r}")
        if not cutout:
            fh, fw = (_side(s, pools=pools) for s in (h, w))
            if min(fh, fw) < 1:
                low = min_input_side(pools)
                raise ValueError(
                    f"HRCelestialNet (whole-exposure form) needs inputs of at least {low}x{low} px "
                    f"(no padding; stem poolings {pools[0]} and {pools[1]} as (kernel, stride)), "
                    f"got {h}x{w}; use 'hr_celestialnet_cutout' for small stamps")
        stages: list[nn.Module] = []
        chans = in_chans
        for convs, (k_pool, s_pool) in zip(STAGES, pools):
            layers: list[nn.Module] = []
            for kernel, width in convs:
                layers += [nn.Conv2d(chans, width, kernel, padding=kernel // 2 if cutout else 0),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                chans = width
            layers.append(nn.MaxPool2d(k_pool, stride=s_pool, ceil_mode=cutout))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        if cutout:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(pool_size)
            self.feature_hw = (pool_size, pool_size)
        else:
            self.pool = nn.Identity()
            self.feature_hw = (fh, fw)
        self.num_features = chans * self.feature_hw[0] * self.feature_hw[1]
        width1, width2 = fc_widths or ((512, 512) if cutout else (4096, 4096))
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate), nn.Linear(self.num_features, width1), nn.ReLU(inplace=True),
            nn.Dropout(drop_rate), nn.Linear(width1, width2), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(width2, num_classes)
        self._input_hw = None if cutout else (h, w)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the flattened features ``(N, num_features)`` of ``x`` ``(N, C, y, x)``."""
        if self._input_hw is not None and tuple(x.shape[-2:]) != self._input_hw:
            h, w = self._input_hw
            raise ValueError(f"HRCelestialNet was built for {h}x{w} (H x W) inputs, got "
                             f"{tuple(x.shape[-2:])!r}; build it with image_size="
                             f"{tuple(x.shape[-2:])!r} or resize the exposure")
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(N, num_classes)`` of ``x`` ``(N, C, y, x)``."""
        return self.head(self.classifier(self.forward_features(x)))


def _create_hr_celestialnet(*, num_classes: int, in_chans: int = 1,
                            image_size: int | tuple[int, int] = (2048, 4096),
                            **kw: Any) -> HRCelestialNet:
    return HRCelestialNet(num_classes, in_chans=in_chans, image_size=image_size, **kw)


@register_model
def hr_celestialnet(**kw: Any) -> HRCelestialNet:
    """HR-CelestialNet as published, for whole exposures (each side >= 1,322 px)."""
    return _create_hr_celestialnet(cutout=False, **kw)


@register_model
def hr_celestialnet_cutout(**kw: Any) -> HRCelestialNet:
    """HR-CelestialNet adapted to 32-128 px cutouts (padded, 2x2 poolings, adaptive head)."""
    kw.setdefault("drop_rate", 0.2)
    return _create_hr_celestialnet(cutout=True, **kw)
