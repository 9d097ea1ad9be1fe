"""The wide domain: each exposure draws its own telescope, camera, detector and sky.

``synthesize(..., domain="wide")`` (``skysieve synth --domain wide``) renders a
training survey by domain randomisation, so that a model trained on it meets
real skies: HST-like to photographic-plate pixel scales, undersampled to broad
PSFs with strong wings or diffraction spikes, CCDs with bleed trails and cosmic
rays, scanned plates whose bright stars are flat discs with halos, and 8-bit
stretched JPEGs. :func:`draw_conditions` draws one exposure's
:class:`WideConditions`; :func:`make_psfs` builds its PSFs and
:class:`StarStamps` its star images; the exposure itself is rendered by
:mod:`pipeline.simulation.wide_exposure` through the responses of
:mod:`pipeline.simulation.responses`.

Header keywords (every wide exposure; the survey's keys keep their meaning):

========  ================================================================
DOMAIN    ``wide``, or ``preview``: the same draw, every exposure a preview JPEG
PIXSCALE  [arcsec/px] pixel scale, log-uniform 0.04-1.7 (the WCS matches)
PSF_FWHM  [arcsec] PSF core FWHM (``SEEING`` the same); PSFPIX the same in px
PSFMODEL  ``moffat``, ``kolmogorov`` or ``airy`` (obscured aperture)
PSFBETA   Moffat beta (0 when not Moffat)
PSFG1/2   PSF shear (ellipticity)
PSFOBSC   central obscuration of the aperture (``airy``; else 0)
SPIKES    diffraction spikes on the stars (4 for ``airy``, else 0)
SPIKEANG  [deg] angle of the spider; SPIKEWID its struts' width / diameter
HALOFRAC  share of the light in the PSF's aureole, a broad Moffat of beta
          HALOBETA and FWHM HALORAD times the core's (truncated at 10 of its FWHM)
RESPONSE  ``ccd``, ``plate``, ``ccd+jpeg`` or ``plate+jpeg``
GAIN      [e-/ADU]; RDNOISE [e-]; FULLWELL [e-] (CCD; 0 for a plate)
BLEED     whether charge above the full well bleeds along columns
SATURATE  [output units] saturation level (pixels clipped there)
SATLIN    [linear units] the level that saturates, before the response
SKYLEVEL  [output units] the sky as stored; SKYLIN [linear units/px]
SKYSUB    whether the mean sky was subtracted
EXPTIME   [s]; MAGZP [mag] zero point of the truth fluxes (linear units)
MAGLIM    [mag] 5 sigma point-source limit; MAGSAT [mag] stars saturate above
DEPTH     scale of the galaxies' signal-to-noise
DENSITY   source density relative to the survey (0.5-2; crowded 2.5-5); NSOURCE,
          NSATSTAR the sources and saturated stars injected on the CCD
NCOSMIC   cosmic-ray hits (CCD exposures only)
PLCURVE   plate curve ``exp`` or ``logistic`` (``none`` for a CCD); PLDMAX,
          PLFOG, PLXSAT [linear], PLGAMMA, PLCLIP (scanner's highest density),
          PLGRAIN (rms grain density), PLUNIT (output units per density)
JPEGQ     JPEG quality (0: no JPEG); STRETCH ``asinh``, ``log``, ``power``,
          ``linear`` (``none``); BLACKPT, WHITEPT, SOFTEN [pre-stretch units],
          STRGAMMA (power stretch)
========  ================================================================

"Linear units" are electrons for a CCD and photons for a plate; the truth
``flux`` is in ADU (electrons / GAIN; GAIN = 1 for a plate), so
``mag = MAGZP - 2.5 log10(flux)`` as in the survey.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.simulation.instrument import gsparams

__all__ = ["PIXSCALE_RANGE", "FWHM_PX_RANGE", "WideConditions", "draw_conditions",
           "make_psfs", "StarStamps", "calibrate"]

#: Pixel scales (arcsec/px): HST-like to photographic plates, log-uniform.
PIXSCALE_RANGE = (0.04, 1.7)
#: PSF FWHM in pixels: undersampled to broad (blurred exposures take the top).
FWHM_PX_RANGE = (1.3, 8.0)
_SHARP_TOP = 4.5             # px: sharp exposures below, blurred ones above
_PLATE_SHARE = 0.75          # share of plates among exposures of >= 0.5 "/px
_SPACE_SHARE = 0.7           # share of space-like exposures among sharp ones of <= 0.15 "/px
_JPEG_SHARE = 0.45
_PREVIEW_SHARE, _PREVIEW_WHITE = 0.45, (4.0, 15.0)  # JPEGs with a survey preview stretch (sky
# noise at tens of the 256 levels, white point 4-15 sigma up) and that white point
_CROWDED_SHARE = 0.2         # exposures with 2.5-5 times the survey's density (else 0.5-2)
_MOFFAT_TRUNC = 15.0         # core Moffat truncated at this many FWHM
_BAND = (0.85, 0.93, 1.0, 1.07, 1.15)   # wavelengths / the central one, for the spikes
_FILTERS = ("u", "g", "r", "i", "z", "B", "V", "R", "I", "F606W", "F814W")
_PLATE_FILTERS = ("IIIaJ", "IIIaF", "IIaO", "IIIaJ+GG395", "IIIaF+RG610")


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass
class WideConditions:
    """The drawn instrument and conditions of one wide exposure (see the module's keywords)."""

    index: int
    blurred: bool
    ra0: float
    dec0: float
    rot: float                 # radians
    mjd: float
    pixscale: float
    fwhm_px: float
    psf_model: str
    beta: float
    g1: float
    g2: float
    obscuration: float
    spikes: int
    spike_angle: float         # deg
    spike_width: float
    jitter: float              # Gaussian jitter sigma, in FWHM (airy)
    halo_frac: float           # share of the light in the aureole
    halo_radius: float         # its FWHM, in core FWHM
    halo_beta: float
    detector: str              # "ccd" or "plate"
    jpeg: bool
    gain: float
    rdnoise: float
    full_well: float
    saturate: float            # output units (before any JPEG)
    sky: float                 # linear units / px
    skysub: bool
    cosmic_rate: float         # hits per px
    exptime: float
    filter: str
    mag_lim: float
    depth: float
    density: float
    sat_share: float           # share of the stars that are saturated
    plate: dict[str, Any]      # curve, fog, dmax, xsat, gamma, clip, grain, grain_px, unit
    jpeg_params: dict[str, Any]  # quality, stretch, black_sigma, white_sigma, soften_sigma, gamma
    # Filled in by calibrate() once the PSF is known:
    magzp: float = 0.0
    mag_sat: float = 0.0
    sat_lin: float = 0.0
    sigma_lin: float = 0.0
    n_eff: float = 0.0

    @property
    def fwhm(self) -> float:
        """PSF FWHM in arcsec."""
        return self.fwhm_px * self.pixscale

    @property
    def response(self) -> str:
        """``ccd``, ``plate``, ``ccd+jpeg`` or ``plate+jpeg``."""
        return self.detector + ("+jpeg" if self.jpeg else "")

    def as_dict(self) -> dict[str, Any]:
        """Every drawn parameter, for the truth table's metadata."""
        out = asdict(self)
        out["fwhm"] = self.fwhm
        out["response"] = self.response
        return out


def draw_conditions(rng: np.random.Generator, index: int, blurred: bool, *,
                    preview: bool = False) -> WideConditions:
    """Draw the instrument, detector, sky and source mix of wide exposure ``index``.

    ``blurred``: a PSF core above 4.5 px. ``preview``: every exposure an 8-bit preview JPEG
    (the ``preview`` domain; otherwise 45% JPEGs, 45% of those previews, drawn as before).
    """
    pixscale = float(f"{_loguniform(rng, *PIXSCALE_RANGE):.6g}")   # as the header has it
    plate = pixscale >= 0.5 and rng.uniform() < _PLATE_SHARE
    space = (not plate and not blurred and pixscale <= 0.15 and rng.uniform() < _SPACE_SHARE)
    jpeg = bool(rng.uniform() < _JPEG_SHARE) or preview
    if space:
        fwhm_px = _loguniform(rng, FWHM_PX_RANGE[0], 3.0)
    elif blurred:
        fwhm_px = _loguniform(rng, _SHARP_TOP, FWHM_PX_RANGE[1])
    else:
        fwhm_px = _loguniform(rng, FWHM_PX_RANGE[0], _SHARP_TOP)
    if space:
        psf_model = "airy"
    else:
        psf_model = "moffat" if rng.uniform() < (0.8 if plate else 0.6) else "kolmogorov"
    beta = 0.0
    if psf_model == "moffat":
        beta = float(rng.uniform(2.5, 4.5)) if plate else 1.8 + 3.2 * float(rng.uniform()) ** 1.3
    g1, g2 = (float(v) for v in np.clip(rng.normal(0.0, 0.03, 2), -0.08, 0.08))
    obscuration = float(rng.uniform(0.1, 0.45)) if space else 0.0
    spikes = 4 if space else 0
    spike_angle = float(rng.uniform(0, 90)) if space else 0.0
    spike_width = float(rng.uniform(0.015, 0.05)) if space else 0.0
    jitter = float(rng.uniform(0.05, 0.3)) if space else 0.0
    if plate:   # photographic aureole: what makes bright stars big discs
        halo = (float(rng.uniform(0.1, 0.3)), float(rng.uniform(1.5, 3.5)),
                float(rng.uniform(1.3, 1.8)))
    elif space:
        halo = (0.0, 0.0, 0.0)
    else:       # scattered light in the optics
        halo = (float(rng.uniform(0.0, 0.05)), float(rng.uniform(2.0, 5.0)),
                float(rng.uniform(1.5, 2.5)))

    plate_p: dict[str, Any] = {"curve": "none"}
    jpeg_p: dict[str, Any] = {"quality": 0, "stretch": "none"}
    if plate:
        sky = _loguniform(rng, 1000, 10000)
        gain, rdnoise, full_well = 1.0, 0.0, 0.0
        skysub, cosmic_rate = False, 0.0
        curve = "exp" if rng.uniform() < 0.5 else "logistic"
        fog, dmax = float(rng.uniform(0.05, 0.35)), float(rng.uniform(2.5, 4.5))
        if curve == "exp":
            xsat, gamma = sky / float(rng.uniform(0.2, 0.7)), 0.0
        else:
            xsat, gamma = sky / float(rng.uniform(0.4, 1.0)), float(rng.uniform(1.2, 2.5))
        plate_p = {"curve": curve, "fog": fog, "dmax": dmax, "xsat": xsat, "gamma": gamma,
                   "clip": fog + dmax * float(rng.uniform(0.85, 0.97)),
                   "grain": float(rng.uniform(0.01, 0.05)),
                   "grain_px": float(rng.uniform(0.5, 1.2)),
                   "unit": float(rng.uniform(3000, 8000))}
        saturate = plate_p["clip"] * plate_p["unit"]
        exptime = _loguniform(rng, 600, 5400)
        band = str(rng.choice(_PLATE_FILTERS))
        mag_lim = float(rng.uniform(19.0, 22.0))
    else:
        if space:
            gain, rdnoise = float(rng.uniform(1.0, 2.5)), float(rng.uniform(2.5, 5.0))
            sky = _loguniform(rng, 2, 100)
            cosmic_rate = _loguniform(rng, 5e-5, 5e-4)
            mag_lim = float(rng.uniform(24.0, 28.5))
        else:
            gain, rdnoise = float(rng.uniform(0.8, 4.0)), float(rng.uniform(2.0, 10.0))
            sky = _loguniform(rng, 3, 5000)
            cosmic_rate = _loguniform(rng, 1e-5, 2e-4)
            mag_lim = float(rng.uniform(20.0, 25.5))
        full_well = _loguniform(rng, 3e4, 2.5e5)
        saturate = min(full_well / gain, 65535.0)
        skysub = bool(rng.uniform() < (0.5 if space else 0.25))
        exptime = _loguniform(rng, 10, 3600)
        band = str(rng.choice(_FILTERS))
    if jpeg and (rng.uniform() < _PREVIEW_SHARE or preview):  # bright cores clipped flat
        jpeg_p = {"quality": int(rng.integers(70, 101)),
                  "stretch": str(rng.choice(["linear", "power", "asinh"], p=[0.5, 0.3, 0.2])),
                  "black_sigma": float(rng.uniform(-4.0, -1.0)),
                  "white_sigma": float(rng.uniform(*_PREVIEW_WHITE)),
                  "soften_sigma": _loguniform(rng, 3, 30), "gamma": float(rng.uniform(0.6, 1.0))}
    elif jpeg:
        jpeg_p = {"quality": int(rng.integers(40, 96)),
                  "stretch": str(rng.choice(["asinh", "log", "power", "linear"],
                                            p=[0.45, 0.25, 0.2, 0.1])),
                  "black_sigma": float(rng.uniform(-3.0, 1.0)),
                  "white_sigma": _loguniform(rng, 20, 3000),
                  "soften_sigma": _loguniform(rng, 0.5, 30),
                  "gamma": float(rng.uniform(0.3, 0.8))}
    dec0 = math.degrees(math.asin(float(rng.uniform(-0.98, 0.98))))
    return WideConditions(
        index=index, blurred=blurred, ra0=float(rng.uniform(0, 360)), dec0=dec0,
        rot=math.radians(float(rng.uniform(0, 360))),
        mjd=float(rng.uniform(37000, 51000) if plate else rng.uniform(45000, 61000)),
        pixscale=pixscale, fwhm_px=fwhm_px, psf_model=psf_model, beta=beta, g1=g1, g2=g2,
        obscuration=obscuration, spikes=spikes, spike_angle=spike_angle,
        spike_width=spike_width, jitter=jitter, halo_frac=halo[0], halo_radius=halo[1],
        halo_beta=halo[2],
        detector="plate" if plate else "ccd", jpeg=jpeg, gain=gain, rdnoise=rdnoise,
        full_well=full_well, saturate=saturate, sky=sky, skysub=skysub,
        cosmic_rate=cosmic_rate, exptime=exptime, filter=band, mag_lim=mag_lim,
        depth=_loguniform(rng, 0.5, 2.0),
        density=(_loguniform(rng, 2.5, 5.0) if rng.uniform() < _CROWDED_SHARE
                 else _loguniform(rng, 0.5, 2.0)),
        sat_share=float(rng.uniform(0.04, 0.12)), plate=plate_p, jpeg_params=jpeg_p)


# --------------------------------------------------------------------------- PSF


def make_psfs(cond: WideConditions) -> tuple[Any, Any, float]:
    """The exposure's PSFs (GalSim, unit flux, core FWHM ``cond.fwhm``): galaxies', stars', jitter.

    Both are the core (Moffat, Kolmogorov or an obscured Airy disc convolved
    with Gaussian jitter) plus the aureole (a truncated Moffat). For ``airy``
    the stars' core is ``galsim.OpticalPSF`` with the diffraction spikes of a
    4-strut spider (negligible on galaxies) and without the jitter:
    :class:`StarStamps` applies the returned jitter (sigma, arcsec) itself, so
    the stars' profile stays analytic in real space.
    """
    import galsim

    gsp = gsparams()
    fwhm = cond.fwhm
    jitter = 0.0
    if cond.psf_model == "moffat":
        # Truncated far out (no visible edge): GalSim then tabulates its Fourier
        # transform, about 20 times faster to draw than the Bessel function.
        core = galsim.Moffat(beta=cond.beta, fwhm=fwhm, trunc=_MOFFAT_TRUNC * fwhm, gsparams=gsp)
        star = core
    elif cond.psf_model == "kolmogorov":
        core = galsim.Kolmogorov(fwhm=fwhm, gsparams=gsp)
        star = core
    else:
        # In units of lambda/D, then scaled so the jittered Airy core has the FWHM.
        jit = galsim.Gaussian(sigma=cond.jitter, gsparams=gsp)
        airy = galsim.Convolve(galsim.Airy(lam_over_diam=1.0, obscuration=cond.obscuration,
                                           gsparams=gsp), jit, gsparams=gsp)
        factor = fwhm / airy.calculateFWHM(scale=0.05, size=256)
        core = airy.dilate(factor)
        optical = galsim.OpticalPSF(lam_over_diam=factor, obscuration=cond.obscuration,
                                    nstruts=cond.spikes, strut_thick=cond.spike_width,
                                    strut_angle=cond.spike_angle * galsim.degrees,
                                    pad_factor=2.0, oversampling=1.5, gsparams=gsp)
        # A broad band: the rings blur beyond the first few, the spikes stretch.
        star = galsim.Sum([optical.dilate(f).withFlux(0.2) for f in _BAND], gsparams=gsp)
        jitter = cond.jitter * factor
    if cond.halo_frac > 0:
        wide_fwhm = cond.halo_radius * fwhm
        halo = galsim.Moffat(beta=cond.halo_beta, fwhm=wide_fwhm, trunc=10 * wide_fwhm,
                             gsparams=gsp).withFlux(cond.halo_frac)
        core = galsim.Sum([core.withFlux(1 - cond.halo_frac), halo], gsparams=gsp)
        star = galsim.Sum([star.withFlux(1 - cond.halo_frac), halo], gsparams=gsp)
    shear = {"g1": cond.g1, "g2": cond.g2}
    return core.shear(**shear), star.shear(**shear), jitter


class StarStamps:
    """Pixelised images of the stars' PSF at 4x4 sub-pixel offsets, to add stars cheaply.

    Drawn once per exposure in real space, 4x oversampled; each pixel is the
    sum of its 4x4 samples (the pixel response), a quarter-pixel shift is a
    shift by one sample. A taper over the outer quarter ends the brightest
    stars smoothly. :meth:`add` places a star at the nearest quarter-pixel
    position and returns it, so the truth is exact.

    Parameters
    ----------
    psf : galsim.GSObject
        The stars' PSF (unit flux, arcsec), analytic in real space.
    scale : float
        Pixel scale, arcsec/px.
    jitter : float, default: 0
        Gaussian blur (sigma, arcsec) applied to the oversampled image.
    half : int, default: 127
        Half-side of the largest stamp, px.
    """

    OS = 4

    def __init__(self, psf: Any, scale: float, jitter: float = 0.0, half: int = 127) -> None:
        import galsim

        os_ = self.OS
        n = 2 * half + 1
        big_n = os_ * n + os_                      # even: sample m at (m - big_n/2 + 1/2) / 4 px
        big = galsim.ImageF(big_n, big_n, scale=scale / os_)
        psf.drawImage(image=big, method="no_pixel")
        arr = big.array.astype(np.float64)
        if jitter > 0:
            from scipy.ndimage import gaussian_filter

            arr = gaussian_filter(arr, jitter / (scale / os_), mode="constant")
        # Sums of os x os samples starting at every sample: pixel fluxes at every offset.
        c = np.zeros((big_n + 1, big_n + 1))
        c[1:, 1:] = arr.cumsum(0).cumsum(1)
        box = c[os_:, os_:] - c[:-os_, os_:] - c[os_:, :-os_] + c[:-os_, :-os_]
        r = np.hypot(*np.mgrid[-half:half + 1, -half:half + 1])
        taper = np.clip((half - r) / (0.25 * half), 0.0, 1.0)
        taper = 0.5 - 0.5 * np.cos(np.pi * taper)
        self.half = half
        self.stamps = np.empty((os_, os_, n, n), dtype=np.float32)
        # For a star at sub-pixel offset (k - 2) / 4, pixel i (-half..half) holds the
        # samples from 4 i - k + big_n / 2 = 4 (i + half) + 4 - k on.
        for ky in range(os_):
            for kx in range(os_):
                ys, xs = os_ - ky, os_ - kx
                self.stamps[ky, kx] = box[ys:ys + os_ * (n - 1) + 1:os_,
                                          xs:xs + os_ * (n - 1) + 1:os_] * taper
        flat = self.stamps.reshape(os_ * os_, n, n)
        self.peak = float(flat.max(axis=(1, 2)).mean())
        self.n_eff = float(np.mean(1.0 / (flat.astype(np.float64) ** 2).sum(axis=(1, 2))))
        # Highest pixel at Chebyshev radius >= r, for the stamp size of a star.
        cheb = np.maximum(*np.abs(np.mgrid[-half:half + 1, -half:half + 1]))
        ring = np.zeros(half + 2)
        np.maximum.at(ring, cheb.ravel(), flat.max(axis=0).ravel())
        self.outer = np.maximum.accumulate(ring[::-1])[::-1]

    def reach(self, flux: float, floor: float) -> int:
        """Half-side (px) beyond which ``flux`` times the PSF stays below ``floor``."""
        r = int(np.argmax(self.outer * flux < floor))
        return int(min(max(r + 2, 6), self.half))

    def add(self, image: np.ndarray, x: float, y: float, flux: float, half: int,
            ) -> tuple[float, float]:
        """Add a star of ``flux`` near (x, y) into ``image``; return its exact position."""
        os_ = self.OS
        ix, kx = self._snap(x)
        iy, ky = self._snap(y)
        h0 = self.half
        x0, y0 = ix - half, iy - half
        ny, nx = image.shape
        xa, xb = max(x0, 0), min(x0 + 2 * half + 1, nx)
        ya, yb = max(y0, 0), min(y0 + 2 * half + 1, ny)
        if xa < xb and ya < yb:
            stamp = self.stamps[ky, kx]
            image[ya:yb, xa:xb] += np.float32(flux) * stamp[
                h0 - half + ya - y0:h0 - half + yb - y0, h0 - half + xa - x0:h0 - half + xb - x0]
        return ix + (kx - 2) / os_, iy + (ky - 2) / os_

    def _snap(self, v: float) -> tuple[int, int]:
        """Pixel and sub-pixel index k (offset (k - 2) / 4) nearest to coordinate ``v``."""
        i = int(math.floor(v + 0.5))
        k = int(round((v - i) * self.OS)) + 2
        if k >= self.OS:
            i, k = i + 1, k - self.OS
        return i, k


# --------------------------------------------------------------------------- calibration


def calibrate(cond: WideConditions, stars: StarStamps) -> None:
    """Set the zero point, noise, saturation level and saturation magnitude from the PSF."""
    from pipeline.simulation.responses import plate_density

    if cond.detector == "ccd":
        sigma = math.sqrt(cond.sky + cond.rdnoise**2)
        sat_lin = min(cond.full_well, cond.saturate * cond.gain)
    else:
        p = cond.plate
        d_sky = float(plate_density(np.array([cond.sky]), p)[0])
        eps = 1e-3 * cond.sky
        slope = (float(plate_density(np.array([cond.sky + eps]), p)[0]) - d_sky) / eps
        grain = p["grain"] * math.sqrt(max(d_sky / (p["fog"] + p["dmax"]), 0.05))
        sigma = math.hypot(math.sqrt(cond.sky), grain / max(slope, 1e-12))
        c = (p["clip"] - p["fog"]) / p["dmax"]
        if p["curve"] == "exp":
            sat_lin = -p["xsat"] * math.log1p(-c)
        else:
            sat_lin = p["xsat"] * (c / (1 - c)) ** (1 / p["gamma"])
    f_lim = 5.0 * sigma * math.sqrt(stars.n_eff) / cond.gain          # ADU
    cond.sigma_lin = sigma
    cond.n_eff = stars.n_eff
    cond.sat_lin = sat_lin
    cond.magzp = cond.mag_lim + 2.5 * math.log10(f_lim)
    f_sat = max(sat_lin - cond.sky, 1.0) / stars.peak / cond.gain
    cond.mag_sat = cond.magzp - 2.5 * math.log10(f_sat)
