"""The half-light radius of the central source (``pipeline.imaging.radius``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.imaging.blur_score import apparent_fwhm
from pipeline.imaging.radius import half_light_radius


def _gaussians(sigmas, stamp: int = 48, bands: int = 1, noise: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:stamp, :stamp] - stamp // 2
    s = np.asarray(sigmas, float)[:, None, None, None]
    img = 500.0 * np.exp(-(xx**2 + yy**2) / (2 * s**2))
    return (img + rng.normal(0, noise, (len(sigmas), bands, stamp, stamp))).astype(np.float32)


def test_gaussian_half_light_radius_and_fwhm_match_sigma() -> None:
    sigmas = [1.0, 1.5, 2.0, 3.0, 5.0]
    stamps = _gaussians(sigmas)
    radius = half_light_radius(stamps)
    want = np.sqrt(2 * np.log(2)) * np.asarray(sigmas)  # = FWHM / 2
    np.testing.assert_allclose(radius, want, rtol=0.1)
    assert np.all(np.diff(radius) > 0)  # grows with the source's size
    np.testing.assert_allclose(apparent_fwhm(stamps), 2 * want, rtol=0.1)
    # bands are summed, (N, y, x) is one band
    np.testing.assert_allclose(half_light_radius(_gaussians(sigmas, bands=3)), want, rtol=0.1)
    np.testing.assert_array_equal(half_light_radius(stamps[:, 0]), radius)


def test_neighbours_are_masked_and_empty_stamps_are_nan() -> None:
    stamps = _gaussians([2.0, 2.0, 2.0], stamp=48)
    yy, xx = np.mgrid[:48, :48]
    stamps[1, 0] += 2000.0 * np.exp(-((xx - 38) ** 2 + (yy - 38) ** 2) / 8.0)  # a neighbour
    stamps[2] = np.random.default_rng(1).normal(0, 1.0, (1, 48, 48))  # nothing at the centre
    radius = half_light_radius(stamps)
    assert abs(radius[1] / radius[0] - 1) < 0.1 and np.isnan(radius[2])
    edge = stamps[:1].copy()
    edge[0, 0, :, :10] = np.nan  # off the image edge: masked, still measured
    assert abs(half_light_radius(edge)[0] / radius[0] - 1) < 0.1
    assert np.isnan(half_light_radius(np.full((1, 1, 16, 16), np.nan))).all()
    with pytest.raises(ValueError, match="stamps must be"):
        half_light_radius(np.zeros((2, 2)))


def test_wide_stamps_are_measured_block_averaged() -> None:
    stamps = _gaussians([12.0, 20.0], stamp=200, noise=0.5)
    full = half_light_radius(stamps, max_side=1000)
    binned = half_light_radius(stamps)  # 200 px > 160: measured at 2x2 blocks
    np.testing.assert_allclose(binned, full, rtol=0.03)
    np.testing.assert_allclose(full, np.sqrt(2 * np.log(2)) * np.array([12.0, 20.0]), rtol=0.1)
