"""Preprocessing: S/N normalisation, NaN handling, stretch, resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.imaging.preprocess import (DEFAULT_STRETCH, apply_stretch, background_noise, border_width,
                                 prepare, resize, stretch_names, to_snr, validate_stretch)


def _stamps(n=8, c=1, size=32, seed=0, noise=2.0, bg=0.0, flux=400.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    blob = np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (2 * 2.0 ** 2))
    img = rng.normal(bg, noise, (n, c, size, size)) + flux * blob / blob.sum()
    return img.astype(np.float32)


def test_background_and_noise_from_the_border():
    x = _stamps(n=64, size=64, noise=3.0, bg=5.0, flux=0.0)
    bg, noise = background_noise(x)
    assert bg.shape == noise.shape == (64, 1)
    assert torch.allclose(bg.mean(), torch.tensor(5.0), atol=0.1)
    assert torch.allclose(noise.mean(), torch.tensor(3.0), rtol=0.05)
    assert border_width(64, 64) == 4 and border_width(32, 32) == 2


def test_output_shape_dtype_and_the_asinh_formula():
    x = _stamps()
    out = prepare(x, stretch=DEFAULT_STRETCH, image_size=32)
    assert out.shape == (8, 1, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    bg, noise = background_noise(x)
    ref = torch.asinh((torch.from_numpy(x).double() - bg[..., None, None])
                      / (3.0 * noise[..., None, None]))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    lin = prepare(x, stretch={"name": "linear", "softening": 1.0, "scale": 2.0}, image_size=32)
    torch.testing.assert_close(lin, 2 * to_snr(x), rtol=1e-6, atol=1e-6)


def test_nan_becomes_background():
    x = _stamps(n=3)
    x[0, 0, :10, :] = np.nan  # off the image edge
    x[1] = np.nan  # entirely outside
    out = prepare(x, stretch=None, image_size=32)
    assert torch.isfinite(out).all()
    assert (out[0, 0, :10] == 0).all() and (out[1] == 0).all()
    # the valid part of stamp 0 is unchanged by the NaN border (background from what remains)
    clean = prepare(_stamps(n=3), stretch=None, image_size=32)
    assert torch.allclose(out[0, 0, 16], clean[0, 0, 16], atol=0.1)


def test_resize_only_when_needed():
    x = torch.from_numpy(_stamps(size=64))
    same = prepare(x, stretch=None, image_size=64)
    small = prepare(x, stretch=None, image_size=32)
    big = prepare(x, stretch=None, image_size=96)
    assert same.shape[-2:] == (64, 64) and small.shape[-2:] == (32, 32) and big.shape[-2:] == (96, 96)
    # the peak stays central after resizing
    flat = small[:, 0].reshape(8, -1).argmax(1)
    assert ((flat // 32 - 16).abs() <= 1).all() and ((flat % 32 - 16).abs() <= 1).all()
    t = torch.randn(2, 1, 8, 8)
    assert resize(t, 8) is t
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        resize(t, 0)


@pytest.mark.parametrize("offset,scale", [(100.0, 1.0), (-7.5, 1.0), (0.0, 25.0), (3.0, 0.01)])
def test_depends_only_on_signal_to_noise(offset, scale):
    x = _stamps(n=6, c=2, size=48)
    ref = prepare(x, stretch=None, image_size=48)
    out = prepare((x + offset) * scale, stretch=None, image_size=48)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-4)


def test_float16_and_readonly_and_big_endian_inputs():
    x = _stamps(n=2)
    ref = prepare(x, stretch=None, image_size=32)
    assert torch.allclose(prepare(x.astype(np.float16), stretch=None, image_size=32), ref, atol=0.02)
    ro = x.copy()
    ro.flags.writeable = False
    assert torch.equal(prepare(ro, stretch=None, image_size=32), ref)
    assert torch.equal(prepare(x.astype(">f4"), stretch=None, image_size=32), ref)


def test_stretch_validation():
    assert stretch_names() == ["asinh", "linear"]
    assert validate_stretch(None) == DEFAULT_STRETCH
    assert validate_stretch({"softening": 2}) == {"name": "asinh", "softening": 2.0, "scale": 1.0}
    with pytest.raises(ValueError, match=r"unknown stretch 'log'; valid stretches: asinh, linear"):
        prepare(_stamps(n=1), stretch={"name": "log"}, image_size=32)
    with pytest.raises(ValueError, match="unknown keys"):
        validate_stretch({"name": "asinh", "q": 8})
    with pytest.raises(ValueError, match="'softening' must be a finite number > 0"):
        validate_stretch({"softening": 0})
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        prepare(np.zeros((32, 32), np.float32), stretch=None, image_size=32)


def test_apply_stretch_matches_torch_asinh_everywhere():
    z = torch.cat([torch.linspace(-1e4, 1e4, 2001), torch.logspace(-8, 17, 200),
                   -torch.logspace(-8, 17, 200), torch.tensor([0.0, 3e38, -3e38])])
    out = apply_stretch(z, {"name": "asinh", "softening": 1.0, "scale": 1.0})
    ref = torch.asinh(z.double().clamp(-1e18, 1e18))
    assert torch.allclose(out.double(), ref, rtol=3e-7, atol=1e-12)


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)  # the whole float32 range


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(4, 20),
                                    st.integers(4, 20)),
              elements=finite32),
       st.sampled_from(stretch_names()), st.integers(4, 24))
def test_finite_output_for_any_finite_input(x, name, size):
    out = prepare(x, stretch={"name": name}, image_size=size)
    assert out.shape == (*x.shape[:2], size, size)
    assert torch.isfinite(out).all()


@settings(max_examples=30, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False, width=32), st.integers(4, 16))
def test_constant_stamps_give_zeros(value, size):
    x = np.full((2, 1, size, size), value, np.float32)
    assert torch.equal(prepare(x, stretch=None, image_size=size), torch.zeros(2, 1, size, size))


@pytest.mark.parametrize("name", ["linear", "asinh"])
def test_extreme_values_stay_finite_through_the_resize(name):
    big = np.finfo(np.float32).max
    x = np.where(np.indices((2, 1, 9, 8)).sum(0) % 2 == 0, big, -big).astype(np.float32)
    x[0, 0, :4] = big
    out = prepare(x, stretch={"name": name, "softening": 0.5, "scale": 3.0}, image_size=7)
    assert torch.isfinite(out).all()
