"""Training augmentation of S/N stamps in torch: flips, shifts, PSF blur, trails, dimming, clipping."""

from __future__ import annotations

import torch

from workers.blur import gaussian_blur, noise_std_factor

__all__ = ["AUGMENTS", "AUGMENT_KW", "augment", "trail_blur"]

AUGMENTS: dict[str, str] = {
    "full": "dihedral8, shift<=2px, blur p=0.3 sigma 0.3-1.5px, dim p=0.5 a>=0.6",
    "geometric": "dihedral8, shift<=2px",
    "robust": "dihedral8, shift<=2px, blur p=0.4 sigma 0.3-4px, dim p=0.5 a>=0.6",
    "photometric": "dihedral8, shift<=2px, dim p=0.6 a>=0.25",
    "clipped": "robust, then clip p=0.4 at 4-15 sigma above and 2-4 sigma below the sky",
    "elongated": "clipped, and a trail p=0.4 (a 1-D Gaussian blur, sigma 0.5-3px, any angle) "
                 "before the clip",
}
"""Training augmentations by name, as a card records them (``training.augment``).

``"full"``: dihedral flips/rotations, shifts up to 2 px, a PSF blur of 30% of
the stamps (sigma 0.3-1.5 px) and a dimming of half of them (to >= 0.6 of the
flux) at fixed noise; ``"geometric"``: the flips and shifts only; ``"robust"``:
``"full"`` with the blur on 40% of the stamps and sigmas up to 4 px, which
covers an added blur of 2 PSF FWHM (sigma ``2 x FWHM / 2.355``) for a PSF of
about 4 px, the range of ``skysieve evaluate --blur-sweep``.  Blur is in
pixels, the same for every PSF.  ``"photometric"``: flips, shifts and a deep
dimming (60% of the stamps, to >= 0.25 of the flux) at fixed noise, never a
blur: for star/galaxy, where blur is what tells the classes apart and a bright
star dimmed must still look like a star (real labelled sets often have bright
stars and faint galaxies, so a model would otherwise learn brightness).
``"clipped"``: ``"robust"``, then 40% of the stamps clipped as an 8-bit stretched
preview clips them: every pixel above a white point 4-15 sigma above the sky is
set to it (flat-topped bright cores), every pixel below a black point 2-4 sigma
under it set to that.  Real cutouts from image services look like this (those of
``star_galaxy`` are clipped about 5.6 sigma above the sky and 2.9 below).
``"elongated"``: ``"clipped"`` with 40% of the stamps also trailed before the clip, a
Gaussian blur along one direction (sigma 0.5-3 px, the angle uniform), as a guiding
error or an astigmatic PSF elongates every source of an exposure: in ``star_galaxy`` the
stars of 7 of 21 frames have a median ellipticity of 0.08-0.19 (``(a^2 - b^2) / (a^2 +
b^2)`` of their moments), and the shipped default found 10-47% of them, against 80-98%
on the frames with round stars.
:data:`AUGMENT_KW` gives each preset's keywords of :func:`augment`.
"""
AUGMENT_KW: dict[str, dict[str, float]] = {
    "full": {}, "geometric": {"p_blur": 0.0, "p_dim": 0.0},
    "robust": {"p_blur": 0.4, "max_blur_sigma": 4.0},
    "photometric": {"p_blur": 0.0, "p_dim": 0.6, "min_dim": 0.25},
    "clipped": {"p_blur": 0.4, "max_blur_sigma": 4.0, "p_clip": 0.4},
    "elongated": {"p_blur": 0.4, "max_blur_sigma": 4.0, "p_clip": 0.4, "p_trail": 0.4},
}
"""Keywords of :func:`augment` for each preset of :data:`AUGMENTS` (``{}``: its defaults)."""


def augment(z: torch.Tensor, gen: torch.Generator, *, max_shift: int = 2, p_blur: float = 0.3,
            max_blur_sigma: float = 1.5, p_dim: float = 0.5, min_dim: float = 0.6,
            p_clip: float = 0.0, white: tuple[float, float] = (4.0, 15.0),
            black: tuple[float, float] = (2.0, 4.0), p_trail: float = 0.0,
            trail: tuple[float, float] = (0.5, 3.0)) -> torch.Tensor:
    """Augment S/N images ``(N, C, y, x)`` (unit noise), keeping unit noise.

    Dihedral flips/rotations (8, or 4 flips when not square), integer shifts up
    to ``max_shift`` px (wrapping, as ``torch.roll``), a Gaussian PSF blur of a
    share ``p_blur`` of the stamps with sigma uniform in ``[0.3, max_blur_sigma]``
    px, white noise added back to unit variance, and a dimming of a share ``p_dim``
    of the source by ``a`` in ``[min_dim, 1]`` at fixed noise (``a z + sqrt(1 - a^2)
    n``: flux scaling plus Gaussian noise), a trail of a share ``p_trail`` (a Gaussian
    blur along one direction, sigma uniform in ``trail`` px, the angle uniform; white
    noise added back), and a clip of a share ``p_clip`` at a white point uniform in
    ``white`` sigmas and a black point uniform in ``black`` sigmas below the sky.
    Deterministic for the state of ``gen``; no draw is made for a share of 0, so the
    presets without a trail draw what they drew before it existed.
    The presets of :data:`AUGMENTS` set these keywords (:data:`AUGMENT_KW`).

    Parameters
    ----------
    z : torch.Tensor
        S/N stamps ``(N, C, y, x)``, float.
    gen : torch.Generator
        The source of every random draw.
    max_shift, p_blur, max_blur_sigma, p_dim, min_dim, p_clip, white, black
        As above.

    Returns
    -------
    torch.Tensor
        The augmented stamps, same shape; ``z`` is left unchanged.
    """
    n, _, h, w = z.shape
    out = torch.empty_like(z)
    k = torch.randint(0, 8 if h == w else 4, (n,), generator=gen)
    for g in range(8):
        sel = torch.nonzero(k == g).reshape(-1)
        if sel.numel() == 0:
            continue
        sub = z.index_select(0, sel)
        if h == w:
            sub = torch.rot90(sub, g % 4, dims=(2, 3))
            if g >= 4:
                sub = sub.flip(3)
        else:
            sub = sub.flip([d for d, bit in ((2, 1), (3, 2)) if g & bit])
        out[sel] = sub
    if max_shift > 0:
        dy = torch.randint(-max_shift, max_shift + 1, (n, 1), generator=gen)
        dx = torch.randint(-max_shift, max_shift + 1, (n, 1), generator=gen)
        iy = (torch.arange(h)[None, :] - dy) % h
        ix = (torch.arange(w)[None, :] - dx) % w
        out = out[torch.arange(n)[:, None, None], :, iy[:, :, None], ix[:, None, :]]
        out = out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put C last
    blur = torch.rand(n, generator=gen) < p_blur
    if bool(blur.any()):
        idx = torch.nonzero(blur).reshape(-1)
        sigma = 0.3 + (max_blur_sigma - 0.3) * torch.rand(idx.numel(), generator=gen)
        sub = gaussian_blur(out.index_select(0, idx), sigma)
        top_up = (1.0 - noise_std_factor(sigma) ** 2).clamp_min(0.0).sqrt()
        sub += top_up[:, None, None, None] * torch.randn(sub.shape, generator=gen)
        out[idx] = sub
    dim = torch.rand(n, generator=gen) < p_dim
    if bool(dim.any()):
        idx = torch.nonzero(dim).reshape(-1)
        a = min_dim + (1.0 - min_dim) * torch.rand(idx.numel(), generator=gen)
        sub = out.index_select(0, idx) * a[:, None, None, None]
        sub += (1.0 - a * a).sqrt()[:, None, None, None] * torch.randn(sub.shape, generator=gen)
        out[idx] = sub
    if p_trail > 0:
        trailed = torch.rand(n, generator=gen) < p_trail
        if bool(trailed.any()):
            idx = torch.nonzero(trailed).reshape(-1)
            u = torch.rand(2, idx.numel(), generator=gen)
            sigma = trail[0] + (trail[1] - trail[0]) * u[0]
            sub, kept = trail_blur(out.index_select(0, idx), sigma, torch.pi * u[1])
            top_up = (1.0 - kept ** 2).clamp_min(0.0).sqrt()
            sub += top_up[:, None, None, None] * torch.randn(sub.shape, generator=gen)
            out[idx] = sub
    clip = torch.rand(n, generator=gen) < p_clip
    if bool(clip.any()):
        idx = torch.nonzero(clip).reshape(-1)
        u = torch.rand(2, idx.numel(), 1, 1, 1, generator=gen)
        hi = white[0] + (white[1] - white[0]) * u[0]
        lo = -(black[0] + (black[1] - black[0]) * u[1])
        out[idx] = torch.minimum(torch.maximum(out.index_select(0, idx), lo), hi)
    return out


def trail_blur(x: torch.Tensor, sigma: torch.Tensor,
               angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur each image along one direction: a 1-D Gaussian of ``sigma`` px at ``angle`` rad.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(N, C, H, W)``, float.
    sigma, angle : torch.Tensor
        ``(N,)`` sigmas (px) along the trail and its angles from the x axis (radians).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The blurred images (reflect padding; ``3 sigma + 1`` below ``H`` and ``W``), and ``(N,)`` the factor each one's white noise
        is scaled by (the kernel's L2 norm), to top the noise back up with.
    """
    n, c, h, w = x.shape
    half = int(torch.ceil(3.0 * sigma.max()).item()) + 1
    r = torch.arange(-half, half + 1, dtype=x.dtype)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    along = xx[None] * cos[:, None, None] + yy[None] * sin[:, None, None]
    across = -xx[None] * sin[:, None, None] + yy[None] * cos[:, None, None]
    # the across-direction width stays below a pixel: a line, sampled without gaps
    kernel = torch.exp(-0.5 * ((along / sigma.to(x.dtype)[:, None, None]) ** 2
                               + (across / 0.5) ** 2))
    kernel = kernel / kernel.sum(dim=(1, 2), keepdim=True)
    weights = kernel.repeat_interleave(c, dim=0)[:, None]  # (N*C, 1, k, k)
    padded = torch.nn.functional.pad(x.reshape(1, n * c, h, w), (half,) * 4, mode="reflect")
    out = torch.nn.functional.conv2d(padded, weights, groups=n * c)
    return out.reshape(n, c, h, w), kernel.pow(2).sum(dim=(1, 2)).sqrt()
