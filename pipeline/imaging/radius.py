"""The extent of the source at the centre of each stamp: its half-light radius, with sep.

Definition
----------
``radius`` is the **half-light radius** in pixels: the radius of the circle,
about the source's centroid, that holds half of its Kron flux (SExtractor's
``FLUX_RADIUS`` with ``PHOT_FLUXFRAC = 0.5``, normalised by ``FLUX_AUTO``, the
flux in 2.5 Kron radii).  It is measured on the band-summed stamp:

1. the median of the stamp's outer 2-px ring is subtracted, and its robust rms
   (1.4826 MAD) is the noise;
2. sep detects objects above ``threshold`` times that noise; the central source
   is the one whose segment covers the stamp centre, else the nearest within
   ``max_offset`` px;
3. its neighbours' pixels are masked (sep's segmentation map) for the Kron
   radius, the Kron flux and the half-light radius.

Stamps wider than ``max_side`` (160 px) are measured block-averaged by
``ceil(side / max_side)`` and the radius scaled back: an extraction on a
423 px Galaxy Zoo stamp costs ~10x less that way, and its galaxies' radii
(~25 px) move by 1-2 %.

For a Gaussian of width ``sigma`` the true half-light radius is
``sqrt(2 ln 2) sigma = FWHM / 2``; the Kron normalisation (~95 % of the total
flux) makes the measurement a few per cent smaller.  A point source's radius
is about half the PSF FWHM; resolved galaxies are larger.  NaN where no source
is found at the centre.  ``skysieve ingest`` measures the same quantity on the
whole exposure at detection (:func:`pipeline.ingest.detect.detect`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import sep

__all__ = ["half_light_radius", "KRON_MIN_RADIUS"]

#: Kron ellipses smaller than this (px, ``kron * sqrt(a b)``) use a circle of twice it instead.
KRON_MIN_RADIUS = 1.75
_SUBPIX_BELOW = 20.0  # px: apertures up to this radius are sampled 5x5 per pixel


def _ring_sky(image: np.ndarray, finite: np.ndarray) -> tuple[float, float]:
    ring = np.ones(image.shape, bool)
    ring[2:-2, 2:-2] = False
    values = image[ring & finite]
    if values.size == 0:
        return 0.0, math.nan
    sky = float(np.median(values))
    rms = 1.4826 * float(np.median(np.abs(values - sky)))
    if not rms > 0:  # quantised (8-bit) or clipped skies: fall back to the plain scatter
        rms = float(np.std(values))
    return sky, rms


def _central(image: np.ndarray, mask: np.ndarray | None, *, threshold: float, min_area: int,
             deblend_cont: float, max_offset: float) -> float:
    """Half-light radius of the central source of one 2-D, sky-subtracted stamp (NaN if none)."""
    ny, nx = image.shape
    peak = float(np.max(np.abs(image))) if image.size else 0.0
    finite = np.ones(image.shape, bool) if mask is None else ~mask
    sky, rms = _ring_sky(image, finite)
    if not peak > 0:
        return math.nan
    if not (math.isfinite(rms) and rms > 1e-6 * peak):
        rms = 1e-3 * peak  # a noiseless stamp: detect down to 0.1 % of the peak
    data = np.ascontiguousarray(image - np.float32(sky), dtype=np.float32)
    if mask is not None:
        data[mask] = 0.0
    try:
        objects, seg = sep.extract(data, threshold, err=rms, mask=mask, minarea=min_area,
                                   deblend_cont=deblend_cont, segmentation_map=True)
    except Exception:  # noqa: BLE001 - sep's pixel-stack/deblend limits: no measurement
        return math.nan
    if len(objects) == 0:
        return math.nan
    cy, cx = ny // 2, nx // 2
    sid = int(seg[cy, cx])
    if sid <= 0:
        dist = np.hypot(objects["x"] - cx, objects["y"] - cy)
        k = int(np.argmin(dist))
        if dist[k] > max_offset:
            return math.nan
        sid = k + 1
    obj = objects[sid - 1]
    x, y = np.array([obj["x"]], np.float64), np.array([obj["y"]], np.float64)
    a = np.array([max(float(obj["a"]), 0.3)])
    b = np.array([max(float(obj["b"]), 0.3)])
    theta = np.array([float(np.clip(obj["theta"], -math.pi / 2, math.pi / 2))])
    ids = np.array([sid], np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kron, _ = sep.kron_radius(data, x, y, a, b, theta, 6.0, mask=mask, segmap=seg,
                                  seg_id=ids)
        kron = np.where(np.isfinite(kron) & (kron > 0), kron, 0.0)
        rmax = np.maximum(np.maximum(6.0 * a, 2.5 * kron * a), 2.0 * KRON_MIN_RADIUS)
        subpix = 5 if float(rmax[0]) < _SUBPIX_BELOW else 1  # big apertures: whole pixels do
        if float(kron[0] * math.sqrt(a[0] * b[0])) < KRON_MIN_RADIUS:
            flux, _, _ = sep.sum_circle(data, x, y, 2.0 * KRON_MIN_RADIUS, mask=mask,
                                        segmap=seg, seg_id=ids, subpix=5)
        else:
            flux, _, _ = sep.sum_ellipse(data, x, y, a, b, theta, 2.5 * kron, mask=mask,
                                         segmap=seg, seg_id=ids, subpix=subpix)
        if not flux[0] > 0:
            return math.nan
        radius, _ = sep.flux_radius(data, x, y, rmax, 0.5, normflux=flux, mask=mask,
                                    segmap=seg, seg_id=ids, subpix=subpix)
    value = float(radius[0])
    return value if math.isfinite(value) and value > 0 else math.nan


def _block_average(image: np.ndarray, valid: np.ndarray, factor: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the valid pixels of each ``factor`` block (trailing pixels dropped); valid blocks."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    shape = (h, factor, w, factor)
    total = image[:h * factor, :w * factor].reshape(shape).sum(axis=(1, 3), dtype=np.float32)
    count = valid[:h * factor, :w * factor].reshape(shape).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return mean.astype(np.float32), count > 0


def half_light_radius(stamps: np.ndarray, *, threshold: float = 1.5, min_area: int = 5,
                      deblend_cont: float = 0.05, max_offset: float = 3.0,
                      max_side: int = 160) -> np.ndarray:
    """Half-light radius (px) of the source at the centre of each stamp (module docstring).

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(N, band, y, x)`` or ``(N, y, x)``; NaN outside the image.  Bands are summed.
    threshold : float, default: 1.5
        Detection threshold in units of the stamp's ring noise.
    min_area : int, default: 5
        Minimum connected pixels of a detection.
    deblend_cont : float, default: 0.05
        sep deblending contrast (ingest's default, ``ingest.deblend-cont``).
    max_offset : float, default: 3.0
        How far (px) from the stamp centre the central source may lie when no
        segment covers the centre.
    max_side : int, default: 160
        Wider stamps are measured block-averaged (module docstring).

    Returns
    -------
    numpy.ndarray (N,) float32
        NaN where no source is found at the centre.
    """
    stamps = np.asarray(stamps, dtype=np.float32)
    if stamps.ndim == 3:
        stamps = stamps[:, None]
    if stamps.ndim != 4:
        raise ValueError(f"stamps must be (N, band, y, x) or (N, y, x), got shape "
                         f"{stamps.shape!r}")
    out = np.full(stamps.shape[0], np.nan, np.float32)
    factor = max(1, math.ceil(max(stamps.shape[-2:]) / max_side))
    for k, stamp in enumerate(stamps):
        finite = np.isfinite(stamp)
        any_finite = finite.any(axis=0)
        if not any_finite.any():
            continue
        image = np.where(finite, stamp, 0.0).sum(axis=0, dtype=np.float32)
        if factor > 1:
            image, any_finite = _block_average(image, any_finite, factor)
        mask = None if any_finite.all() else ~any_finite
        out[k] = factor * _central(image, mask, threshold=threshold, min_area=min_area,
                                   deblend_cont=deblend_cont,
                                   max_offset=max(1.0, max_offset / factor))
    return out
