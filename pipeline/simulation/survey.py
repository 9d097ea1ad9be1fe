"""The synthetic survey: GalSim-rendered FITS exposures with a known truth table.

``skysieve synth`` (and ``skysieve demo``) render a small single-band imaging
survey that looks like real data: a celestial TAN WCS per CCD, a Kolmogorov PSF
whose FWHM changes from exposure to exposure (and mildly across the field),
sky, Poisson and read noise, saturated stars (:mod:`pipeline.simulation.instrument`),
and six classes of source with overlapping sizes and magnitudes (:data:`CLASSES`,
:mod:`pipeline.simulation.sources`). Every injected source is a row of
``truth.parquet``. Pointed exposures (one large target each) are
:mod:`pipeline.simulation.pointed`.

Coordinates are 0-based pixels, ``x`` = column, ``y`` = row (``image[y, x]``),
and sky positions come from each CCD's WCS with origin 0.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checks import fraction, positive_int
from pipeline.errors import SynthError
from pipeline.files import atomic_write, to_jsonable
from pipeline.simulation.instrument import (
    CCD_GAP,
    PIXSCALE,
    Pointing,
    draw_pointing,
    draw_sources,
    header_cards,
    image_header,
    observe,
    write_fits,
)
from pipeline.simulation.sources import place, sample_sources

__all__ = ["CLASSES", "DOMAINS", "SynthSummary", "synthesize"]

#: The source classes of the synthetic survey, in the order of the model outputs.
CLASSES: tuple[str, ...] = ("star", "elliptical", "lenticular", "spiral", "irregular",
                            "nebula_cluster")

#: The training domains of :func:`synthesize`: the survey's one instrument, a
#: randomised instrument per exposure (:mod:`pipeline.simulation.wide`), or the
#: same draw with every exposure an 8-bit preview JPEG (``preview``).
DOMAINS: tuple[str, ...] = ("survey", "wide", "preview")
#: The domains rendered by :mod:`pipeline.simulation.wide_exposure`.
WIDE_DOMAINS: tuple[str, ...] = ("wide", "preview")

_DENSITY = 1000 / 2048**2   # sources per px^2 when `sources` is None


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
    domain : str
        ``"survey"``, ``"wide"`` or ``"preview"`` (:data:`DOMAINS`).
    conditions : list of dict
        The wide (or preview) domain's drawn parameters of each exposure (empty for the survey).
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
    domain: str = "survey"
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        """Return a few human-readable lines about the survey."""
        out_dir = self.truth.parent
        ccd = f"{self.ccds} CCDs" if self.ccds > 1 else "1 CCD"
        n_exp = len(self.files)
        if self.domain in WIDE_DOMAINS:
            return self._describe_wide(out_dir, ccd, n_exp)
        lines = [f"synthetic survey (seed {self.seed}): {n_exp} exposure{'s' * (n_exp != 1)} "
                 f"x {ccd} "
                 f"of {self.size}x{self.size} px at {PIXSCALE}\"/px in {out_dir}"]
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

    def _describe_wide(self, out_dir: Path, ccd: str, n_exp: int) -> str:
        """:meth:`describe` for the wide domain."""
        scales = [c["pixscale"] for c in self.conditions]
        fwhm_px = [c["fwhm_px"] for c in self.conditions]
        responses = [c["response"] for c in self.conditions]
        lines = [f"synthetic {self.domain}-domain survey (seed {self.seed}): {n_exp} "
                 f"exposure{'s' * (n_exp != 1)} x {ccd} of {self.size}x{self.size} px in {out_dir}"]
        counts = ", ".join(f"{name} {self.class_counts.get(name, 0):,}" for name in CLASSES)
        lines.append(f"  {self.n_sources:,} sources: {counts}")
        if scales:
            lines.append(f"  pixel scale {min(scales):.3f}-{max(scales):.3f}\"/px, PSF FWHM "
                         f"{min(fwhm_px):.1f}-{max(fwhm_px):.1f} px")
            kinds = ", ".join(f"{k} {responses.count(k)}" for k in sorted(set(responses)))
            lines.append(f"  responses: {kinds}")
        lines.append(f"  truth: {self.truth} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def synthesize(out_dir: Path, *, exposures: int = 4, size: int = 2048,
               sources: int | None = None, ccds: int = 1, seed: int = 0,
               blurred_fraction: float = 0.25, processes: int | None = None,
               domain: str = "survey", prefix: str = "") -> SynthSummary:
    """Render a synthetic survey of FITS exposures and its truth table into ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Folder to write ``exp_0000.fits``, ... and ``truth.parquet`` into; created
        if missing. Stale ``exp_NNNN.fits`` files of an earlier, larger run there
        are removed so the folder matches the truth table.
    exposures : int, default: 4
        Number of exposures (pointings), 1 to 9999.
    size : int, default: 2048
        Side of each CCD in pixels, 128 to 16384.
    sources : int or None, default: None
        Sources per exposure, split over its CCDs. ``None``: about 1,000 per
        2048x2048 CCD, scaled with the area.
    ccds : int, default: 1
        CCDs per exposure, 1 to 64. With 1 the image is the primary HDU; with
        more, an empty primary HDU is followed by image extensions ``CCD1``,
        ``CCD2``, ... tiled on the sky, each with its own WCS.
    seed : int, default: 0
        Random seed; the same seed gives byte-identical pixels and truth.
    blurred_fraction : float, default: 0.25
        Share of exposures deliberately blurred (bad seeing or defocus; PSF FWHM
        about twice the seeing and at least 1.4 arcsec). Rounded to whole exposures.
    processes : int or None, default: None
        Worker processes rendering exposures in parallel; ``None`` picks from the
        cores and the work (1 for small surveys). The output does not depend on it.
    domain : {"survey", "wide", "preview"}, default: "survey"
        ``"survey"``: the survey's one 4 m telescope (0.263"/px, r band, linear
        CCD). ``"wide"``: domain randomisation, each exposure drawing its own
        pixel scale (0.04-1.7"/px), PSF (Moffat, Kolmogorov or an Airy disc with
        spikes; 1.3-8 px FWHM), response (CCD with bleed trails and cosmic
        rays, photographic plate, 8-bit JPEG), depth and source density (0.5-5
        times the survey's; ``sources`` is scaled by it), recorded in the
        header (:mod:`pipeline.simulation.wide`) and the truth table.
        ``"preview"``: the wide draw with every exposure an 8-bit survey preview
        JPEG (sky noise lifted to tens of the 256 levels, bright cores clipped
        flat 4-15 sigma above the sky), as cutout services serve images.
    prefix : str, default: ""
        Start of every file name and truth ``exposure`` (``PREFIXexp_0000``): letters,
        digits, ``_``, ``-`` and ``.``, not first.  Runs with different prefixes can be
        ingested into one store (``skysieve ingest --truth A --truth B``).  The pixels do
        not depend on it.

    Returns
    -------
    SynthSummary
        The files written, the number of sources and the time it took.

    Raises
    ------
    SynthError
        A bad argument (before anything is written), or ``out_dir`` is a file.

    Notes
    -----
    The truth table has one row per injected source: ``id`` (int64), ``exposure``
    (file stem), ``ccd`` (HDU index of the CCD image: 0 for a primary-HDU image),
    ``x``, ``y`` (0-based centroid, x = column, y = row), ``ra``, ``dec`` (deg,
    that CCD's WCS with origin 0), ``class``, ``flux`` (ADU), ``mag`` (AB-like,
    ``MAGZP - 2.5 log10 flux``), ``size`` (intrinsic half-light radius, arcsec;
    0 for stars), ``psf_fwhm`` (arcsec, the PSF at that position), ``blurred``.
    The wide domain adds ``saturated`` (the source's peak reaches saturation),
    ``pixscale`` (arcsec/px) and ``response``; its fluxes are linear ADU before
    the response, and its metadata's ``exposures`` holds every drawn parameter.

    Examples
    --------
    >>> summary = synthesize(tmp_path, exposures=1, size=256)  # doctest: +SKIP
    >>> summary.files[0].name
    'exp_0000.fits'
    """
    start = time.perf_counter()
    _validate(exposures=exposures, size=size, sources=sources, ccds=ccds, seed=seed,
              blurred_fraction=blurred_fraction, processes=processes)
    check_prefix(prefix)
    if domain not in DOMAINS:
        raise SynthError(f"synth: domain={domain!r} is unknown; use one of {list(DOMAINS)}")
    out_dir = _make_out_dir(out_dir, "the synthetic survey")

    per_exposure = (round(_DENSITY * size * size * ccds) if sources is None else sources)
    per_ccd = [per_exposure // ccds + (1 if k < per_exposure % ccds else 0) for k in range(ccds)]

    root = np.random.SeedSequence(seed)
    survey_rng = np.random.default_rng(root.spawn(1)[0])
    blurred = _pick_blurred(survey_rng, exposures, blurred_fraction)
    jobs = [_Job(index=i, stem=f"{prefix}exp_{i:04d}", out_dir=str(out_dir), size=size, ccds=ccds,
                 per_ccd=tuple(per_ccd), seed=seed, blurred=bool(blurred[i]), domain=domain)
            for i in range(exposures)]

    n_proc = processes if processes is not None else _auto_processes(exposures, size, ccds)
    results = _run_jobs(_render_exposure, jobs, n_proc)

    _remove_stale(out_dir, exposures, prefix)
    truth_path = out_dir / "truth.parquet"
    n_sources = _write_truth(truth_path, results, seed=seed, size=size, ccds=ccds,
                             domain=domain)
    counts: dict[str, int] = {name: 0 for name in CLASSES}
    for res in results:
        for name in res["truth"]["class"]:
            counts[name] += 1
    return SynthSummary(files=[out_dir / f"{job.stem}.fits" for job in jobs], truth=truth_path,
                        n_sources=n_sources, seconds=time.perf_counter() - start, size=size,
                        ccds=ccds, seed=seed, class_counts=counts,
                        psf_fwhm=[res["psf_fwhm"] for res in results],
                        blurred=[job.blurred for job in jobs], domain=domain,
                        conditions=[res["conditions"] for res in results if "conditions" in res])


# --------------------------------------------------------------------------- the run
# (shared with pipeline.simulation.pointed)


def _validate(*, exposures: int, size: int, sources: int | None, ccds: int, seed: int,
              blurred_fraction: float, processes: int | None) -> None:
    """Refuse bad arguments before anything is written (:class:`SynthError`)."""
    _count("exposures", exposures, 9999)
    _int_range("size", size, 128, 16384)
    _count("ccds", ccds, 64)
    _int_range("seed", seed, 0, 2**63 - 1)
    if sources is not None:
        # At most one source per 32x32 px (the default is one per 4,200 px^2).
        cap = max(ccds, ccds * size * size // 1024)
        _int_range("sources", sources, ccds, cap)
    if processes is not None:
        _count("processes", processes, 256)
    fraction("blurred_fraction", blurred_fraction, where="synth", error=SynthError)


def _count(name: str, value: Any, hi: int) -> None:
    """An integer from 1 to ``hi`` (:func:`pipeline.checks.positive_int`, then the cap)."""
    positive_int(name, int(value) if isinstance(value, np.integer) else value, where="synth",
                 error=SynthError)
    if value > hi:
        raise SynthError(f"synth: {name}={value!r} is out of range; use 1 <= {name} <= {hi}")


def _int_range(name: str, value: Any, lo: int, hi: int) -> None:
    """An integer from ``lo`` to ``hi``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SynthError(f"synth: {name}={value!r} must be an integer from {lo} to {hi}")
    if not lo <= value <= hi:
        raise SynthError(f"synth: {name}={value!r} is out of range; use {lo} <= {name} <= {hi}")


def _make_out_dir(out_dir: Path, what: str) -> Path:
    """Create ``out_dir`` (refusing a file there) and return it as a Path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"{out_dir}: exists and is not a folder; choose a new output "
                         f"folder for {what}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _pick_blurred(rng: np.random.Generator, exposures: int, blurred_fraction: float,
                  ) -> np.ndarray:
    """Which exposures are blurred: ``blurred_fraction`` of them, rounded, at random."""
    n_blurred = min(exposures, round(blurred_fraction * exposures))
    blurred = np.zeros(exposures, dtype=bool)
    blurred[rng.permutation(exposures)[:n_blurred]] = True
    return blurred


def _auto_processes(exposures: int, size: int, ccds: int) -> int:
    """Parallel only when there is enough work to pay for starting processes."""
    if exposures < 2 or size * size * ccds < 1024 * 1024:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(exposures, cores))


def _run_jobs(render: Callable[[Any], dict[str, Any]], jobs: list[Any],
              n_proc: int) -> list[dict[str, Any]]:
    """``[render(job) for job in jobs]``, in ``n_proc`` processes when more than one."""
    n_proc = max(1, min(n_proc, len(jobs)))
    if n_proc == 1:
        return [render(job) for job in jobs]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=n_proc, mp_context=ctx) as pool:
        return list(pool.map(render, jobs))


def check_prefix(prefix: str) -> None:
    """Refuse a file-name prefix that is not a plain name (:class:`SynthError`)."""
    if not isinstance(prefix, str) or not re.fullmatch(r"([A-Za-z0-9_-][A-Za-z0-9_.-]*)?", prefix):
        raise SynthError(f"synth: prefix={prefix!r} must be letters, digits, '_', '-' or '.' "
                         "(not first), e.g. 'w_'")


def _remove_stale(out_dir: Path, exposures: int, prefix: str = "") -> None:
    """Delete ``PREFIXexp_NNNN.fits`` left by an earlier run with more exposures."""
    pattern = re.compile(re.escape(prefix) + r"exp_(\d{4,})\.fits")
    for path in out_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= exposures and path.is_file():
            path.unlink()


def _write_table(path: Path, fields: list[tuple[str, Any]], columns: dict[str, list[Any]],
                 meta: dict[str, Any]) -> int:
    """Write a truth table: ``id`` then ``fields``, ``meta`` as JSON; return the row count.

    ``columns`` holds each field's values; the file is written atomically
    (:func:`pipeline.files.atomic_write`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import __version__

    meta = {**meta, "software": f"skysieve {__version__}",
            "coordinates": "0-based pixels, x = column, y = row; ra/dec from WCS origin 0"}
    schema = pa.schema([("id", pa.int64()), *fields],
                       metadata={b"skysieve": json.dumps(to_jsonable(meta)).encode()})
    n = len(columns[fields[0][0]])
    arrays = [pa.array(np.arange(n, dtype=np.int64))]
    arrays += [pa.array(columns[f.name], type=f.type) for f in list(schema)[1:]]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), sink)
    atomic_write(path, sink.getvalue().to_pybytes())
    return n


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
    domain: str = "survey"


def _render_exposure(job: _Job) -> dict[str, Any]:
    """Render one exposure (all its CCDs), write its FITS file, return its truth."""
    if job.domain in WIDE_DOMAINS:
        from pipeline.simulation.wide_exposure import render_exposure

        return render_exposure(job)
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(1, job.index)))
    size, ccds = job.size, job.ccds
    pointing = draw_pointing(rng, job.index, job.blurred)
    psf = pointing.psf

    ncol = math.ceil(math.sqrt(ccds))
    nrow = math.ceil(ccds / ncol)
    pitch = size + CCD_GAP
    half_u = 0.5 * (ncol * pitch - CCD_GAP)   # focal-plane half-widths, px
    half_v = 0.5 * (nrow * pitch - CCD_GAP)

    common = header_cards(pointing, seed=job.seed)
    hdus: list[Any] = []
    truth: dict[str, list[Any]] = {k: [] for k in (
        "ccd", "x", "y", "ra", "dec", "class", "flux", "mag", "size", "psf_fwhm")}
    for k in range(ccds):
        col, row = k % ncol, k // ncol
        # CCD centre on the focal plane, px from its centre (u along x, v along y).
        cu = (col + 0.5) * pitch - 0.5 * CCD_GAP - half_u
        cv = (row + 0.5) * pitch - 0.5 * CCD_GAP - half_v
        header = image_header(pointing, common, crpix=((size + 1) / 2 - cu, (size + 1) / 2 - cv))
        _, centre_fwhm = psf.at(cu / half_u, cv / half_v)
        header["PSF_FWHM"] = round(centre_fwhm, 4)
        if ccds > 1:
            header["EXTNAME"] = f"CCD{k + 1}"
            header["CCDNUM"] = (k + 1, "CCD number")
        image, cat = _render_ccd(rng, pointing, size=size, n=job.per_ccd[k], offset=(cu, cv),
                                 half=(half_u, half_v))
        ra, dec = WCS(header).all_pix2world(cat["x"], cat["y"], 0)
        truth["ccd"] += [k + 1 if ccds > 1 else 0] * len(cat["x"])
        truth["ra"] += list(np.asarray(ra, dtype=float))
        truth["dec"] += list(np.asarray(dec, dtype=float))
        for key in ("x", "y", "class", "flux", "mag", "size", "psf_fwhm"):
            truth[key] += list(cat[key])
        hdus.append(fits.PrimaryHDU(image, header) if ccds == 1 else fits.ImageHDU(image, header))
    if ccds > 1:
        primary = fits.Header()
        for key, (value, comment) in common.items():
            if key not in ("PSF_FWHM", "SKYLEVEL"):
                primary[key] = (value, comment)
        primary["PSF_FWHM"] = (round(psf.fwhm, 4), "[arcsec] true PSF FWHM, focal-plane centre")
        primary["NCCD"] = (ccds, "CCD image extensions")
        primary["RA"] = (round(pointing.ra0, 6), "[deg] pointing")
        primary["DEC"] = (round(pointing.dec0, 6), "[deg] pointing")
        hdus.insert(0, fits.PrimaryHDU(header=primary))

    write_fits(Path(job.out_dir) / f"{job.stem}.fits", hdus)
    return {"stem": job.stem, "blurred": job.blurred, "psf_fwhm": psf.fwhm, "truth": truth}


def _render_ccd(rng: np.random.Generator, pointing: Pointing, *, size: int, n: int,
                offset: tuple[float, float], half: tuple[float, float],
                ) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Draw ``n`` sources, sky and noise on one CCD; return the image and its truth."""
    specs = sample_sources(rng, n, pointing.magzp)
    xy = place(rng, specs, size)
    model = np.zeros((size, size), dtype=np.float32)
    cat = draw_sources(model, specs, xy, psf=pointing.psf, offset=offset, half=half)
    return observe(rng, model, pointing.sky), cat


def _write_truth(path: Path, results: list[dict[str, Any]], *, seed: int, size: int,
                 ccds: int, domain: str = "survey") -> int:
    """Write ``truth.parquet`` (one row per source); return the number of rows."""
    import pyarrow as pa

    wide = domain in WIDE_DOMAINS
    cols: dict[str, list[Any]] = {k: [] for k in (
        "exposure", "ccd", "x", "y", "ra", "dec", "class", "flux", "mag", "size",
        "psf_fwhm", "blurred")}
    if wide:
        cols.update(saturated=[], pixscale=[], response=[])
    for res in results:
        t = res["truth"]
        m = len(t["x"])
        cols["exposure"] += [res["stem"]] * m
        cols["blurred"] += [res["blurred"]] * m
        for key in t:
            cols[key] += t[key]
        if wide:
            cols["pixscale"] += [res["conditions"]["pixscale"]] * m
            cols["response"] += [res["conditions"]["response"]] * m
    fields = [
        ("exposure", pa.string()), ("ccd", pa.int64()),
        ("x", pa.float64()), ("y", pa.float64()), ("ra", pa.float64()), ("dec", pa.float64()),
        ("class", pa.string()), ("flux", pa.float64()), ("mag", pa.float64()),
        ("size", pa.float64()), ("psf_fwhm", pa.float64()), ("blurred", pa.bool_()),
    ]
    meta: dict[str, Any] = {"classes": list(CLASSES), "seed": seed, "size": size, "ccds": ccds,
                            "pixscale": PIXSCALE}
    if wide:
        fields += [("saturated", pa.bool_()), ("pixscale", pa.float64()),
                   ("response", pa.string())]
        meta.update(domain=domain, pixscale=None,
                    exposures={res["stem"]: res["conditions"] for res in results})
    return _write_table(path, fields, cols, meta)
