"""``skysieve ingest``: FITS exposures -> Zarr cutout store, as a Dask graph.

Each CCD is read once.  The graph keeps pixels off the client and the scheduler:

0. one task per file: checksum, list its CCDs (2-D image HDUs)
   (:mod:`pipeline.ingest.scan`, shared with ``--whole-exposure``);
1. one task per CCD: open, background, detect (or measure forced positions),
   estimate the PSF FWHM; cut every source's stamp, subtract its sky, measure
   the per-stamp statistics (:mod:`pipeline.imaging.stamp_stats`) and the CCD's PSF
   ellipticity (:mod:`pipeline.imaging.psf_shape`), and spill the
   stamps to one ``.npy`` file in a scratch directory next to the output
   (:func:`pipeline.store.scratch`).  It returns only a small table of sources
   (statistics included), never pixels;
2. the client sorts the sources (exposure, ccd, detection), gives each a row
   and a ``source_id``, matches truth labels (forced positions and truth:
   :mod:`pipeline.ingest.source_table`), and creates the store (coords, the
   statistics, attrs, an empty ``image``) in a hidden sibling directory;
3. one task per output shard (Zarr v3 sharding, config ``ingest.shard-bytes``; per
   chunk in an unsharded store): it copies its rows' stamps from the spill files
   (memory-mapped; a shard's rows are a few runs of consecutive spilled stamps) into
   exactly its own shard, a chunk at a time.  Memory per task: one chunk.  When one
   task fails, the store is marked aborted (tasks not yet started write nothing) and
   the running ones are awaited before the temporary store is removed.

The spill costs disk, not time: one night's stamps once more, next to the output,
while the store is built; the scratch directory goes when ingest returns or fails,
and a killed run's is swept by the next (:func:`pipeline.store.sweep_stale_temporaries`).

The HEALPix index of every source (``healpix``, nested, order
``classify.healpix-order``, recorded in ``attrs["healpix_order"]``) is computed
once here, so classify can read it.

The store is renamed into place only when whole (:func:`pipeline.store.building`).
A bad file or HDU becomes a rejects row ``{file, hdu, reason}`` (``hdu`` = -1
for the whole file or for a source-table row) and never stops the run; a spill
that cannot be written (a full disk) stops it.  Tasks run on the current Dask
client when there is one (the CLI opens it), else on the local threaded scheduler.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import dask
import numpy as np
import pandas as pd

from pipeline import config
from pipeline.errors import BadExposure, SkysieveError
from pipeline.imaging.cutouts import cut_stamps, stamp_touches_edge
from pipeline.imaging.stamp_stats import STAMP_STATS, stamp_statistics
from pipeline.ingest.sky_index import healpix_index
from pipeline.imaging.psf_shape import psf_ellipticity
from pipeline.ingest.detect import (FLAG_BLENDED, FLAG_EDGE, FLAG_SATURATED, detect,
                                    estimate_psf_fwhm, header_psf_fwhm, measure_forced)
from pipeline.ingest.fits_io import read_ccd
from pipeline.ingest.scan import (
    compute_tasks,
    reject_lines,
    reject_row,
    scan_inputs,
    validate_int,
    validate_paths,
)
from pipeline.ingest.source_table import (
    match_truth,
    place_forced,
    read_source_table,
    read_truth_table,
)
from pipeline.store import (
    abort_requested,
    building,
    check_unique_ids,
    create_store,
    pack_source_id,
    prepare_output,
    request_abort,
    scratch,
    sources_per_chunk,
    sources_per_shard,
    write_chunks,
)

__all__ = ["IngestSummary", "ingest"]


@dataclass
class IngestSummary:
    """What an ingest did.

    Attributes
    ----------
    store : Path or None
        The store written; ``None`` when nothing usable was found.
    n_sources, n_exposures, n_ccds : int
        Cutouts written; exposures and CCDs measured successfully.
    rejects : list of dict
        ``{file, hdu, reason}`` rows (``hdu`` -1: the whole file, or a table row).
    seconds : float
        Wall time.
    stamp, n_chunks, n_labelled : int
        Stamp side (px), chunks written, sources with a truth label.
    phases : dict of str to float
        Wall seconds of each phase: ``scan`` (checksums, CCD lists), ``measure``
        (detection and measurement), ``store`` (rows, ids, the store's coordinates),
        ``write`` (stamps and statistics, shard by shard), ``commit``.
    """

    store: Path | None
    n_sources: int
    n_exposures: int
    n_ccds: int
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stamp: int = 0
    n_chunks: int = 0
    n_labelled: int = 0
    out: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """A few human lines for the CLI."""
        if self.store is None:
            head = (f"no sources ingested from {self.n_exposures} usable exposure(s); nothing "
                    f"written to {self.out}")
        else:
            head = (f"ingested {self.n_sources:,} sources from {self.n_exposures} exposure(s) "
                    f"({self.n_ccds} CCD(s)) into {self.store}: {self.n_chunks} chunk(s) of "
                    f"{self.stamp}x{self.stamp} px stamps in {self.seconds:.1f} s")
            if self.n_labelled:
                head += f"; {self.n_labelled:,} labelled from truth"
        return "\n".join([head, *reject_lines(self.rejects)])


# ---------------------------------------------------------------------------- tasks
def _measure_ccd(path: str, exposure: str, hdu: int, settings: dict[str, Any],
                 forced: pd.DataFrame | None, stamp: int, spill: str) -> dict[str, Any]:
    """Phase 1 task: detect/measure one CCD, cut its stamps into ``spill``; returns a small table.

    The table's rows are sorted by ``detection`` (the store's order within a CCD); row
    ``k`` of the table is stamp ``k`` of ``spill`` (``(n, stamp, stamp)`` float32 ``.npy``,
    sky-subtracted, NaN off the CCD).  A CCD that cannot be measured is a reject; a spill
    that cannot be written raises (the run stops: a full disk is not one bad exposure).
    """
    try:
        ccd, table, psf, n_stars = _measure(path, exposure, hdu, settings, forced)
    except BadExposure as exc:
        return {"ok": False, "reject": reject_row(path, hdu, str(exc))}
    except Exception as exc:  # noqa: BLE001 - one bad CCD never stops the night
        return {"ok": False, "reject": reject_row(
            path, hdu, f"{path}[{hdu}]: unexpected {type(exc).__name__}: {exc}")}
    table = table.sort_values("detection", kind="stable", ignore_index=True)
    stamps, _ = cut_stamps(ccd.data, table["x"].to_numpy(), table["y"].to_numpy(), stamp)
    stamps -= table["sky"].to_numpy(np.float32)[:, None, None]
    for name, values in _statistics(stamps).items():
        table[name] = values
    table["psf_e1"], table["psf_e2"] = _psf_ellipticity(stamps, table, psf).T
    np.save(spill, stamps)
    return {"ok": True, "table": table, "band": ccd.band, "pixel_scale": ccd.pixel_scale,
            "psf_fwhm": psf, "n_stars": n_stars}


def _measure(path: str, exposure: str, hdu: int, settings: dict[str, Any],
             forced: pd.DataFrame | None) -> tuple[Any, pd.DataFrame, float, int]:
    """The CCD, its sources (positions, photometry, sky coordinates), PSF FWHM, stars used."""
    ccd = read_ccd(path, hdu)
    table, _ = detect(ccd.data, threshold=settings["threshold"], min_area=settings["min_area"],
                      deblend_cont=settings["deblend_cont"], saturation=ccd.saturation)
    psf, n_stars = estimate_psf_fwhm(table, saturation=ccd.saturation)
    if not math.isfinite(psf):
        psf = header_psf_fwhm(ccd.header, ccd.pixel_scale)
    if forced is not None:
        radius = 1.5 * psf if math.isfinite(psf) else 5.0
        table, _ = measure_forced(ccd.data, forced["x"].to_numpy(), forced["y"].to_numpy(),
                                  radius=max(radius, 2.0))
        table["detection"] = forced["row"].to_numpy(np.int64)
        if "source_id" in forced.columns:
            table["source_id"] = forced["source_id"].to_numpy(np.int64)
    x, y = table["x"].to_numpy(), table["y"].to_numpy()
    if ccd.wcs is not None and len(table):
        ra, dec = ccd.wcs.pixel_to_world_values(x, y)
    else:
        ra = dec = np.full(len(table), np.nan)
    table["ra"] = np.asarray(ra, np.float64)
    table["dec"] = np.asarray(dec, np.float64)
    table["psf_fwhm"] = np.float32(psf)
    table["exposure"] = exposure
    table["ccd"] = np.int16(hdu)
    table["path"] = path
    table["_ny"], table["_nx"] = ccd.data.shape
    table["_scale"] = ccd.pixel_scale
    return ccd, table, psf, n_stars


def _psf_ellipticity(stamps: np.ndarray, table: pd.DataFrame, psf: float) -> np.ndarray:
    """``(n, 2)``: the CCD's PSF ellipticity for every source, from its bright, clean, compact
    stamps (:func:`pipeline.imaging.psf_shape.psf_ellipticity`; NaN with fewer than 5)."""
    clean = (table["flags"].to_numpy() & (FLAG_SATURATED | FLAG_BLENDED)) == 0
    with np.errstate(invalid="ignore"):
        compact = clean & (table["snr"].to_numpy() >= 20) & (table["fwhm"].to_numpy() <= 1.3 * psf)
    idx = np.flatnonzero(compact)
    idx = idx[np.argsort(-table["snr"].to_numpy()[idx], kind="stable")]  # the brightest first
    e = psf_ellipticity(stamps[idx], table["stamp_bg"].to_numpy()[idx],
                        table["stamp_noise"].to_numpy()[idx])
    return np.repeat(e[None], len(table), axis=0)


def _statistics(stamps: np.ndarray, block: int = 1024) -> dict[str, np.ndarray]:
    """:func:`pipeline.imaging.stamp_stats.stamp_statistics` of one band's ``(n, y, x)`` stamps,
    ``block`` at a time (bounded temporaries), as flat table columns."""
    parts = [stamp_statistics(stamps[i:i + block, None]) for i in range(0, len(stamps), block)]
    if not parts:
        return {name: np.empty(0, np.float32) for name in STAMP_STATS}
    return {name: np.concatenate([p[name] for p in parts]).reshape(len(stamps))
            for name in STAMP_STATS}


def _copy_shard_task(store: str, start: int, segments: list[tuple[str, int, int]],
                     chunk_sources: int) -> int:
    """Phase 2 task: copy spilled stamps into rows ``[start, ...)`` (a shard, or a chunk).

    ``segments`` are ``(spill file, first stamp, count)`` runs that, in order, fill the
    rows; the stamps are read into one chunk's buffer at a time with plain reads (no
    memory map, whose touched pages would count in the worker's RSS) and streamed
    (:func:`pipeline.store.write_chunks`), so a task holds one chunk.  The statistics
    were written with the store.

    Returns the rows written: 0, writing nothing, once another task failed
    (:func:`pipeline.store.request_abort`).
    """
    if abort_requested(store):
        return 0
    total = sum(count for _, _, count in segments)

    def blocks() -> Iterator[np.ndarray]:
        pending = [list(seg) for seg in reversed(segments)]
        for lo in range(0, total, chunk_sources):
            block: np.ndarray | None = None
            filled, n = 0, min(chunk_sources, total - lo)
            while filled < n:
                file, first, count = pending[-1]
                take = min(n - filled, count)
                stamps = _read_spill(file, first, take)
                if block is None:
                    block = np.empty((n, 1, *stamps.shape[1:]), np.float32)
                block[filled:filled + take, 0] = stamps
                filled += take
                if take == count:
                    pending.pop()
                else:
                    pending[-1][1:] = [first + take, count - take]
            yield block

    return write_chunks(store, start, blocks(), statistics=False)


def _read_spill(file: str, first: int, count: int) -> np.ndarray:
    """Stamps ``[first, first + count)`` of a spill ``.npy``, read (not mapped)."""
    header = np.load(file, mmap_mode="r")  # the header only: shape, dtype, data offset
    out = np.empty((count, *header.shape[1:]), header.dtype)
    with open(file, "rb") as f:
        f.seek(header.offset + first * (out.itemsize * math.prod(header.shape[1:])))
        got = f.readinto(memoryview(out).cast("B"))
    if got != out.nbytes or first + count > header.shape[0]:
        raise SkysieveError(f"{file}: spill holds {header.shape[0]} stamps, cannot read "
                            f"{count} from {first} (was the scratch directory changed?)")
    return out


def _segments(spill_ids: np.ndarray, spill_rows: np.ndarray, files: list[str], start: int,
              stop: int) -> list[tuple[str, int, int]]:
    """The ``(file, first stamp, count)`` runs of rows ``[start, stop)``."""
    ids = spill_ids[start:stop]
    cuts = [0, *(np.flatnonzero(np.diff(ids)) + 1).tolist(), len(ids)]
    return [(files[ids[a]], int(spill_rows[start + a]), b - a) for a, b in zip(cuts, cuts[1:])]


# ---------------------------------------------------------------------------- ingest
def ingest(paths: Sequence[str | Path], out: str | Path, *,
           sources: str | Path | pd.DataFrame | None = None,
           truth: str | Path | pd.DataFrame | None = None, stamp: int | None = None,
           overwrite: bool = False, chunk_sources: int | None = None,
           threshold: float | None = None, min_area: int | None = None,
           deblend_cont: float | None = None) -> IngestSummary:
    """Detect sources in FITS exposures and write their cutouts to a Zarr store.

    Parameters
    ----------
    paths : sequence of str or Path
        FITS files (plain, ``.fits.gz`` or tile-compressed ``.fits.fz``);
        every 2-D image HDU is a CCD.
    out : str or Path
        The store directory to write (``STORE.zarr``).
    sources : path or DataFrame, optional
        Forced cutouts instead of detection: Parquet/CSV/FITS table with
        ``ra``/``dec`` (deg) or ``x``/``y`` (0-based px; plus ``exposure`` and
        optional ``ccd``), optional ``source_id``.
    truth : path or DataFrame, optional
        Truth table (``exposure``, ``x``, ``y``, ``class``, optional ``ccd``);
        adds the ``label`` coordinate by nearest position.
    stamp : int, optional
        Stamp side in px (config ``ingest.stamp``).
    overwrite : bool, default: False
        Replace an existing store at ``out``.
    chunk_sources : int, optional
        Cutouts per chunk; default config ``ingest.chunk-sources`` when set,
        else as many as fit in ``ingest.chunk-bytes``
        (:func:`pipeline.store.sources_per_chunk`).
    threshold, min_area, deblend_cont : optional
        sep settings (config ``ingest.detect-threshold``, ``min-area``,
        ``deblend-cont``).

    Returns
    -------
    IngestSummary
        ``n_sources == 0`` (and ``store is None``) when nothing usable was
        found; no store is left behind then.

    Raises
    ------
    SkysieveError
        Bad arguments, or ``out`` exists without ``overwrite`` (StoreError), or
        a bad source/truth table (SourceTableError).  Bad exposures do not
        raise: they are rejects.
    """
    t0 = time.perf_counter()
    paths = validate_paths(paths)
    stamp = validate_int("stamp", config.resolve("ingest.stamp", stamp), 4, 1024)
    chunk_sources = sources_per_chunk(stamp, 1, chunk_sources=chunk_sources, error=SkysieveError)
    settings = {"threshold": float(config.resolve("ingest.detect-threshold", threshold)),
                "min_area": int(config.resolve("ingest.min-area", min_area)),
                "deblend_cont": float(config.resolve("ingest.deblend-cont", deblend_cont))}
    out = prepare_output(out, overwrite=overwrite)  # refuse before any work
    forced = mode = None
    if sources is not None:
        forced, mode = read_source_table(sources, len(paths))
    truth_table = read_truth_table(truth) if truth is not None else None
    where_sources = "source table" if isinstance(sources, pd.DataFrame) else str(sources)

    # Phase 0: checksums and CCD lists, one task per file.
    phases: dict[str, float] = {}
    clock = time.perf_counter()
    scans, inputs, rejects = scan_inputs(paths, with_headers=mode == "radec")
    phases["scan"], clock = time.perf_counter() - clock, time.perf_counter()
    jobs: list[dict[str, Any]] = []
    for scan, name in scans:
        first = scan["ccds"][0][0]
        for hdu, header, shape in scan["ccds"]:
            jobs.append({"path": scan["path"], "exposure": name, "hdu": hdu, "header": header,
                         "shape": shape, "first_hdu": first})

    # Forced positions go only to the CCDs they fall on.
    assigned: dict[int, pd.DataFrame] | None = None
    if forced is not None:
        assigned, table_rejects = place_forced(forced, mode, jobs, where_sources)
        rejects.extend(table_rejects)

    # The stamps are spilled to a scratch directory, removed however ingest ends.
    with scratch(out) as spill_dir:
        # Phase 1: one task per CCD; small tables come back, stamps go to the spill files.
        clock = time.perf_counter()
        task_jobs = [(j, job) for j, job in enumerate(jobs) if assigned is None or j in assigned]
        spills = [str(spill_dir / f"ccd-{i:07d}.npy") for i in range(len(task_jobs))]
        results = compute_tasks([dask.delayed(_measure_ccd, pure=False)(
            job["path"], job["exposure"], job["hdu"], settings,
            None if assigned is None else assigned[j], stamp, spill)
            for (j, job), spill in zip(task_jobs, spills)])
        phases["measure"], clock = time.perf_counter() - clock, time.perf_counter()
        tables, bands, scales = [], [], []
        for spill_id, res in enumerate(results):
            if not res["ok"]:
                rejects.append(res["reject"])
                continue
            res["table"]["_spill"] = spill_id
            res["table"]["_spill_row"] = np.arange(len(res["table"]))
            tables.append(res["table"])
            bands.append(res["band"])
            scales.append(res["pixel_scale"])
        measured_exposures = {job["exposure"] for (_, job), res in zip(task_jobs, results)
                              if res["ok"]}
        n_ccds = sum(1 for r in results if r["ok"])
        table = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(
            len(t) for t in tables) else pd.DataFrame()
        summary = IngestSummary(store=None, n_sources=0, n_exposures=len(measured_exposures),
                                n_ccds=n_ccds, rejects=rejects, stamp=stamp, out=out,
                                phases=phases)
        if table.empty:
            summary.seconds = time.perf_counter() - t0
            return summary

        table = _store_rows(table, stamp, truth_table, where=str(out))
        finite_scales = [s for s in scales if math.isfinite(s)]
        unique_bands = sorted(set(bands))
        band_names = unique_bands if len(unique_bands) == 1 else ["mixed"]

        order = int(config.get("classify.healpix-order"))
        table["healpix"] = healpix_index(table["ra"].to_numpy(), table["dec"].to_numpy(), order)
        shard_sources = sources_per_shard(chunk_sources, len(table), stamp, 1, error=SkysieveError)
        step = shard_sources or chunk_sources
        statistics = {name: table[name].to_numpy(np.float32).reshape(
            (len(table), 1) if "band" in dims else (len(table),))
            for name, dims in STAMP_STATS.items()}

        # The store, built in a hidden sibling and renamed into place when whole.
        with building(out, overwrite=overwrite) as tmp:
            scale = float(np.median(finite_scales)) if finite_scales else math.nan
            create_store(tmp, table, stamp=stamp, bands=band_names, chunk_sources=chunk_sources,
                         pixel_scale=scale,
                         inputs=inputs, rejects=rejects, shard_sources=shard_sources,
                         statistics=statistics,
                         extra_attrs={"detect": settings,
                                      "forced": forced is not None,
                                      "band_names": unique_bands,
                                      "healpix_order": order})
            # Phase 2: one task per shard (per chunk when unsharded) writes exactly that.
            phases["store"], clock = time.perf_counter() - clock, time.perf_counter()
            ids, rows = table["_spill"].to_numpy(), table["_spill_row"].to_numpy()
            copy_tasks = [dask.delayed(_copy_shard_task, pure=False)(
                str(tmp), start,
                _segments(ids, rows, spills, start, min(len(table), start + step)), chunk_sources)
                for start in range(0, len(table), step)]
            written = sum(compute_tasks(copy_tasks, on_error=lambda: request_abort(tmp)))
            if written != len(table):
                raise SkysieveError(f"{out}: wrote {written} cutouts, expected {len(table)}")
            phases["write"], clock = time.perf_counter() - clock, time.perf_counter()
        phases["commit"] = time.perf_counter() - clock
        summary.store = out
        summary.n_sources = len(table)
        summary.n_chunks = -(-len(table) // chunk_sources)
        summary.n_labelled = int((table["label"] != "").sum()) if "label" in table.columns else 0
        summary.seconds = time.perf_counter() - t0
        return summary


def _store_rows(table: pd.DataFrame, stamp: int, truth: pd.DataFrame | None, *,
                where: str) -> pd.DataFrame:
    """The measured sources as the store's rows: sorted by exposure, ccd and detection (each
    CCD's spill is in detection order), with edge flags, ``source_id`` and truth labels."""
    table = table.sort_values(["exposure", "ccd", "detection"], kind="stable", ignore_index=True)
    edge = _edges(table, stamp)
    table["flags"] = (table["flags"].to_numpy(np.int32)
                      | np.where(edge, FLAG_EDGE, 0)).astype(np.int32)
    if "source_id" not in table.columns or table["source_id"].isna().any():
        table["source_id"] = pack_source_id(table["exposure"].to_numpy(), table["ccd"].to_numpy(),
                                            table["detection"].to_numpy())
    check_unique_ids(table["source_id"].to_numpy(np.int64),
                     (table["exposure"] + "[" + table["ccd"].astype(str) + "]#"
                      + table["detection"].astype(str)).to_numpy(), where=where)
    ids, rows = table["_spill"].to_numpy(), table["_spill_row"].to_numpy()
    if not ((np.diff(rows) == 1) | (np.diff(ids) != 0)).all():
        raise SkysieveError(f"{where}: the rows of one CCD are not consecutive in its spill "
                            "file (a bug: please report it)")
    if truth is not None:
        table["label"] = match_truth(table, truth)
    return table


def _edges(table: pd.DataFrame, stamp: int) -> np.ndarray:
    """Edge flags per row from each CCD's shape."""
    edge = np.zeros(len(table), bool)
    for (ny, nx), group in table.groupby(["_ny", "_nx"], sort=False):
        idx = group.index.to_numpy()
        edge[idx] = stamp_touches_edge(group["x"].to_numpy(), group["y"].to_numpy(), stamp,
                                       (int(ny), int(nx)))
    return edge
