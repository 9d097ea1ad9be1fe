"""cut_stamps against astropy's Cutout2D (mode="partial", fill_value=nan)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.nddata import Cutout2D, NoOverlapError

from pipeline.imaging.cutouts import cut_stamps, round_half_up, stamp_touches_edge


def _reference(image: np.ndarray, x: float, y: float, size: int) -> np.ndarray:
    """Cutout2D at the rounded position, NaN outside the image; all-NaN when no overlap."""
    try:
        cut = Cutout2D(image, (int(round_half_up(x)), int(round_half_up(y))), size,
                       mode="partial", fill_value=np.nan)
    except NoOverlapError:
        return np.full((size, size), np.nan, np.float32)
    return cut.data.astype(np.float32)


@pytest.mark.parametrize("size", [1, 5, 16, 33, 64])
def test_matches_cutout2d_interior_and_edges(size: int) -> None:
    rng = np.random.default_rng(size)
    image = rng.normal(size=(70, 90)).astype(np.float32)  # (ny, nx): not square on purpose
    # interior, exact halves, every edge and corner, and slightly outside the image
    x = np.array([45.0, 44.5, 45.49, 0.0, 89.0, 0.0, 89.0, 3.2, 86.7, -0.4, 89.4, 10.0, 60.0])
    y = np.array([35.0, 35.5, 34.51, 0.0, 69.0, 69.0, 0.0, 2.9, 66.8, 20.0, 30.0, -0.3, 69.4])
    stamps, edge = cut_stamps(image, x, y, size)
    assert stamps.shape == (len(x), size, size) and stamps.dtype == np.float32
    for k in range(len(x)):
        ref = _reference(image, x[k], y[k], size)
        np.testing.assert_array_equal(stamps[k], ref, err_msg=f"position {k}: ({x[k]}, {y[k]})")
        assert edge[k] == bool(np.isnan(ref).any()), k
    np.testing.assert_array_equal(edge, stamp_touches_edge(x, y, size, image.shape))


def test_axis_order_and_centre_pixel() -> None:
    image = np.zeros((50, 80), np.float32)
    image[10, 60] = 7.0  # row y=10, column x=60
    stamps, edge = cut_stamps(image, [60.2], [9.7], 9)
    assert not edge[0]
    assert stamps[0, 4, 4] == 7.0 and np.count_nonzero(stamps[0]) == 1


def test_big_endian_and_integer_images() -> None:
    image = np.arange(400, dtype=">i2").reshape(20, 20)
    stamps, _ = cut_stamps(image, [10], [10], 3)
    assert stamps.dtype == np.float32 and stamps.dtype.isnative
    np.testing.assert_array_equal(stamps[0], image[9:12, 9:12].astype(np.float32))


def test_stamp_larger_than_image() -> None:
    image = np.arange(30, dtype=np.float32).reshape(5, 6)
    stamps, edge = cut_stamps(image, [2.0], [2.0], 9)
    assert edge.all()
    np.testing.assert_array_equal(stamps[0], _reference(image, 2.0, 2.0, 9))


def test_far_outside_is_all_nan_and_flagged() -> None:
    image = np.ones((20, 20), np.float32)
    stamps, edge = cut_stamps(image, [-100.0, 10.0], [5.0, 300.0], 8)
    assert edge.all() and np.isnan(stamps).all()


def test_empty_and_bad_input() -> None:
    image = np.ones((20, 20), np.float32)
    stamps, edge = cut_stamps(image, [], [], 8)
    assert stamps.shape == (0, 8, 8) and edge.shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        cut_stamps(image, [1.0, np.nan], [1.0, 2.0], 8)
    with pytest.raises(ValueError, match="2-D"):
        cut_stamps(np.ones((2, 3, 4)), [1.0], [1.0], 2)
    with pytest.raises(ValueError, match="size"):
        cut_stamps(image, [1.0], [1.0], 0)
    with pytest.raises(ValueError, match="equal length"):
        cut_stamps(image, [1.0, 2.0], [1.0], 4)
