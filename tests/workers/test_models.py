"""The model zoo: every registered model builds, runs forward and backward, and is named."""

from __future__ import annotations

import re

import pytest
import torch

from workers.models import create_model, is_model, list_models, register_model

ALL = list_models()


def test_bundled_models_are_registered():
    assert {"smallcnn", "lenet5"} <= set(ALL)
    assert list_models("small*") == ["smallcnn"]
    assert list_models("nothing-like-this*") == []
    assert is_model("lenet5") and not is_model("lenet6")


def _smallest_size(name: str) -> int | None:
    """Smallest stamp side in (32, 48, 64, 128, 256) the model accepts (tried on ``meta``: free)."""
    for size in (32, 48, 64, 128, 256):
        try:
            with torch.device("meta"):
                model = create_model(name, num_classes=3, in_chans=2, image_size=size)
                model.eval()(torch.empty(2, 2, size, size))
            return size
        except (ValueError, RuntimeError):
            continue
    return None


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name):
    """Every registered model, at the smallest stamp it takes, 2 bands: logits, gradients,
    and the same output in channels_last (how workers.inference runs it)."""
    size = _smallest_size(name)
    if size is None:
        pytest.skip(f"{name} needs inputs above 256 px (a whole-exposure model); "
                    "its own tests cover it")
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=2, image_size=size)
    assert (model.num_classes, model.in_chans) == (5, 2)
    x = torch.randn(2, 2, size, size)
    out = model(x)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.inference_mode():
        a = model(x)
        b = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["smallcnn", "lenet5"])
@pytest.mark.parametrize("in_chans,image_size", [(1, 64), (3, 32)])
def test_bundled_models_at_stamp_sizes(name, in_chans, image_size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=6, in_chans=in_chans, image_size=image_size).eval()
    assert (model.num_classes, model.in_chans, model.image_size) == (6, in_chans, image_size)
    with torch.inference_mode():
        out = model(torch.randn(3, in_chans, image_size, image_size))
    assert out.shape == (3, 6) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["smallcnn", "lenet5"])
def test_same_seed_same_weights(name):
    torch.manual_seed(3)
    a = create_model(name, num_classes=3).state_dict()
    torch.manual_seed(3)
    b = create_model(name, num_classes=3).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_smallcnn_size_and_any_image_size():
    model = create_model("smallcnn", num_classes=6)
    n = sum(p.numel() for p in model.parameters())
    assert 50_000 <= n <= 200_000
    model.eval()
    for size in (32, 48, 64, 96, 65):
        assert model(torch.randn(2, 1, size, size)).shape == (2, 6)


def test_lenet5_flatten_size_follows_image_size():
    assert create_model("lenet5", num_classes=2, image_size=64).num_features == 16 * 13 * 13
    assert create_model("lenet5", num_classes=2, image_size=32).num_features == 16 * 5 * 5
    model = create_model("lenet5", num_classes=2, image_size=32)
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.randn(1, 1, 64, 64))


def test_unknown_name_lists_close_matches_and_all_names():
    every = re.escape(", ".join(ALL))
    with pytest.raises(ValueError, match=rf"unknown model 'smalcnn'; did you mean 'smallcnn'.*"
                                         rf"registered models: {every}$"):
        create_model("smalcnn", num_classes=2)
    with pytest.raises(ValueError, match=rf"unknown model 'zzz'; registered models: {every}$"):
        create_model("zzz", num_classes=2)


@pytest.mark.parametrize("kw,match", [
    ({"num_classes": 0}, "num_classes must be an integer >= 1"),
    ({"num_classes": 2.0}, "num_classes"),
    ({"num_classes": 2, "in_chans": 0}, "in_chans"),
    ({"num_classes": 2, "image_size": 8}, "image_size >= 16"),
])
def test_bad_sizes_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        create_model("smallcnn", **kw)


def test_none_kwargs_keep_model_defaults():
    a = create_model("smallcnn", num_classes=2, drop_rate=None, widths=None)
    assert a.drop.p == 0.2 and a.num_features == 96
    b = create_model("smallcnn", num_classes=2, widths=(8, 8, 16, 16), drop_rate=0.0)
    assert b.num_features == 16 and b.drop.p == 0.0


def test_register_twice_is_refused():
    def smallcnn(**kw):  # same name as the bundled variant, another function
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="registered twice"):
        register_model(smallcnn)
    assert create_model("smallcnn", num_classes=2).num_classes == 2
