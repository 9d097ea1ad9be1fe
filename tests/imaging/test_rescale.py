"""Resampling stamps to a fixed PSF width (pipeline.imaging.rescale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.imaging.blur_score import apparent_fwhm
from pipeline.imaging.preprocess import apply_stretch, prepare, resize, to_snr
from pipeline.imaging.rescale import psf_zoom, rescale, scale_for_model, validate_input_scale

SCALE = {"mode": "psf", "fwhm_px": 3.0}


def _stars(fwhms, size=64, seed=0, sky=5.0):
    """Gaussian stars of the given FWHMs (px), noise 1, a residual sky, NaN top rows on the first."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((len(fwhms), 1, size, size), np.float32)
    for i, f in enumerate(fwhms):
        s = f / 2.3548
        out[i, 0] = 200 * np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (2 * s * s))
    out += rng.normal(0, 1, out.shape).astype(np.float32) + sky
    out[0, 0, :3] = np.nan
    return out


def test_psf_zoom_brings_the_psf_to_the_target_and_keeps_unknown_ones():
    z = psf_zoom(np.array([6.0, 3.0, 1.5, np.nan, 0.0, 100.0]), 3.0)
    assert z[:3] == pytest.approx([0.5, 1.0, 2.0], rel=0.011)   # the 2% grid
    assert z[3] == 1.0 and z[4] == 1.0                           # unknown PSF: as it is
    assert z[5] == pytest.approx(0.2, rel=0.011)                 # clipped


def test_min_zoom_leaves_wide_psfs_as_they_are_and_still_magnifies_sharp_ones():
    psf = np.array([6.0, 3.0, 1.5, np.nan, 100.0])
    z = psf_zoom(psf, 3.0, 1.0)
    assert z[:2] == pytest.approx([1.0, 1.0]) and z[2] == pytest.approx(2.0, rel=0.011)
    assert z[3] == 1.0 and z[4] == 1.0
    assert psf_zoom(psf, 3.0, 0.8)[0] == pytest.approx(0.8, rel=0.011)
    assert np.array_equal(psf_zoom(psf, 3.0, None), psf_zoom(psf, 3.0))
    scale = {**SCALE, "min_zoom": 1}
    assert validate_input_scale(scale) == {"mode": "psf", "fwhm_px": 3.0, "min_zoom": 1.0}
    images = _stars([6.0, 1.5, 3.0])
    pixels, _, _ = scale_for_model(images, scale, psf[[0, 2, 1]])
    assert np.array_equal(np.nan_to_num(pixels[0]), np.nan_to_num(images[0], nan=pixels[0, 0, 0, 0]))
    assert not np.allclose(pixels[1], images[1], atol=1.0)  # the sharp star was magnified
    shrunk, _, _ = scale_for_model(images, SCALE, psf[[0, 2, 1]])
    assert not np.allclose(np.nan_to_num(shrunk[0]), np.nan_to_num(images[0]), atol=1.0)


def test_rescale_makes_the_psf_span_the_target_width():
    images = _stars([6.0, 2.0, 3.0], sky=0.0)
    images[0, 0, :3] = 0.0
    x = torch.as_tensor(images)
    out = rescale(x, psf_zoom(np.array([6.0, 2.0, 3.0]), 3.0))
    assert out.shape == x.shape
    fwhm = apparent_fwhm(out.numpy())
    assert fwhm == pytest.approx([3.0, 3.0, 3.0], abs=0.4)  # pixels widen sampled stars a little
    assert torch.equal(out[2], x[2])                              # zoom 1: untouched


def test_a_shrunk_stamp_is_padded_with_its_background():
    x = torch.full((1, 1, 32, 32), 7.0)
    out = rescale(x, np.array([0.5], np.float32), fill=torch.tensor([[7.0]]))
    assert torch.allclose(out, x)
    out = rescale(x, np.array([0.5], np.float32))                # fill 0
    assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 0, 16, 16]) == pytest.approx(7.0)


def test_inference_gives_the_pixels_training_gives():
    """classify's path (stored stamps -> scale_for_model -> prepare) == train's (S/N -> rescale)."""
    images = _stars([6.0, 2.0, 4.5, 3.0])
    psf = np.array([6.0, 2.0, 4.5, np.nan])
    trained = resize(apply_stretch(rescale(to_snr(images), psf_zoom(psf, 3.0)), None), 64)
    pixels, bg, noise = scale_for_model(images, SCALE, psf)
    served = prepare(pixels, stretch=None, image_size=64, background=bg, noise=noise)
    assert torch.allclose(served, trained, atol=1e-4)
    plain = prepare(images, stretch=None, image_size=64)
    assert not torch.allclose(served[0], plain[0], atol=1e-2)    # it did resample
    assert torch.allclose(served[3], plain[3], atol=1e-5)        # unknown PSF: as before


def test_no_scale_changes_nothing_and_a_missing_psf_is_refused():
    images = _stars([3.0])
    same = scale_for_model(images, None, None)
    assert same[0] is images and same[1] is None
    assert scale_for_model(images, {}, None)[0] is images
    with pytest.raises(ValueError, match="psf_fwhm"):
        scale_for_model(images, SCALE, None)


@pytest.mark.parametrize("bad, match", [({"mode": "kron"}, "mode"),
                                        ({"mode": "psf"}, "fwhm_px"),
                                        ({"mode": "psf", "fwhm_px": 40}, r"\[1, 16\]"),
                                        ({"mode": "psf", "fwhm_px": 3, "x": 1}, "unknown keys"),
                                        ({"mode": "psf", "fwhm_px": 3, "min_zoom": 2}, "min_zoom"),
                                        ({"mode": "psf", "fwhm_px": 3, "min_zoom": 0.1}, "min_zoom"),
                                        ("psf", "dict")])
def test_bad_input_scales_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_input_scale(bad)
    assert validate_input_scale({"mode": "none"}) is None
    assert validate_input_scale({"mode": "psf", "fwhm_px": 3}) == {"mode": "psf", "fwhm_px": 3.0}
