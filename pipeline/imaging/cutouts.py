"""Vectorised fixed-size stamps: one fancy-indexing gather per CCD, no Python loop.

Axis order: an image is ``image[y, x]`` (row, column); positions are 0-based
``x`` (column) and ``y`` (row), sep's and astropy's (origin 0) convention.  A
stamp of side ``size`` is centred on the pixel ``(round(x), round(y))`` (half
rounds up), which sits at ``stamp[size // 2, size // 2]``; so

    stamp[j, i] = image[round(y) - size // 2 + j, round(x) - size // 2 + i]

exactly as ``astropy.nddata.Cutout2D(image, (round(x), round(y)), size,
mode="partial", fill_value=nan)`` would cut it.  Pixels outside the image are
NaN and such stamps are flagged as touching the edge.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["cut_stamps", "round_half_up", "stamp_touches_edge"]


def round_half_up(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, halves upwards (``floor(v + 0.5)``), as int64."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def stamp_touches_edge(x: np.ndarray, y: np.ndarray, size: int, shape: tuple[int, int]
                       ) -> np.ndarray:
    """Whether the stamp of side ``size`` around each ``(x, y)`` leaves the image.

    Parameters
    ----------
    x, y : array_like
        0-based column and row positions.
    size : int
        Stamp side in pixels.
    shape : (ny, nx)
        Image shape in numpy order (rows, columns).

    Returns
    -------
    numpy.ndarray of bool, shape (N,)
    """
    ny, nx = shape
    half = size // 2
    x0 = round_half_up(x) - half
    y0 = round_half_up(y) - half
    return (x0 < 0) | (y0 < 0) | (x0 + size > nx) | (y0 + size > ny)


def cut_stamps(image: np.ndarray, x: np.ndarray, y: np.ndarray, size: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``size`` x ``size`` stamps around many positions at once.

    Interior stamps are one fancy-indexing gather from a
    ``sliding_window_view`` of the image; stamps that leave the image are
    gathered with clipped indices and NaN-filled outside (no padded copy of
    the CCD).

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        The CCD, indexed ``image[y, x]`` (any real dtype and byte order; the
        stamps are native float32).
    x, y : array_like, shape (N,)
        0-based column (``x``) and row (``y``) positions; each stamp is centred
        on the pixel ``(round(x), round(y))``, found at ``stamp[size//2, size//2]``.
    size : int
        Stamp side in pixels (odd or even, >= 1).

    Returns
    -------
    stamps : numpy.ndarray, float32, shape (N, size, size)
        ``stamps[k, j, i] = image[round(y[k]) - size//2 + j, round(x[k]) - size//2 + i]``
        (row ``j``, column ``i``), NaN where that pixel is outside the image.
    edge : numpy.ndarray of bool, shape (N,)
        True where the stamp extends beyond the image (padded with NaN).

    Raises
    ------
    ValueError
        ``image`` not 2-D, ``size`` < 1, ``x``/``y`` of different lengths, or a
        NaN/infinite position.

    Examples
    --------
    >>> img = np.arange(25, dtype=np.float32).reshape(5, 5)
    >>> stamps, edge = cut_stamps(img, [2.2, 0.0], [2.0, 0.4], 3)
    >>> stamps[0].tolist()
    [[6.0, 7.0, 8.0], [11.0, 12.0, 13.0], [16.0, 17.0, 18.0]]
    >>> edge.tolist()
    [False, True]
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (ny, nx); got shape {image.shape!r}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels; got {size!r}")
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length; got {x.shape!r} and {y.shape!r}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))
        raise ValueError(f"positions must be finite; NaN/inf at indices {bad[:10].tolist()!r}")
    if image.dtype != np.float32 or not image.dtype.isnative:
        image = image.astype(np.float32)
    n = x.size
    ny, nx = image.shape
    half = size // 2
    x0 = round_half_up(x) - half  # first column of each stamp
    y0 = round_half_up(y) - half  # first row of each stamp
    edge = (x0 < 0) | (y0 < 0) | (x0 + size > nx) | (y0 + size > ny)
    if n == 0:
        return np.empty((0, size, size), np.float32), edge
    stamps = np.empty((n, size, size), dtype=np.float32)
    inner = ~edge  # all False when the stamp is larger than the image
    if inner.any():
        windows = sliding_window_view(image, (size, size))  # (ny-size+1, nx-size+1, size, size)
        if inner.all():
            return windows[y0, x0], edge  # fancy indexing copies: (N, size, size)
        stamps[inner] = windows[y0[inner], x0[inner]]
    # Stamps that leave the image: gather with clipped indices, then NaN outside.
    # (No padded copy of the whole CCD: only these few stamps are touched.)
    k = np.flatnonzero(edge)
    offsets = np.arange(size)
    rows = y0[k, None] + offsets  # (M, size): CCD row of each stamp row
    cols = x0[k, None] + offsets  # (M, size): CCD column of each stamp column
    gathered = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    outside = ((rows < 0) | (rows >= ny))[:, :, None] | ((cols < 0) | (cols >= nx))[:, None, :]
    gathered[outside] = np.nan
    stamps[k] = gathered
    return stamps, edge
