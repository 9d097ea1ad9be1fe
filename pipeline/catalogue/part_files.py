"""Writing and finding a catalogue's Parquet files: each one whole or absent.

:func:`write_part` is the one place catalogue parts are written; it and
:func:`write_table` (the rejects table) serialise the Parquet file in memory and
hand it to :func:`pipeline.files.atomic_write` with ``fsync``: a hidden
temporary ``.part-NNNNN.parquet.<random>.tmp`` beside the target, then a rename,
so a reader or a resumed run never sees half a part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.catalogue.layout import METADATA_KEY, PART_GLOB
from pipeline.errors import CatalogueError
from pipeline.files import atomic_write

__all__ = ["write_part", "write_table", "read_metadata", "read_footer", "parts"]


def write_table(table: pa.Table, path: Path, **options: Any) -> Path:
    """Write ``table`` as the Parquet file ``path`` atomically (temporary, fsync, rename).

    Parameters
    ----------
    table : pyarrow.Table
        The rows.
    path : Path
        Final name; its folder must exist.
    **options
        Passed to :func:`pyarrow.parquet.write_table` (compression, row groups...).

    Returns
    -------
    Path
        ``path``.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return atomic_write(path, sink.getvalue().to_pybytes(), fsync=True)


def write_part(table: pa.Table, path: Path, *, metadata: dict[str, Any],
               row_group_size: int = 65536) -> None:
    """Write catalogue part ``table`` to ``path`` atomically, with the run metadata.

    Parameters
    ----------
    table : pyarrow.Table
        The part's rows.
    path : Path
        Final name of the part (see :func:`pipeline.catalogue.layout.part_path`).
    metadata : dict
        JSON-serialisable run metadata stored under the ``skysieve`` key of the
        Parquet file metadata.
    row_group_size : int, default: 65536
        Rows per row group.
    """
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
    write_table(table.replace_schema_metadata(schema_meta), Path(path), compression="zstd",
                row_group_size=row_group_size, write_statistics=True)


def read_metadata(path: Path) -> dict[str, Any]:
    """Return the skysieve metadata (classes, model, version, config) of a part or catalogue.

    Parameters
    ----------
    path : Path
        A part file, or a catalogue directory (its first part is read).

    Raises
    ------
    FileNotFoundError
        A directory without parts.
    CatalogueError
        A Parquet file without the ``skysieve`` metadata.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(PART_GLOB))
        if not found:
            raise FileNotFoundError(f"{path}: no catalogue parts ({PART_GLOB}); run "
                                    "`skysieve classify STORE --out DIR` first")
        path = found[0]
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise CatalogueError(f"{path}: not a skysieve catalogue part (no 'skysieve' metadata)")
    return json.loads(meta[METADATA_KEY])


def read_footer(path: Path) -> tuple[int, dict[str, Any]]:
    """Return the row count and the skysieve metadata of one part, from its footer only.

    Parameters
    ----------
    path : Path
        A part file.

    Returns
    -------
    (int, dict)
        Rows, and the metadata (``{}`` for a Parquet file without it).
    """
    meta = pq.read_metadata(path)
    kv = meta.metadata or {}
    return meta.num_rows, (json.loads(kv[METADATA_KEY]) if METADATA_KEY in kv else {})


def parts(path: Path) -> list[Path]:
    """The part files of the catalogue directory ``path``, in order.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a directory or holds no ``part-*.parquet``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such catalogue directory; run "
                                "`skysieve classify STORE --out DIR` first")
    found = sorted(path.glob(PART_GLOB))
    if not found:
        raise FileNotFoundError(f"{path}: no catalogue parts ({PART_GLOB}) found; run "
                                "`skysieve classify STORE --out DIR` first")
    return found
