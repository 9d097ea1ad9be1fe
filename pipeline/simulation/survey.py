"""The synthetic survey: GalSim-rendered FITS exposures with a known truth table.

``skysieve synth`` (and ``skysieve demo``) render a small single-band imaging
survey that looks like real data: a celestial TAN WCS per CCD, a Kolmogorov PSF
whose FWHM changes from exposure to exposure (and mildly across the field),
sky, Poisson and read noise, saturated stars, and six classes of source with
overlapping sizes and magnitudes (:data:`CLASSES`). Every injected source is a
row of ``truth.parquet``.

``skysieve synth --pointed`` (:func:`synthesize_pointed`) renders pointed
exposures instead, for whole-exposure classification: each is centred on one
large target, a galaxy or a nebula/star cluster, among field stars and
background galaxies, and ``truth.parquet`` has one row per exposure.

Coordinates are 0-based pixels, ``x`` = column, ``y`` = row (``image[y, x]``),
and sky positions come from each CCD's WCS with origin 0.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import SkysieveError, SynthError

__all__ = ["CLASSES", "TARGET_CLASSES", "TARGET_MORPHOLOGIES", "PointedSummary", "SynthError",
           "SynthSummary", "synthesize", "synthesize_pointed"]

#: The source classes of the synthetic survey, in the order of the model outputs.
CLASSES: tuple[str, ...] = ("star", "elliptical", "lenticular", "spiral", "irregular",
                            "nebula_cluster")


# Share of each class among the injected sources (stars common, not overwhelming).
_CLASS_MIX = {"star": 0.30, "elliptical": 0.14, "lenticular": 0.14, "spiral": 0.14,
              "irregular": 0.14, "nebula_cluster": 0.14}
# Median and clip range of the intrinsic half-light radius (arcsec) of each
# extended class: the ranges overlap on purpose (size alone gives the class away
# for none of them).
_SIZE_MEDIAN = {"elliptical": 1.05, "lenticular": 1.25, "spiral": 1.7, "irregular": 1.3,
                "nebula_cluster": 1.5}
_SIZE_SIGMA = 0.38          # log-normal width of the radius distribution
_SIZE_RANGE = (0.6, 3.6)    # arcsec; 2.3-13.7 px

# Camera and site (a 4 m class telescope, r band).
_PIXSCALE = 0.263           # arcsec / px
_GAIN = 1.5                 # e- / ADU
_RDNOISE = 6.0              # e-
_SATURATE = 50000.0         # ADU
_EXPTIME = 90.0             # s
_FILTER = "r"
_FIELD = (150.10, 2.20)     # deg, centre of the sky patch the pointings spread over
_PATCH = 1.0                # deg, side of that patch
_CCD_GAP = 40               # px between neighbouring CCDs on the focal plane

_DENSITY = 1000 / 2048**2   # sources per px^2 when `sources` is None
_MIN_SEP = 20.0             # px between sources, except deliberate close pairs
_EDGE = 8.0                 # px: sources stay this far inside the edges...
_EDGE_FRACTION = 0.01       # ...except this share of deliberate edge cases
_PAIR_FRACTION = 0.04       # share of sources placed as a close pair with another
_SERSIC_TRUNC = 6.0         # Sersic profiles truncated at this many half-light radii
_MJD0 = 61100.10            # MJD of the first exposure
# GalSim accuracy: looser than the defaults (folding 5e-3, maxk 1e-3), far below the
# noise, and it keeps the FFTs small.
_GSPARAMS_KW = {"folding_threshold": 1e-2, "maxk_threshold": 3e-3}


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote.

    Attributes
    ----------
    files : list of Path
        The FITS exposures, ``exp_0000.fits``, ...
    truth : Path
        The truth table, ``truth.parquet``.
    n_sources : int
        Sources injected over all exposures (rows of the truth table).
    seconds : float
        Wall time of the render.
    size, ccds, seed : int
        CCD side in pixels, CCDs per exposure and the seed.
    class_counts : dict of str to int
        Sources of each class in :data:`CLASSES`.
    psf_fwhm : list of float
        PSF FWHM (arcsec) at the centre of each exposure.
    blurred : list of bool
        Whether each exposure was deliberately blurred.
    """

    files: list[Path]
    truth: Path
    n_sources: int
    seconds: float
    size: int = 0
    ccds: int = 1
    seed: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    psf_fwhm: list[float] = field(default_factory=list)
    blurred: list[bool] = field(default_factory=list)

    def describe(self) -> str:
        """Return a few human-readable lines about the survey."""
        out_dir = self.truth.parent
        ccd = f"{self.ccds} CCDs" if self.ccds > 1 else "1 CCD"
        n_exp = len(self.files)
        lines = [f"synthetic survey (seed {self.seed}): {n_exp} exposure{'s' * (n_exp != 1)} "
                 f"x {ccd} "
                 f"of {self.size}x{self.size} px at {_PIXSCALE}\"/px in {out_dir}"]
        counts = ", ".join(f"{name} {self.class_counts.get(name, 0):,}" for name in CLASSES)
        lines.append(f"  {self.n_sources:,} sources: {counts}")
        sharp = [f for f, b in zip(self.psf_fwhm, self.blurred) if not b]
        blurred = [f for f, b in zip(self.psf_fwhm, self.blurred) if b]
        if sharp:
            lines.append(f"  {len(sharp)} sharp: PSF FWHM {min(sharp):.2f}-{max(sharp):.2f}\"")
        if blurred:
            lines.append(f"  {len(blurred)} blurred: PSF FWHM "
                         f"{min(blurred):.2f}-{max(blurred):.2f}\"")
        lines.append(f"  truth: {self.truth} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def synthesize(out_dir: Path, *, exposures: int = 4, size: int = 2048,
               sources: int | None = None, ccds: int = 1, seed: int = 0,
               blurred_fraction: float = 0.25, processes: int | None = None,
               ) -> SynthSummary:
    """Render a synthetic survey of FITS exposures and its truth table into ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Folder to write ``exp_0000.fits``, ... and ``truth.parquet`` into; created
        if missing. Stale ``exp_NNNN.fits`` files of an earlier, larger run there
        are removed so the folder matches the truth table.
    exposures : int, default: 4
        Number of exposures (pointings), at least 1.
    size : int, default: 2048
        Side of each CCD in pixels, 128 to 16384.
    sources : int or None, default: None
        Sources per exposure, split over its CCDs. ``None``: about 1,000 per
        2048x2048 CCD, scaled with the area.
    ccds : int, default: 1
        CCDs per exposure. With 1 the image is the primary HDU; with more, an
        empty primary HDU is followed by image extensions ``CCD1``, ``CCD2``, ...
        tiled on the sky, each with its own WCS.
    seed : int, default: 0
        Random seed; the same seed gives byte-identical pixels and truth.
    blurred_fraction : float, default: 0.25
        Share of exposures deliberately blurred (bad seeing or defocus; PSF FWHM
        about twice the seeing and at least 1.4 arcsec). Rounded to whole exposures.
    processes : int or None, default: None
        Worker processes rendering exposures in parallel; ``None`` picks from the
        cores and the work (1 for small surveys). The output does not depend on it.

    Returns
    -------
    SynthSummary
        The files written, the number of sources and the time it took.

    Notes
    -----
    The truth table has one row per injected source: ``id`` (int64), ``exposure``
    (file stem), ``ccd`` (HDU index of the CCD image: 0 for a primary-HDU image),
    ``x``, ``y`` (0-based centroid, x = column, y = row), ``ra``, ``dec`` (deg,
    that CCD's WCS with origin 0), ``class``, ``flux`` (ADU), ``mag`` (AB-like,
    ``MAGZP - 2.5 log10 flux``), ``size`` (intrinsic half-light radius, arcsec;
    0 for stars), ``psf_fwhm`` (arcsec, the PSF at that position), ``blurred``.

    Examples
    --------
    >>> summary = synthesize(tmp_path, exposures=1, size=256)  # doctest: +SKIP
    >>> summary.files[0].name
    'exp_0000.fits'
    """
    start = time.perf_counter()
    _validate(exposures=exposures, size=size, sources=sources, ccds=ccds, seed=seed,
              blurred_fraction=blurred_fraction, processes=processes)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"{out_dir}: exists and is not a folder; choose a new output "
                         "folder for the synthetic survey")
    out_dir.mkdir(parents=True, exist_ok=True)

    per_exposure = (round(_DENSITY * size * size * ccds) if sources is None else sources)
    per_ccd = [per_exposure // ccds + (1 if k < per_exposure % ccds else 0) for k in range(ccds)]

    root = np.random.SeedSequence(seed)
    survey_rng = np.random.default_rng(root.spawn(1)[0])
    n_blurred = min(exposures, round(blurred_fraction * exposures))
    blurred = np.zeros(exposures, dtype=bool)
    blurred[survey_rng.permutation(exposures)[:n_blurred]] = True
    jobs = [_Job(index=i, stem=f"exp_{i:04d}", out_dir=str(out_dir), size=size, ccds=ccds,
                 per_ccd=tuple(per_ccd), seed=seed, blurred=bool(blurred[i]))
            for i in range(exposures)]

    n_proc = processes if processes is not None else _auto_processes(exposures, size, ccds)
    results = _run_jobs(_render_exposure, jobs, n_proc)

    _remove_stale(out_dir, exposures)
    truth_path = out_dir / "truth.parquet"
    n_sources = _write_truth(truth_path, results, seed=seed, size=size, ccds=ccds)
    counts: dict[str, int] = {name: 0 for name in CLASSES}
    for res in results:
        for name in res["truth"]["class"]:
            counts[name] += 1
    return SynthSummary(files=[out_dir / f"{job.stem}.fits" for job in jobs], truth=truth_path,
                        n_sources=n_sources, seconds=time.perf_counter() - start, size=size,
                        ccds=ccds, seed=seed, class_counts=counts,
                        psf_fwhm=[res["psf_fwhm"] for res in results],
                        blurred=[job.blurred for job in jobs])


# --------------------------------------------------------------------------- checks


def _validate(*, exposures: int, size: int, sources: int | None, ccds: int, seed: int,
              blurred_fraction: float, processes: int | None) -> None:
    """Refuse bad arguments before anything is written."""
    def _int(name: str, value: Any, lo: int, hi: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SynthError(f"synth: {name}={value!r} must be an integer from {lo} to {hi}")
        if not lo <= value <= hi:
            raise SynthError(f"synth: {name}={value!r} is out of range; "
                             f"use {lo} <= {name} <= {hi}")

    _int("exposures", exposures, 1, 9999)
    _int("size", size, 128, 16384)
    _int("ccds", ccds, 1, 64)
    _int("seed", seed, 0, 2**63 - 1)
    if sources is not None:
        # At most one source per 32x32 px (the default is one per 4,200 px^2).
        cap = max(ccds, ccds * size * size // 1024)
        _int("sources", sources, ccds, cap)
    if processes is not None:
        _int("processes", processes, 1, 256)
    if (isinstance(blurred_fraction, bool) or not isinstance(blurred_fraction, (int, float))
            or not 0.0 <= blurred_fraction <= 1.0):
        raise SynthError(f"synth: blurred_fraction={blurred_fraction!r} must be a number "
                   "from 0 to 1 (the share of blurred exposures)")


def _auto_processes(exposures: int, size: int, ccds: int) -> int:
    """Parallel only when there is enough work to pay for starting processes."""
    if exposures < 2 or size * size * ccds < 1024 * 1024:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(exposures, cores))


def _run_jobs(render: Any, jobs: list[Any], n_proc: int) -> list[dict[str, Any]]:
    """``[render(job) for job in jobs]``, in ``n_proc`` processes when more than one."""
    n_proc = max(1, min(n_proc, len(jobs)))
    if n_proc == 1:
        return [render(job) for job in jobs]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=n_proc, mp_context=ctx) as pool:
        return list(pool.map(render, jobs))


def _remove_stale(out_dir: Path, exposures: int) -> None:
    """Delete ``exp_NNNN.fits`` left by an earlier run with more exposures."""
    pattern = re.compile(r"exp_(\d{4,})\.fits")
    for path in out_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= exposures and path.is_file():
            path.unlink()


# --------------------------------------------------------------------------- one exposure


@dataclass(frozen=True)
class _Job:
    """What a worker needs to render one exposure (picklable)."""

    index: int
    stem: str
    out_dir: str
    size: int
    ccds: int
    per_ccd: tuple[int, ...]
    seed: int
    blurred: bool


@dataclass
class _Psf:
    """The PSF of one exposure: a base profile, its FWHM and its field variation."""

    base: Any              # galsim.GSObject of unit flux
    fwhm: float            # arcsec, at the centre of the focal plane
    seeing: float          # arcsec, atmospheric part
    kind: str              # "seeing", "bad seeing" or "defocus"
    dilation: float        # growth of the FWHM at the corner of the focal plane
    shear: tuple[float, float, float, float]  # g1, g2 at the centre; gradients

    def at(self, u: float, v: float) -> tuple[Any, float]:
        """PSF and its FWHM at focal-plane position (u, v), each in [-1, 1]."""
        scale = 1.0 + self.dilation * (u * u + v * v) / 2.0
        g1 = self.shear[0] + self.shear[2] * u
        g2 = self.shear[1] + self.shear[3] * v
        return self.base.dilate(scale).shear(g1=g1, g2=g2), self.fwhm * scale


@functools.lru_cache(maxsize=1)
def _gsparams() -> Any:
    import galsim

    return galsim.GSParams(**_GSPARAMS_KW)


@functools.lru_cache(maxsize=16)
def _sersic_quantiles(n: float) -> tuple[np.ndarray, np.ndarray]:
    """Radius (in half-light radii) against enclosed-light fraction of a truncated Sersic."""
    from scipy.special import gammainc, gammaincinv

    b = gammaincinv(2 * n, 0.5)
    top = gammainc(2 * n, b * _SERSIC_TRUNC ** (1 / n))
    frac = np.linspace(0.0, top, 2049)
    return frac / top, (gammaincinv(2 * n, frac) / b) ** n


def _make_psf(rng: np.random.Generator, blurred: bool) -> _Psf:
    import galsim

    seeing = float(rng.uniform(0.6, 1.1))
    dilation = float(rng.uniform(0.02, 0.06))
    shear = tuple(float(v) for v in rng.uniform(-0.02, 0.02, 4))
    kind = "seeing"
    fwhm = seeing
    base = galsim.Kolmogorov(fwhm=seeing, gsparams=_gsparams())
    if blurred:
        fwhm = max(seeing * float(rng.uniform(1.9, 2.3)), 1.4)
        if rng.uniform() < 0.5:
            kind = "bad seeing"
            base = galsim.Kolmogorov(fwhm=fwhm, gsparams=_gsparams())
        else:  # out of focus: the seeing disc convolved with the pupil's image
            kind = "defocus"
            base = galsim.Convolve(base, galsim.TopHat(radius=0.5 * fwhm),
                                   gsparams=_gsparams())
            base = base.dilate(fwhm / base.calculateFWHM(scale=_PIXSCALE / 8, size=512))
    return _Psf(base=base, fwhm=fwhm, seeing=seeing, kind=kind,
                dilation=dilation, shear=shear)  # type: ignore[arg-type]


def _render_exposure(job: _Job) -> dict[str, Any]:
    """Render one exposure (all its CCDs), write its FITS file, return its truth."""
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(1, job.index)))
    size, ccds = job.size, job.ccds
    dec0 = _FIELD[1] + float(rng.uniform(-0.5, 0.5)) * _PATCH
    ra0 = _FIELD[0] + float(rng.uniform(-0.5, 0.5)) * _PATCH / math.cos(math.radians(dec0))
    rot = math.radians(float(rng.uniform(-2.0, 2.0)))
    psf = _make_psf(rng, job.blurred)
    magzp = 30.0 + float(rng.normal(0.0, 0.05))          # transparency changes a little
    sky_sb = float(rng.uniform(20.6, 21.4))              # mag / arcsec^2
    sky = 10 ** (-0.4 * (sky_sb - magzp)) * _PIXSCALE**2  # ADU / px
    mjd = _MJD0 + 0.0012 * job.index

    ncol = math.ceil(math.sqrt(ccds))
    nrow = math.ceil(ccds / ncol)
    pitch = size + _CCD_GAP
    half_u = 0.5 * (ncol * pitch - _CCD_GAP)   # focal-plane half-widths, px
    half_v = 0.5 * (nrow * pitch - _CCD_GAP)

    common = _header_cards(index=job.index, seed=job.seed, psf=psf, magzp=magzp, sky=sky,
                           blurred=job.blurred, mjd=mjd)
    primary = fits.Header()
    hdus: list[Any] = []
    truth: dict[str, list[Any]] = {k: [] for k in (
        "ccd", "x", "y", "ra", "dec", "class", "flux", "mag", "size", "psf_fwhm")}
    for k in range(ccds):
        col, row = k % ncol, k // ncol
        # CCD centre on the focal plane, px from its centre (u along x, v along y).
        cu = (col + 0.5) * pitch - 0.5 * _CCD_GAP - half_u
        cv = (row + 0.5) * pitch - 0.5 * _CCD_GAP - half_v
        header = fits.Header()
        header["BUNIT"] = ("adu", "pixel unit")
        _wcs_keys(header, ra0=ra0, dec0=dec0, rot=rot,
                  crpix=((size + 1) / 2 - cu, (size + 1) / 2 - cv))
        for key, (value, comment) in common.items():
            header[key] = (value, comment)
        _, centre_fwhm = psf.at(cu / half_u, cv / half_v)
        header["PSF_FWHM"] = round(centre_fwhm, 4)
        if ccds > 1:
            header["EXTNAME"] = f"CCD{k + 1}"
            header["CCDNUM"] = (k + 1, "CCD number")
        image, cat = _render_ccd(rng, size=size, n=job.per_ccd[k], psf=psf, magzp=magzp,
                                 sky=sky, offset=(cu, cv), half=(half_u, half_v))
        wcs = WCS(header)
        ra, dec = wcs.all_pix2world(cat["x"], cat["y"], 0)
        truth["ccd"] += [k + 1 if ccds > 1 else 0] * len(cat["x"])
        truth["ra"] += list(np.asarray(ra, dtype=float))
        truth["dec"] += list(np.asarray(dec, dtype=float))
        for key in ("x", "y", "class", "flux", "mag", "size", "psf_fwhm"):
            truth[key] += list(cat[key])
        if ccds == 1:
            hdus.append(fits.PrimaryHDU(image, header))
        else:
            hdus.append(fits.ImageHDU(image, header))
    if ccds > 1:
        for key, (value, comment) in common.items():
            if key not in ("PSF_FWHM", "SKYLEVEL"):
                primary[key] = (value, comment)
        primary["PSF_FWHM"] = (round(psf.fwhm, 4), "[arcsec] true PSF FWHM, focal-plane centre")
        primary["NCCD"] = (ccds, "CCD image extensions")
        primary["RA"] = (round(ra0, 6), "[deg] pointing")
        primary["DEC"] = (round(dec0, 6), "[deg] pointing")
        hdus.insert(0, fits.PrimaryHDU(header=primary))

    path = Path(job.out_dir) / f"{job.stem}.fits"
    tmp = path.with_name(f".{path.name}.tmp")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return {"stem": job.stem, "blurred": job.blurred, "psf_fwhm": psf.fwhm, "truth": truth}


def _header_cards(*, index: int, seed: int, psf: _Psf, magzp: float, sky: float,
                  blurred: bool, mjd: float, kind: str = "field") -> dict[str, tuple[Any, str]]:
    """The header keys every synthetic exposure carries, as ``{key: (value, comment)}``."""
    from astropy.time import Time

    return {
        "PIXSCALE": (_PIXSCALE, "[arcsec/px] pixel scale"),
        "PSF_FWHM": (0.0, "[arcsec] true PSF FWHM at the CCD centre"),
        "SEEING": (round(psf.seeing, 4), "[arcsec] atmospheric seeing FWHM"),
        "PSFMODEL": (psf.kind, "PSF: Kolmogorov seeing, bad seeing or defocus"),
        "GAIN": (_GAIN, "[e-/ADU] gain"),
        "RDNOISE": (_RDNOISE, "[e-] read noise"),
        "SATURATE": (_SATURATE, "[ADU] saturation level (pixels clipped)"),
        "SKYLEVEL": (round(sky, 4), "[ADU/px] mean sky level (not subtracted)"),
        "EXPTIME": (_EXPTIME, "[s] exposure time"),
        "MAGZP": (round(magzp, 4), "[mag] zero point: mag = MAGZP - 2.5 log10(ADU)"),
        "FILTER": (_FILTER, "filter"),
        "BLURRED": (blurred, "deliberately blurred (bad seeing or defocus)"),
        "OBJECT": (f"SYNTH {kind.upper()} {index:04d}", f"synthetic survey {kind}"),
        "SEED": (seed, "skysieve synth random seed of the survey"),
        "EXPNUM": (index, "exposure number in the survey"),
        "MJD-OBS": (round(mjd, 6), "[d] MJD at the start of the exposure"),
        "DATE-OBS": (Time(mjd, format="mjd", scale="utc").isot, "UTC start"),
        "TELESCOP": ("skysieve-synth", "GalSim rendering of a 4 m class telescope"),
        "INSTRUME": ("skysieve-synth", "synthetic camera"),
        "ORIGIN": ("skysieve synth", "pipeline.simulation.survey"),
    }


def _wcs_keys(header: Any, *, ra0: float, dec0: float, rot: float,
              crpix: tuple[float, float]) -> None:
    """A celestial TAN WCS: north up, east left, rotated by ``rot`` radians."""
    s = _PIXSCALE / 3600.0
    c, n = math.cos(rot), math.sin(rot)
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = round(ra0, 8), round(dec0, 8)
    header["CRPIX1"], header["CRPIX2"] = crpix
    header["CD1_1"], header["CD1_2"] = -s * c, s * n
    header["CD2_1"], header["CD2_2"] = s * n, s * c
    header["RADESYS"] = "ICRS"
    header["EQUINOX"] = 2000.0


# --------------------------------------------------------------------------- one CCD


def _render_ccd(rng: np.random.Generator, *, size: int, n: int, psf: _Psf, magzp: float,
                sky: float, offset: tuple[float, float], half: tuple[float, float],
                ) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Draw ``n`` sources, sky and noise on one CCD; return the image and its truth."""
    specs = _sample_sources(rng, n, magzp)
    xy = _place(rng, specs, size)
    model = np.zeros((size, size), dtype=np.float32)
    cat = _draw_sources(model, specs, xy, psf=psf, offset=offset, half=half)
    return _observe(rng, model, sky), cat


def _draw_sources(model: np.ndarray, specs: list[dict[str, Any]], xy: np.ndarray, *,
                  psf: _Psf, offset: tuple[float, float], half: tuple[float, float],
                  ) -> dict[str, list[Any]]:
    """Add each source of ``specs`` at ``xy`` (x, y; 0-based) into ``model``; return the truth."""
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
                                  gsparams=_gsparams())
        fwhm_px = fwhm / _PIXSCALE
        half_stamp = int(math.ceil(spec["extent"] / _PIXSCALE + 2.5 * fwhm_px)) + 4
        if spec["class"] == "star":
            half_stamp = max(half_stamp, 64 if spec["mag"] < 16 else 14)
        half_stamp = min(max(half_stamp, 12), 127)
        _draw_into(model, obj, x, y, half_stamp)
        cat["x"].append(float(x))
        cat["y"].append(float(y))
        cat["class"].append(spec["class"])
        cat["flux"].append(float(spec["flux"]))
        cat["mag"].append(float(spec["mag"]))
        cat["size"].append(float(spec["size"]))
        cat["psf_fwhm"].append(float(fwhm))
    return cat


def _observe(rng: np.random.Generator, model: np.ndarray, sky: float) -> np.ndarray:
    """Sky with a gentle gradient, Poisson noise in electrons, read noise, saturation."""
    size = model.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size) - np.float32(0.5)
    gx, gy = rng.uniform(-0.02, 0.02, 2)
    lam = (model + np.float32(sky) * (1 + np.float32(gx) * xx + np.float32(gy) * yy))
    lam = np.clip(lam, 0, None, dtype=np.float64) * _GAIN
    electrons = rng.poisson(lam).astype(np.float64) + rng.normal(0.0, _RDNOISE, lam.shape)
    return np.minimum(electrons / _GAIN, _SATURATE).astype(np.float32)


def _draw_into(image: np.ndarray, obj: Any, x: float, y: float, half: int) -> None:
    """Add ``obj`` drawn on a (2 half + 1)^2 stamp centred at (x, y) into ``image[y, x]``."""
    import galsim

    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    ns = 2 * half + 1
    x0, y0 = ix - half, iy - half                 # stamp corner in the image (0-based)
    ny, nx = image.shape
    xa, xb = max(x0, 0), min(x0 + ns, nx)
    ya, yb = max(y0, 0), min(y0 + ns, ny)
    if xa >= xb or ya >= yb:
        return
    stamp = galsim.ImageF(ns, ns, scale=_PIXSCALE)
    # The true centre of an odd stamp is its middle pixel: offset is in (x, y) order.
    obj.drawImage(image=stamp, offset=(x - ix, y - iy))
    image[ya:yb, xa:xb] += stamp.array[ya - y0:yb - y0, xa - x0:xb - x0]


# --------------------------------------------------------------------------- sources


def _sample_sources(rng: np.random.Generator, n: int, magzp: float) -> list[dict[str, Any]]:
    """Classes (stratified, shuffled), magnitudes, sizes and GalSim profiles of ``n`` sources."""
    names = list(_CLASS_MIX)
    quota = np.array([_CLASS_MIX[c] for c in names]) * n
    counts = np.floor(quota).astype(int)
    rest = n - counts.sum()
    if rest:  # largest remainders, ties broken at random
        order = np.lexsort((rng.random(len(names)), -(quota - counts)))
        counts[order[:rest]] += 1
    classes = np.repeat(names, counts)
    rng.shuffle(classes)
    n_stars = int(counts[0])
    n_saturated = max(1, round(0.005 * n)) if n_stars else 0
    star_k = 0
    specs = []
    for name in classes:
        name = str(name)
        if name == "star":
            if star_k < n_saturated:
                mag = float(rng.uniform(12.0, 13.5))
            else:
                mag = _star_mag(rng)
            star_k += 1
            specs.append({"class": name, "mag": mag, "size": 0.0, "extent": 0.0,
                          "profile": None})
            continue
        radius = _radius(rng, name)
        # Mean surface brightness within the half-light radius, mag/arcsec^2.
        mu = rng.uniform(19.8, 21.8) if rng.uniform() < 0.85 else rng.uniform(21.8, 23.0)
        mag = float(mu - 2.5 * math.log10(2 * math.pi * radius**2))
        profile, extent = _BUILDERS[name](rng, radius)
        specs.append({"class": name, "mag": mag, "size": radius, "extent": extent,
                      "profile": profile})
    for spec in specs:
        spec["flux"] = 10 ** (-0.4 * (spec["mag"] - magzp))
    return specs


def _radius(rng: np.random.Generator, name: str) -> float:
    """Intrinsic half-light radius (arcsec): log-normal, resampled into ``_SIZE_RANGE``."""
    while True:
        radius = _SIZE_MEDIAN[name] * math.exp(rng.normal(0.0, _SIZE_SIGMA))
        if _SIZE_RANGE[0] <= radius <= _SIZE_RANGE[1]:
            return float(radius)


def _star_mag(rng: np.random.Generator) -> float:
    """Star counts rising 0.3 dex per magnitude between r = 16 and 21.8."""
    lo, hi, slope = 16.0, 21.8, 0.3 * math.log(10)
    u = rng.uniform()
    return float(math.log(math.exp(slope * lo) + u * (math.exp(slope * hi)
                                                      - math.exp(slope * lo))) / slope)


@dataclass
class _Part:
    """One component of a composite source, in units of the design radius."""

    kind: str        # "sersic", "gauss" or "point"
    frac: float      # share of the flux
    dx: float = 0.0
    dy: float = 0.0
    n: float = 1.0   # Sersic index
    r: float = 0.0   # half-light radius (sersic) or sigma (gauss)
    q: float = 1.0   # own axis ratio along x before the global shear
    angle: float = 0.0  # own rotation (radians) after its own shear


def _assemble(rng: np.random.Generator, parts: list[_Part], radius: float, q: float,
              ) -> tuple[Any, float]:
    """Build the GalSim profile of ``parts`` with centroid 0 and half-light radius ``radius``.

    The parts are recentred on their flux-weighted centroid (so the truth
    position is the centroid), scaled so the intrinsic circularised half-light
    radius is ``radius`` arcsec (estimated from 4,000 samples of the profile),
    inclined to axis ratio ``q`` and rotated at random. Returns the unit-flux
    profile and its extent (arcsec) for the stamp size.
    """
    import galsim

    fracs = np.array([p.frac for p in parts], dtype=float)
    fracs /= fracs.sum()
    cx = float(np.dot(fracs, [p.dx for p in parts]))
    cy = float(np.dot(fracs, [p.dy for p in parts]))
    counts = rng.multinomial(4000, fracs)
    radii = []
    for part, k in zip(parts, counts):
        if not k:
            continue
        if part.kind == "sersic":
            u_tab, r_tab = _sersic_quantiles(part.n)
            rr = part.r * np.interp(rng.uniform(0, 1, k), u_tab, r_tab)
            phi = rng.uniform(0, 2 * math.pi, k)
            px, py = rr * np.cos(phi), rr * np.sin(phi)
        elif part.kind == "gauss":
            px, py = rng.normal(0, part.r, (2, k))
        else:
            px, py = np.zeros(k), np.zeros(k)
        radii.append(np.hypot(px + part.dx - cx, py + part.dy - cy))
    hlr0 = float(np.median(np.concatenate(radii)))
    scale = radius / hlr0

    gsp = _gsparams()
    objs = []
    extent = 0.0
    for part, frac in zip(parts, fracs):
        if part.kind == "sersic":
            if part.n == 1.0:
                obj = galsim.Exponential(half_light_radius=part.r, gsparams=gsp)
                reach = 4.0 * part.r
            else:
                obj = galsim.Sersic(n=part.n, half_light_radius=part.r,
                                    trunc=_SERSIC_TRUNC * part.r, gsparams=gsp)
                reach = 4.5 * part.r
        elif part.kind == "gauss":
            obj = galsim.Gaussian(sigma=part.r, gsparams=gsp)
            reach = 3.0 * part.r
        else:
            obj = galsim.DeltaFunction(gsparams=gsp)
            reach = 0.0
        if part.q != 1.0:
            obj = obj.shear(g1=(1 - part.q) / (1 + part.q), g2=0.0)
            reach /= math.sqrt(min(part.q, 1 / part.q))
        if part.angle:
            obj = obj.rotate(part.angle * galsim.radians)
        objs.append(obj.withFlux(float(frac)).shift(part.dx - cx, part.dy - cy))
        extent = max(extent, math.hypot(part.dx - cx, part.dy - cy) + reach)
    profile = objs[0] if len(objs) == 1 else galsim.Sum(objs, gsparams=gsp)
    profile = profile.dilate(scale)
    if q != 1.0:
        profile = profile.shear(g1=(1 - q) / (1 + q), g2=0.0)
    profile = profile.rotate(float(rng.uniform(0, 360)) * galsim.degrees)
    return profile, extent * scale / math.sqrt(q)


def _elliptical(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """de Vaucouleurs-like spheroid (n = 3.5-4.5), round to moderately flattened."""
    n = float(rng.choice([3.5, 4.0, 4.5]))
    return _assemble(rng, [_Part("sersic", 1.0, n=n, r=1.0)], radius, q=rng.uniform(0.6, 1.0))


def _lenticular(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """n = 4 bulge plus a smooth exponential disk seen inclined; no arms."""
    q_disk = float(rng.uniform(0.15, 0.5))
    q_bulge = float(rng.uniform(0.7, 0.95))
    bt = float(rng.uniform(0.25, 0.5))
    parts = [_Part("sersic", 1 - bt, n=1.0, r=1.0),
             _Part("sersic", bt, n=4.0, r=float(rng.uniform(0.2, 0.4)), q=q_bulge / q_disk)]
    return _assemble(rng, parts, radius, q=q_disk)


def _spiral(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """Small bulge, exponential disk and logarithmic arms traced by chains of knots."""
    bt = float(rng.uniform(0.05, 0.2))
    disk = float(rng.uniform(0.3, 0.45))
    parts = [_Part("sersic", bt, n=4.0, r=float(rng.uniform(0.15, 0.3))),
             _Part("sersic", disk, n=1.0, r=1.0)]
    arms = 2 if rng.uniform() < 0.75 else 3
    pitch = math.radians(float(rng.uniform(14, 26)))
    r_in, r_out = float(rng.uniform(0.3, 0.45)), float(rng.uniform(1.7, 2.3))
    arm_flux = (1 - bt - disk) / arms
    phase0 = float(rng.uniform(0, 2 * math.pi))
    for a in range(arms):
        # A continuous arm of overlapping segments, plus a few bright HII regions.
        segs = int(rng.integers(10, 15))
        bright = int(rng.integers(2, 6))
        # Evenly spaced along the arm (arc length grows with r on a log spiral).
        t = np.concatenate([np.linspace(0, 1, segs), rng.uniform(0, 1, bright)])
        r = r_in + t * (r_out - r_in)
        theta = np.log(r / r_in) / math.tan(pitch)
        r = r * (1 + rng.normal(0, 0.03, t.size))
        phi = theta + phase0 + 2 * math.pi * a / arms
        w = np.concatenate([rng.lognormal(0.0, 0.25, segs), 2.5 * rng.lognormal(0.0, 0.4, bright)])
        w *= np.exp(-0.8 * t)
        w = w / w.sum() * arm_flux
        sig = np.concatenate([rng.uniform(0.1, 0.14, segs), rng.uniform(0.05, 0.09, bright)])
        elong = np.concatenate([np.full(segs, 0.35), np.ones(bright)])
        for rk, pk, wk, sk, qk in zip(r, phi, w, sig, elong):
            # Segments are stretched along the arm: pitch below the local circle.
            parts.append(_Part("gauss", float(wk), dx=float(rk * math.cos(pk)),
                               dy=float(rk * math.sin(pk)), r=float(sk), q=float(qk),
                               angle=float(pk + math.pi / 2 - pitch)))
    return _assemble(rng, parts, radius, q=rng.uniform(0.55, 1.0))


def _irregular(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """Clumpy and lopsided: a faint offset disk plus several bright offset clumps."""
    base = float(rng.uniform(0.2, 0.45))
    parts = [_Part("sersic", base, n=1.0, r=1.0, q=float(rng.uniform(0.4, 1.0)),
                   dx=float(rng.normal(0, 0.25)), dy=float(rng.normal(0, 0.25)))]
    k = int(rng.integers(3, 9))
    shift = rng.normal(0, 0.35, 2)                      # the clumps are lopsided
    w = rng.lognormal(0.0, 0.6, k)
    w = w / w.sum() * (1 - base)
    for i in range(k):
        dx, dy = rng.normal(0, 0.8, 2) + shift
        parts.append(_Part("gauss", float(w[i]), dx=float(dx), dy=float(dy),
                           r=float(rng.uniform(0.12, 0.4))))
    return _assemble(rng, parts, radius, q=rng.uniform(0.5, 1.0))


def _nebula_cluster(rng: np.random.Generator, radius: float, *, form: str | None = None,
                    ) -> tuple[Any, float]:
    """A resolved star cluster (many points + unresolved glow) or a nebula with a few stars.

    ``form`` ("star_cluster" or "nebula") fixes the kind; ``None`` draws it (60% clusters).
    """
    parts = []
    cluster = rng.uniform() < 0.6 if form is None else form == "star_cluster"
    if cluster:  # star cluster: a sprinkle of point sources
        glow = float(rng.uniform(0.15, 0.35))
        parts.append(_Part("gauss", glow, r=float(rng.uniform(0.6, 1.0))))
        k = int(rng.integers(20, 50))
        w = rng.pareto(2.0, k) + 1
        w = w / w.sum() * (1 - glow)
        # Plummer-like: a core and an extended halo of members.
        pos = rng.normal(0, 1.0, (k, 2)) / np.sqrt(rng.uniform(0.3, 1.0, (k, 1)))
    else:  # emission nebula: a smooth, lumpy cloud with a few embedded stars
        diffuse = float(rng.uniform(0.7, 0.85))
        blobs = int(rng.integers(4, 9))
        wb = rng.lognormal(0, 0.4, blobs)
        wb = wb / wb.sum() * diffuse
        for i in range(blobs):
            dx, dy = rng.normal(0, 0.6, 2)
            parts.append(_Part("gauss", float(wb[i]), dx=float(dx), dy=float(dy),
                               r=float(rng.uniform(0.6, 1.2)), q=float(rng.uniform(0.3, 1.0))))
        k = int(rng.integers(4, 13))
        w = rng.pareto(2.0, k) + 1
        w = w / w.sum() * (1 - diffuse)
        pos = rng.normal(0, 0.8, (k, 2))
    for i in range(k):
        parts.append(_Part("point", float(w[i]), dx=float(pos[i, 0]), dy=float(pos[i, 1])))
    profile, extent = _assemble(rng, parts, radius, q=rng.uniform(0.6, 1.0))
    return profile, max(extent, 3.0 * radius)


_BUILDERS = {"elliptical": _elliptical, "lenticular": _lenticular, "spiral": _spiral,
             "irregular": _irregular, "nebula_cluster": _nebula_cluster}


# --------------------------------------------------------------------------- placement


def _place(rng: np.random.Generator, specs: list[dict[str, Any]], size: int) -> np.ndarray:
    """Positions (x, y), 0-based, of the sources on a ``size`` CCD.

    Sources keep ``max(20, 1.5 (r1 + r2) + 6)`` px apart (``r`` the half-light
    radius in px) and 8 px inside the edges, except a small share of deliberate
    close pairs (6-18 px from a partner) and of edge cases (within 8 px of an edge).
    """
    n = len(specs)
    rad = np.array([s["size"] for s in specs]) / _PIXSCALE
    xy = np.full((n, 2), np.nan)
    roles = rng.uniform(size=n)
    n_pairs = int(round(_PAIR_FRACTION * n))
    pair_of: dict[int, int] = {}
    if n >= 4 and n_pairs:
        members = rng.permutation(n)[:2 * n_pairs]
        pair_of = {int(b): int(a) for a, b in zip(members[0::2], members[1::2])}
    order = np.argsort(-rad, kind="stable")
    placed: list[int] = []
    lo, hi = _EDGE, size - 1 - _EDGE
    for i in order:
        i = int(i)
        if i in pair_of and not np.isnan(xy[pair_of[i], 0]):
            continue  # placed next to its partner below
        for attempt in range(40):
            if roles[i] < _EDGE_FRACTION:  # an edge case: somewhere in the outer 8 px
                cand = rng.uniform(0, size - 1, (32, 2))
                side = rng.integers(0, 4, 32)
                band = rng.uniform(0, _EDGE, 32)
                cand[side == 0, 0] = band[side == 0]
                cand[side == 1, 0] = size - 1 - band[side == 1]
                cand[side == 2, 1] = band[side == 2]
                cand[side == 3, 1] = size - 1 - band[side == 3]
            else:
                cand = rng.uniform(lo, hi, (32, 2))
            ok = _free(cand, xy, rad, placed, rad[i], slack=max(0.0, 1 - attempt / 30))
            if ok.any():
                xy[i] = cand[int(np.argmax(ok))]
                break
        else:
            xy[i] = cand[0]  # crowded: accept the overlap rather than drop the source
        placed.append(i)
        for j in [j for j, a in pair_of.items() if a == i]:
            xy[j] = _partner(rng, xy[i], rad[i], rad[j], size)
            placed.append(j)
    # Partners whose anchor came later were skipped above; place them now.
    for j, a in pair_of.items():
        if np.isnan(xy[j, 0]):
            xy[j] = _partner(rng, xy[a], rad[a], rad[j], size)
    return xy


def _free(cand: np.ndarray, xy: np.ndarray, rad: np.ndarray, placed: list[int], r: float,
          *, slack: float) -> np.ndarray:
    """Which candidate positions keep the separation rule (relaxed by ``slack`` < 1)."""
    if not placed:
        return np.ones(len(cand), dtype=bool)
    idx = np.asarray(placed)
    d = np.hypot(cand[:, None, 0] - xy[idx, 0], cand[:, None, 1] - xy[idx, 1])
    need = np.maximum(_MIN_SEP, slack * (1.5 * (rad[idx] + r) + 6))
    return (d >= need).all(axis=1)


def _partner(rng: np.random.Generator, anchor: np.ndarray, r1: float, r2: float,
             size: int) -> np.ndarray:
    """A close-pair position 6-18 px (more for big galaxies) from ``anchor``."""
    dist = float(rng.uniform(6.0, 18.0)) + 0.5 * (r1 + r2)
    for _ in range(20):
        phi = rng.uniform(0, 2 * math.pi)
        pos = anchor + dist * np.array([math.cos(phi), math.sin(phi)])
        if (pos >= _EDGE).all() and (pos <= size - 1 - _EDGE).all():
            return pos
    return np.clip(pos, 0, size - 1)


# --------------------------------------------------------------------------- truth


def _write_truth(path: Path, results: list[dict[str, Any]], *, seed: int, size: int,
                 ccds: int) -> int:
    """Write ``truth.parquet`` (via a temporary name); return the number of rows."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import __version__

    cols: dict[str, list[Any]] = {k: [] for k in (
        "exposure", "ccd", "x", "y", "ra", "dec", "class", "flux", "mag", "size",
        "psf_fwhm", "blurred")}
    for res in results:
        t = res["truth"]
        m = len(t["x"])
        cols["exposure"] += [res["stem"]] * m
        cols["blurred"] += [res["blurred"]] * m
        for key in t:
            cols[key] += t[key]
    n = len(cols["x"])
    schema = pa.schema([
        ("id", pa.int64()), ("exposure", pa.string()), ("ccd", pa.int64()),
        ("x", pa.float64()), ("y", pa.float64()), ("ra", pa.float64()), ("dec", pa.float64()),
        ("class", pa.string()), ("flux", pa.float64()), ("mag", pa.float64()),
        ("size", pa.float64()), ("psf_fwhm", pa.float64()), ("blurred", pa.bool_()),
    ], metadata={b"skysieve": json.dumps({
        "classes": list(CLASSES), "seed": seed, "size": size, "ccds": ccds,
        "pixscale": _PIXSCALE, "software": f"skysieve {__version__}",
        "coordinates": "0-based pixels, x = column, y = row; ra/dec from WCS origin 0",
    }).encode()})
    arrays = [pa.array(np.arange(n, dtype=np.int64))]
    arrays += [pa.array(cols[f.name], type=f.type) for f in list(schema)[1:]]
    table = pa.Table.from_arrays(arrays, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return n


# --------------------------------------------------------------------------- pointed exposures

#: Target classes of the pointed exposures (HR-CelestialNet's task), in model-output order.
TARGET_CLASSES: tuple[str, ...] = ("galaxy", "nebula_cluster")
#: The detailed morphologies of each target class.
TARGET_MORPHOLOGIES: dict[str, tuple[str, ...]] = {
    "galaxy": ("elliptical", "lenticular", "spiral", "irregular"),
    "nebula_cluster": ("star_cluster", "nebula"),
}
_TARGET_RADIUS = (0.05, 0.11)   # target half-light radius, as a fraction of the frame side
_TARGET_MU = (19.5, 21.0)       # its mean surface brightness within that radius, mag/arcsec^2
_TARGET_JITTER = 0.02           # its centre is within this fraction of the side of the middle
_TARGET_EXTENT = 0.75           # its drawn extent (radius) at most this fraction of the side
_FIELD_DENSITY = 300 / 2048**2  # field stars and background galaxies per px^2
_FIELD_STARS = 0.6              # share of stars among them


@dataclass
class PointedSummary:
    """What :func:`synthesize_pointed` wrote.

    Attributes
    ----------
    files : list of Path
        The FITS exposures, ``exp_0000.fits``, ... (one CCD each, primary HDU).
    truth : Path
        ``truth.parquet``: one row per exposure (see :func:`synthesize_pointed`).
    seconds : float
        Wall time of the render.
    size, seed : int
        Frame side in pixels and the seed.
    target_class, morphology : list of str
        Target class (:data:`TARGET_CLASSES`) and detailed morphology of each exposure.
    psf_fwhm : list of float
        PSF FWHM (arcsec) at the target of each exposure.
    blurred : list of bool
        Whether each exposure was deliberately blurred.
    """

    files: list[Path]
    truth: Path
    seconds: float
    size: int = 0
    seed: int = 0
    target_class: list[str] = field(default_factory=list)
    morphology: list[str] = field(default_factory=list)
    psf_fwhm: list[float] = field(default_factory=list)
    blurred: list[bool] = field(default_factory=list)

    @property
    def n_sources(self) -> int:
        """Rows of the truth table: one target per exposure."""
        return len(self.files)

    @property
    def class_counts(self) -> dict[str, int]:
        """Exposures of each target class in :data:`TARGET_CLASSES`."""
        return {name: self.target_class.count(name) for name in TARGET_CLASSES}

    def describe(self) -> str:
        """Return a few human-readable lines about the pointed exposures."""
        n_exp = len(self.files)
        lines = [(f"synthetic pointed exposures (seed {self.seed}): {n_exp} exposure"
                  f"{'s' * (n_exp != 1)} of {self.size}x{self.size} px at {_PIXSCALE}\"/px, "
                  f"one large target each, in {self.truth.parent}")]
        for name in TARGET_CLASSES:
            morphs = [m for m, c in zip(self.morphology, self.target_class) if c == name]
            detail = ", ".join(f"{m} {morphs.count(m)}" for m in TARGET_MORPHOLOGIES[name]
                               if m in morphs)
            lines.append(f"  {name}: {len(morphs)}" + (f" ({detail})" if detail else ""))
        n_blur = sum(self.blurred)
        if self.psf_fwhm:
            lines.append(f"  {n_blur} blurred; PSF FWHM {min(self.psf_fwhm):.2f}-"
                         f"{max(self.psf_fwhm):.2f}\"")
        lines.append(f"  truth: {self.truth} ({self.seconds:.1f} s)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _PointedJob:
    """What a worker needs to render one pointed exposure (picklable)."""

    index: int
    stem: str
    out_dir: str
    size: int
    seed: int
    blurred: bool
    target_class: str
    morphology: str


def synthesize_pointed(out_dir: Path, *, exposures: int = 8, size: int = 1024, seed: int = 0,
                       blurred_fraction: float = 0.25, processes: int | None = None,
                       ) -> PointedSummary:
    """Render pointed exposures, each centred on one large target, and their truth table.

    The whole-exposure task of HR-CelestialNet: is this exposure's target a
    galaxy or a nebula/star cluster?  Each exposure (one CCD, primary HDU) has
    one large target near its centre (half-light radius 5-11% of the frame side,
    less for the few whose drawn extent would pass 75% of the side; within 2% of
    the side from the middle): a galaxy of a random morphology
    (elliptical, lenticular, spiral, irregular) or a nebula/star cluster (a
    resolved star cluster or an emission nebula), drawn with the GalSim
    machinery of :func:`synthesize`, plus field stars and small background
    galaxies (about 300 per 2048x2048 px, kept clear of the target's core), the
    same Kolmogorov PSF (deliberately blurred on some exposures), sky, Poisson
    and read noise, saturation and a celestial TAN WCS.  Target classes are
    balanced (half each, the odd one a galaxy), so two or more exposures hold
    both classes.  The header does not name the class.

    Parameters
    ----------
    out_dir : Path
        Folder to write ``exp_0000.fits``, ... and ``truth.parquet`` into; created
        if missing; stale ``exp_NNNN.fits`` of an earlier, larger run are removed.
    exposures : int, default: 8
        Number of exposures, 1 to 9999.
    size : int, default: 1024
        Side of each (square) exposure in pixels, 128 to 16384.
    seed : int, default: 0
        Random seed; the same seed gives byte-identical pixels and truth.
    blurred_fraction : float, default: 0.25
        Share of exposures deliberately blurred (as in :func:`synthesize`).
    processes : int or None, default: None
        Worker processes; ``None`` picks from the cores and the work. The output
        does not depend on it.

    Returns
    -------
    PointedSummary

    Notes
    -----
    ``truth.parquet`` has one row per exposure: ``id``, ``exposure`` (file stem),
    ``ccd`` (0), ``target_class`` (``galaxy`` | ``nebula_cluster``),
    ``morphology`` (``elliptical``, ``lenticular``, ``spiral``, ``irregular``,
    ``star_cluster`` or ``nebula``), ``class`` (the target in the survey's
    :data:`CLASSES`, so ``skysieve ingest --truth`` labels the target's
    detection), ``x``, ``y`` (0-based target centre, x = column, y = row),
    ``ra``, ``dec`` (deg, WCS origin 0), ``size`` (half-light radius, arcsec),
    ``radius_px`` (the same in px), ``flux`` (ADU), ``mag``, ``psf_fwhm``
    (arcsec, at the target), ``psf_model``, ``blurred`` and ``n_field`` (field
    sources drawn).

    Examples
    --------
    >>> summary = synthesize_pointed(tmp_path, exposures=2, size=256)  # doctest: +SKIP
    >>> sorted(summary.target_class)
    ['galaxy', 'nebula_cluster']
    """
    start = time.perf_counter()
    _validate(exposures=exposures, size=size, sources=None, ccds=1, seed=seed,
              blurred_fraction=blurred_fraction, processes=processes)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"{out_dir}: exists and is not a folder; choose a new output "
                         "folder for the pointed exposures")
    out_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    n_blurred = min(exposures, round(blurred_fraction * exposures))
    blurred = np.zeros(exposures, dtype=bool)
    blurred[rng.permutation(exposures)[:n_blurred]] = True
    n_galaxy = (exposures + 1) // 2
    targets = np.array(["galaxy"] * n_galaxy + ["nebula_cluster"] * (exposures - n_galaxy))
    targets = targets[rng.permutation(exposures)]
    morphs = [str(rng.choice(TARGET_MORPHOLOGIES[str(t)])) for t in targets]
    jobs = [_PointedJob(index=i, stem=f"exp_{i:04d}", out_dir=str(out_dir), size=size,
                        seed=seed, blurred=bool(blurred[i]), target_class=str(targets[i]),
                        morphology=morphs[i])
            for i in range(exposures)]
    n_proc = processes if processes is not None else _auto_processes(exposures, size, 1)
    results = _run_jobs(_render_pointed, jobs, n_proc)

    _remove_stale(out_dir, exposures)
    truth_path = out_dir / "truth.parquet"
    _write_pointed_truth(truth_path, results, seed=seed, size=size)
    return PointedSummary(files=[out_dir / f"{job.stem}.fits" for job in jobs],
                          truth=truth_path, seconds=time.perf_counter() - start, size=size,
                          seed=seed, target_class=[job.target_class for job in jobs],
                          morphology=[job.morphology for job in jobs],
                          psf_fwhm=[res["truth"]["psf_fwhm"] for res in results],
                          blurred=[job.blurred for job in jobs])


def _field_sources(rng: np.random.Generator, n: int, magzp: float) -> list[dict[str, Any]]:
    """Field stars and small background galaxies (no nebulae) around a pointed target."""
    galaxies = TARGET_MORPHOLOGIES["galaxy"]
    specs = []
    for _ in range(n):
        if rng.uniform() < _FIELD_STARS:
            specs.append({"class": "star", "mag": _star_mag(rng), "size": 0.0, "extent": 0.0,
                          "profile": None})
            continue
        name = str(rng.choice(galaxies))
        radius = _radius(rng, name)
        mu = rng.uniform(19.8, 21.8) if rng.uniform() < 0.85 else rng.uniform(21.8, 23.0)
        mag = float(mu - 2.5 * math.log10(2 * math.pi * radius**2))
        profile, extent = _BUILDERS[name](rng, radius)
        specs.append({"class": name, "mag": mag, "size": radius, "extent": extent,
                      "profile": profile})
    for spec in specs:
        spec["flux"] = 10 ** (-0.4 * (spec["mag"] - magzp))
    return specs


def _render_pointed(job: _PointedJob) -> dict[str, Any]:
    """Render one pointed exposure, write its FITS file, return its one-row truth."""
    import galsim
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(2, job.index)))
    size = job.size
    dec0 = _FIELD[1] + float(rng.uniform(-0.5, 0.5)) * _PATCH
    ra0 = _FIELD[0] + float(rng.uniform(-0.5, 0.5)) * _PATCH / math.cos(math.radians(dec0))
    rot = math.radians(float(rng.uniform(-2.0, 2.0)))
    psf = _make_psf(rng, job.blurred)
    magzp = 30.0 + float(rng.normal(0.0, 0.05))
    sky_sb = float(rng.uniform(20.6, 21.4))
    sky = 10 ** (-0.4 * (sky_sb - magzp)) * _PIXSCALE**2
    mjd = _MJD0 + 0.0012 * job.index
    half = (size / 2, size / 2)       # the whole focal plane is this one CCD

    # The target: size, brightness and profile.
    r_px = size * float(rng.uniform(*_TARGET_RADIUS))
    radius = r_px * _PIXSCALE
    mag = float(rng.uniform(*_TARGET_MU)) - 2.5 * math.log10(2 * math.pi * radius**2)
    flux = 10 ** (-0.4 * (mag - magzp))
    if job.target_class == "galaxy":
        profile, extent = _BUILDERS[job.morphology](rng, radius)
    else:
        profile, extent = _nebula_cluster(rng, radius, form=job.morphology)
    limit = _TARGET_EXTENT * size * _PIXSCALE  # arcsec
    if extent > limit:  # very flattened or extended: shrink it, or GalSim's FFT explodes
        shrink = limit / extent
        profile, extent = profile.dilate(shrink), limit
        radius, r_px = radius * shrink, r_px * shrink
        mag = mag - 5.0 * math.log10(shrink)  # same surface brightness
        flux = 10 ** (-0.4 * (mag - magzp))
    cx, cy = (size - 1) / 2 + rng.uniform(-1.0, 1.0, 2) * _TARGET_JITTER * size

    # Field stars and background galaxies, clear of the target's core.
    specs = _field_sources(rng, max(1, round(_FIELD_DENSITY * size * size)), magzp)
    xy = _place(rng, specs, size)
    keep = np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) > 1.5 * r_px
    specs = [s for s, k in zip(specs, keep) if k]
    model = np.zeros((size, size), dtype=np.float32)
    _draw_sources(model, specs, xy[keep], psf=psf, offset=(0.0, 0.0), half=half)

    local_psf, fwhm = psf.at((cx - (size - 1) / 2) / half[0], (cy - (size - 1) / 2) / half[1])
    # A frame-filling target under a defocus PSF (slow Fourier fall-off of its top hat) needs
    # FFTs up to ~8.6k^2 (1.7 GB) at 2048 px: above GalSim's default bound, so raise it.
    big = galsim.GSParams(**_GSPARAMS_KW, maximum_fft_size=12288)
    obj = galsim.Convolve(profile.withFlux(flux), local_psf, gsparams=big)
    # The stamp reaches the frame's far edges from (cx, cy) and no further (a larger one
    # only grows GalSim's FFT).
    reach = math.ceil(extent / _PIXSCALE + 3.0 * fwhm / _PIXSCALE) + 4
    cover = math.ceil(max(cx, cy, size - 1 - cx, size - 1 - cy)) + 2
    _draw_into(model, obj, cx, cy, min(reach, cover))
    image = _observe(rng, model, sky)

    header = fits.Header()
    header["BUNIT"] = ("adu", "pixel unit")
    _wcs_keys(header, ra0=ra0, dec0=dec0, rot=rot, crpix=((size + 1) / 2, (size + 1) / 2))
    cards = _header_cards(index=job.index, seed=job.seed, psf=psf, magzp=magzp, sky=sky,
                          blurred=job.blurred, mjd=mjd, kind="target")
    for key, (value, comment) in cards.items():
        header[key] = (value, comment)
    header["PSF_FWHM"] = (round(fwhm, 4), "[arcsec] true PSF FWHM at the target")
    ra, dec = WCS(header).all_pix2world([cx], [cy], 0)
    path = Path(job.out_dir) / f"{job.stem}.fits"
    tmp = path.with_name(f".{path.name}.tmp")
    fits.HDUList([fits.PrimaryHDU(image, header)]).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    truth = {"exposure": job.stem, "ccd": 0, "target_class": job.target_class,
             "morphology": job.morphology,
             "class": job.morphology if job.target_class == "galaxy" else "nebula_cluster",
             "x": float(cx), "y": float(cy), "ra": float(ra[0]), "dec": float(dec[0]),
             "size": float(radius), "radius_px": float(r_px), "flux": float(flux),
             "mag": float(mag), "psf_fwhm": float(fwhm), "psf_model": psf.kind,
             "blurred": job.blurred, "n_field": len(specs)}
    return {"stem": job.stem, "truth": truth}


def _write_pointed_truth(path: Path, results: list[dict[str, Any]], *, seed: int,
                         size: int) -> None:
    """Write the one-row-per-exposure ``truth.parquet`` (via a temporary name)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import __version__

    schema = pa.schema([
        ("id", pa.int64()), ("exposure", pa.string()), ("ccd", pa.int64()),
        ("target_class", pa.string()), ("morphology", pa.string()), ("class", pa.string()),
        ("x", pa.float64()), ("y", pa.float64()), ("ra", pa.float64()), ("dec", pa.float64()),
        ("size", pa.float64()), ("radius_px", pa.float64()), ("flux", pa.float64()),
        ("mag", pa.float64()), ("psf_fwhm", pa.float64()), ("psf_model", pa.string()),
        ("blurred", pa.bool_()), ("n_field", pa.int64()),
    ], metadata={b"skysieve": json.dumps({
        "kind": "pointed", "target_classes": list(TARGET_CLASSES),
        "morphologies": TARGET_MORPHOLOGIES, "classes": list(CLASSES), "seed": seed,
        "size": size, "pixscale": _PIXSCALE, "software": f"skysieve {__version__}",
        "coordinates": "0-based pixels, x = column, y = row; ra/dec from WCS origin 0",
    }).encode()})
    rows = [res["truth"] for res in results]
    arrays = [pa.array(np.arange(len(rows), dtype=np.int64))]
    arrays += [pa.array([r[f.name] for r in rows], type=f.type) for f in list(schema)[1:]]
    table = pa.Table.from_arrays(arrays, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
