"""The synthetic camera and site: PSF, observing conditions, sky and noise, FITS headers and WCS.

Shared by the survey (:mod:`pipeline.simulation.survey`) and the pointed
exposures (:mod:`pipeline.simulation.pointed`): a 4 m class telescope in the r
band, a Kolmogorov PSF whose FWHM changes from exposure to exposure (and mildly
across the field), deliberately blurred exposures (bad seeing or defocus), sky
with a gentle gradient, Poisson and read noise, saturation, a celestial TAN WCS
and the header cards every synthetic exposure carries.

Coordinates are 0-based pixels, ``x`` = column, ``y`` = row (``image[y, x]``).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files import atomic_write

__all__ = ["PIXSCALE", "GAIN", "RDNOISE", "SATURATE", "EXPTIME", "FILTER", "CCD_GAP",
           "GSPARAMS_KW", "Psf", "Pointing", "add_truth", "gsparams", "make_psf", "draw_pointing",
           "header_cards", "image_header", "draw_into", "draw_sources", "observe", "write_fits"]

# Camera and site (a 4 m class telescope, r band).
PIXSCALE = 0.263            # arcsec / px
GAIN = 1.5                  # e- / ADU
RDNOISE = 6.0               # e-
SATURATE = 50000.0          # ADU
EXPTIME = 90.0              # s
FILTER = "r"
CCD_GAP = 40                # px between neighbouring CCDs on the focal plane
_FIELD = (150.10, 2.20)     # deg, centre of the sky patch the pointings spread over
_PATCH = 1.0                # deg, side of that patch
_MJD0 = 61100.10            # MJD of the first exposure
#: GalSim accuracy: looser than the defaults (folding 5e-3, maxk 1e-3), far below the
#: noise, and it keeps the FFTs small.
GSPARAMS_KW = {"folding_threshold": 1e-2, "maxk_threshold": 3e-3}


@functools.lru_cache(maxsize=1)
def gsparams() -> Any:
    """The shared ``galsim.GSParams`` of :data:`GSPARAMS_KW`."""
    import galsim

    return galsim.GSParams(**GSPARAMS_KW)


@dataclass
class Psf:
    """The PSF of one exposure: a base profile, its FWHM and its field variation.

    Attributes
    ----------
    base : galsim.GSObject
        The profile at the centre of the focal plane, unit flux.
    fwhm, seeing : float
        Its FWHM and the atmospheric part of it, arcsec.
    kind : str
        ``"seeing"``, ``"bad seeing"`` or ``"defocus"``.
    dilation : float
        Growth of the FWHM at the corner of the focal plane.
    shear : tuple of float
        g1, g2 at the centre, then their gradients along u and v.
    """

    base: Any
    fwhm: float
    seeing: float
    kind: str
    dilation: float
    shear: tuple[float, float, float, float]

    def at(self, u: float, v: float) -> tuple[Any, float]:
        """PSF and its FWHM at focal-plane position (u, v), each in [-1, 1]."""
        scale = 1.0 + self.dilation * (u * u + v * v) / 2.0
        g1 = self.shear[0] + self.shear[2] * u
        g2 = self.shear[1] + self.shear[3] * v
        return self.base.dilate(scale).shear(g1=g1, g2=g2), self.fwhm * scale


def make_psf(rng: np.random.Generator, blurred: bool) -> Psf:
    """Draw the PSF of one exposure: Kolmogorov seeing, or (``blurred``) bad seeing or defocus."""
    import galsim

    seeing = float(rng.uniform(0.6, 1.1))
    dilation = float(rng.uniform(0.02, 0.06))
    shear = tuple(float(v) for v in rng.uniform(-0.02, 0.02, 4))
    kind = "seeing"
    fwhm = seeing
    base = galsim.Kolmogorov(fwhm=seeing, gsparams=gsparams())
    if blurred:
        fwhm = max(seeing * float(rng.uniform(1.9, 2.3)), 1.4)
        if rng.uniform() < 0.5:
            kind = "bad seeing"
            base = galsim.Kolmogorov(fwhm=fwhm, gsparams=gsparams())
        else:  # out of focus: the seeing disc convolved with the pupil's image
            kind = "defocus"
            base = galsim.Convolve(base, galsim.TopHat(radius=0.5 * fwhm), gsparams=gsparams())
            base = base.dilate(fwhm / base.calculateFWHM(scale=PIXSCALE / 8, size=512))
    return Psf(base=base, fwhm=fwhm, seeing=seeing, kind=kind,
               dilation=dilation, shear=shear)  # type: ignore[arg-type]


@dataclass
class Pointing:
    """Where and under which conditions one exposure was taken.

    Attributes
    ----------
    index : int
        Exposure number in the survey.
    blurred : bool
        Whether it was deliberately blurred.
    ra0, dec0 : float
        Pointing, deg.
    rot : float
        Rotation of the camera on the sky, radians.
    psf : Psf
        The exposure's PSF.
    magzp : float
        Zero point: ``mag = magzp - 2.5 log10(ADU)``.
    sky : float
        Mean sky level, ADU / px.
    mjd : float
        MJD at the start of the exposure.
    """

    index: int
    blurred: bool
    ra0: float
    dec0: float
    rot: float
    psf: Psf
    magzp: float
    sky: float
    mjd: float


def draw_pointing(rng: np.random.Generator, index: int, blurred: bool) -> Pointing:
    """Draw the pointing, PSF, transparency and sky of exposure ``index``."""
    dec0 = _FIELD[1] + float(rng.uniform(-0.5, 0.5)) * _PATCH
    ra0 = _FIELD[0] + float(rng.uniform(-0.5, 0.5)) * _PATCH / math.cos(math.radians(dec0))
    rot = math.radians(float(rng.uniform(-2.0, 2.0)))
    psf = make_psf(rng, blurred)
    magzp = 30.0 + float(rng.normal(0.0, 0.05))          # transparency changes a little
    sky_sb = float(rng.uniform(20.6, 21.4))              # mag / arcsec^2
    sky = 10 ** (-0.4 * (sky_sb - magzp)) * PIXSCALE**2  # ADU / px
    return Pointing(index=index, blurred=blurred, ra0=ra0, dec0=dec0, rot=rot, psf=psf,
                    magzp=magzp, sky=sky, mjd=_MJD0 + 0.0012 * index)


# --------------------------------------------------------------------------- FITS headers


def header_cards(pointing: Pointing, *, seed: int,
                 kind: str = "field") -> dict[str, tuple[Any, str]]:
    """The header keys every synthetic exposure carries, as ``{key: (value, comment)}``."""
    from astropy.time import Time

    psf = pointing.psf
    return {
        "PIXSCALE": (PIXSCALE, "[arcsec/px] pixel scale"),
        "PSF_FWHM": (0.0, "[arcsec] true PSF FWHM at the CCD centre"),
        "SEEING": (round(psf.seeing, 4), "[arcsec] atmospheric seeing FWHM"),
        "PSFMODEL": (psf.kind, "PSF: Kolmogorov seeing, bad seeing or defocus"),
        "GAIN": (GAIN, "[e-/ADU] gain"),
        "RDNOISE": (RDNOISE, "[e-] read noise"),
        "SATURATE": (SATURATE, "[ADU] saturation level (pixels clipped)"),
        "SKYLEVEL": (round(pointing.sky, 4), "[ADU/px] mean sky level (not subtracted)"),
        "EXPTIME": (EXPTIME, "[s] exposure time"),
        "MAGZP": (round(pointing.magzp, 4), "[mag] zero point: mag = MAGZP - 2.5 log10(ADU)"),
        "FILTER": (FILTER, "filter"),
        "BLURRED": (pointing.blurred, "deliberately blurred (bad seeing or defocus)"),
        "OBJECT": (f"SYNTH {kind.upper()} {pointing.index:04d}", f"synthetic survey {kind}"),
        "SEED": (seed, "skysieve synth random seed of the survey"),
        "EXPNUM": (pointing.index, "exposure number in the survey"),
        "MJD-OBS": (round(pointing.mjd, 6), "[d] MJD at the start of the exposure"),
        "DATE-OBS": (Time(pointing.mjd, format="mjd", scale="utc").isot, "UTC start"),
        "TELESCOP": ("skysieve-synth", "GalSim rendering of a 4 m class telescope"),
        "INSTRUME": ("skysieve-synth", "synthetic camera"),
        "ORIGIN": ("skysieve synth", "pipeline.simulation.survey"),
    }


def image_header(pointing: Pointing, cards: dict[str, tuple[Any, str]], *,
                 crpix: tuple[float, float], scale: float = PIXSCALE) -> Any:
    """The ``astropy.io.fits.Header`` of one CCD image: unit, TAN WCS, then ``cards``.

    The WCS is celestial TAN, north up, east left, rotated by the pointing's
    ``rot``, with reference pixel ``crpix`` (1-based FITS convention) and
    ``scale`` arcsec per pixel.
    """
    from astropy.io import fits

    header = fits.Header()
    header["BUNIT"] = ("adu", "pixel unit")
    s = scale / 3600.0
    c, n = math.cos(pointing.rot), math.sin(pointing.rot)
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = round(pointing.ra0, 8), round(pointing.dec0, 8)
    header["CRPIX1"], header["CRPIX2"] = crpix
    header["CD1_1"], header["CD1_2"] = -s * c, s * n
    header["CD2_1"], header["CD2_2"] = s * n, s * c
    header["RADESYS"] = "ICRS"
    header["EQUINOX"] = 2000.0
    for key, (value, comment) in cards.items():
        header[key] = (value, comment)
    return header


def write_fits(path: Path, hdus: list[Any]) -> None:
    """Write ``hdus`` as one FITS file at ``path``, atomically (:func:`pipeline.files.atomic_write`)."""
    from astropy.io import fits

    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    atomic_write(path, buffer.getvalue())


# --------------------------------------------------------------------------- drawing


def draw_into(image: np.ndarray, obj: Any, x: float, y: float, half: int,
              scale: float = PIXSCALE) -> float:
    """Add ``obj`` drawn on a (2 half + 1)^2 stamp centred at (x, y) into ``image[y, x]``.

    ``scale`` is the pixel scale (arcsec/px). Returns the stamp's highest pixel
    (0 when the stamp misses the image).
    """
    import galsim

    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    ns = 2 * half + 1
    x0, y0 = ix - half, iy - half                 # stamp corner in the image (0-based)
    ny, nx = image.shape
    xa, xb = max(x0, 0), min(x0 + ns, nx)
    ya, yb = max(y0, 0), min(y0 + ns, ny)
    if xa >= xb or ya >= yb:
        return 0.0
    stamp = galsim.ImageF(ns, ns, scale=scale)
    # The true centre of an odd stamp is its middle pixel: offset is in (x, y) order.
    obj.drawImage(image=stamp, offset=(x - ix, y - iy))
    image[ya:yb, xa:xb] += stamp.array[ya - y0:yb - y0, xa - x0:xb - x0]
    return float(stamp.array.max())


def draw_sources(model: np.ndarray, specs: list[dict[str, Any]], xy: np.ndarray, *,
                 psf: Psf, offset: tuple[float, float], half: tuple[float, float],
                 ) -> dict[str, list[Any]]:
    """Add each source of ``specs`` at ``xy`` (x, y; 0-based) into ``model``; return the truth.

    Parameters
    ----------
    model : ndarray
        Noiseless square CCD image (ADU), updated in place.
    specs : list of dict
        Sources of :mod:`pipeline.simulation.sources` (``class``, ``flux``,
        ``mag``, ``size``, ``extent``, ``profile``).
    xy : ndarray
        Their positions, shape (n, 2).
    psf : Psf
        The exposure's PSF.
    offset, half : tuple of float
        The CCD centre on the focal plane and the focal plane's half-widths, px.

    Returns
    -------
    dict of str to list
        ``x``, ``y``, ``class``, ``flux``, ``mag``, ``size`` and ``psf_fwhm`` per source.
    """
    import galsim

    size = model.shape[0]
    cat: dict[str, list[Any]] = {k: [] for k in (
        "x", "y", "class", "flux", "mag", "size", "psf_fwhm")}
    for spec, (x, y) in zip(specs, xy):
        u = (offset[0] + x - (size - 1) / 2) / half[0]
        v = (offset[1] + y - (size - 1) / 2) / half[1]
        local_psf, fwhm = psf.at(u, v)
        if spec["class"] == "star":
            obj = local_psf.withFlux(spec["flux"])
        else:
            obj = galsim.Convolve(spec["profile"].withFlux(spec["flux"]), local_psf,
                                  gsparams=gsparams())
        fwhm_px = fwhm / PIXSCALE
        half_stamp = int(math.ceil(spec["extent"] / PIXSCALE + 2.5 * fwhm_px)) + 4
        if spec["class"] == "star":
            half_stamp = max(half_stamp, 64 if spec["mag"] < 16 else 14)
        half_stamp = min(max(half_stamp, 12), 127)
        draw_into(model, obj, x, y, half_stamp)
        add_truth(cat, spec, x, y, fwhm)
    return cat


def add_truth(cat: dict[str, list[Any]], spec: dict[str, Any], x: float, y: float,
              psf_fwhm: float) -> None:
    """Append one drawn source's truth row (``x``, ``y``, ``class``, ``flux``, ``mag``,
    ``size``, ``psf_fwhm``) to the column lists of ``cat``."""
    cat["x"].append(float(x))
    cat["y"].append(float(y))
    cat["class"].append(spec["class"])
    cat["flux"].append(float(spec["flux"]))
    cat["mag"].append(float(spec["mag"]))
    cat["size"].append(float(spec["size"]))
    cat["psf_fwhm"].append(float(psf_fwhm))


def observe(rng: np.random.Generator, model: np.ndarray, sky: float) -> np.ndarray:
    """Sky with a gentle gradient, Poisson noise in electrons, read noise, saturation."""
    size = model.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size) - np.float32(0.5)
    gx, gy = rng.uniform(-0.02, 0.02, 2)
    lam = (model + np.float32(sky) * (1 + np.float32(gx) * xx + np.float32(gy) * yy))
    lam = np.clip(lam, 0, None, dtype=np.float64) * GAIN
    electrons = rng.poisson(lam).astype(np.float64) + rng.normal(0.0, RDNOISE, lam.shape)
    return np.minimum(electrons / GAIN, SATURATE).astype(np.float32)
