"""Gaussian blur kernels in torch, for augmentation, the blur-robustness sweep and blur-score tests.

The blur is separable (a 1-D kernel along ``x`` then along ``y``), supports one
sigma per sample, and pads by **reflection** (``torch.nn.functional.pad(mode=
"reflect")``), so a constant image stays constant and no flux is lost at the
edges.  Sigmas are in pixels; ``sigma == 0`` leaves an image unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FWHM_PER_SIGMA", "fwhm_to_sigma", "sigma_to_fwhm", "gaussian_kernel1d",
           "gaussian_blur", "noise_std_factor"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM of a Gaussian in units of its sigma (~2.3548)."""


def fwhm_to_sigma(fwhm: float | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:
    """Return the Gaussian sigma of a full width at half maximum (same units, same type)."""
    return fwhm / FWHM_PER_SIGMA


def sigma_to_fwhm(sigma: float | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:
    """Return the full width at half maximum of a Gaussian sigma (same units, same type)."""
    return sigma * FWHM_PER_SIGMA


def _check_sigma(sigma: torch.Tensor) -> None:
    if not bool(torch.isfinite(sigma).all()) or bool((sigma < 0).any()):
        bad = sigma[~torch.isfinite(sigma) | (sigma < 0)][:5].tolist()
        raise ValueError(f"gaussian blur sigma must be finite and >= 0 (pixels), got {bad!r}")


def _radius(sigma_max: float, truncate: float) -> int:
    return int(truncate * sigma_max + 0.5)


def _kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D kernels ``(N, 2 * radius + 1)`` for sigmas ``(N,)`` (float64)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=sigma.device)
    s = sigma.to(torch.float64).clamp_min(1e-6)[:, None]  # sigma 0 -> a delta (exp(-1/tiny) = 0)
    k = torch.exp(-0.5 * (offsets[None, :] / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0) -> torch.Tensor:
    """Return a normalised 1-D Gaussian kernel of ``2 * int(truncate * sigma + 0.5) + 1`` taps.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels (>= 0; 0 gives ``[1.0]``).
    truncate : float, default: 4.0
        Half-width in sigmas, as in ``scipy.ndimage.gaussian_filter``.

    Returns
    -------
    torch.Tensor
        float32, sums to 1.
    """
    s = torch.as_tensor([float(sigma)], dtype=torch.float64)
    _check_sigma(s)
    return _kernels(s, _radius(float(sigma), truncate))[0].to(torch.float32)


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor, *,
                  truncate: float = 4.0) -> torch.Tensor:
    """Blur images with a Gaussian, separably, with reflect padding.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(N, C, H, W)`` laid out ``(N, C, y, x)``, floating point.
    sigma : float or torch.Tensor
        Sigma in pixels, one for all images or one per image ``(N,)``; 0 is the identity.
    truncate : float, default: 4.0
        Kernel half-width in sigmas of the largest sigma.  Reflect padding needs the
        half-width to be below ``H`` and ``W``: a wider kernel is cut there and renormalised.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``x``.
    """
    if x.ndim != 4:
        raise ValueError(f"gaussian_blur expects (N, C, H, W) images, got shape {tuple(x.shape)!r}")
    if not x.is_floating_point():
        raise ValueError(f"gaussian_blur expects floating-point images, got {x.dtype}")
    n, c, h, w = x.shape
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(n)
    elif s.numel() != n:
        raise ValueError(f"gaussian_blur: {s.numel()} sigmas for {n} images; "
                         "give one sigma or one per image")
    _check_sigma(s)
    if n == 0 or not bool((s > 0).any()):
        return x.clone()
    radius = min(_radius(float(s.max()), truncate), h - 1, w - 1)
    if radius == 0:
        return x.clone()
    k = _kernels(s, radius).to(x.dtype)  # (N, K)
    weight = k.repeat_interleave(c, dim=0)[:, None, None, :]  # (N*C, 1, 1, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), weight, groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"),
                 weight.transpose(2, 3), groups=n * c)
    return y.reshape(n, c, h, w)


def noise_std_factor(sigma: float | torch.Tensor, *, truncate: float = 4.0) -> torch.Tensor:
    """Return the factor by which :func:`gaussian_blur` shrinks the std of white noise.

    For a separable kernel ``k`` it is ``sum(k**2)`` (the 2-D kernel's ``sqrt(sum k2d**2)``),
    ignoring the edges.  Adding Gaussian noise of std ``sqrt(1 - f**2)`` after the blur
    restores unit noise.

    Parameters
    ----------
    sigma : float or torch.Tensor
        Sigma(s) in pixels.

    Returns
    -------
    torch.Tensor
        float32, same shape as ``sigma`` (0-d for a float); 1 where sigma is 0.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64)
    flat = s.reshape(-1)
    _check_sigma(flat)
    if flat.numel() == 0:
        return torch.zeros_like(s, dtype=torch.float32)
    k = _kernels(flat, _radius(float(flat.max()), truncate))
    return (k ** 2).sum(dim=1).reshape(s.shape).to(torch.float32)
