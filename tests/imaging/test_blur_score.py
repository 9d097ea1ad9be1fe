"""The blur score rises monotonically as sources are convolved with wider Gaussians."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from pipeline.imaging.blur_score import SIGMA_TO_FWHM, apparent_fwhm, blur_score

SIZE = 64


def _grid():
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    return x - SIZE // 2, y - SIZE // 2


def _moffat(fwhm: float, beta: float = 3.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    x, y = _grid()
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    return (1 + ((x - dx) ** 2 + (y - dy) ** 2) / alpha**2) ** -beta


def _sources() -> dict[str, np.ndarray]:
    x, y = _grid()
    r_ell = np.hypot(x / 1.0, y / 0.6)
    disk = np.exp(-r_ell / 3.0)
    rng = np.random.default_rng(1)
    clumpy = sum(_moffat(2.0, dx=rng.uniform(-6, 6), dy=rng.uniform(-6, 6)) for _ in range(5))
    return {"star": _moffat(3.0), "offset star": _moffat(3.0, dx=0.4, dy=-0.3),
            "disk": gaussian_filter(disk, 1.2), "clumpy": gaussian_filter(clumpy, 1.0)}


@pytest.mark.parametrize("name", list(_sources()))
def test_score_rises_with_added_blur(name: str) -> None:
    base = _sources()[name]
    rng = np.random.default_rng(0)
    sigmas = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
    stamps = []
    for s in sigmas:
        img = gaussian_filter(base, s) if s else base.copy()
        img = 1000 * img / img.sum() + rng.normal(0, 0.02, img.shape)  # high S/N
        stamps.append(img)
    stamps = np.stack(stamps)[:, None].astype(np.float32)
    scores = blur_score(stamps, reference_fwhm=3.0)
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores) > 0), f"{name}: scores not increasing: {scores}"


def test_gaussian_width_recovered_and_star_scores_one() -> None:
    x, y = _grid()
    for sigma in (1.0, 2.0, 4.0):
        img = np.exp(-(x**2 + y**2) / (2 * sigma**2))[None, None]
        fwhm = apparent_fwhm(img.astype(np.float32))[0]
        assert fwhm == pytest.approx(sigma * SIGMA_TO_FWHM, rel=0.03)
    star = np.exp(-(x**2 + y**2) / (2 * 1.5**2))[None, None].astype(np.float32)
    assert blur_score(star, 1.5 * SIGMA_TO_FWHM)[0] == pytest.approx(1.0, rel=0.03)


def test_empty_and_nan_stamps_give_nan_not_errors() -> None:
    stamps = np.zeros((3, 1, SIZE, SIZE), np.float32)
    stamps[1] = np.nan
    stamps[2, 0, 30:34, 30:34] = 5.0
    stamps[2, 0, :, :10] = np.nan  # an edge stamp, padded with NaN
    fwhm = apparent_fwhm(stamps)
    assert np.isnan(fwhm[0]) and np.isnan(fwhm[1])
    assert np.isfinite(fwhm[2]) and fwhm[2] > 0


def test_bad_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="reference_fwhm"):
        blur_score(np.zeros((1, 1, 8, 8), np.float32), float("nan"))
