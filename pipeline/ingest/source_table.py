"""Tables given to ``skysieve ingest``: forced-position source tables and truth tables.

Reading them (Parquet, CSV or FITS), checking their columns, placing forced
positions on the CCDs they fall on, and matching truth labels to detections.
Bad tables raise :class:`~pipeline.errors.SourceTableError`; a bad row (NaN, or
on no CCD) becomes a rejects row with ``hdu`` -1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import SourceTableError
from pipeline.ingest.fits_io import celestial_wcs
from pipeline.ingest.scan import reject_row

__all__ = ["join_truth_tables", "match_truth", "place_forced", "read_source_table", "read_table",
           "read_truth_table"]


def read_table(path: str | Path | pd.DataFrame, *, what: str) -> pd.DataFrame:
    """Read a Parquet, CSV or FITS table (or pass a DataFrame through).

    Parameters
    ----------
    path : str, Path or pandas.DataFrame
        The table's file (a Parquet directory too), or the table itself.
    what : str
        What the table is ("source table"), for messages.

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


def read_source_table(sources: str | Path | pd.DataFrame, n_paths: int
                      ) -> tuple[pd.DataFrame, str]:
    """Read and check a forced-position source table.

    Parameters
    ----------
    sources : str, Path or pandas.DataFrame
        The table: ``ra``/``dec`` (deg) or ``x``/``y`` (0-based px, plus
        ``exposure`` when there are several exposures, optional ``ccd``), and
        optionally ``source_id``.  Column names are matched case-insensitively.
    n_paths : int
        How many exposures are ingested.

    Returns
    -------
    (pandas.DataFrame, str)
        The table (lower-case columns, a ``row`` number added) and its mode,
        ``"radec"`` or ``"xy"``.

    Raises
    ------
    SourceTableError
        Missing columns, or non-integer or duplicate ``source_id`` values.
    """
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


def read_truth_table(truth: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read and check a truth table: ``exposure``, ``x``, ``y``, ``class`` (or ``label``).

    Returns
    -------
    pandas.DataFrame
        ``exposure``, ``ccd`` (-1 when the table has none), ``x``, ``y``,
        ``label`` and ``size`` (half-light radius, arcsec; 0 when absent), rows
        with a non-finite position dropped.

    Raises
    ------
    SourceTableError
        Missing columns.
    """
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


def join_truth_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate the truth tables of several runs, each of its own exposures.

    For one store of several synthetic runs (``skysieve synth --prefix``): their exposure
    names must differ, so that every label is matched within its own exposure.

    Parameters
    ----------
    paths : sequence of path
        Truth tables (Parquet, CSV or FITS), each with an ``exposure`` column.

    Returns
    -------
    pandas.DataFrame
        The rows of every table, in order; columns missing from a table are NaN.

    Raises
    ------
    SourceTableError
        A table without ``exposure``, an exposure named in two tables, or tables that
        disagree on having a ``ccd`` column.
    """
    tables = [(str(path), read_table(path, what="truth table")) for path in paths]
    seen: dict[str, str] = {}
    for where, table in tables:
        if "exposure" not in table.columns:
            raise SourceTableError(f"{where}: truth table has no 'exposure' column; it has "
                                   f"{list(table.columns)!r}")
        for name in pd.unique(table["exposure"].astype(str)):
            if name in seen:
                raise SourceTableError(
                    f"{where}: exposure {name!r} is also in {seen[name]}; truth tables given "
                    "together must cover different exposures (render each synthetic run with "
                    "its own `skysieve synth --prefix`)")
            seen[name] = where
    with_ccd = [where for where, table in tables if "ccd" in table.columns]
    if with_ccd and len(with_ccd) != len(tables):
        without = [where for where, table in tables if "ccd" not in table.columns]
        raise SourceTableError(f"{without[0]}: truth table has no 'ccd' column but "
                               f"{with_ccd[0]} has one; give every table a ccd column or none")
    return pd.concat([table for _, table in tables], ignore_index=True)


def place_forced(table: pd.DataFrame, mode: str, jobs: list[dict[str, Any]], where: str
                 ) -> tuple[dict[int, pd.DataFrame], list[dict[str, Any]]]:
    """Assign forced positions to CCD jobs; rejects for NaN or unplaced rows.

    Parameters
    ----------
    table, mode :
        As returned by :func:`read_source_table`.
    jobs : list of dict
        One per CCD: ``exposure``, ``hdu``, ``header`` (text, for RA/Dec),
        ``shape`` ``(ny, nx)`` and ``first_hdu`` (the file's first CCD, which
        x/y positions without a ``ccd`` column refer to).
    where : str
        The table's name, the rejects rows' ``file``.

    Returns
    -------
    (dict, list of dict)
        ``{job index: DataFrame of x, y, row (and source_id)}`` in the CCD's
        0-based pixels, and the rejects rows.
    """
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


def match_truth(table: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Labels by position, one-to-one, within the same exposure (and ccd).

    A detection takes the class of the nearest truth source within
    ``max(3, 1.5 psf_fwhm, half-light radius)`` px (the radius from the truth
    ``size`` column, arcsec, when present); a truth source labels only its
    nearest detection; the rest get "".

    Parameters
    ----------
    table : pandas.DataFrame
        The detections (``exposure``, ``ccd``, ``x``, ``y``, ``psf_fwhm`` and
        ``_scale``, arcsec per px), indexed by store row.
    truth : pandas.DataFrame
        As returned by :func:`read_truth_table`.

    Returns
    -------
    numpy.ndarray of object
        One label per row of ``table``.
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
