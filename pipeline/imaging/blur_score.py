"""Blur score: how much wider a source looks than the survey's reference PSF.

Definition
----------
For each stamp, the source's apparent size is measured with **adaptive
Gaussian-weighted second moments** (the weight's width is matched iteratively
to the source, as in HSM / Bernstein & Jarvis 2002) about the stamp centre.
For a Gaussian profile of width ``sigma`` the scheme converges to ``sigma``;
its ``FWHM = 2 sqrt(2 ln 2) sigma``.

``blur_score = apparent FWHM / reference PSF FWHM``, where the reference is the
median PSF FWHM of the store's exposures (estimated from their stars at
ingest). So:

* a point source in typical seeing scores ≈ 1;
* a point source in an exposure with twice the typical seeing scores ≈ 2;
* convolving any source with a Gaussian of width ``s`` adds ``s**2`` to its
  second moments, so the score rises monotonically with added blur;
* resolved galaxies start above 1: compare scores within a class, or use the
  ``psf_fwhm`` column for the exposure's own seeing.

The moments are vectorised over a whole chunk: the weight is separable, so
each iteration is two batched matrix products.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["apparent_fwhm", "blur_score", "SIGMA_TO_FWHM"]

SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAX_SHIFT = 3.0  # px: the centroid may wander this far from the stamp centre


def apparent_fwhm(images: np.ndarray | torch.Tensor, *, iterations: int = 6,
                  initial_sigma: float = 2.0, window: int = 48) -> np.ndarray:
    """Apparent FWHM (pixels) of the source at the centre of each stamp.

    Parameters
    ----------
    images : array (N, C, H, W) or (N, H, W)
        Background-subtracted stamps; NaN (outside the image) counts as 0.
        Bands are summed.
    iterations : int, default: 6
        Adaptive-moment iterations.
    initial_sigma : float, default: 2.0
        Starting weight width in pixels.
    window : int, default: 48
        Side of the central window the moments are measured in (the whole stamp
        if smaller); the matched weight makes pixels beyond it negligible for
        sources with FWHM up to ~15 px, and it halves the cost at 64 px.

    Returns
    -------
    numpy.ndarray (N,) float32
        FWHM in pixels; NaN where the weighted flux is not positive.
    """
    img = torch.as_tensor(images, dtype=torch.float32)
    if img.ndim == 4:
        img = img[:, 0] if img.shape[1] == 1 else img.nan_to_num(0.0).sum(dim=1)
    elif img.ndim != 3:
        raise ValueError(f"images must be (N, C, H, W) or (N, H, W), got shape {tuple(img.shape)!r}")
    h0, w0 = img.shape[1:]
    top, left = max(0, (h0 - window) // 2), max(0, (w0 - window) // 2)
    img = img[:, top:top + min(h0, window), left:left + min(w0, window)].nan_to_num(0.0)
    n, h, w = img.shape
    if n == 0:
        return np.empty(0, np.float32)
    # Pixel offsets from the stamp centre (the pixel the source was rounded to).
    dx = torch.arange(w, dtype=torch.float32) + left - (w0 // 2)
    dy = torch.arange(h, dtype=torch.float32) + top - (h0 // 2)
    max_sigma = min(h, w) / 3.0
    xc = torch.zeros(n)
    yc = torch.zeros(n)
    sigma = torch.full((n,), float(initial_sigma))
    m0 = torch.zeros(n)
    for _ in range(iterations):
        ux = dx[None, :] - xc[:, None]  # (N, W)
        uy = dy[None, :] - yc[:, None]  # (N, H)
        s2 = (2.0 * sigma**2)[:, None]
        wx = torch.exp(-ux**2 / s2)
        wy = torch.exp(-uy**2 / s2)
        px = torch.stack([wx, wx * ux, wx * ux**2], dim=2)          # (N, W, 3)
        py = torch.stack([wy, wy * uy, wy * uy**2], dim=1)          # (N, 3, H)
        # (N, 3, 3): [y-power, x-power]; (py @ img) @ px is ~4x faster than py @ (img @ px)
        q = torch.bmm(torch.bmm(py, img), px)
        m0 = q[:, 0, 0]
        safe = torch.where(m0 > 0, m0, torch.ones_like(m0))
        mx, my = q[:, 0, 1] / safe, q[:, 1, 0] / safe
        mxx = q[:, 0, 2] / safe - mx**2
        myy = q[:, 2, 0] / safe - my**2
        # Matched weight: the weighted variance of a Gaussian is sigma**2 / 2.
        var = (mxx + myy).clamp_min(1e-4)  # = 2 * (sigma**2 / 2) per axis, summed
        sigma = var.sqrt().clamp(0.3, max_sigma)
        xc = (xc + mx).clamp(-_MAX_SHIFT, _MAX_SHIFT)
        yc = (yc + my).clamp(-_MAX_SHIFT, _MAX_SHIFT)
    fwhm = (sigma * SIGMA_TO_FWHM).numpy().astype(np.float32)
    fwhm[(m0 <= 0).numpy()] = np.nan
    return fwhm


def blur_score(images: np.ndarray | torch.Tensor, reference_fwhm: float) -> np.ndarray:
    """Blur score of each stamp: apparent FWHM / ``reference_fwhm`` (see the module docstring).

    Parameters
    ----------
    images : array (N, C, H, W)
        Background-subtracted stamps.
    reference_fwhm : float
        The survey's reference PSF FWHM in pixels (median over the store's exposures).

    Returns
    -------
    numpy.ndarray (N,) float32
    """
    if not (math.isfinite(reference_fwhm) and reference_fwhm > 0):
        raise ValueError(f"reference_fwhm must be a positive number of pixels, got {reference_fwhm!r}")
    return (apparent_fwhm(images) / np.float32(reference_fwhm)).astype(np.float32)
