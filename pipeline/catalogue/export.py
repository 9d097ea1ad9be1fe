"""``skysieve catalogue to-fits``: a catalogue as one FITS binary table or VOTable, for TOPCAT.

:func:`to_table_file` reads the Parquet parts (all rows, or those a DuckDB
``WHERE`` condition keeps), builds an :class:`astropy.table.Table` with units
(``ra``/``dec`` in deg, ``x``/``y``/``psf_fwhm`` in pix), a description per
column and, for a VOTable, the UCDs TOPCAT uses to find the sky position; the
run's provenance from the Parquet ``skysieve`` metadata (classes, model,
sha256, version, HEALPix order) goes into the FITS header or the VOTable's
PARAMs and description.  The format follows the output's suffix
(:data:`SUFFIXES`).  The file is written whole or not at all
(:func:`pipeline.files.atomic_write`).

The selected rows are held in memory (a few copies while the file is encoded): cut a
big catalogue down with ``where`` first, or use HATS (:mod:`pipeline.catalogue.hats`).

>>> to_table_file("night/catalogue", "night/stars.fits",
...               where="label = 'star' AND confidence > 0.9")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.catalogue.api import connect
from pipeline.catalogue.part_files import parts, read_metadata
from pipeline.errors import CatalogueError
from pipeline.files import atomic_write

__all__ = ["to_table_file", "ExportSummary", "SUFFIXES", "table_format"]

#: Output suffix -> format written.
SUFFIXES = {".fits": "fits", ".fit": "fits", ".fts": "fits",
            ".vot": "votable", ".xml": "votable", ".votable": "votable"}

#: Column -> (unit, UCD, description); ``p_<class>`` columns are described in :func:`_describe`.
_COLUMNS: dict[str, tuple[str | None, str | None, str]] = {
    "source_id": (None, "meta.id;meta.main", "stable id from exposure + CCD + detection"),
    "exposure": (None, "meta.id;obs", "exposure name (file stem)"),
    "ccd": (None, "meta.id;instr.det", "0-based HDU index of the CCD image"),
    "ra": ("deg", "pos.eq.ra;meta.main", "ICRS right ascension (NaN without a celestial WCS)"),
    "dec": ("deg", "pos.eq.dec;meta.main", "ICRS declination (NaN without a celestial WCS)"),
    "x": ("pix", "pos.cartesian.x;instr.det", "0-based centroid column on the CCD"),
    "y": ("pix", "pos.cartesian.y;instr.det", "0-based centroid row on the CCD"),
    "label": (None, "meta.code.class", "most probable class"),
    "confidence": (None, "stat.probability", "the largest class probability"),
    "blur_score": (None, None, "apparent FWHM / the run's reference PSF FWHM"),
    "psf_fwhm": ("pix", "instr.obsty.seeing", "the exposure's PSF FWHM, estimated at ingest"),
    "healpix": (None, "pos.healpix", "HEALPix index (nested; order in the metadata), -1 "
                                     "without a position"),
    "flags": (None, "meta.code.qual", "bits: 1 edge, 2 saturated, 4 deblended, 8 sep flag, "
                                      "16 no flux at the centre"),
    "true_label": (None, "meta.code.class", "true class where known (empty otherwise)"),
}


@dataclass
class ExportSummary:
    """What :func:`to_table_file` wrote."""

    path: str
    format: str
    rows: int
    columns: int
    where: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def describe(self) -> str:
        """A few lines for the terminal."""
        kind = "FITS binary table" if self.format == "fits" else "VOTable"
        lines = [f"{kind:<15}{self.path}",
                 f"rows           {self.rows:,} x {self.columns} columns"]
        if self.where:
            lines.append(f"where          {self.where}")
        return "\n".join(lines)


def table_format(path: str | Path) -> str:
    """The format (``"fits"`` or ``"votable"``) that the suffix of ``path`` asks for.

    Raises
    ------
    CatalogueError
        Any other suffix; the message names the file and the valid suffixes.
    """
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        fits = ", ".join(s for s, f in SUFFIXES.items() if f == "fits")
        vot = ", ".join(s for s, f in SUFFIXES.items() if f == "votable")
        raise CatalogueError(f"{path}: cannot tell the format from the suffix "
                             f"{path.suffix or '(none)'!r}; name the output with one of "
                             f"{fits} (FITS binary table) or {vot} (VOTable)")
    return fmt


def to_table_file(catalogue_dir: str | Path, out: str | Path, *, where: str | None = None,
                  overwrite: bool = False) -> ExportSummary:
    """Write the catalogue at ``catalogue_dir`` as a FITS binary table or a VOTable at ``out``.

    Parameters
    ----------
    catalogue_dir : str or Path
        Catalogue directory written by ``skysieve classify``.
    out : str or Path
        Output file; its suffix picks the format (:data:`SUFFIXES`): ``.fits``,
        ``.fit``, ``.fts`` for FITS, ``.vot``, ``.xml``, ``.votable`` for a
        VOTable (BINARY2 serialisation).  Its folder is created.
    where : str, optional
        A DuckDB SQL condition on the catalogue's columns, e.g.
        ``"label = 'star' AND confidence > 0.9"``; only those rows are written.
    overwrite : bool, default: False
        Replace an existing ``out``.

    Returns
    -------
    ExportSummary

    Raises
    ------
    CatalogueError
        A suffix that names no format, or a ``where`` DuckDB cannot run.
    FileNotFoundError
        No catalogue parts at ``catalogue_dir``.
    FileExistsError
        ``out`` exists (without ``overwrite``) or is a directory.
    """
    catalogue_dir, out = Path(catalogue_dir), Path(out)
    fmt = table_format(out)
    files = parts(catalogue_dir)
    meta = read_metadata(catalogue_dir)
    if out.is_dir():
        raise FileExistsError(f"{out}: is a directory; name the output file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    rows = _read_rows(catalogue_dir, files, where)
    table = _astropy_table(rows, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    if fmt == "fits":
        _write_fits(table, meta, catalogue_dir, where, buf)
    else:
        _write_votable(table, meta, catalogue_dir, where, buf)
    atomic_write(out, buf.getvalue(), fsync=True)
    return ExportSummary(path=str(out), format=fmt, rows=len(table), columns=len(table.columns),
                         where=where)


def _read_rows(catalogue_dir: Path, files: list[Path], where: str | None) -> pa.Table:
    """The catalogue rows (part order) as a pyarrow Table, filtered by ``where`` if given."""
    if where is None:
        import pyarrow.dataset as ds

        return ds.dataset([str(f) for f in files], format="parquet").to_table()
    import duckdb

    with connect(catalogue_dir) as con:
        try:
            return con.sql(f"SELECT * FROM catalogue WHERE {where}").to_arrow_table()
        except duckdb.Error as exc:
            reason = " ".join(str(exc).split())  # one line
            raise CatalogueError(f"--where {where!r}: DuckDB cannot run it on {catalogue_dir} "
                                 f"({reason}); write an SQL condition on the catalogue's columns, "
                                 "e.g. \"label = 'star' AND confidence > 0.9\"") from exc


def _describe(name: str, classes: list[str]) -> tuple[str | None, str | None, str | None]:
    if name in _COLUMNS:
        return _COLUMNS[name]
    if name.startswith("p_") and name[2:] in classes:
        return None, "stat.probability", f"calibrated probability of class {name[2:]!r}"
    return None, None, None


def _astropy_table(rows: pa.Table, meta: dict[str, Any]):
    """An astropy Table of ``rows``: fixed-width strings, masks for nulls, units, descriptions."""
    import pyarrow.compute as pc
    from astropy.table import MaskedColumn, Table

    classes = [str(c) for c in meta.get("classes", [])]
    table = Table()
    for name in rows.column_names:
        col = rows.column(name)
        mask = None
        if col.null_count:
            mask = col.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            data = np.asarray(pc.fill_null(col, "").to_pylist(), dtype=str)
        else:
            data = col.to_numpy()
        unit, ucd, description = _describe(name, classes)
        column = MaskedColumn(data, name=name, mask=mask) if mask is not None else data
        table[name] = column
        if unit is not None:
            table[name].unit = unit
        if description is not None:
            table[name].description = description
        if ucd is not None:
            table[name].meta["ucd"] = ucd
    return table


def _ascii(value: Any) -> str:
    """``value`` as a FITS-header-safe string (non-ASCII escaped)."""
    return str(value).encode("ascii", "backslashreplace").decode("ascii")


def _summary_line(meta: dict[str, Any], catalogue_dir: Path, where: str | None) -> str:
    classes = ", ".join(str(c) for c in meta.get("classes", []))
    text = f"skysieve catalogue {catalogue_dir.name}, model {meta.get('model')}: {classes}"
    return text + (f"; rows where {where}" if where else "")


def _write_fits(table, meta: dict[str, Any], catalogue_dir: Path, where: str | None,
                buf: io.BytesIO) -> None:
    """Write ``table`` as a FITS binary table with the provenance as header keywords.

    Keywords have 8 characters at most (long values continue on CONTINUE cards);
    each column's description and UCD go to ``TCOMMn`` and ``TUCDn`` (read by
    TOPCAT), and astropy's own column metadata to its COMMENT block.
    """
    from astropy.io import fits

    order = meta.get("healpix_order") if isinstance(meta.get("healpix_order"), dict) else {}
    cards = {
        "EXTNAME": "CATALOGUE",
        "ORIGIN": "skysieve",
        "SKYSVER": meta.get("skysieve_version"),
        "MODEL": meta.get("model"),
        "MODELARC": meta.get("model_arch"),
        "MODELSHA": meta.get("model_sha256"),
        "CLASSES": ",".join(str(c) for c in meta.get("classes", [])),
        "NCLASSES": len(meta.get("classes", [])),
        "HPXORDER": order.get("order"),
        "HPXNSIDE": order.get("nside"),
        "HPXSCHEM": order.get("scheme"),
        "WHERE": where,
        "SKYSIEVE": json.dumps(meta, sort_keys=True),
    }
    for key, value in cards.items():
        if value is not None:
            table.meta[key] = value if isinstance(value, int) else _ascii(value)
    table.meta["comments"] = [_ascii(_summary_line(meta, catalogue_dir, where)),
                              "SKYSIEVE holds the whole Parquet 'skysieve' metadata (JSON)"]
    first = io.BytesIO()
    table.write(first, format="fits")  # with astropy's column metadata (units, descriptions)
    first.seek(0)
    with fits.open(first) as hdus:
        header = hdus[1].header
        for i, column in enumerate(table.columns.values(), start=1):
            after = f"TUNIT{i}" if f"TUNIT{i}" in header else f"TFORM{i}"
            if column.meta.get("ucd"):
                header.insert(after, (f"TUCD{i}", column.meta["ucd"]), after=True)
            if column.description:
                header.insert(after, (f"TCOMM{i}", _ascii(column.description)), after=True)
        hdus.writeto(buf)


def _write_votable(table, meta: dict[str, Any], catalogue_dir: Path, where: str | None,
                   buf: io.BytesIO) -> None:
    """Write ``table`` as a BINARY2 VOTable with the provenance as PARAMs and DESCRIPTION."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Param

    votable = from_table(table)
    vtable = votable.get_first_table()
    vtable.name = "catalogue"
    vtable.description = _summary_line(meta, catalogue_dir, where)
    order = meta.get("healpix_order") if isinstance(meta.get("healpix_order"), dict) else {}
    params = {
        "skysieve_version": meta.get("skysieve_version"), "model": meta.get("model"),
        "model_arch": meta.get("model_arch"), "model_sha256": meta.get("model_sha256"),
        "classes": ",".join(str(c) for c in meta.get("classes", [])),
        "healpix_order": order.get("order"), "healpix_scheme": order.get("scheme"),
        "where": where, "skysieve": json.dumps(meta, sort_keys=True),
    }
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, int):
            vtable.params.append(Param(votable, name=name, datatype="int", value=value))
        else:
            vtable.params.append(Param(votable, name=name, datatype="unicodeChar",
                                       arraysize="*", value=str(value)))
    votable.to_xml(buf, tabledata_format="binary2")
