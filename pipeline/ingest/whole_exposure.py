"""``skysieve ingest --whole-exposure``: one store item per exposure/CCD, the whole image.

HR-CelestialNet's task classifies whole exposures ("is this exposure's target a
galaxy or a nebula/star cluster?") instead of the sources in them.  This module
writes such exposures into the ordinary cutout-store contract
(:mod:`pipeline.store`), so ``skysieve train`` and ``skysieve classify`` run on
it unchanged and the catalogue has one row per exposure/CCD:

- ``image(source, band, y, x)`` float32: item ``k`` is one CCD (2-D image HDU),
  block-averaged by ``downsample`` (NaN-aware: a block's mean over its finite
  pixels, NaN when it has none; trailing rows/columns that do not fill a block
  are dropped and recorded in ``dropped_y``/``dropped_x``), minus the CCD's sky
  level, exactly as the cutout path subtracts it (a scalar from sep's
  background with the sources masked, :func:`pipeline.ingest.detect.detect`).  A
  non-square image is centred in a square NaN frame (NaN = "outside the image",
  as for cutouts) and flagged ``FLAG_EDGE``; ``attrs["stamp"]`` is the square's
  side.
- per-item coordinates: ``source_id = pack_source_id(exposure, ccd, 0)``,
  ``exposure``, ``ccd`` (HDU index), ``x``, ``y`` (the centre of the used area in
  the original CCD's 0-based pixels, x = column, y = row), ``ra``, ``dec`` (WCS
  with origin 0 at that centre; NaN without a WCS), ``psf_fwhm`` (measured on
  the CCD's stars at full resolution as ingest does, header fallback, divided
  by ``downsample``: stored pixels), ``sky``, ``sky_rms`` (ADU, full
  resolution), ``flux`` (sky-subtracted sum over the used area, ADU), ``snr``
  (``flux / (sky_rms sqrt(n_pixels))``), ``flags`` (``FLAG_SATURATED`` when any
  pixel reaches 98% of saturation, ``FLAG_EDGE`` when NaN-padded to a square),
  ``a``, ``b``, ``theta``, ``fwhm``, ``radius`` NaN (no single isophote); ``label`` from the
  truth table's ``target_class``; and ``ny``, ``nx`` (original shape),
  ``dropped_y``, ``dropped_x``.
- attrs: ``item="exposure"``, ``downsample``, ``image_shape`` (the stored image
  before padding, rows x columns), ``pixel_scale`` (arcsec per *stored* pixel)
  and the usual provenance.  ``kind`` stays ``"cutouts"``: the store contract
  (:func:`pipeline.store.validate_store`) accepts that kind only.

Every item must have the same shape: the most common CCD shape wins and a CCD
of another size is a rejects row, as is an unreadable file; neither stops the
run.  One Dask task per exposure measures it (returning a small table), then
one task per output chunk re-reads its CCDs and writes exactly that chunk.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd

from pipeline import config
from pipeline.checks import positive_int
from pipeline.errors import BadExposure, SkysieveError, SourceTableError
from pipeline.ingest.detect import (
    FLAG_EDGE,
    FLAG_SATURATED,
    detect,
    estimate_psf_fwhm,
    header_psf_fwhm,
)
from pipeline.ingest.fits_io import read_ccd
from pipeline.ingest.scan import (
    compute_tasks,
    reject_lines,
    reject_row,
    scan_inputs,
    validate_int,
    validate_paths,
)
from pipeline.ingest.source_table import read_table
from pipeline.store import (
    building,
    check_unique_ids,
    chunk_byte_budget,
    create_store,
    pack_source_id,
    prepare_output,
    write_chunk,
)

__all__ = ["WholeSummary", "block_average", "ingest_whole"]

_MAX_CHUNK_ITEMS = 64     # default chunk: as many items as fit in ingest.chunk-bytes, 1-64
_LABEL_COLUMNS = ("target_class", "label")


@dataclass
class WholeSummary:
    """What :func:`ingest_whole` did.

    Attributes
    ----------
    store : Path or None
        The store written; ``None`` when no exposure was usable.
    n_sources : int
        Items written (one per exposure/CCD).
    n_exposures : int
        Exposures with at least one item.
    side : int
        Side of the stored square images (px, after downsampling).
    downsample : int
        Block-averaging factor.
    rejects : list of dict
        ``{file, hdu, reason}`` rows.
    n_chunks, n_labelled : int
        Chunks written; items with a truth label.
    dropped : tuple of int
        Trailing ``(rows, columns)`` of each CCD that did not fill a block.
    seconds : float
        Wall time.
    """

    store: Path | None
    n_sources: int
    n_exposures: int
    side: int = 0
    downsample: int = 1
    rejects: list[dict[str, Any]] = field(default_factory=list)
    n_chunks: int = 0
    n_labelled: int = 0
    dropped: tuple[int, int] = (0, 0)
    seconds: float = 0.0
    out: Path | None = None

    def describe(self) -> str:
        """A few human lines for the CLI."""
        if self.store is None:
            head = f"no usable exposure; nothing written to {self.out}"
        else:
            head = (f"ingested {self.n_sources} whole image(s) from {self.n_exposures} "
                    f"exposure(s) into {self.store}: {self.side}x{self.side} px each "
                    f"(downsampled x{self.downsample}) in {self.n_chunks} chunk(s), "
                    f"{self.seconds:.1f} s")
            if any(self.dropped):
                head += (f"; dropped the last {self.dropped[0]} row(s) and "
                         f"{self.dropped[1]} column(s) that did not fill a block")
            if self.n_labelled:
                head += f"; {self.n_labelled} labelled from truth"
        return "\n".join([head, *reject_lines(self.rejects)])


def block_average(image: np.ndarray, factor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Block-average a 2-D image by ``factor``, ignoring NaN.

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        Pixels ``image[y, x]``.
    factor : int
        Block side in pixels (1 returns a float32 copy).

    Returns
    -------
    binned : numpy.ndarray, shape (ny // factor, nx // factor), float32
        ``binned[j, i]`` is the mean of the finite pixels of rows
        ``j*factor .. j*factor + factor - 1`` and columns ``i*factor ..``; NaN
        where a block has no finite pixel.
    dropped : (int, int)
        Trailing rows and columns left out because they do not fill a block.

    Examples
    --------
    >>> block_average(np.arange(20.0).reshape(4, 5), 2)[0]
    array([[ 3.,  5.],
           [13., 15.]], dtype=float32)
    """
    factor = positive_int("downsample factor",
                          int(factor) if isinstance(factor, np.integer) else factor)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"block_average needs a 2-D image, got shape {image.shape!r}")
    ny, nx = image.shape
    h, w = ny // factor, nx // factor
    if h == 0 or w == 0:
        raise ValueError(f"image of {ny}x{nx} px is smaller than one {factor}x{factor} block; "
                         "use a smaller downsample factor")
    dropped = (ny - h * factor, nx - w * factor)
    if factor == 1:
        return image.copy(), dropped
    blocks = image[:h * factor, :w * factor].reshape(h, factor, w, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks -> NaN
        binned = np.nanmean(blocks, axis=(1, 3), dtype=np.float64)
    return binned.astype(np.float32), dropped


# ---------------------------------------------------------------------------- tasks
def _measure_exposure(path: str, exposure: str, hdus: list[int], settings: dict[str, Any],
                      factor: int) -> dict[str, Any]:
    """Phase 1 task: sky, PSF, flux and centre of each CCD of one exposure (no pixels back)."""
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for hdu in hdus:
        try:
            ccd = read_ccd(path, hdu)
            ny, nx = ccd.data.shape
            h, w = ny // factor * factor, nx // factor * factor
            if h == 0 or w == 0:
                raise BadExposure(f"{path}[{hdu}]: image of {ny}x{nx} px is smaller than one "
                                  f"{factor}x{factor} block; use a smaller --downsample")
            table, info = detect(ccd.data, threshold=settings["threshold"],
                                 min_area=settings["min_area"],
                                 deblend_cont=settings["deblend_cont"],
                                 saturation=ccd.saturation)
            psf, n_stars = estimate_psf_fwhm(table, saturation=ccd.saturation)
            if not math.isfinite(psf):
                psf = header_psf_fwhm(ccd.header, ccd.pixel_scale)
            used = ccd.data[:h, :w]
            finite = np.isfinite(used)
            n_pix = int(finite.sum())
            flux = float(np.sum(used[finite], dtype=np.float64) - info["sky"] * n_pix)
            noise = info["sky_rms"] * math.sqrt(n_pix)
            flags = 0
            if ccd.saturation is not None and n_pix and float(
                    np.nanmax(used)) >= 0.98 * ccd.saturation:
                flags |= FLAG_SATURATED
            if h // factor != w // factor:
                flags |= FLAG_EDGE  # NaN-padded to a square
            x, y = (w - 1) / 2.0, (h - 1) / 2.0
            if ccd.wcs is not None:
                ra, dec = (float(v) for v in ccd.wcs.pixel_to_world_values(x, y))
            else:
                ra = dec = math.nan
            rows.append({
                "exposure": exposure, "ccd": hdu, "path": path, "x": x, "y": y,
                "ra": ra, "dec": dec, "flux": flux,
                "snr": flux / noise if noise > 0 else math.nan,
                "psf_fwhm": psf / factor, "n_stars": n_stars,
                "sky": info["sky"], "sky_rms": info["sky_rms"], "flags": flags,
                "ny": ny, "nx": nx, "dropped_y": ny - h, "dropped_x": nx - w,
                "band": ccd.band, "pixel_scale": ccd.pixel_scale * factor})
        except BadExposure as exc:
            rejects.append(reject_row(path, hdu, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad CCD never stops the night
            rejects.append(reject_row(path, hdu, f"{path}[{hdu}]: unexpected "
                                   f"{type(exc).__name__}: {exc}"))
    return {"rows": rows, "rejects": rejects}


def _write_items(store: str, start: int, rows: pd.DataFrame, factor: int, side: int) -> int:
    """Phase 2 task: downsample, sky-subtract and pad the CCDs of one chunk; write it."""
    out = np.full((len(rows), 1, side, side), np.nan, dtype=np.float32)
    for k, row in enumerate(rows.itertuples(index=False)):
        ccd = read_ccd(row.path, int(row.ccd), check_values=False)
        binned, _ = block_average(ccd.data, factor)
        del ccd
        binned -= np.float32(row.sky)
        h, w = binned.shape
        top, left = (side - h) // 2, (side - w) // 2
        out[k, 0, top:top + h, left:left + w] = binned
    write_chunk(store, start, out)
    return len(rows)


# ---------------------------------------------------------------------------- helpers
def _truth_labels(truth: str | Path | pd.DataFrame) -> tuple[dict[tuple[str, int], str], bool]:
    """``{(exposure, ccd): target_class}`` from a truth table (ccd -1 when it has none)."""
    table = read_table(truth, what="truth table")
    where = "truth table" if isinstance(truth, pd.DataFrame) else str(truth)
    label = next((c for c in _LABEL_COLUMNS if c in table.columns), None)
    if "exposure" not in table.columns or label is None:
        raise SourceTableError(
            f"{where}: a whole-exposure truth table needs 'exposure' and 'target_class' (or "
            f"'label') columns, one row per exposure (as `skysieve synth --pointed` writes); "
            f"it has {list(table.columns)!r}")
    has_ccd = "ccd" in table.columns
    exposures = table["exposure"].astype(str).to_numpy()
    ccds = (pd.to_numeric(table["ccd"], errors="coerce").fillna(-1).astype(np.int64).to_numpy()
            if has_ccd else np.full(len(table), -1, np.int64))
    keys = list(zip(exposures.tolist(), ccds.tolist()))
    dups = sorted({k for k, n in Counter(keys).items() if n > 1})
    if dups:
        raise SourceTableError(f"{where}: {len(dups)} exposure(s) have more than one row "
                               f"(e.g. {dups[:3]!r}); a whole-exposure truth table has one row "
                               "per exposure (and ccd)")
    labels = table[label].fillna("").astype(str).to_numpy().tolist()
    return dict(zip(keys, labels)), has_ccd


def _reference_shape(jobs: list[dict[str, Any]]) -> tuple[int, int]:
    """The most common CCD shape (the first seen among ties)."""
    counts = Counter(job["shape"] for job in jobs)
    best = max(counts.values())
    return next(job["shape"] for job in jobs if counts[job["shape"]] == best)


def _default_chunk(side: int) -> int:
    """Items per chunk from ``ingest.chunk-bytes`` (``ingest.chunk-sources`` counts cutouts only)."""
    return int(max(1, min(_MAX_CHUNK_ITEMS, chunk_byte_budget(error=SkysieveError)
                                                // (4 * side * side))))


# ---------------------------------------------------------------------------- ingest
def ingest_whole(paths: Sequence[Path], out: Path, *, downsample: int = 1,
                 truth: Path | None = None, overwrite: bool = False,
                 chunk_sources: int | None = None) -> WholeSummary:
    """Write each exposure/CCD whole, block-averaged, as one item of a cutout store.

    Parameters
    ----------
    paths : sequence of Path
        FITS files (plain, ``.fits.gz`` or ``.fits.fz``); every 2-D image HDU
        is one item.
    out : Path
        The store directory to write (``STORE.zarr``).
    downsample : int, default: 1
        Block-averaging factor, 1-256 (NaN-aware; trailing rows/columns that do
        not fill a block are dropped and recorded).
    truth : Path, optional
        Table (Parquet/CSV/FITS) with ``exposure``, ``target_class`` (or
        ``label``) and optionally ``ccd``, one row per exposure: adds the
        ``label`` coordinate ("" where an exposure has no row).
    overwrite : bool, default: False
        Replace an existing store at ``out``.
    chunk_sources : int, optional
        Items per chunk; default as many as fit in config ``ingest.chunk-bytes``
        (1-64; ``ingest.chunk-sources`` applies to cutouts, not here).

    Returns
    -------
    WholeSummary
        ``store is None`` (and nothing written) when no exposure was usable.

    Raises
    ------
    SkysieveError
        Bad arguments, ``out`` exists without ``overwrite`` (StoreError), or a
        bad truth table (SourceTableError).  Bad exposures and CCDs of another
        size do not raise: they are rejects rows.

    Examples
    --------
    >>> ingest_whole(sorted(folder.glob("exp_*.fits")), tmp_path / "whole.zarr",
    ...              downsample=4, truth=folder / "truth.parquet")  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    paths = validate_paths(paths)
    factor = validate_int("downsample", downsample, 1, 256)
    if chunk_sources is not None:
        chunk_sources = validate_int("chunk_sources", chunk_sources, 1, 1 << 20)
    settings = {"threshold": float(config.resolve("ingest.detect-threshold", None)),
                "min_area": int(config.resolve("ingest.min-area", None)),
                "deblend_cont": float(config.resolve("ingest.deblend-cont", None))}
    out = prepare_output(out, overwrite=overwrite)  # refuse before any work
    labels, by_ccd = _truth_labels(truth) if truth is not None else ({}, False)

    # Phase 0: checksums and CCD lists, one task per file.
    scans, inputs, rejects = scan_inputs(paths, with_headers=False)
    jobs: list[dict[str, Any]] = []
    for scan, name in scans:
        for hdu, _, shape in scan["ccds"]:
            jobs.append({"path": scan["path"], "exposure": name, "hdu": hdu, "shape": shape})

    # Every item has the same shape: the most common one; other sizes are rejects.
    shape = _reference_shape(jobs) if jobs else (0, 0)
    kept = []
    for job in jobs:
        if job["shape"] == shape:
            kept.append(job)
            continue
        rejects.append(reject_row(job["path"], job["hdu"], (
            f"{job['path']}[{job['hdu']}]: image is {job['shape'][0]}x{job['shape'][1]} px "
            f"(rows x columns) but this store's images are {shape[0]}x{shape[1]} px (the most "
            "common size); ingest exposures of another size into a separate store")))

    # Phase 1: one task per exposure; small tables come back.
    per_exposure: dict[tuple[str, str], list[int]] = {}
    for job in kept:
        per_exposure.setdefault((job["path"], job["exposure"]), []).append(job["hdu"])
    results = compute_tasks([dask.delayed(_measure_exposure, pure=False)(path, name, hdus, settings,
                                                                     factor)
                        for (path, name), hdus in per_exposure.items()])
    rows = []
    for res in results:
        rows.extend(res["rows"])
        rejects.extend(res["rejects"])
    summary = WholeSummary(store=None, n_sources=0, n_exposures=0, downsample=factor,
                           rejects=rejects, out=out)
    if not rows:
        summary.seconds = time.perf_counter() - t0
        return summary

    table = pd.DataFrame(rows).sort_values(["exposure", "ccd"], kind="stable",
                                           ignore_index=True)
    table["source_id"] = pack_source_id(table["exposure"].to_numpy(), table["ccd"].to_numpy(),
                                        np.zeros(len(table), np.int64))
    check_unique_ids(table["source_id"].to_numpy(np.int64),
                     (table["exposure"] + "[" + table["ccd"].astype(str) + "]").to_numpy(),
                     where=str(out))
    for name in ("a", "b", "theta", "fwhm", "radius"):
        table[name] = np.float32(np.nan)
    if truth is not None:
        table["label"] = [labels.get((e, int(c) if by_ccd else -1), "")
                          for e, c in zip(table["exposure"], table["ccd"])]
    h, w = shape[0] // factor, shape[1] // factor
    side = max(h, w)
    chunk = chunk_sources or _default_chunk(side)
    bands = sorted(set(table["band"]))
    scales = table["pixel_scale"].to_numpy(np.float64)
    scales = scales[np.isfinite(scales)]
    dropped = (int(table["dropped_y"].max()), int(table["dropped_x"].max()))

    with building(out, overwrite=overwrite) as tmp:
        create_store(tmp, table, stamp=side, bands=bands if len(bands) == 1 else ["mixed"],
                     chunk_sources=chunk,
                     pixel_scale=float(np.median(scales)) if scales.size else math.nan,
                     inputs=inputs, rejects=rejects,
                     extra_attrs={"item": "exposure", "downsample": factor,
                                  "image_shape": [h, w], "dropped": list(dropped),
                                  "band_names": bands, "detect": settings})
        _add_coords(tmp, table)
        items = table[["path", "ccd", "sky"]]
        tasks = [dask.delayed(_write_items, pure=False)(str(tmp), start,
                                                        items.iloc[start:start + chunk],
                                                        factor, side)
                 for start in range(0, len(table), chunk)]
        written = sum(compute_tasks(tasks))
        if written != len(table):
            raise SkysieveError(f"{out}: wrote {written} images, expected {len(table)}")
    summary.store = out
    summary.n_sources = len(table)
    summary.n_exposures = int(table["exposure"].nunique())
    summary.side = side
    summary.n_chunks = len(tasks)
    summary.dropped = dropped
    summary.n_labelled = int((table["label"] != "").sum()) if "label" in table.columns else 0
    summary.seconds = time.perf_counter() - t0
    return summary


def _add_coords(store: Path, table: pd.DataFrame) -> None:
    """Add the whole-exposure coordinates: original shape and dropped rows/columns."""
    import xarray as xr
    import zarr
    from zarr.codecs import ZstdCodec

    names = ("ny", "nx", "dropped_y", "dropped_x")
    extra = xr.Dataset(coords={n: ("source", table[n].to_numpy(np.int32)) for n in names})
    extra.attrs = dict(zarr.open_group(str(store), mode="r").attrs)  # mode "a" rewrites them
    encoding = {n: {"chunks": (max(1, len(table)),), "compressors": [ZstdCodec(level=3)]}
                for n in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
        extra.to_zarr(store, mode="a", zarr_format=3, encoding=encoding)
