"""The rest of the model zoo: AlexNet, VGG, ResNet, MobileNetV3-Small, HR-CelestialNet, WRN.

Architectures are proven by reproducing the published parameter counts exactly in their
standard configuration (built on the ``meta`` device: no memory, no time), then checked at
the stamp sizes skysieve uses (64 and 128 px).  ``tests/workers/test_models.py`` adds the generic
forward/backward/channels_last checks for every registered name.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.models import create_model, list_models
from workers.models.hr_celestialnet import (
    EXPOSURE_POOLS,
    STAGES,
    feature_shape,
    hr_celestialnet,
    min_input_side,
)
from workers.models.wide_resnet import WideResNet

NEW = ["alexnet", "vgg11", "vgg16", "resnet18", "resnet34", "resnet50", "mobilenetv3_small",
       "hr_celestialnet", "hr_celestialnet_cutout", "wide_resnet16_4"]
STAMP_MODELS = [n for n in NEW if n != "hr_celestialnet"]

# torchvision's counts at 224 px, 3 channels, 1000 classes (alexnet, vgg*_bn, resnet*,
# mobilenet_v3_small), i.e. the published architectures layer for layer.
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_868_840,
    "vgg16": 138_365_992,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenetv3_small": 2_542_856,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_new_name_is_registered():
    assert set(NEW) <= set(list_models())
    assert list_models("resnet*") == ["resnet18", "resnet34", "resnet50"]
    assert list_models("hr_*") == ["hr_celestialnet", "hr_celestialnet_cutout"]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_standard_configuration_reproduces_torchvision_parameter_count(name):
    kw = {"classifier_width": 4096} if name.startswith("vgg") else {}
    with torch.device("meta"):
        model = create_model(name, num_classes=1000, in_chans=3, image_size=224, **kw)
    assert n_params(model) == TORCHVISION_PARAMS[name]


def test_wide_resnet_matches_the_paper():
    with torch.device("meta"):
        wrn28_10 = WideResNet(10, in_chans=3, image_size=32, depth=28, widen_factor=10)
        wrn16_4 = create_model("wide_resnet16_4", num_classes=10, in_chans=3, image_size=32)
    assert n_params(wrn28_10) == 36_479_194  # "36.5M" in Zagoruyko & Komodakis, Table 3
    assert 2_700_000 <= n_params(wrn16_4) <= 2_800_000  # "2.7M"
    assert (wrn16_4.depth, wrn16_4.widen_factor, wrn16_4.num_features) == (16, 4, 256)
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 4"):
        WideResNet(2, depth=15)


@pytest.mark.parametrize("name", STAMP_MODELS)
@pytest.mark.parametrize("size", [64, 128])
def test_output_shape_on_single_band_stamps(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=6, in_chans=1, image_size=size).eval()
    assert (model.num_classes, model.in_chans, model.image_size) == (6, 1, size)
    with torch.inference_mode():  # batch of 1 (eval-mode BatchNorm): the big nets stay fast
        out = model(torch.randn(1, 1, size, size))
    assert out.shape == (1, 6) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,low,high", [
    ("alexnet", 55e6, 60e6),            # fc 4096 kept, as published
    ("vgg11", 9e6, 12e6),               # classifier width 512, 2x2 pool at 64 px
    ("vgg16", 15e6, 17e6),
    ("resnet18", 11.0e6, 11.3e6),
    ("resnet50", 23.4e6, 23.6e6),
    ("mobilenetv3_small", 1.4e6, 1.6e6),
    ("hr_celestialnet_cutout", 11e6, 12e6),
    ("wide_resnet16_4", 2.7e6, 2.8e6),
])
def test_stamp_configuration_parameter_ranges(name, low, high):
    with torch.device("meta"):
        model = create_model(name, num_classes=5, in_chans=1, image_size=64)
    assert low <= n_params(model) <= high


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_stem_rule(name):
    small = create_model(name, num_classes=2, image_size=64)
    large = create_model(name, num_classes=2, image_size=128)
    assert small.small_stem and small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert not large.small_stem and large.conv1.kernel_size == (7, 7)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    forced = create_model(name, num_classes=2, image_size=64, stem="imagenet")
    assert forced.conv1.kernel_size == (7, 7)


def test_resnet_last_map_size_follows_the_stem():
    # 64 px -> 8x8 with the small stem, 128 px -> 4x4 with the standard one
    small = create_model("resnet18", num_classes=2, image_size=64)
    large = create_model("resnet18", num_classes=2, image_size=128)
    for model, size, side in ((small, 64, 8), (large, 128, 4)):
        seen = []
        model.layer4.register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
        with torch.inference_mode():
            model.eval()(torch.randn(1, 1, size, size))
        assert tuple(seen[0]) == (side, side)


def test_other_stems_follow_the_same_rule():
    assert create_model("mobilenetv3_small", num_classes=2).features[0][0].stride == (1, 1)
    assert create_model("mobilenetv3_small", num_classes=2,
                        image_size=128).features[0][0].stride == (2, 2)
    assert create_model("alexnet", num_classes=2).features[0].kernel_size == (5, 5)
    assert create_model("alexnet", num_classes=2, image_size=128).features[0].kernel_size == (11, 11)
    assert create_model("wide_resnet16_4", num_classes=2, image_size=128).conv1.stride == (2, 2)
    with pytest.raises(ValueError, match=r"stem must be 'auto', 'imagenet' or 'small', got 'tiny'"):
        create_model("resnet18", num_classes=2, stem="tiny")


def test_vgg_classifier_width_and_pool_follow_the_stamp_size():
    model = create_model("vgg16", num_classes=3, image_size=64)
    assert model.classifier[0].out_features == 512 and model.pool_size == 2
    assert model.num_features == 512 * 2 * 2
    wide = create_model("vgg11", num_classes=3, image_size=128, classifier_width=1024)
    assert wide.classifier[0].out_features == 1024 and wide.pool_size == 4
    with pytest.raises(ValueError, match="needs image_size >= 32, got 16"):
        create_model("vgg11", num_classes=3, image_size=16)


def test_alexnet_refuses_inputs_too_small_for_its_stem():
    with pytest.raises(ValueError, match="small stem needs image_size >= 29, got 24"):
        create_model("alexnet", num_classes=2, image_size=24)
    with pytest.raises(ValueError, match="imagenet stem needs image_size >= 63, got 48"):
        create_model("alexnet", num_classes=2, image_size=48, stem="imagenet")
    assert create_model("alexnet", num_classes=2, image_size=29).eval()(
        torch.randn(1, 1, 29, 29)).shape == (1, 2)


def test_alexnet_keeps_the_signal_through_its_layers_at_initialisation():
    """Regression for the zoo study's AlexNet that never left chance (session 6).

    With torch's default initialisation the seven un-normalised ReLU layers shrank a unit
    input to features of std 0.02 and logits that differed by 5e-4 between sources, and
    AdamW at lr 1e-3 sat on the ln(3) plateau.  The torchvision-style Kaiming init keeps
    the features' std near 0.16.
    """
    torch.manual_seed(0)
    net = create_model("alexnet", num_classes=3, in_chans=3, image_size=32).eval()
    with torch.no_grad():
        features = net.forward_features(torch.randn(64, 3, 32, 32))
    assert features.std().item() > 0.1


def _hr_params_from_layer_list(h: int, w: int, num_classes: int) -> int:
    """Parameters of HR-CelestialNet by arithmetic from the published layer list."""
    total, chans = 0, 1
    for convs in STAGES:
        for kernel, width in convs:
            total += (kernel * kernel * chans + 1) * width + 2 * width  # conv + bias, BN
            chans = width
    # 2048 -> 2042 -> 509 -> 503 -> 250 -> 242 -> 121 -> 117 -> 58 -> 54 -> 27 -> 23 -> 11 -> 7 -> 3
    flat = 512 * {2048: 3}[h] * {4096: 11}[w]
    return total + (flat + 1) * 4096 + (4096 + 1) * 4096 + (4096 + 1) * num_classes


def test_hr_celestialnet_whole_exposure_form():
    assert feature_shape((2048, 4096)) == (512, 3, 11)
    with torch.device("meta"):
        model = hr_celestialnet(num_classes=2, image_size=(2048, 4096))
        out = model(torch.empty(4, 1, 2048, 4096))
    assert out.shape == (4, 2)
    assert model.image_size == (2048, 4096) and model.num_features == 16_896
    assert n_params(model) == _hr_params_from_layer_list(2048, 4096, 2) == 97_048_130
    assert all(m.padding == (0, 0) for m in model.modules() if isinstance(m, nn.Conv2d))
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == list(EXPOSURE_POOLS)


def test_hr_celestialnet_runs_at_the_smallest_valid_non_square_input():
    low = min_input_side()
    assert low == 1322
    torch.manual_seed(0)
    model = hr_celestialnet(num_classes=3, image_size=(low, low + 8)).eval()
    assert model.feature_hw == (1, 1)
    with torch.inference_mode():
        out = model(torch.randn(1, 1, low, low + 8))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"built for 1322x1330 \(H x W\) inputs, got \(1330, 1322\)"):
        model(torch.randn(1, 1, low + 8, low))


@pytest.mark.parametrize("size", [64, (1321, 4096), (2048, 1000)])
def test_hr_celestialnet_refuses_small_inputs_with_the_minimum(size):
    with pytest.raises(ValueError, match=r"at least 1322x1322 px.*hr_celestialnet_cutout"):
        hr_celestialnet(num_classes=2, image_size=size)


def test_hr_celestialnet_through_create_model_refuses_a_stamp():
    with pytest.raises(ValueError, match="at least 1322x1322 px"):
        create_model("hr_celestialnet", num_classes=2, image_size=64)


def test_hr_celestialnet_cutout_takes_any_stamp_size():
    model = create_model("hr_celestialnet_cutout", num_classes=4, image_size=64).eval()
    assert model.cutout and model.num_features == 512
    with torch.inference_mode():
        for hw in ((32, 32), (64, 64), (128, 128), (48, 80)):
            assert model(torch.randn(2, 1, *hw)).shape == (2, 4)


@pytest.mark.parametrize("typo,suggested", [
    ("resnet19", "'resnet18'"),
    ("mobilenetv3", "'mobilenetv3_small'"),
    ("hr_celestial_net", "'hr_celestialnet'"),
    ("wide_resnet16", "'wide_resnet16_4'"),
])
def test_unknown_close_name_is_suggested(typo, suggested):
    with pytest.raises(ValueError, match=rf"unknown model '{typo}'; did you mean .*{suggested}"):
        create_model(typo, num_classes=2)
