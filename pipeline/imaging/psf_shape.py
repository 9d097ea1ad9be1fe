"""The PSF's elongation, and stamps resampled so that it is round.

Guiding errors, wind shake and astigmatism elongate every source of an exposure the same
way. A model trained on round PSFs takes such stars for galaxies: on the real frames of
``star_galaxy`` whose stars have a median ellipticity above 0.1 (moments as below), the
shipped ``default`` found 10-47% of the stars, against 80-98% on the frames with round
stars. Resampling each stamp by the linear map that makes its frame's PSF round (area
kept) removes that, for any model, with no retraining.

- :func:`stamp_ellipticity`: ``(e1, e2)`` of each stamp's central source, from second
  moments of the pixels more than 2 noise sigma above the background, Gaussian-weighted
  about the stamp's centre (``e1 = (Qxx - Qyy) / (Qxx + Qyy)``, ``e2 = 2 Qxy / (Qxx +
  Qyy)``; a distortion, 0 for a round source);
- :func:`frame_ellipticity`: each frame's PSF ellipticity, the median over its compact
  stamps, given to every source of the frame;
- :func:`psf_ellipticity`: one frame's, refined: the thresholded, round-weighted moments
  see an elongated PSF rounder than it is, so the stamps are made round by the estimate,
  measured again and the residual composed in, three times (stored as ``psf_e1``,
  ``psf_e2`` by ingest and ``import-images``);
- :func:`round_psf`: stamps resampled about their centre so that a PSF of ``(e1, e2)``
  becomes round; frames rounder than :data:`MIN_ELLIPTICITY` are left as they are.
  ``classify`` does this before a model sees a stamp (config ``classify.round-psf``, on by
  default; :func:`stored_psf_shape`), through
  :func:`pipeline.imaging.rescale.scale_for_model`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["MIN_ELLIPTICITY", "stamp_ellipticity", "frame_ellipticity", "psf_ellipticity",
           "round_psf", "wants_round", "stored_psf_shape"]

#: PSFs rounder than this are not resampled (the interpolation would cost more than it mends).
MIN_ELLIPTICITY = 0.04
_WEIGHT_SIGMA = 4.0   # px: the Gaussian weight of the moments, about the stamp centre
_THRESHOLD = 2.0      # noise sigmas above the background a pixel must reach to count
_CORE = 32            # px: the moments use the central 32x32 (the weight is 3e-4 at its edge)
_MAX_STAMPS = 200     # a frame's estimate uses at most this many stamps (the first given)


def stamp_ellipticity(images: np.ndarray, background: np.ndarray,
                      noise: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float32 ellipticity ``(e1, e2)`` of each stamp's central source (first band).

    Parameters
    ----------
    images : numpy.ndarray
        Stamps ``(N, C, H, W)`` or ``(N, H, W)``; NaN pixels count as background.
    background, noise : numpy.ndarray
        Each stamp's background level and noise sigma (the store's ``stamp_bg``,
        ``stamp_noise``; first band used).

    Returns
    -------
    numpy.ndarray
        NaN rows where no pixel rises above the threshold.
    """
    x = _core(np.asarray(images, np.float32))
    if x.ndim == 4:
        x = x[:, 0]
    n, h, w = x.shape
    bg = np.asarray(background, np.float32).reshape(n, -1)[:, 0]
    sd = np.asarray(noise, np.float32).reshape(n, -1)[:, 0]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    yy -= (h - 1) / 2
    xx -= (w - 1) / 2
    weight = np.exp(-(xx ** 2 + yy ** 2) / (2 * _WEIGHT_SIGMA ** 2))
    f = np.nan_to_num(x - (bg + _THRESHOLD * sd)[:, None, None], nan=0.0).clip(min=0) * weight
    s = f.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (f * xx).sum(axis=(1, 2)) / s
        my = (f * yy).sum(axis=(1, 2)) / s
        dx, dy = xx[None] - mx[:, None, None], yy[None] - my[:, None, None]
        qxx = (f * dx * dx).sum(axis=(1, 2)) / s
        qyy = (f * dy * dy).sum(axis=(1, 2)) / s
        qxy = (f * dx * dy).sum(axis=(1, 2)) / s
        e = _distortion(qxx, qyy, qxy)
    e[~(s > 0) | ~(qxx + qyy > 0)] = np.nan
    return e.astype(np.float32)


def _distortion(qxx: np.ndarray, qyy: np.ndarray, qxy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` ``((Qxx - Qyy) / (Qxx + Qyy), 2 Qxy / (Qxx + Qyy))`` of second moments."""
    trace = qxx + qyy
    return np.stack([(qxx - qyy) / trace, 2 * qxy / trace], axis=-1)


def _median(e: np.ndarray, use: np.ndarray, min_count: int) -> np.ndarray:
    """``(2,)`` median of the usable finite rows of ``e``; NaN with fewer than ``min_count``."""
    good = e[use & np.isfinite(e).all(axis=1)]
    return (np.median(good, axis=0) if len(good) >= min_count
            else np.full(2, np.nan)).astype(np.float32)


def frame_ellipticity(e: np.ndarray, frames: np.ndarray, compact: np.ndarray | None = None,
                      *, min_count: int = 5) -> np.ndarray:
    """Each frame's PSF ellipticity, for every source: the median ``(e1, e2)`` of its compact stamps.

    Parameters
    ----------
    e : numpy.ndarray
        ``(N, 2)`` stamp ellipticities (:func:`stamp_ellipticity`).
    frames : numpy.ndarray
        ``(N,)`` frame (exposure) of each stamp.
    compact : numpy.ndarray of bool, optional
        Stamps that may stand for the PSF (point-like); default all.
    min_count : int, default: 5
        Fewer usable stamps in a frame: NaN for its sources.

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` float32.
    """
    e = np.asarray(e, np.float32)
    use = np.ones(len(e), bool) if compact is None else np.asarray(compact, bool)
    out = np.full(e.shape, np.nan, np.float32)
    for _, idx in pd.Series(np.arange(len(e))).groupby(np.asarray(frames), sort=False):
        rows = idx.to_numpy()
        out[rows] = _median(e[rows], use[rows], min_count)
    return out


def psf_ellipticity(stamps: np.ndarray, background: np.ndarray, noise: np.ndarray, *,
                    min_count: int = 5, iterations: int = 3) -> np.ndarray:
    """``(2,)`` float32 PSF ellipticity of one frame from its compact stamps (NaN: too few).

    The median of :func:`stamp_ellipticity`, refined ``iterations`` times: the stamps
    resampled by the estimate (:func:`round_psf`) are measured again and the residual
    composed with it (``Q = A A^T`` of the product of the two maps), which removes the
    estimator's pull towards round.  At most the first 200 stamps (pass the brightest
    first) and their central 32x32 pixels are used: ~5 ms a frame.
    """
    stamps = np.asarray(stamps, np.float32)[:_MAX_STAMPS]
    if stamps.ndim == 3:  # (N, H, W): one band
        stamps = stamps[:, None]
    stamps = _core(stamps[:, :1])
    n = len(stamps)
    if n < max(1, min_count):
        return np.full(2, np.nan, np.float32)
    bg, noise = _first_band(background, n), _first_band(noise, n)
    every = np.ones(n, bool)
    e = _median(stamp_ellipticity(stamps, bg, noise), every, min_count)
    for _ in range(iterations):
        if not np.isfinite(e).all() or np.hypot(*e) < MIN_ELLIPTICITY:
            break
        rounded = round_psf(stamps, np.repeat(e[None], n, axis=0), bg)
        r = _median(stamp_ellipticity(rounded, bg, noise), every, min_count)
        if not np.isfinite(r).all() or np.hypot(*r) < 0.005:
            break
        a = (_round_map(e) @ _round_map(r))[0]
        q = a @ a.T
        e = _distortion(q[0, 0], q[1, 1], q[0, 1]).astype(np.float32)
    return e


def _first_band(values: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` per-stamp values of ``(N,)`` or ``(N, band)`` statistics, first band."""
    v = np.asarray(values, np.float32)
    return v.reshape(len(v), -1)[:n, 0]


def _core(x: np.ndarray) -> np.ndarray:
    """The central ``_CORE`` x ``_CORE`` pixels of stamps ``(..., H, W)`` (same centre)."""
    h, w = x.shape[-2:]
    top, left = max(0, (h - _CORE) // 2), max(0, (w - _CORE) // 2)
    return x[..., top:h - top, left:w - left]


def _round_map(e: np.ndarray) -> np.ndarray:
    """``(N, 2, 2)`` maps ``Q^{1/2} / det(Q)^{1/4}``, ``Q = [[1 + e1, e2], [e2, 1 - e1]]``."""
    e = np.asarray(e, np.float64).reshape(-1, 2)
    e1, e2 = e[:, 0], e[:, 1]
    q = np.stack([np.stack([1 + e1, e2], -1), np.stack([e2, 1 - e1], -1)], -2)
    vals, vecs = np.linalg.eigh(q)
    half = vecs @ (np.sqrt(vals)[..., None] * np.swapaxes(vecs, -1, -2))
    return half / np.linalg.det(q)[:, None, None] ** 0.25


def round_psf(images: np.ndarray, e: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Resample stamps about their centre so that a PSF of ellipticity ``e`` becomes round.

    The map is ``Q^{1/2} / det(Q)^{1/4}`` with ``Q = [[1 + e1, e2], [e2, 1 - e1]]`` (area
    kept), bilinear; pixels from outside the stamp take ``fill``. Stamps whose ``|e|`` is
    below :data:`MIN_ELLIPTICITY` or NaN are returned unchanged.

    Parameters
    ----------
    images : numpy.ndarray
        ``(N, C, H, W)`` stamps (NaN allowed: it becomes ``fill`` first).
    e : numpy.ndarray
        ``(N, 2)`` PSF ellipticity of each stamp's frame (``psf_e1``, ``psf_e2``).
    fill : numpy.ndarray
        ``(N,)`` or ``(N, C)`` background of each stamp.

    Returns
    -------
    numpy.ndarray
        Float32, same shape.
    """
    x = np.asarray(images, np.float32)
    e = np.asarray(e, np.float64).reshape(len(x), 2)
    mag = np.hypot(e[:, 0], e[:, 1])
    todo = np.flatnonzero(np.isfinite(mag) & (mag >= MIN_ELLIPTICITY) & (mag < 0.9))
    if todo.size == 0:
        return x
    out = x.copy()
    n, c = x.shape[:2]
    bg = np.broadcast_to(np.asarray(fill, np.float32).reshape(n, -1), (n, c))[todo]
    a = _round_map(e[todo])
    theta = torch.zeros(todo.size, 2, 3)
    theta[:, :, :2] = torch.as_tensor(a, dtype=torch.float32)  # output (x, y) -> input (x, y)
    t = torch.as_tensor(x[todo])
    b = torch.as_tensor(np.ascontiguousarray(bg))[:, :, None, None]
    t = torch.where(torch.isnan(t), b.expand_as(t), t) - b
    grid = torch.nn.functional.affine_grid(theta, list(t.shape), align_corners=False)
    t = torch.nn.functional.grid_sample(t, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False)
    out[todo] = (t + b).numpy()
    return out


def wants_round(card: Any | None) -> bool:
    """Whether a model takes its stamps with elongated PSFs made round.

    Every model does, unless its card says it was trained on stamps as stored although its
    store knew their PSF shape (``training.round_psf`` false: the bundled ``star-galaxy``,
    trained on real frames, trailed ones among them): it would see other stamps than it
    learnt on.
    """
    training = getattr(card, "training", None) or {}
    return training.get("round_psf") is not False


def stored_psf_shape(rows: dict[str, np.ndarray], card: Any | None = None) -> np.ndarray | None:
    """``(N, 2)`` ``psf_e1``, ``psf_e2`` of store rows to round the stamps by, or ``None``.

    ``None`` when the store has no PSF ellipticity (written before it, or whole-exposure
    stores), config ``classify.round-psf`` is off, or the model's ``card`` opts out
    (:func:`wants_round`).
    """
    from pipeline import config

    if not ("psf_e1" in rows and "psf_e2" in rows) or not config.get("classify.round-psf") \
            or not wants_round(card):
        return None
    return np.stack([np.asarray(rows["psf_e1"], np.float32).reshape(-1),
                     np.asarray(rows["psf_e2"], np.float32).reshape(-1)], axis=1)
