"""PSF ellipticity from stamps, per frame, and stamps resampled so that the PSF is round."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.imaging.psf_shape import (MIN_ELLIPTICITY, frame_ellipticity, psf_ellipticity,
                                        round_psf, stamp_ellipticity, stored_psf_shape)
from pipeline.imaging.rescale import scale_for_model

SIZE = 64


def _stars(n: int, sx: float, sy: float, angle: float = 0.0, noise: float = 1.0,
           seed: int = 0) -> np.ndarray:
    """``(n, 1, 64, 64)``: an elliptical Gaussian star of peak 200 (sigmas along its axes) in unit noise + 10."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    star = 200 * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    rng = np.random.default_rng(seed)
    return (10 + star + noise * rng.standard_normal((n, SIZE, SIZE)))[:, None].astype(np.float32)


def _e(images: np.ndarray) -> np.ndarray:
    n = len(images)
    return stamp_ellipticity(images, np.full(n, 10.0), np.ones(n))


def _frame(images: np.ndarray) -> np.ndarray:
    """The refined PSF ellipticity of a frame of these stamps, for each of them."""
    n = len(images)
    return np.repeat(psf_ellipticity(images, np.full(n, 10.0), np.ones(n))[None], n, axis=0)


def test_stamp_ellipticity_of_round_and_elongated_stars() -> None:
    assert np.abs(_e(_stars(8, 2.0, 2.0))).max() < 0.03
    e = _e(_stars(8, 3.0, 2.0))  # along x: e1 > 0, e2 ~ 0
    assert (e[:, 0] > 0.2).all() and np.abs(e[:, 1]).max() < 0.03
    diag = _e(_stars(8, 3.0, 2.0, angle=np.pi / 4))  # along the diagonal: e2 > 0
    assert (diag[:, 1] > 0.2).all() and np.abs(diag[:, 0]).max() < 0.03
    assert np.isnan(_e(np.full((2, 1, SIZE, SIZE), 10.0, np.float32))).all()  # nothing there


def test_frame_ellipticity_is_the_median_of_the_compact_stamps_of_each_frame() -> None:
    e = np.array([[0.2, 0.0]] * 6 + [[0.0, 0.1]] * 6 + [[0.9, 0.9]], np.float32)
    frames = np.array(["a"] * 6 + ["b"] * 6 + ["a"])
    compact = np.array([True] * 12 + [False])  # the last, wide one, never counts
    out = frame_ellipticity(e, frames, compact)
    assert np.allclose(out[frames == "a"], [0.2, 0.0]) and np.allclose(out[frames == "b"], [0.0, 0.1])
    few = frame_ellipticity(e[:4], frames[:4])  # fewer than 5: unknown
    assert np.isnan(few).all()


def test_round_psf_makes_an_elongated_psf_round_and_keeps_the_flux() -> None:
    stars = _stars(6, 3.2, 2.0, angle=0.6, noise=0.0)
    e = _e(stars)
    out = round_psf(stars, _frame(stars), np.full(6, 10.0))
    assert np.hypot(*_e(out).T).max() < 0.05 < np.hypot(*e.T).min()
    assert np.allclose((out - 10).sum(axis=(1, 2, 3)), (stars - 10).sum(axis=(1, 2, 3)), rtol=0.02)
    # a round frame, or an unknown one, is left exactly as it was
    calm = np.full((6, 2), MIN_ELLIPTICITY / 2, np.float32)
    assert np.array_equal(round_psf(stars, calm, np.full(6, 10.0)), stars)
    assert np.array_equal(round_psf(stars, np.full((6, 2), np.nan), np.full(6, 10.0)), stars)


def test_scale_for_model_rounds_first_and_stored_shape_follows_the_config() -> None:
    import dask

    stars = _stars(6, 3.2, 2.0)
    e = _frame(stars)
    out, bg, noise = scale_for_model(stars, None, None, np.full((6, 1), 10.0),
                                     np.ones((6, 1)), psf_shape=e)
    assert np.hypot(*_e(np.asarray(out)).T).max() < 0.05
    rows = {"psf_e1": e[:, 0], "psf_e2": e[:, 1]}
    assert np.allclose(stored_psf_shape(rows), e)
    assert stored_psf_shape({"psf_e1": e[:, 0]}) is None  # older stores: nothing to round by
    with dask.config.set({"skysieve.classify.round-psf": False}):
        assert stored_psf_shape(rows) is None


@pytest.mark.parametrize("angle", [0.0, 1.0, 2.2])
def test_round_psf_of_any_angle(angle: float) -> None:
    stars = _stars(5, 2.0, 3.0, angle=angle, noise=0.0)
    e = _frame(stars)
    assert np.hypot(*_e(round_psf(stars, e, np.full(5, 10.0))).T).max() < 0.05


def test_the_refined_estimate_is_less_round_than_one_pass() -> None:
    stars = _stars(6, 3.2, 2.0, angle=0.6)
    one_pass = np.hypot(*np.median(_e(stars), axis=0))
    refined = np.hypot(*_frame(stars)[0])
    # (3.2^2 - 2^2) / (3.2^2 + 2^2) = 0.44 is the PSF's own; thresholded moments see less
    assert one_pass < 0.38 < refined < 0.5
    assert np.isnan(psf_ellipticity(stars[:3], np.full(3, 10.0), np.ones(3))).all()
    assert np.isnan(psf_ellipticity(stars[:0], np.zeros(0), np.zeros(0))).all()  # no star


def test_psf_ellipticity_takes_single_band_stamps_without_a_band_axis() -> None:
    stars = _stars(6, 3.2, 2.0)
    assert np.allclose(psf_ellipticity(stars[:, 0], np.full(6, 10.0), np.ones(6)),
                       _frame(stars)[0])


def test_a_model_trained_on_stamps_as_stored_opts_out() -> None:
    from types import SimpleNamespace

    from pipeline import bundled
    from pipeline.imaging.psf_shape import wants_round
    from workers.checkpoint import load_card

    e = np.full((3, 2), 0.2, np.float32)
    rows = {"psf_e1": e[:, 0], "psf_e2": e[:, 1]}
    assert stored_psf_shape(rows, SimpleNamespace(training={"round_psf": True})) is not None
    assert stored_psf_shape(rows, SimpleNamespace(training={})) is not None  # older cards
    assert stored_psf_shape(rows, SimpleNamespace(training={"round_psf": False})) is None
    # the bundled star-galaxy model learnt on real frames as stored, trailed ones among them
    assert not wants_round(load_card(bundled.resolve("star-galaxy")))
    assert wants_round(load_card(bundled.resolve("default")))
