"""Batch-norm folding for inference (``workers.fuse``), on every registered model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from workers.checkpoint import ModelCard
from workers.fuse import fuse_conv_bn
from workers.inference import Predictor
from workers.models import create_model, list_models

# hr_celestialnet needs >= 1322 px inputs (seconds per forward); its cutout form shares the code.
STAMP_MODELS = [n for n in list_models() if n != "hr_celestialnet"]


def _trained_like(name: str, size: int = 64) -> nn.Module:
    """A zoo model whose BN running statistics are far from their (0, 1) init."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1, image_size=size)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 1, size, size) * 5.0 + 2.0)
    return model.eval()


@pytest.mark.parametrize("name", STAMP_MODELS)
def test_fused_model_gives_the_same_logits(name: str) -> None:
    model = _trained_like(name)
    fused = copy.deepcopy(model)
    pairs = fuse_conv_bn(fused)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 1, 64, 64) * 5.0 + 2.0
    with torch.inference_mode():
        want, got = model(x), fused(x)
    scale = float(want.abs().max())
    assert scale > 0
    assert float((got - want).abs().max()) <= 1e-4 * max(scale, 1.0)
    assert type(fused) is type(model)  # class and attributes kept
    if has_bn and name != "wide_resnet16_4":
        assert pairs > 0
        remaining = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        assert remaining < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if not has_bn:
        assert pairs == 0


class _ShapeChecked(nn.Module):
    """fx cannot trace a ``forward`` that branches on the input's shape: the fallback runs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 16:
            raise ValueError("16 px only")
        return self.features(x)


def test_untraceable_model_folds_adjacent_sequential_pairs_only() -> None:
    model = _ShapeChecked()
    model.features[1].running_mean.fill_(0.7)
    model.features[1].running_var.fill_(4.0)
    model.eval()
    fused = copy.deepcopy(model)
    assert fuse_conv_bn(fused) == 1  # the BN after a ReLU is not folded
    assert isinstance(fused.features[1], nn.Identity)
    assert isinstance(fused.features[5], nn.BatchNorm2d)
    x = torch.randn(2, 1, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(fused(x), model(x), atol=1e-5)


def test_predictor_folds_by_default_and_agrees_with_unfused() -> None:
    card = ModelCard(arch="smallcnn", classes=["a", "b", "c"], image_size=64, in_chans=1)
    x = np.random.default_rng(0).normal(0, 2, (10, 1, 64, 64)).astype(np.float32)
    fused = Predictor(_trained_like("smallcnn"), card, batch_size=4)
    plain = Predictor(_trained_like("smallcnn"), card, batch_size=4, fuse=False)
    assert fused.fused_pairs > 0 and plain.fused_pairs == 0
    np.testing.assert_allclose(fused.predict_proba(x), plain.predict_proba(x), atol=1e-5)
