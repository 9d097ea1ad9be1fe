"""The analyst API over a catalogue directory: pandas, DuckDB, Dask, cones and matches.

All lazy or pruned; none loads the whole catalogue unless asked:

* :func:`read_catalogue`: a (small) catalogue as one pandas DataFrame;
* :func:`connect` / :func:`query`: DuckDB SQL over the view ``catalogue``;
* :func:`open`: a lazy ``dask.dataframe.DataFrame`` over the parts;
* :func:`cone`: the rows within a radius of a position, read only from the
  HEALPix pixels the cone touches, then filtered by exact angular distance;
* :func:`crossmatch` (by sky position) and :func:`join_truth` (by
  ``source_id``) to compare with another table.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.catalogue.layout import PART_GLOB
from pipeline.catalogue.part_files import parts, read_metadata
from pipeline.errors import CatalogueError, SourceTableError

__all__ = ["read_catalogue", "connect", "query", "open", "cone", "crossmatch", "join_truth"]


def read_catalogue(path: Path, *, columns: list[str] | None = None):
    """Read a whole (small) catalogue directory into a pandas DataFrame.

    Parameters
    ----------
    path : Path
        Catalogue directory.
    columns : list of str, optional
        Read only these columns.

    Returns
    -------
    pandas.DataFrame
        The rows of every part, in part order.
    """
    import pyarrow.dataset as ds

    found = sorted(Path(path).glob(PART_GLOB))
    if not found:
        raise FileNotFoundError(f"{path}: no catalogue parts ({PART_GLOB}) found")
    return ds.dataset([str(p) for p in found], format="parquet").to_table(columns=columns).to_pandas()


@contextmanager
def connect(path: Path) -> Iterator[Any]:
    """A DuckDB connection with the view ``catalogue`` over the part files of ``path``.

    Parameters
    ----------
    path : Path
        Catalogue directory.

    Yields
    ------
    duckdb.DuckDBPyConnection
        Closed when the ``with`` block ends.

    Examples
    --------
    >>> with catalogue.connect("night/catalogue") as con:  # doctest: +SKIP
    ...     con.execute("SELECT count(*) FROM catalogue").fetchone()
    """
    import duckdb

    path = Path(path)
    if not any(path.glob(PART_GLOB)):
        raise FileNotFoundError(f"{path}: no catalogue parts ({PART_GLOB}) found")
    con = duckdb.connect()
    try:
        glob = str(path / PART_GLOB).replace("'", "''")
        con.execute(f"CREATE VIEW catalogue AS SELECT * FROM read_parquet('{glob}')")
        yield con
    finally:
        con.close()


def query(path: Path, sql: str):
    """Run DuckDB ``sql`` over the catalogue at ``path``, exposed as the table ``catalogue``.

    Parameters
    ----------
    path : Path
        Catalogue directory.
    sql : str
        e.g. ``"SELECT label, count(*) FROM catalogue GROUP BY 1"``.

    Returns
    -------
    pandas.DataFrame
    """
    with connect(path) as con:
        return con.execute(sql).df()


def open(path: Path, *, columns: list[str] | None = None):  # noqa: A001 - like xr.open_zarr
    """Open the catalogue at ``path`` lazily as a Dask DataFrame (one partition per part).

    Parameters
    ----------
    path : Path
        Catalogue directory.
    columns : list of str, optional
        Read only these columns.

    Returns
    -------
    dask.dataframe.DataFrame
        Nothing is read until ``.compute()``; a small catalogue fits in memory
        with ``open(path).compute()``.

    Examples
    --------
    >>> df = catalogue.open("demo-out/catalogue")  # doctest: +SKIP
    >>> df[df.confidence > 0.9].groupby("label").size().compute()  # doctest: +SKIP
    """
    import dask.dataframe as dd

    return dd.read_parquet([str(p) for p in parts(path)], columns=columns)


def _healpix_order(path: Path) -> int:
    meta = read_metadata(path)
    doc = meta.get("healpix_order")
    if not isinstance(doc, dict) or doc.get("scheme") != "nested" or "order" not in doc:
        raise CatalogueError(f"{path}: the catalogue metadata has no nested 'healpix_order' "
                         f"(found {doc!r}); re-create it with `skysieve classify`")
    return int(doc["order"])


def _validate_position(ra: float, dec: float, radius_deg: float) -> tuple[float, float, float]:
    values = {"ra": ra, "dec": dec, "radius_deg": radius_deg}
    for name, value in values.items():
        if not np.isfinite(float(value)):
            raise CatalogueError(f"cone: {name}={value!r} is not a finite number of degrees")
    if not -90.0 <= float(dec) <= 90.0:
        raise CatalogueError(f"cone: dec={dec!r} is outside [-90, 90] degrees")
    if not 0.0 < float(radius_deg) <= 180.0:
        raise CatalogueError(f"cone: radius_deg={radius_deg!r} must be in (0, 180] degrees "
                         "(e.g. 30 arcsec is radius_deg=30/3600)")
    return float(ra) % 360.0, float(dec), float(radius_deg)


def _separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular distance in degrees between (ra1, dec1) and (ra2, dec2), all in degrees."""
    from astropy.coordinates import angular_separation

    return np.degrees(angular_separation(np.radians(ra1), np.radians(dec1),
                                         np.radians(ra2), np.radians(dec2)))


#: Above this many candidate HEALPix pixels a cone reads every row group instead.
_MAX_CONE_PIXELS = 200_000


def cone(path: Path, ra: float, dec: float, radius_deg: float, *,
         columns: list[str] | None = None):
    """Rows of the catalogue within ``radius_deg`` of (``ra``, ``dec``).

    Only the rows in the HEALPix pixels (the catalogue's ``healpix`` column, at
    the order in its metadata) that the cone touches are read, through
    pyarrow.dataset filters; then an exact angular-distance cut is applied.

    Parameters
    ----------
    path : Path
        Catalogue directory.
    ra, dec : float
        Centre of the cone, ICRS degrees.
    radius_deg : float
        Radius in degrees, in (0, 180].
    columns : list of str, optional
        Columns to return (``ra``, ``dec`` and ``healpix`` are read anyway).

    Returns
    -------
    pandas.DataFrame
        The matching rows sorted by ``source_id``, with an extra column
        ``separation_arcsec`` (distance from the centre).

    Raises
    ------
    CatalogueError
        A bad position or radius, an unknown column, or metadata without a nested
        ``healpix_order``.
    """
    import astropy.units as u
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from astropy_healpix import HEALPix

    path = Path(path)
    ra, dec, radius_deg = _validate_position(ra, dec, radius_deg)
    files = [str(p) for p in parts(path)]
    order = _healpix_order(path)
    dataset = ds.dataset(files, format="parquet")
    want = None
    if columns is not None:
        unknown = sorted(set(columns) - set(dataset.schema.names))
        if unknown:
            raise CatalogueError(f"cone: unknown columns {unknown!r}; the catalogue has "
                             f"{dataset.schema.names!r}")
        want = list(dict.fromkeys([*columns, "source_id", "ra", "dec"]))
    # HEALPix's pixel boundaries are approximated; pad by a pixel so no edge row is missed
    # (the exact cut below removes the extra rows).
    hp = HEALPix(nside=2**order, order="nested")
    pad = hp.pixel_resolution.to_value(u.deg)
    pixels = hp.cone_search_lonlat(ra * u.deg, dec * u.deg, min(radius_deg + pad, 180.0) * u.deg)
    where = None
    if radius_deg + pad < 180.0 and len(pixels) <= _MAX_CONE_PIXELS:
        where = pc.field("healpix").isin(pa.array(np.asarray(pixels, dtype=np.int64)))
    table = dataset.to_table(columns=want, filter=where)
    df = table.to_pandas()
    sep = _separation_deg(ra, dec, df["ra"].to_numpy(np.float64), df["dec"].to_numpy(np.float64))
    keep = np.isfinite(sep) & (sep <= radius_deg)
    df = df.loc[keep].copy()
    df["separation_arcsec"] = sep[keep] * 3600.0
    if columns is not None:
        df = df[list(dict.fromkeys([*columns, "separation_arcsec"]))]
    return df.sort_values("source_id", kind="stable").reset_index(drop=True) \
        if "source_id" in df else df.reset_index(drop=True)


def _check_columns(df, needed: list[str], what: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SourceTableError(f"{what}: missing columns {missing!r} (has {list(df.columns)!r}); "
                               "rename them or pass the column names")


def crossmatch(catalogue_df, other_df, *, radius_arcsec: float, how: str = "inner",
               ra: str = "ra", dec: str = "dec", other_ra: str = "ra", other_dec: str = "dec",
               suffix: str = "_other"):
    """Match each catalogue row to the nearest row of ``other_df`` on the sky.

    Uses :func:`astropy.coordinates.match_coordinates_sky` (nearest neighbour);
    a match farther than ``radius_arcsec`` does not count.

    Parameters
    ----------
    catalogue_df : pandas.DataFrame
        Rows of a skysieve catalogue (e.g. from :func:`cone` or :func:`open`).
    other_df : pandas.DataFrame
        Another table with sky positions in degrees (a truth table, a survey).
    radius_arcsec : float
        Largest separation that counts as a match, arcsec (> 0).
    how : {"inner", "left"}, default: "inner"
        ``"inner"`` keeps matched rows only; ``"left"`` keeps every catalogue
        row, with missing values where nothing matched.
    ra, dec, other_ra, other_dec : str
        Names of the position columns (degrees).
    suffix : str, default: "_other"
        Appended to ``other_df``'s column names that clash with the catalogue's.

    Returns
    -------
    pandas.DataFrame
        The catalogue rows (in their order) followed by the matched row's columns
        and ``separation_arcsec``. Rows without a finite position never match.

    Raises
    ------
    CatalogueError
        A bad ``how`` or ``radius_arcsec``.
    SourceTableError
        A missing position column.
    """
    import astropy.units as u
    import pandas as pd
    from astropy.coordinates import SkyCoord, match_coordinates_sky

    if how not in ("inner", "left"):
        raise CatalogueError(f"crossmatch: how={how!r}; choose 'inner' or 'left'")
    if not (np.isfinite(radius_arcsec) and radius_arcsec > 0):
        raise CatalogueError(f"crossmatch: radius_arcsec={radius_arcsec!r} must be a positive "
                         "number of arcsec")
    _check_columns(catalogue_df, [ra, dec], "crossmatch catalogue_df")
    _check_columns(other_df, [other_ra, other_dec], "crossmatch other_df")
    left = catalogue_df.reset_index(drop=True)
    right = other_df.reset_index(drop=True)
    lra, ldec = left[ra].to_numpy(np.float64), left[dec].to_numpy(np.float64)
    rra, rdec = right[other_ra].to_numpy(np.float64), right[other_dec].to_numpy(np.float64)
    lok = np.isfinite(lra) & np.isfinite(ldec)
    rok = np.flatnonzero(np.isfinite(rra) & np.isfinite(rdec))
    index = np.full(len(left), -1, dtype=np.int64)
    sep = np.full(len(left), np.nan)
    if lok.any() and rok.size:
        if rok.size == 1:  # match_coordinates_sky needs at least two catalogue rows
            d = _separation_deg(lra[lok], ldec[lok], rra[rok[0]], rdec[rok[0]]) * 3600.0
            idx = np.zeros(lok.sum(), dtype=np.int64)
        else:
            idx, d2d, _ = match_coordinates_sky(
                SkyCoord(lra[lok] * u.deg, ldec[lok] * u.deg),
                SkyCoord(rra[rok] * u.deg, rdec[rok] * u.deg))
            d = d2d.to_value(u.arcsec)
        hit = d <= radius_arcsec
        where = np.flatnonzero(lok)[hit]
        index[where] = rok[np.asarray(idx)[hit]]
        sep[where] = np.asarray(d)[hit]
    matched = index >= 0
    rename = {c: f"{c}{suffix}" for c in right.columns if c in left.columns}
    right = right.rename(columns=rename)
    if how == "inner":
        out = left.loc[matched].reset_index(drop=True)
        extra = right.iloc[index[matched]].reset_index(drop=True)
        out = pd.concat([out, extra], axis=1)
        out["separation_arcsec"] = sep[matched]
        return out
    extra = right.reindex(np.where(matched, index, -1)).reset_index(drop=True)
    out = pd.concat([left, extra], axis=1)
    out["separation_arcsec"] = sep
    return out


def join_truth(catalogue_df, truth_df, *, on: str = "source_id", label: str = "label",
               how: str = "left"):
    """Join a truth table to catalogue rows by ``source_id``.

    Parameters
    ----------
    catalogue_df : pandas.DataFrame
        Catalogue rows.
    truth_df : pandas.DataFrame
        One row per source with ``on`` and a ``label`` column (e.g. spectroscopic
        classes keyed by skysieve ``source_id``).
    on : str, default: "source_id"
        The key column in both tables.
    label : str, default: "label"
        The truth table's class column; it becomes ``true_label`` (replacing a
        ``true_label`` the catalogue may already carry).
    how : {"left", "inner"}, default: "left"
        Keep every catalogue row, or only those with truth.

    Returns
    -------
    pandas.DataFrame
        Catalogue columns, ``true_label``, then the truth table's other columns
        (suffixed ``_truth`` where they clash), in the catalogue's row order.

    Raises
    ------
    CatalogueError
        A bad ``how``.
    SourceTableError
        A missing key or label column, or a ``source_id`` repeated in the truth.
    """
    if how not in ("inner", "left"):
        raise CatalogueError(f"join_truth: how={how!r}; choose 'left' or 'inner'")
    _check_columns(catalogue_df, [on], "join_truth catalogue_df")
    _check_columns(truth_df, [on, label], "join_truth truth_df")
    dupes = truth_df[on][truth_df[on].duplicated()]
    if len(dupes):
        raise SourceTableError(f"join_truth: truth_df has repeated {on} values "
                               f"(e.g. {dupes.iloc[:3].tolist()!r}); keep one row per source")
    truth = truth_df.rename(columns={label: "true_label"})
    left = catalogue_df.drop(columns=["true_label"], errors="ignore")
    out = left.merge(truth, on=on, how=how, suffixes=("", "_truth"), validate="many_to_one")
    return out.reset_index(drop=True)
