"""Pointed exposures: one large target per exposure, with whole-exposure truth.

``skysieve synth --pointed`` renders exposures for whole-exposure
classification (HR-CelestialNet's task: is this exposure's target a galaxy or a
nebula/star cluster?). Each is centred on one large target among field stars
and background galaxies, drawn with the sources of
:mod:`pipeline.simulation.sources` through the instrument of
:mod:`pipeline.simulation.instrument`, and ``truth.parquet`` has one row per
exposure.

Coordinates are 0-based pixels, ``x`` = column, ``y`` = row (``image[y, x]``),
and sky positions come from the WCS with origin 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.simulation.instrument import (
    GSPARAMS_KW,
    PIXSCALE,
    draw_into,
    draw_pointing,
    draw_sources,
    header_cards,
    image_header,
    observe,
    write_fits,
)
from pipeline.simulation.sources import BUILDERS, GALAXY_TYPES, field_sources, nebula_cluster, place
from pipeline.simulation.survey import (
    CLASSES,
    _auto_processes,
    _make_out_dir,
    _pick_blurred,
    _remove_stale,
    check_prefix,
    _run_jobs,
    _validate,
    _write_table,
)

__all__ = ["TARGET_CLASSES", "TARGET_MORPHOLOGIES", "PointedSummary", "synthesize_pointed"]

#: Target classes of the pointed exposures (HR-CelestialNet's task), in model-output order.
TARGET_CLASSES: tuple[str, ...] = ("galaxy", "nebula_cluster")
#: The detailed morphologies of each target class.
TARGET_MORPHOLOGIES: dict[str, tuple[str, ...]] = {
    "galaxy": GALAXY_TYPES,
    "nebula_cluster": ("star_cluster", "nebula"),
}
_TARGET_RADIUS = (0.05, 0.11)   # target half-light radius, as a fraction of the frame side
_TARGET_MU = (19.5, 21.0)       # its mean surface brightness within that radius, mag/arcsec^2
_TARGET_JITTER = 0.02           # its centre is within this fraction of the side of the middle
_TARGET_EXTENT = 0.75           # its drawn extent (radius) at most this fraction of the side
_FIELD_DENSITY = 300 / 2048**2  # field stars and background galaxies per px^2


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
                  f"{'s' * (n_exp != 1)} of {self.size}x{self.size} px at {PIXSCALE}\"/px, "
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


def synthesize_pointed(out_dir: Path, *, exposures: int = 8, size: int = 1024, seed: int = 0,
                       blurred_fraction: float = 0.25, processes: int | None = None,
                       prefix: str = "") -> PointedSummary:
    """Render pointed exposures, each centred on one large target, and their truth table.

    The whole-exposure task of HR-CelestialNet: is this exposure's target a
    galaxy or a nebula/star cluster?  Each exposure (one CCD, primary HDU) has
    one large target near its centre (half-light radius 5-11% of the frame side,
    less for the few whose drawn extent would pass 75% of the side; within 2% of
    the side from the middle): a galaxy of a random morphology
    (elliptical, lenticular, spiral, irregular) or a nebula/star cluster (a
    resolved star cluster or an emission nebula), drawn with the GalSim
    machinery of :func:`pipeline.simulation.survey.synthesize`, plus field stars
    and small background galaxies (about 300 per 2048x2048 px, kept clear of the
    target's core), the same Kolmogorov PSF (deliberately blurred on some
    exposures), sky, Poisson and read noise, saturation and a celestial TAN WCS.
    Target classes are balanced (half each, the odd one a galaxy), so two or more
    exposures hold both classes.  The header does not name the class.

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
        Share of exposures deliberately blurred (as in
        :func:`pipeline.simulation.survey.synthesize`).
    processes : int or None, default: None
        Worker processes; ``None`` picks from the cores and the work. The output
        does not depend on it.
    prefix : str, default: ""
        Start of every file name and truth ``exposure``, as for
        :func:`pipeline.simulation.survey.synthesize`.

    Returns
    -------
    PointedSummary

    Raises
    ------
    SynthError
        A bad argument (before anything is written), or ``out_dir`` is a file.

    Notes
    -----
    ``truth.parquet`` has one row per exposure: ``id``, ``exposure`` (file stem),
    ``ccd`` (0), ``target_class`` (``galaxy`` | ``nebula_cluster``),
    ``morphology`` (``elliptical``, ``lenticular``, ``spiral``, ``irregular``,
    ``star_cluster`` or ``nebula``), ``class`` (the target in the survey's
    :data:`~pipeline.simulation.survey.CLASSES`, so ``skysieve ingest --truth``
    labels the target's detection), ``x``, ``y`` (0-based target centre, x =
    column, y = row), ``ra``, ``dec`` (deg, WCS origin 0), ``size`` (half-light
    radius, arcsec), ``radius_px`` (the same in px), ``flux`` (ADU), ``mag``,
    ``psf_fwhm`` (arcsec, at the target), ``psf_model``, ``blurred`` and
    ``n_field`` (field sources drawn).

    Examples
    --------
    >>> summary = synthesize_pointed(tmp_path, exposures=2, size=256)  # doctest: +SKIP
    >>> sorted(summary.target_class)
    ['galaxy', 'nebula_cluster']
    """
    start = time.perf_counter()
    _validate(exposures=exposures, size=size, sources=None, ccds=1, seed=seed,
              blurred_fraction=blurred_fraction, processes=processes)
    check_prefix(prefix)
    out_dir = _make_out_dir(out_dir, "the pointed exposures")

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    blurred = _pick_blurred(rng, exposures, blurred_fraction)
    n_galaxy = (exposures + 1) // 2
    targets = np.array(["galaxy"] * n_galaxy + ["nebula_cluster"] * (exposures - n_galaxy))
    targets = targets[rng.permutation(exposures)]
    morphs = [str(rng.choice(TARGET_MORPHOLOGIES[str(t)])) for t in targets]
    jobs = [_PointedJob(index=i, stem=f"{prefix}exp_{i:04d}", out_dir=str(out_dir), size=size,
                        seed=seed, blurred=bool(blurred[i]), target_class=str(targets[i]),
                        morphology=morphs[i])
            for i in range(exposures)]
    n_proc = processes if processes is not None else _auto_processes(exposures, size, 1)
    results = _run_jobs(_render_pointed, jobs, n_proc)

    _remove_stale(out_dir, exposures, prefix)
    truth_path = out_dir / "truth.parquet"
    _write_pointed_truth(truth_path, results, seed=seed, size=size)
    return PointedSummary(files=[out_dir / f"{job.stem}.fits" for job in jobs],
                          truth=truth_path, seconds=time.perf_counter() - start, size=size,
                          seed=seed, target_class=[job.target_class for job in jobs],
                          morphology=[job.morphology for job in jobs],
                          psf_fwhm=[res["truth"]["psf_fwhm"] for res in results],
                          blurred=[job.blurred for job in jobs])


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


def _render_pointed(job: _PointedJob) -> dict[str, Any]:
    """Render one pointed exposure, write its FITS file, return its one-row truth."""
    import galsim
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(2, job.index)))
    size = job.size
    pointing = draw_pointing(rng, job.index, job.blurred)
    psf, magzp = pointing.psf, pointing.magzp
    half = (size / 2, size / 2)       # the whole focal plane is this one CCD

    # The target: size, brightness and profile.
    r_px = size * float(rng.uniform(*_TARGET_RADIUS))
    radius = r_px * PIXSCALE
    mag = float(rng.uniform(*_TARGET_MU)) - 2.5 * math.log10(2 * math.pi * radius**2)
    flux = 10 ** (-0.4 * (mag - magzp))
    if job.target_class == "galaxy":
        profile, extent = BUILDERS[job.morphology](rng, radius)
    else:
        profile, extent = nebula_cluster(rng, radius, form=job.morphology)
    limit = _TARGET_EXTENT * size * PIXSCALE  # arcsec
    if extent > limit:  # very flattened or extended: shrink it, or GalSim's FFT explodes
        shrink = limit / extent
        profile, extent = profile.dilate(shrink), limit
        radius, r_px = radius * shrink, r_px * shrink
        mag = mag - 5.0 * math.log10(shrink)  # same surface brightness
        flux = 10 ** (-0.4 * (mag - magzp))
    cx, cy = (size - 1) / 2 + rng.uniform(-1.0, 1.0, 2) * _TARGET_JITTER * size

    # Field stars and background galaxies, clear of the target's core.
    specs = field_sources(rng, max(1, round(_FIELD_DENSITY * size * size)), magzp)
    xy = place(rng, specs, size)
    keep = np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) > 1.5 * r_px
    specs = [s for s, k in zip(specs, keep) if k]
    model = np.zeros((size, size), dtype=np.float32)
    draw_sources(model, specs, xy[keep], psf=psf, offset=(0.0, 0.0), half=half)

    local_psf, fwhm = psf.at((cx - (size - 1) / 2) / half[0], (cy - (size - 1) / 2) / half[1])
    # A frame-filling target under a defocus PSF (slow Fourier fall-off of its top hat) needs
    # FFTs up to ~8.6k^2 (1.7 GB) at 2048 px: above GalSim's default bound, so raise it.
    big = galsim.GSParams(**GSPARAMS_KW, maximum_fft_size=12288)
    obj = galsim.Convolve(profile.withFlux(flux), local_psf, gsparams=big)
    # The stamp reaches the frame's far edges from (cx, cy) and no further (a larger one
    # only grows GalSim's FFT).
    reach = math.ceil(extent / PIXSCALE + 3.0 * fwhm / PIXSCALE) + 4
    cover = math.ceil(max(cx, cy, size - 1 - cx, size - 1 - cy)) + 2
    draw_into(model, obj, cx, cy, min(reach, cover))
    image = observe(rng, model, pointing.sky)

    header = image_header(pointing, header_cards(pointing, seed=job.seed, kind="target"),
                          crpix=((size + 1) / 2, (size + 1) / 2))
    header["PSF_FWHM"] = (round(fwhm, 4), "[arcsec] true PSF FWHM at the target")
    ra, dec = WCS(header).all_pix2world([cx], [cy], 0)
    write_fits(Path(job.out_dir) / f"{job.stem}.fits", [fits.PrimaryHDU(image, header)])
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
    """Write the one-row-per-exposure ``truth.parquet``."""
    import pyarrow as pa

    fields = [
        ("exposure", pa.string()), ("ccd", pa.int64()),
        ("target_class", pa.string()), ("morphology", pa.string()), ("class", pa.string()),
        ("x", pa.float64()), ("y", pa.float64()), ("ra", pa.float64()), ("dec", pa.float64()),
        ("size", pa.float64()), ("radius_px", pa.float64()), ("flux", pa.float64()),
        ("mag", pa.float64()), ("psf_fwhm", pa.float64()), ("psf_model", pa.string()),
        ("blurred", pa.bool_()), ("n_field", pa.int64()),
    ]
    rows = [res["truth"] for res in results]
    columns = {name: [r[name] for r in rows] for name, _ in fields}
    meta = {"kind": "pointed", "target_classes": list(TARGET_CLASSES),
            "morphologies": TARGET_MORPHOLOGIES, "classes": list(CLASSES), "seed": seed,
            "size": size, "pixscale": PIXSCALE}
    _write_table(path, fields, columns, meta)
