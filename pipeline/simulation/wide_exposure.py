"""One exposure of the wide domain: its sources, their drawing, the detector response, the file.

:func:`render_exposure` is what a worker of :func:`pipeline.simulation.survey.synthesize`
runs for each exposure when ``domain="wide"``: it draws the exposure's
conditions (:func:`pipeline.simulation.wide.draw_conditions`), samples the
sources in the survey's class mix with sizes relative to the PSF and fluxes
relative to the depth (:func:`wide_sources`), draws them (stars from
pre-rendered PSF stamps, extended sources with GalSim), applies the response
(:mod:`pipeline.simulation.responses`) and writes the FITS file.

Coordinates are 0-based pixels, ``x`` = column, ``y`` = row (``image[y, x]``),
and sky positions come from each CCD's WCS with origin 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.simulation.instrument import (CCD_GAP, Pointing, add_truth, draw_into, gsparams,
                                            image_header)
from pipeline.simulation.responses import (
    jpeg_encode,
    observe_ccd,
    observe_plate,
    plate_density,
    stretch,
    stretch_to_uint8,
)
from pipeline.simulation.sources import BUILDERS, SIZE_MEDIAN, draw_classes, place
from pipeline.simulation.wide import (
    StarStamps,
    WideConditions,
    calibrate,
    draw_conditions,
    make_psfs,
)

__all__ = ["TRUTH_KEYS", "wide_sources", "render_exposure", "wide_cards"]

#: Per-source truth of a wide exposure (the survey's, plus ``saturated``).
TRUTH_KEYS = ("ccd", "x", "y", "ra", "dec", "class", "flux", "mag", "size", "psf_fwhm",
              "saturated")
_SEEING_REF = 1.0            # arcsec: the seeing the survey's size medians are relative to
_RATIO_RANGE = (0.6, 6.0)    # galaxy half-light radius / PSF FWHM
_RATIO_SIGMA = 0.5           # log-normal width of that ratio
_SNR_RANGE = (8.0, 1500.0)   # galaxy signal-to-noise before the depth scale, log-uniform
_STAR_SLOPE = 0.25           # dex of star counts per magnitude
_STAR_FAINT = 1.25           # faintest stars this many mag above MAGLIM (S/N about 16)
# Saturated stars: up to this many magnitudes above MAGSAT, counts falling by this
# many dex per magnitude brighter (plates: more big discs).
_SAT_SPAN = {"ccd": 6.0, "plate": 8.0}
_SAT_SLOPE = {"ccd": 0.3, "plate": 0.2}


def _power_law_mag(rng: np.random.Generator, lo: float, hi: float,
                   dex: float = _STAR_SLOPE) -> float:
    """A magnitude in [lo, hi] with counts rising ``dex`` per magnitude (towards ``hi``)."""
    slope = dex * math.log(10)
    u = rng.uniform()
    return float(lo + math.log1p(u * math.expm1(slope * (hi - lo))) / slope)


def wide_sources(rng: np.random.Generator, n: int, cond: WideConditions,
                 ) -> list[dict[str, Any]]:
    """``n`` sources of exposure ``cond`` in the survey's class mix (like ``sample_sources``).

    Stars: a share ``cond.sat_share`` (at least one) saturate, up to 6 mag (8 on
    a plate) above ``MAGSAT``, fewer the brighter; the rest follow rising counts
    from ``MAGSAT`` to 1.25 mag above ``MAGLIM``. Extended sources: half-light
    radius 0.6-6 times the PSF FWHM (log-normal about each class's survey median
    over 1"), flux from a signal-to-noise log-uniform in 8-1500 times ``DEPTH``.
    """
    classes = draw_classes(rng, n)
    n_stars = int(np.count_nonzero(classes == "star"))
    n_sat = max(1, round(cond.sat_share * n_stars)) if n_stars else 0
    star_k = 0
    specs: list[dict[str, Any]] = []
    for name in (str(c) for c in classes):
        if name == "star":
            if star_k < n_sat:
                span = _SAT_SPAN[cond.detector]
                mag = _power_law_mag(rng, cond.mag_sat - span, cond.mag_sat,
                                     _SAT_SLOPE[cond.detector])
            else:
                mag = _power_law_mag(rng, cond.mag_sat, max(cond.mag_lim - _STAR_FAINT,
                                                            cond.mag_sat + 0.5))
            star_k += 1
            specs.append({"class": "star", "mag": mag, "size": 0.0, "extent": 0.0,
                          "profile": None, "flux": 10 ** (-0.4 * (mag - cond.magzp))})
            continue
        median = SIZE_MEDIAN[name] / _SEEING_REF
        while True:
            ratio = median * math.exp(rng.normal(0.0, _RATIO_SIGMA))
            if _RATIO_RANGE[0] <= ratio <= _RATIO_RANGE[1]:
                break
        radius = ratio * cond.fwhm
        profile, extent = BUILDERS[name](rng, radius)
        snr = cond.depth * math.exp(rng.uniform(*np.log(_SNR_RANGE)))
        hlr_px = radius / cond.pixscale
        n_eff = cond.n_eff + 9.07 * hlr_px**2
        flux = snr * cond.sigma_lin * math.sqrt(n_eff) / cond.gain
        specs.append({"class": name, "mag": float(cond.magzp - 2.5 * math.log10(flux)),
                      "size": float(radius), "extent": float(extent), "profile": profile,
                      "flux": float(flux)})
    return specs


def _draw(model: np.ndarray, specs: list[dict[str, Any]], xy: np.ndarray,
          cond: WideConditions, gal_psf: Any, stars: StarStamps) -> dict[str, list[Any]]:
    """Add the sources into ``model`` (linear units); return their truth (no ra/dec, ccd)."""
    import galsim

    cat: dict[str, list[Any]] = {k: [] for k in TRUTH_KEYS if k not in ("ccd", "ra", "dec")}
    floor = 0.2 * cond.sigma_lin
    for spec, (x, y) in zip(specs, xy):
        flux_lin = spec["flux"] * cond.gain
        if spec["class"] == "star":
            half = stars.reach(flux_lin, floor)
            x, y = stars.add(model, float(x), float(y), flux_lin, half)
            peak = flux_lin * stars.peak
        else:
            obj = galsim.Convolve(spec["profile"].withFlux(flux_lin), gal_psf,
                                  gsparams=gsparams())
            half = int(math.ceil(spec["extent"] / cond.pixscale + 4 * cond.fwhm_px)) + 4
            peak = draw_into(model, obj, float(x), float(y), min(max(half, 12), 127),
                             scale=cond.pixscale)
        add_truth(cat, spec, x, y, cond.fwhm)
        cat["saturated"].append(bool(peak + cond.sky >= cond.sat_lin))
    return cat


def _respond(rng: np.random.Generator, model: np.ndarray, cond: WideConditions,
             ) -> tuple[np.ndarray, dict[str, float]]:
    """The detector response, then the optional JPEG; return the pixels and the header values."""
    size = model.shape[0]
    if cond.detector == "ccd":
        cosmics = int(rng.poisson(cond.cosmic_rate * size * size))
        image = observe_ccd(rng, model, {
            "sky": cond.sky, "gain": cond.gain, "rdnoise": cond.rdnoise,
            "full_well": cond.full_well, "saturate": cond.saturate, "cosmics": cosmics,
            "skysub": cond.skysub})
        sky_out = 0.0 if cond.skysub else cond.sky / cond.gain
        saturate = cond.saturate - (cond.sky / cond.gain if cond.skysub else 0.0)
    else:
        cosmics = 0
        image = observe_plate(rng, model, {"sky": cond.sky, **cond.plate})
        sky_out = float(plate_density(np.array([cond.sky]), cond.plate)[0]) * cond.plate["unit"]
        saturate = cond.saturate
    info = {"skylevel": sky_out, "saturate": saturate, "cosmics": cosmics,
            "black": 0.0, "white": 0.0, "soften": 0.0}
    if not cond.jpeg:
        return image, info
    j = cond.jpeg_params
    sample = image[::4, ::4]
    med = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - med)))
    sigma = max(sigma, 1e-6 * max(abs(med), 1.0))
    black = med + j["black_sigma"] * sigma
    white = min(med + j["white_sigma"] * sigma, saturate)
    if white <= black + sigma:
        white = black + max(j["white_sigma"], 2.0) * sigma
    p = {"stretch": j["stretch"], "black": black, "white": white,
         "soften": j["soften_sigma"] * sigma, "gamma": j["gamma"]}
    image, _ = jpeg_encode(stretch_to_uint8(image, p), j["quality"])
    info.update(black=black, white=white, soften=p["soften"],
                skylevel=255.0 * float(stretch(np.array([sky_out]), p)[0]), saturate=255.0)
    return image, info


def render_exposure(job: Any) -> dict[str, Any]:
    """Render wide exposure ``job`` (all its CCDs), write its FITS file, return its truth.

    ``job`` is the survey's job (``index``, ``stem``, ``out_dir``, ``size``,
    ``ccds``, ``per_ccd``, ``seed``, ``blurred``, ``domain``: ``wide`` or ``preview``);
    ``per_ccd`` is scaled by the exposure's drawn source density.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    from pipeline.simulation.instrument import write_fits

    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(2, job.index)))
    cond = draw_conditions(rng, job.index, job.blurred, preview=job.domain == "preview")
    gal_psf, star_psf, jitter = make_psfs(cond)
    stars = StarStamps(star_psf, cond.pixscale, jitter=jitter)
    calibrate(cond, stars)
    pointing = Pointing(index=job.index, blurred=job.blurred, ra0=cond.ra0, dec0=cond.dec0,
                        rot=cond.rot, psf=None, magzp=cond.magzp, sky=cond.sky,
                        mjd=cond.mjd)  # type: ignore[arg-type]
    size, ccds = job.size, job.ccds
    ncol = math.ceil(math.sqrt(ccds))
    nrow = math.ceil(ccds / ncol)
    pitch = size + CCD_GAP
    half_u, half_v = 0.5 * (ncol * pitch - CCD_GAP), 0.5 * (nrow * pitch - CCD_GAP)
    min_sep = min(max(3.0 * cond.fwhm_px, 6.0), 20.0)

    truth: dict[str, list[Any]] = {k: [] for k in TRUTH_KEYS}
    hdus: list[Any] = []
    cards: dict[str, tuple[Any, str]] = {}
    per_ccd: list[dict[str, float]] = []
    for k in range(ccds):
        col, row = k % ncol, k // ncol
        cu = (col + 0.5) * pitch - 0.5 * CCD_GAP - half_u
        cv = (row + 0.5) * pitch - 0.5 * CCD_GAP - half_v
        n = max(1, round(job.per_ccd[k] * cond.density))
        specs = wide_sources(rng, n, cond)
        xy = place(rng, specs, size, scale=cond.pixscale, min_sep=min_sep)
        model = np.zeros((size, size), dtype=np.float32)
        cat = _draw(model, specs, xy, cond, gal_psf, stars)
        image, info = _respond(rng, model, cond)
        per_ccd.append({"ccd": k + 1 if ccds > 1 else 0, "n_sources": len(specs), **info})
        cards = wide_cards(cond, seed=job.seed, skylevel=info["skylevel"],
                           saturate=info["saturate"], domain=job.domain)
        cards["NSOURCE"] = (len(specs), "sources injected on this CCD")
        cards["NSATSTAR"] = (sum(s and c == "star" for s, c in zip(cat["saturated"],
                                                                   cat["class"])),
                             "saturated stars injected on this CCD")
        cards["NCOSMIC"] = (int(info["cosmics"]), "cosmic-ray hits on this CCD")
        for key, name in (("BLACKPT", "black"), ("WHITEPT", "white"), ("SOFTEN", "soften")):
            cards[key] = (float(np.float32(info[name])), cards[key][1])
        header = image_header(pointing, cards, crpix=((size + 1) / 2 - cu, (size + 1) / 2 - cv),
                              scale=cond.pixscale)
        if ccds > 1:
            header["EXTNAME"] = f"CCD{k + 1}"
            header["CCDNUM"] = (k + 1, "CCD number")
        ra, dec = WCS(header).all_pix2world(cat["x"], cat["y"], 0)
        truth["ccd"] += [k + 1 if ccds > 1 else 0] * len(cat["x"])
        truth["ra"] += list(np.asarray(ra, dtype=float))
        truth["dec"] += list(np.asarray(dec, dtype=float))
        for key in cat:
            truth[key] += list(cat[key])
        hdus.append(fits.PrimaryHDU(image, header) if ccds == 1 else fits.ImageHDU(image, header))
    if ccds > 1:
        primary = fits.Header()
        for key, (value, comment) in cards.items():
            if key not in ("SKYLEVEL", "NSOURCE", "NSATSTAR", "NCOSMIC", "BLACKPT", "WHITEPT",
                           "SOFTEN"):
                primary[key] = (value, comment)
        primary["NCCD"] = (ccds, "CCD image extensions")
        primary["RA"] = (round(cond.ra0, 6), "[deg] pointing")
        primary["DEC"] = (round(cond.dec0, 6), "[deg] pointing")
        hdus.insert(0, fits.PrimaryHDU(header=primary))
    write_fits(Path(job.out_dir) / f"{job.stem}.fits", hdus)
    meta = cond.as_dict()
    meta.update(n_sources=len(truth["x"]), ccd_values=per_ccd,
                n_saturated_stars=int(sum(s and c == "star" for s, c in
                                          zip(truth["saturated"], truth["class"]))))
    return {"stem": job.stem, "blurred": job.blurred, "psf_fwhm": cond.fwhm, "truth": truth,
            "conditions": meta}


def wide_cards(cond: WideConditions, *, seed: int, skylevel: float, saturate: float,
               domain: str = "wide") -> dict[str, tuple[Any, str]]:
    """The header cards of a wide exposure, ``{key: (value, comment)}``.

    The keywords are those of :mod:`pipeline.simulation.wide`; ``domain`` is ``DOMAIN``.
    """
    from astropy.time import Time

    p, j = cond.plate, cond.jpeg_params
    r = round
    return {
        "DOMAIN": (domain, "skysieve synth domain: randomised instrument"),
        "PIXSCALE": (cond.pixscale, "[arcsec/px] pixel scale"),
        "PSF_FWHM": (r(cond.fwhm, 5), "[arcsec] true PSF FWHM"),
        "PSFPIX": (r(cond.fwhm_px, 4), "[px] true PSF FWHM"),
        "SEEING": (r(cond.fwhm, 5), "[arcsec] PSF FWHM"),
        "PSFMODEL": (cond.psf_model, "PSF: moffat, kolmogorov or airy"),
        "PSFBETA": (r(cond.beta, 4), "Moffat beta (0: not Moffat)"),
        "PSFG1": (r(cond.g1, 5), "PSF shear g1"),
        "PSFG2": (r(cond.g2, 5), "PSF shear g2"),
        "PSFOBSC": (r(cond.obscuration, 4), "central obscuration (airy)"),
        "SPIKES": (cond.spikes, "diffraction spikes on stars"),
        "SPIKEANG": (r(cond.spike_angle, 3), "[deg] spider angle"),
        "SPIKEWID": (r(cond.spike_width, 4), "spider strut width / aperture"),
        "HALOFRAC": (r(cond.halo_frac, 4), "share of the light in the aureole"),
        "HALORAD": (r(cond.halo_radius, 3), "[core FWHM] aureole FWHM"),
        "HALOBETA": (r(cond.halo_beta, 4), "aureole Moffat beta"),
        "RESPONSE": (cond.response, "ccd, plate, ccd+jpeg or plate+jpeg"),
        "GAIN": (r(cond.gain, 4), "[e-/ADU] gain (1 for a plate)"),
        "RDNOISE": (r(cond.rdnoise, 4), "[e-] read noise"),
        "FULLWELL": (r(cond.full_well, 1), "[e-] full well (0 for a plate)"),
        "BLEED": (cond.detector == "ccd", "charge above the full well bleeds"),
        "SATURATE": (r(float(saturate), 4), "saturation level (pixels clipped)"),
        "SATLIN": (r(cond.sat_lin, 3), "[linear units] level that saturates"),
        "SKYLEVEL": (r(float(skylevel), 4), "mean sky level as stored"),
        "SKYLIN": (r(cond.sky, 4), "[linear units/px] mean sky"),
        "SKYSUB": (cond.skysub, "mean sky subtracted"),
        "EXPTIME": (r(cond.exptime, 2), "[s] exposure time"),
        "MAGZP": (r(cond.magzp, 4), "[mag] mag = MAGZP - 2.5 log10(ADU)"),
        "MAGLIM": (r(cond.mag_lim, 4), "[mag] 5 sigma point-source limit"),
        "MAGSAT": (r(cond.mag_sat, 4), "[mag] stars brighter saturate"),
        "DEPTH": (r(cond.depth, 4), "galaxy signal-to-noise scale"),
        "DENSITY": (r(cond.density, 4), "source density / the survey's"),
        "NSOURCE": (0, "sources injected"),
        "NSATSTAR": (0, "saturated stars injected"),
        "NCOSMIC": (0, "cosmic-ray hits"),
        "PLCURVE": (p["curve"], "plate curve: exp, logistic (none: CCD)"),
        "PLDMAX": (r(p.get("dmax", 0.0), 4), "plate density range"),
        "PLFOG": (r(p.get("fog", 0.0), 4), "plate fog density"),
        "PLXSAT": (r(p.get("xsat", 0.0), 3), "[linear] plate curve scale"),
        "PLGAMMA": (r(p.get("gamma", 0.0), 4), "plate contrast (logistic)"),
        "PLCLIP": (r(p.get("clip", 0.0), 4), "scanner's highest density"),
        "PLGRAIN": (r(p.get("grain", 0.0), 4), "rms grain density"),
        "PLUNIT": (r(p.get("unit", 0.0), 3), "output units per density"),
        "JPEGQ": (int(j["quality"]), "JPEG quality (0: none)"),
        "STRETCH": (j["stretch"], "asinh, log, power, linear (none)"),
        "BLACKPT": (0.0, "[pre-stretch] black point"),
        "WHITEPT": (0.0, "[pre-stretch] white point"),
        "SOFTEN": (0.0, "[pre-stretch] asinh/log softening"),
        "STRGAMMA": (r(j.get("gamma", 0.0), 4), "power-stretch exponent"),
        "FILTER": (cond.filter, "filter or emulsion"),
        "BLURRED": (cond.blurred, "deliberately blurred (broad PSF)"),
        "OBJECT": (f"SYNTH WIDE {cond.index:04d}", "synthetic wide-domain exposure"),
        "SEED": (seed, "skysieve synth random seed of the survey"),
        "EXPNUM": (cond.index, "exposure number in the survey"),
        "MJD-OBS": (r(cond.mjd, 6), "[d] MJD at the start of the exposure"),
        "DATE-OBS": (Time(cond.mjd, format="mjd", scale="utc").isot, "UTC start"),
        "TELESCOP": ("skysieve-synth-wide", "randomised telescope"),
        "INSTRUME": (f"skysieve-{cond.response}", "randomised detector"),
        "ORIGIN": ("skysieve synth", "pipeline.simulation.wide"),
    }
