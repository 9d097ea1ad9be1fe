"""``skysieve ingest``: FITS exposures -> Zarr cutout store, as a Dask graph.

The graph keeps pixels off the client and the scheduler:

0. one task per file: checksum, list its CCDs (2-D image HDUs);
1. one task per CCD: open, background, detect (or measure forced positions),
   estimate the PSF FWHM; it returns only a small table of sources;
2. the client sorts the sources (exposure, ccd, detection), gives each a row
   and a ``source_id``, matches truth labels, and creates the store (coords,
   attrs, an empty ``image``) in a hidden sibling directory;
3. one task per output chunk: it re-opens (memory-mapped) the CCDs its rows
   come from, cuts the stamps, subtracts the sky and writes exactly its own
   chunk.  Memory per task: one chunk plus one CCD.

The store is renamed into place only when whole.  A bad file or HDU becomes a
rejects row ``{file, hdu, reason}`` (``hdu`` = -1 for the whole file or for a
source-table row) and never stops the run.  Tasks run on the current Dask
client when there is one (the CLI opens it), else on the local threaded
scheduler.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import dask
import numpy as np
import pandas as pd

from pipeline import config
from pipeline.imaging.cutouts import cut_stamps, stamp_touches_edge
from pipeline.ingest.detect import FLAG_EDGE, detect, estimate_psf_fwhm, header_psf_fwhm, measure_forced
from pipeline.errors import BadExposure, SkysieveError, SourceTableError
from pipeline.ingest.fits_io import (
    celestial_wcs,
    exposure_name,
    file_sha256,
    image_hdus,
    open_fits,
    read_ccd,
)
from pipeline.store import (
    check_unique_ids,
    commit_store,
    create_store,
    discard,
    pack_source_id,
    prepare_output,
    sweep_stale_temporaries,
    temporary_sibling,
    write_chunk,
)

__all__ = ["IngestSummary", "compute_tasks", "ingest", "read_table", "reject_row", "scan_file",
           "scan_inputs",
           "validate_int", "validate_paths"]


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
        lines = [head, f"rejects: {len(self.rejects)}"]
        for r in self.rejects[:10]:
            lines.append(f"  {r['file']}[{r['hdu']}]: {r['reason']}")
        if len(self.rejects) > 10:
            lines.append(f"  ... {len(self.rejects) - 10} more (see rejects.parquet)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- tables
def read_table(path: str | Path | pd.DataFrame, *, what: str) -> pd.DataFrame:
    """Read a Parquet, CSV or FITS table (or pass a DataFrame through).

    Raises
    ------
    SourceTableError
        Unknown format or unreadable file, naming it.
    """
    if isinstance(path, pd.DataFrame):
        return path.reset_index(drop=True)
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")) or path.is_dir():
            return pd.read_parquet(path)
        if name.endswith((".csv", ".txt")):
            return pd.read_csv(path)
        if name.endswith((".fits", ".fit", ".fits.gz", ".fts")):
            from astropy.table import Table

            return Table.read(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad table
        raise SourceTableError(f"{path}: cannot read the {what} ({exc})") from exc
    raise SourceTableError(f"{path}: unknown {what} format {path.suffix!r}; use Parquet "
                           "(.parquet), CSV (.csv) or a FITS table (.fits)")


def _source_table(sources: str | Path | pd.DataFrame, n_paths: int) -> tuple[pd.DataFrame, str]:
    table = read_table(sources, what="source table")
    where = "source table" if isinstance(sources, pd.DataFrame) else str(sources)
    cols = {c.lower(): c for c in table.columns}
    table = table.rename(columns={v: k for k, v in cols.items()})
    if {"ra", "dec"} <= set(table.columns):
        mode = "radec"
    elif {"x", "y"} <= set(table.columns):
        mode = "xy"
        if "exposure" not in table.columns and n_paths > 1:
            raise SourceTableError(f"{where}: x/y positions with several exposures need an "
                                   "'exposure' column (the file stem) saying which exposure "
                                   "each row belongs to")
    else:
        missing = sorted({"ra", "dec"} - set(table.columns)) or sorted({"x", "y"} - set(table.columns))
        raise SourceTableError(f"{where}: missing columns {missing!r}; a source table needs "
                               f"'ra' and 'dec' (deg) or 'x' and 'y' (0-based px); it has "
                               f"{list(table.columns)!r}")
    if "source_id" in table.columns:
        sid = pd.to_numeric(table["source_id"], errors="coerce")
        if sid.isna().any() or (sid % 1 != 0).any():
            raise SourceTableError(f"{where}: 'source_id' must be integers; bad rows "
                                   f"{np.flatnonzero(sid.isna() | (sid % 1 != 0))[:10].tolist()!r}")
        table["source_id"] = sid.astype(np.int64)
        if table["source_id"].duplicated().any():
            dups = table["source_id"][table["source_id"].duplicated()].unique()[:5].tolist()
            raise SourceTableError(f"{where}: duplicate source_id values {dups!r}")
    table["row"] = np.arange(len(table), dtype=np.int64)
    return table, mode


def _truth_table(truth: str | Path | pd.DataFrame) -> pd.DataFrame:
    table = read_table(truth, what="truth table")
    where = "truth table" if isinstance(truth, pd.DataFrame) else str(truth)
    label = "class" if "class" in table.columns else "label" if "label" in table.columns else None
    missing = [c for c in ("exposure", "x", "y") if c not in table.columns]
    if label is None:
        missing.append("class (or label)")
    if missing:
        raise SourceTableError(f"{where}: missing columns {missing!r}; truth needs exposure, "
                               f"x, y (0-based px), class and optionally ccd; it has "
                               f"{list(table.columns)!r}")
    out = pd.DataFrame({
        "exposure": table["exposure"].astype(str).to_numpy(),
        "ccd": (table["ccd"].astype(np.int64).to_numpy() if "ccd" in table.columns
                else np.full(len(table), -1, np.int64)),
        "x": pd.to_numeric(table["x"], errors="coerce").to_numpy(np.float64),
        "y": pd.to_numeric(table["y"], errors="coerce").to_numpy(np.float64),
        "label": table[label].astype(str).to_numpy(),
        # half-light radius (arcsec) widens the match radius of extended sources
        "size": (pd.to_numeric(table["size"], errors="coerce").fillna(0.0).to_numpy(np.float64)
                 if "size" in table.columns else np.zeros(len(table))),
    })
    return out[np.isfinite(out["x"]) & np.isfinite(out["y"])]


# ---------------------------------------------------------------------------- tasks
def reject_row(path: str, hdu: int, reason: str) -> dict[str, Any]:
    """One row of a store's rejects table: ``{"file", "hdu" (-1: the whole file), "reason"}``."""
    return {"file": str(path), "hdu": int(hdu), "reason": str(reason)}


def scan_file(path: str, with_headers: bool) -> dict[str, Any]:
    """Phase 0 task: checksum and CCD list of one file (headers when forced RA/Dec)."""
    result: dict[str, Any] = {"path": path, "ccds": [], "rejects": [], "sha256": None,
                              "bytes": 0}
    try:
        result["sha256"], result["bytes"] = file_sha256(path)
        ccds, rejects = image_hdus(path)
        result["rejects"] = rejects
        with open_fits(path) as hdul:
            result["ccds"] = [(h, hdul[h].header.tostring() if with_headers else None,
                               tuple(int(n) for n in hdul[h].shape[-2:])) for h in ccds]
    except BadExposure as exc:
        result["rejects"] = [reject_row(path, -1, str(exc))]
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the night
        result["rejects"] = [reject_row(path, -1, f"{path}: unexpected {type(exc).__name__}: {exc}")]
    return result


def _measure_ccd(path: str, exposure: str, hdu: int, settings: dict[str, Any],
                 forced: pd.DataFrame | None) -> dict[str, Any]:
    """Phase 1 task: detect/measure one CCD; returns a small table, never pixels."""
    try:
        ccd = read_ccd(path, hdu)
        table, info = detect(ccd.data, threshold=settings["threshold"],
                             min_area=settings["min_area"],
                             deblend_cont=settings["deblend_cont"], saturation=ccd.saturation)
        psf, n_stars = estimate_psf_fwhm(table, saturation=ccd.saturation)
        if not math.isfinite(psf):
            psf = header_psf_fwhm(ccd.header, ccd.pixel_scale)
        if forced is not None:
            radius = 1.5 * psf if math.isfinite(psf) else 5.0
            table, info = measure_forced(ccd.data, forced["x"].to_numpy(),
                                         forced["y"].to_numpy(), radius=max(radius, 2.0))
            table["detection"] = forced["row"].to_numpy(np.int64)
            if "source_id" in forced.columns:
                table["source_id"] = forced["source_id"].to_numpy(np.int64)
        shape = ccd.data.shape
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
        table["_ny"], table["_nx"] = shape
        table["_scale"] = ccd.pixel_scale
        return {"ok": True, "table": table, "band": ccd.band, "pixel_scale": ccd.pixel_scale,
                "psf_fwhm": psf, "n_stars": n_stars}
    except BadExposure as exc:
        return {"ok": False, "reject": reject_row(path, hdu, str(exc))}
    except Exception as exc:  # noqa: BLE001 - one bad CCD never stops the night
        return {"ok": False, "reject": reject_row(
            path, hdu, f"{path}[{hdu}]: unexpected {type(exc).__name__}: {exc}")}


def _write_chunk_task(store: str, start: int, rows: pd.DataFrame, stamp: int) -> int:
    """Phase 2 task: cut the stamps of one chunk's rows and write that chunk only."""
    out = np.full((len(rows), 1, stamp, stamp), np.nan, dtype=np.float32)
    for (path, hdu), group in rows.groupby(["path", "ccd"], sort=False):
        ccd = read_ccd(path, int(hdu), check_values=False)
        stamps, _ = cut_stamps(ccd.data, group["x"].to_numpy(), group["y"].to_numpy(), stamp)
        stamps -= group["sky"].to_numpy(np.float32)[:, None, None]
        out[group.index.to_numpy() - start, 0] = stamps  # rows keep their store index
        del ccd
    write_chunk(store, start, out)
    return len(rows)



def scan_inputs(paths: Sequence[Path], *, with_headers: bool
                ) -> tuple[list[tuple[dict[str, Any], str]], list[dict[str, Any]],
                           list[dict[str, Any]]]:
    """Phase 0 of an ingest: checksum and list the CCDs of every file, one task per file.

    Returns
    -------
    scans : list of (scan, exposure name)
        The files with at least one image HDU (:func:`scan_file` results).
    inputs : list of dict
        ``{"path", "sha256", "bytes"}`` of those files, for the store's provenance.
    rejects : list of dict
        Unreadable files, HDUs that are not images, and a second file whose
        exposure name (file stem) is already taken.
    """
    results = compute_tasks([dask.delayed(scan_file, pure=False)(str(p), with_headers)
                             for p in paths])
    scans: list[tuple[dict[str, Any], str]] = []
    inputs: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for scan in results:
        rejects.extend(scan["rejects"])
        if not scan["ccds"]:
            continue
        name = exposure_name(scan["path"])
        if name in seen:
            rejects.append(reject_row(scan["path"], -1, f"{scan['path']}: exposure name {name!r} "
                                      f"is also that of {seen[name]}; exposure names (file "
                                      "stems) must be unique in a store; rename one"))
            continue
        seen[name] = scan["path"]
        inputs.append({"path": str(Path(scan["path"]).resolve()), "sha256": scan["sha256"],
                       "bytes": scan["bytes"]})
        scans.append((scan, name))
    return scans, inputs, rejects

# ---------------------------------------------------------------------------- helpers
def validate_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Return the exposures as a non-empty list of paths (one path is a list of one)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise SkysieveError("ingest needs at least one FITS exposure; got an empty list")
    return paths


def validate_int(name: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an int, or raise a :class:`SkysieveError` naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            low <= int(value) <= high):
        raise SkysieveError(f"{name} must be an integer from {low} to {high}; got {value!r}")
    return int(value)


def _place_forced(table: pd.DataFrame, mode: str, jobs: list[dict[str, Any]], where: str
                  ) -> tuple[dict[int, pd.DataFrame], list[dict[str, Any]]]:
    """Assign forced positions to CCD jobs; rejects for NaN or unplaced rows."""
    rejects: list[dict[str, Any]] = []
    cols = ("ra", "dec") if mode == "radec" else ("x", "y")
    c1 = pd.to_numeric(table[cols[0]], errors="coerce").to_numpy(np.float64)
    c2 = pd.to_numeric(table[cols[1]], errors="coerce").to_numpy(np.float64)
    bad = ~(np.isfinite(c1) & np.isfinite(c2))
    for i in np.flatnonzero(bad):
        rejects.append(reject_row(where, -1, f"row {i}: NaN or non-numeric coordinate "
                               f"({cols[0]}={table[cols[0]].iloc[i]!r}, "
                               f"{cols[1]}={table[cols[1]].iloc[i]!r})"))
    placed = np.zeros(len(table), bool)
    assigned: dict[int, pd.DataFrame] = {}
    extra = ["source_id"] if "source_id" in table.columns else []
    for j, job in enumerate(jobs):
        if mode == "radec":
            header = job["header"]
            from astropy.io import fits

            wcs = celestial_wcs(fits.Header.fromstring(header)) if header else None
            if wcs is None:
                continue
            ny, nx = job["shape"]
            cra, cdec = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
            radius = math.hypot(nx, ny) * _scale_deg(wcs)
            ok = ~bad & (_separation(c1, c2, float(cra), float(cdec)) < radius)
            if not ok.any():
                continue
            x, y = wcs.world_to_pixel_values(c1[ok], c2[ok])
            idx = np.flatnonzero(ok)
        else:
            ok = ~bad
            if "exposure" in table.columns:
                ok &= table["exposure"].astype(str).to_numpy() == job["exposure"]
            if "ccd" in table.columns:
                ok &= pd.to_numeric(table["ccd"], errors="coerce").to_numpy() == job["hdu"]
            elif job["hdu"] != job["first_hdu"]:
                continue  # no ccd column: positions refer to the first CCD
            idx = np.flatnonzero(ok)
            x, y = c1[idx], c2[idx]
            ny, nx = job["shape"]
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (
            y >= -0.5) & (y < ny - 0.5)
        if not on.any():
            continue
        rows = idx[on]
        frame = pd.DataFrame({"x": x[on], "y": y[on], "row": table["row"].to_numpy()[rows]})
        for c in extra:
            frame[c] = table[c].to_numpy()[rows]
        assigned[j] = frame
        placed[rows] = True
    for i in np.flatnonzero(~placed & ~bad):
        rejects.append(reject_row(where, -1, f"row {i}: position ({cols[0]}={c1[i]!r}, "
                               f"{cols[1]}={c2[i]!r}) is not on any input CCD"))
    return assigned, rejects


def _scale_deg(wcs: Any) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs)))


def _separation(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    """Angular distance (deg) by the haversine formula."""
    r1, d1, r0, d0 = map(np.radians, (ra, dec, ra0, dec0))
    h = np.sin((d1 - d0) / 2) ** 2 + np.cos(d1) * np.cos(d0) * np.sin((r1 - r0) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def _match_truth(table: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Labels by position, one-to-one, within the same exposure (and ccd).

    A detection takes the class of the nearest truth source within
    ``max(3, 1.5 psf_fwhm, half-light radius)`` px (the radius from the truth
    ``size`` column, arcsec, when present); a truth source labels only its
    nearest detection; the rest get "".
    """
    from scipy.spatial import cKDTree

    labels = np.full(len(table), "", dtype=object)
    any_ccd = (truth["ccd"] < 0).all()
    for (exposure, ccd), group in table.groupby(["exposure", "ccd"], sort=False):
        sel = truth["exposure"] == exposure
        if not any_ccd:
            sel &= truth["ccd"] == int(ccd)
        cand = truth[sel]
        if cand.empty:
            continue
        psf = float(group["psf_fwhm"].iloc[0])
        base = max(3.0, 1.5 * psf) if math.isfinite(psf) else 3.0
        scale = float(group["_scale"].iloc[0])
        hlr = cand["size"].to_numpy() / scale if math.isfinite(scale) and scale > 0 else (
            np.zeros(len(cand)))
        reach = np.maximum(base, hlr)  # per truth source
        tree = cKDTree(cand[["x", "y"]].to_numpy())
        dist, j = tree.query(group[["x", "y"]].to_numpy(),
                             distance_upper_bound=float(reach.max()) + 1e-9)
        hit = np.isfinite(dist)
        hit[hit] = dist[hit] <= reach[j[hit]]
        # one-to-one: a truth source labels only its nearest detection
        match = pd.DataFrame({"row": group.index.to_numpy()[hit], "t": j[hit], "d": dist[hit]})
        match = match.sort_values("d").drop_duplicates("t", keep="first")
        labels[match["row"].to_numpy()] = cand["label"].to_numpy()[match["t"].to_numpy()]
    return labels


def compute_tasks(tasks: list[Any]) -> list[Any]:
    """Compute delayed tasks on the current client, else the local threaded scheduler."""
    if not tasks:
        return []
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        return list(client.gather(client.compute(tasks)))
    return list(dask.compute(*tasks, scheduler="threads"))


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
        Cutouts per chunk (config ``ingest.chunk-sources``).
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
    chunk_sources = validate_int("chunk_sources",
                                  config.resolve("ingest.chunk-sources", chunk_sources), 1,
                                  1 << 20)
    settings = {"threshold": float(config.resolve("ingest.detect-threshold", threshold)),
                "min_area": int(config.resolve("ingest.min-area", min_area)),
                "deblend_cont": float(config.resolve("ingest.deblend-cont", deblend_cont))}
    out = prepare_output(out, overwrite=overwrite)
    sweep_stale_temporaries(out)  # half-built stores of killed ingests of this output
    forced = mode = None
    if sources is not None:
        forced, mode = _source_table(sources, len(paths))
    truth_table = _truth_table(truth) if truth is not None else None
    where_sources = "source table" if isinstance(sources, pd.DataFrame) else str(sources)

    # Phase 0: checksums and CCD lists, one task per file.
    scans, inputs, rejects = scan_inputs(paths, with_headers=mode == "radec")
    jobs: list[dict[str, Any]] = []
    for scan, name in scans:
        first = scan["ccds"][0][0]
        for hdu, header, shape in scan["ccds"]:
            jobs.append({"path": scan["path"], "exposure": name, "hdu": hdu, "header": header,
                         "shape": shape, "first_hdu": first})

    # Forced positions go only to the CCDs they fall on.
    assigned: dict[int, pd.DataFrame] | None = None
    if forced is not None:
        assigned, table_rejects = _place_forced(forced, mode, jobs, where_sources)
        rejects.extend(table_rejects)

    # Phase 1: one task per CCD; small tables come back.
    tasks, task_jobs = [], []
    for j, job in enumerate(jobs):
        if assigned is not None and j not in assigned:
            continue
        tasks.append(dask.delayed(_measure_ccd, pure=False)(
            job["path"], job["exposure"], job["hdu"], settings,
            None if assigned is None else assigned[j]))
        task_jobs.append(job)
    results = compute_tasks(tasks)
    tables, bands, scales = [], [], []
    for res in results:
        if not res["ok"]:
            rejects.append(res["reject"])
            continue
        tables.append(res["table"])
        bands.append(res["band"])
        scales.append(res["pixel_scale"])
    measured_exposures = {job["exposure"] for job, res in zip(task_jobs, results) if res["ok"]}
    n_ccds = sum(1 for r in results if r["ok"])
    table = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(
        len(t) for t in tables) else pd.DataFrame()
    summary = IngestSummary(store=None, n_sources=0, n_exposures=len(measured_exposures),
                            n_ccds=n_ccds, rejects=rejects, stamp=stamp, out=out)
    if table.empty:
        summary.seconds = time.perf_counter() - t0
        return summary

    # Rows: sorted by exposure, ccd, detection; ids, edge flags, labels.
    table = table.sort_values(["exposure", "ccd", "detection"], kind="stable",
                              ignore_index=True)
    edge = _edges(table, stamp)
    table["flags"] = (table["flags"].to_numpy(np.int32) | np.where(edge, FLAG_EDGE, 0)).astype(
        np.int32)
    if "source_id" not in table.columns or table["source_id"].isna().any():
        table["source_id"] = pack_source_id(table["exposure"].to_numpy(),
                                            table["ccd"].to_numpy(), table["detection"].to_numpy())
    check_unique_ids(table["source_id"].to_numpy(np.int64),
                     (table["exposure"] + "[" + table["ccd"].astype(str) + "]#"
                      + table["detection"].astype(str)).to_numpy(), where=str(out))
    if truth_table is not None:
        table["label"] = _match_truth(table, truth_table)
    finite_scales = [s for s in scales if math.isfinite(s)]
    unique_bands = sorted(set(bands))
    band_names = unique_bands if len(unique_bands) == 1 else ["mixed"]

    # The store, built in a hidden sibling and renamed into place when whole.
    tmp = temporary_sibling(out)
    try:
        create_store(tmp, table, stamp=stamp, bands=band_names, chunk_sources=chunk_sources,
                     pixel_scale=float(np.median(finite_scales)) if finite_scales else math.nan,
                     inputs=inputs, rejects=rejects,
                     extra_attrs={"detect": settings,
                                  "forced": forced is not None,
                                  "band_names": unique_bands})
        # Phase 2: one task per chunk writes exactly that chunk.
        rows = table[["path", "ccd", "x", "y", "sky"]]
        chunk_tasks = [dask.delayed(_write_chunk_task, pure=False)(
            str(tmp), start, rows.iloc[start:start + chunk_sources], stamp)
            for start in range(0, len(table), chunk_sources)]
        written = sum(compute_tasks(chunk_tasks))
        if written != len(table):
            raise SkysieveError(f"{out}: wrote {written} cutouts, expected {len(table)}")
        commit_store(tmp, out, overwrite=overwrite)
    except BaseException:
        discard(tmp)
        raise
    summary.store = out
    summary.n_sources = len(table)
    summary.n_chunks = len(chunk_tasks)
    summary.n_labelled = int((table["label"] != "").sum()) if "label" in table.columns else 0
    summary.seconds = time.perf_counter() - t0
    return summary


def _edges(table: pd.DataFrame, stamp: int) -> np.ndarray:
    """Edge flags per row from each CCD's shape."""
    edge = np.zeros(len(table), bool)
    for (ny, nx), group in table.groupby(["_ny", "_nx"], sort=False):
        idx = group.index.to_numpy()
        edge[idx] = stamp_touches_edge(group["x"].to_numpy(), group["y"].to_numpy(), stamp,
                                       (int(ny), int(nx)))
    return edge
