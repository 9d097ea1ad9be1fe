"""The Parquet catalogue: one row per source, written part by part, atomically.

A catalogue is a directory:

* ``part-00000.parquet`` ... one part per cutout-store chunk, each written to a
  hidden temporary name and renamed, so a part is either whole or absent;
* ``_run.json``: the run's fingerprint (store, model sha256, settings) that a
  rerun must match to resume;
* ``_summary.json``: the last run's summary; ``_rejects.parquet``: inputs that
  were rejected at ingest (file, hdu, reason).

Readers that skip names starting with ``_`` or ``.`` (pyarrow.dataset, dask,
DuckDB with the ``part-*.parquet`` glob) see only the catalogue rows.

Columns (see README "Catalogue schema"): ``source_id`` int64, ``exposure``
string, ``ccd`` int16, ``ra``/``dec`` float64 deg, ``x``/``y`` float64 px
(0-based), ``label`` string, ``p_<class>`` float32 (sum to 1), ``confidence``
float32, ``blur_score`` float32, ``psf_fwhm`` float32 px, ``healpix`` int64
(nested, order in the metadata), ``flags`` int32, and ``true_label`` string
when the store carries labels.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["PART_GLOB", "METADATA_KEY", "part_path", "write_part", "read_metadata",
           "read_catalogue", "query", "FLAG_EDGE", "FLAG_SATURATED", "FLAG_BLENDED",
           "FLAG_SEP", "FLAG_EMPTY"]

PART_GLOB = "part-*.parquet"
METADATA_KEY = b"skysieve"

# Flag bits: 1-8 come from ingest (the cutout store's `flags`), 16+ from classify.
FLAG_EDGE = 1        # the stamp touches the image edge (padded with NaN)
FLAG_SATURATED = 2   # saturated pixels in the source
FLAG_BLENDED = 4     # the detection was deblended from a neighbour
FLAG_SEP = 8         # sep raised one of its own flags
FLAG_EMPTY = 16      # no positive flux at the centre: blur score undefined


def part_path(out: Path, index: int) -> Path:
    """Path of catalogue part ``index`` in directory ``out``."""
    return Path(out) / f"part-{index:05d}.parquet"


def write_part(table: pa.Table, path: Path, *, metadata: dict[str, Any],
               row_group_size: int = 65536) -> None:
    """Write ``table`` to ``path`` atomically: a temporary name, fsync, then rename.

    Parameters
    ----------
    table : pyarrow.Table
        The part's rows.
    path : Path
        Final name of the part.
    metadata : dict
        JSON-serialisable run metadata stored under the ``skysieve`` key of the
        Parquet file metadata.
    row_group_size : int, default: 65536
        Rows per row group.
    """
    path = Path(path)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
    table = table.replace_schema_metadata(schema_meta)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size,
                       write_statistics=True)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_metadata(path: Path) -> dict[str, Any]:
    """Return the skysieve metadata (classes, model, version, config) of a part or catalogue.

    Parameters
    ----------
    path : Path
        A part file, or a catalogue directory (its first part is read).
    """
    path = Path(path)
    if path.is_dir():
        parts = sorted(path.glob(PART_GLOB))
        if not parts:
            raise FileNotFoundError(f"{path}: no catalogue parts ({PART_GLOB}); run "
                                    "`skysieve classify STORE --out DIR` first")
        path = parts[0]
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: not a skysieve catalogue part (no 'skysieve' metadata)")
    return json.loads(meta[METADATA_KEY])


def read_catalogue(path: Path, *, columns: list[str] | None = None):
    """Read a whole (small) catalogue directory into a pandas DataFrame."""
    import pyarrow.dataset as ds

    parts = sorted(Path(path).glob(PART_GLOB))
    if not parts:
        raise FileNotFoundError(f"{path}: no catalogue parts ({PART_GLOB}) found")
    return ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=columns).to_pandas()


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
    import duckdb

    path = Path(path)
    if not any(path.glob(PART_GLOB)):
        raise FileNotFoundError(f"{path}: no catalogue parts ({PART_GLOB}) found")
    con = duckdb.connect()
    try:
        glob = str(path / PART_GLOB).replace("'", "''")
        con.execute(f"CREATE VIEW catalogue AS SELECT * FROM read_parquet('{glob}')")
        return con.execute(sql).df()
    finally:
        con.close()
