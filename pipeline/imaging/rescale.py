"""Resample stamps so that a source looks the same on every instrument: the PSF to a fixed width.

A star on a 0.05"/px space exposure spans 2 px, on a photographic plate 8; a model trained on
one telescope reads that size as a cue.  With an *input scale* recorded in its card
(``{"mode": "psf", "fwhm_px": K}``), each stamp is magnified by ``zoom = K / psf_fwhm``
about its centre before it is stretched (the stamp's ``psf_fwhm``, measured per exposure
or frame from its stars at ingest and import), so the PSF spans ``K`` pixels whatever the
pixel scale and the seeing.  The stamp keeps its size: a shrunk stamp is padded with its
background, a magnified one is cropped to its centre.  ``"min_zoom": m`` (optional, in
``[0.2, 1]``) never shrinks a stamp below ``m``: ``1`` magnifies sharp PSFs to ``K`` and
leaves wider ones as they are (shrinking blurred exposures costs a model their detail).

Training rescales the S/N stamps once (:func:`rescale`, padding 0 = the background);
classify, evaluate and the benchmarks rescale the stamps as stored with
:func:`scale_for_model`, padding with each stamp's background and keeping the background
and noise measured on the original border, so both give the model the same pixels.
Zooms are rounded to a 2% grid (:func:`psf_zoom`) and stamps of one zoom are resampled
together (antialiased bilinear, :func:`torch.nn.functional.interpolate`), so a chunk of a
few exposures costs a few calls.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.imaging.preprocess import background_noise
from pipeline.imaging.psf_shape import round_psf

__all__ = ["INPUT_SCALE_MODES", "validate_input_scale", "psf_zoom", "rescale", "scale_for_model"]

INPUT_SCALE_MODES = ("none", "psf")
_ZOOM_LIMITS = (0.2, 5.0)   # a PSF of 5x..0.2x the target width is brought to it; beyond, clipped
_ZOOM_STEP = 0.02           # zooms are rounded to steps of 2% (log grid)


def validate_input_scale(scale: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check a card's input scale: ``None``/``{"mode": "none"}`` or ``{"mode": "psf", "fwhm_px": K}``
    (optionally with ``"min_zoom": m``, the smallest magnification, in ``[0.2, 1]``).

    Returns
    -------
    dict or None
        ``None`` for no resampling, else a complete copy.

    Raises
    ------
    ValueError
        Unknown mode or key, ``fwhm_px`` not a finite number in ``[1, 16]``, or ``min_zoom``
        not one in ``[0.2, 1]``.
    """
    if scale is None:
        return None
    if not isinstance(scale, Mapping):
        raise ValueError(f"input scale must be a dict like {{'mode': 'psf', 'fwhm_px': 3.0}}, "
                         f"got {scale!r}")
    mode = scale.get("mode", "none")
    if mode not in INPUT_SCALE_MODES:
        raise ValueError(f"unknown input scale mode {mode!r}; choose one of {INPUT_SCALE_MODES}")
    unknown = set(scale) - {"mode", "fwhm_px", "min_zoom"}
    if unknown:
        raise ValueError(f"input scale {dict(scale)!r} has unknown keys {sorted(unknown)!r}")
    if mode == "none":
        return None
    k = scale.get("fwhm_px")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (
            math.isfinite(k) and 1.0 <= k <= 16.0):
        raise ValueError(f"input scale fwhm_px must be a number of pixels in [1, 16], got {k!r}")
    out = {"mode": "psf", "fwhm_px": float(k)}
    if "min_zoom" in scale:
        m = scale["min_zoom"]
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (
                math.isfinite(m) and _ZOOM_LIMITS[0] <= m <= 1.0):
            raise ValueError(f"input scale min_zoom must be a number in [{_ZOOM_LIMITS[0]}, 1] "
                             f"(1: never shrink a stamp), got {m!r}")
        out["min_zoom"] = float(m)
    return out


def psf_zoom(psf_fwhm: np.ndarray, fwhm_px: float, min_zoom: float | None = None) -> np.ndarray:
    """Per-stamp magnification ``fwhm_px / psf_fwhm``, rounded to a 2% log grid.

    Stamps whose ``psf_fwhm`` is unknown (NaN, not > 0) keep zoom 1; zooms are clipped to
    ``[min_zoom, 5]`` (``None``: 0.2; 1: no stamp is shrunk).
    """
    fwhm = np.asarray(psf_fwhm, np.float64)
    zoom = np.ones(fwhm.shape, np.float64)
    ok = np.isfinite(fwhm) & (fwhm > 0)
    raw = np.clip(fwhm_px / fwhm[ok], max(min_zoom or 0.0, _ZOOM_LIMITS[0]), _ZOOM_LIMITS[1])
    step = math.log1p(_ZOOM_STEP)
    zoom[ok] = np.exp(np.round(np.log(raw) / step) * step)
    return zoom.astype(np.float32)


def _fit_centre(x: torch.Tensor, size: int) -> torch.Tensor:
    """Crop or zero-pad ``(N, C, m, m)`` to ``(N, C, size, size)`` about the centre."""
    m = x.shape[-1]
    if m >= size:
        lo = (m - size) // 2
        return x[..., lo:lo + size, lo:lo + size]
    lo = (size - m) // 2
    return F.pad(x, (lo, size - m - lo, lo, size - m - lo))


def rescale(x: torch.Tensor, zoom: np.ndarray | torch.Tensor,
            fill: torch.Tensor | None = None) -> torch.Tensor:
    """Magnify each stamp of ``x`` ``(N, C, H, H)`` by its ``zoom`` about the centre; same shape.

    Antialiased bilinear resampling to ``round(H * zoom)`` pixels, then a centre crop
    (zoom > 1) or padding (zoom < 1) back to ``H``, with ``fill`` ``(N, C)`` (default 0).
    Stamps of zoom 1 are returned as they are; NaN must be replaced before.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rescale needs square stamps (N, C, H, H), got {tuple(x.shape)!r}")
    zoom = np.asarray(zoom.cpu() if isinstance(zoom, torch.Tensor) else zoom, np.float32)
    if zoom.shape != (x.shape[0],):
        raise ValueError(f"rescale: {zoom.shape} zooms for {x.shape[0]} stamps")
    size = x.shape[-1]
    out = x.clone()
    for z in np.unique(zoom):
        m = max(1, int(round(size * float(z))))
        if m == size:
            continue
        idx = torch.as_tensor(np.flatnonzero(zoom == z), device=x.device)
        sub = x.index_select(0, idx)
        level = (fill.index_select(0, idx)[..., None, None] if fill is not None
                 else torch.zeros((), dtype=x.dtype))
        sub = F.interpolate(sub - level, size=(m, m), mode="bilinear", align_corners=False,
                            antialias=m < size)
        out[idx] = _fit_centre(sub, size) + level
    return out


def scale_for_model(images: np.ndarray, scale: Mapping[str, Any] | None,
                    psf_fwhm: np.ndarray | None, background: np.ndarray | None = None,
                    noise: np.ndarray | None = None, *,
                    psf_shape: np.ndarray | None = None) -> tuple[Any, Any, Any]:
    """Stamps as stored, rescaled for a card's ``input_scale``, with the stats to prepare them.

    Parameters
    ----------
    images : numpy.ndarray
        Stamps ``(N, C, H, H)`` as the store holds them (NaN outside the image).
    scale : mapping or None
        The card's ``input_scale`` (:func:`validate_input_scale`); ``None``/empty: no change.
    psf_fwhm : numpy.ndarray or None
        Each stamp's PSF FWHM in its pixels (the store's ``psf_fwhm``; NaN keeps zoom 1).
    background, noise : numpy.ndarray, optional
        The stamps' stored ``stamp_bg``/``stamp_noise``; measured here when absent.
    psf_shape : numpy.ndarray, optional
        ``(N, 2)`` PSF ellipticity of each stamp's frame
        (:func:`pipeline.imaging.psf_shape.stored_psf_shape`): the stamps are first
        resampled so that it is round (:func:`pipeline.imaging.psf_shape.round_psf`).

    Returns
    -------
    (images, background, noise)
        What to pass to :func:`pipeline.imaging.preprocess.prepare`: unchanged when there
        is no scale; else the rescaled stamps (NaN -> background first) and the background
        and noise of the original borders, so the padding maps to 0.
    """
    if psf_shape is not None:
        if background is None or noise is None:
            background, noise = background_noise(images)
        images = round_psf(images, psf_shape, background)
    scale = validate_input_scale(scale or None)
    if scale is None:
        return images, background, noise
    if psf_fwhm is None:
        raise ValueError("this model resamples stamps to its PSF width (card input_scale) and "
                         "needs each stamp's psf_fwhm; the store has none: re-ingest it")
    if background is None or noise is None:
        background, noise = background_noise(images)
    bg = torch.as_tensor(np.asarray(background, np.float32))
    x = torch.as_tensor(np.asarray(images, np.float32))
    x = torch.where(torch.isnan(x), bg[..., None, None].expand_as(x), x)
    x = rescale(x, psf_zoom(psf_fwhm, scale["fwhm_px"], scale.get("min_zoom")), fill=bg)
    return x.numpy(), bg.numpy(), np.asarray(noise, np.float32)
