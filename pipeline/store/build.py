"""Writing a cutout store's arrays: chunk and shard sizes, the empty store, whole chunks or shards.

Inside the output-folder transaction (:mod:`pipeline.store.transaction`)::

    with building(out, overwrite=overwrite) as tmp:
        create_store(tmp, table, ..., shard_sources=sources_per_shard(...))
        write_chunk(tmp, 0, stamps)     # whole chunks; whole shards in a sharded store
        write_chunks(tmp, 0, blocks)    # the same from an iterator, one chunk in memory
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from pipeline import __version__
from pipeline.errors import StoreError
from pipeline.files import to_jsonable
from pipeline.store.contract import COORDS, IMAGE_COMPRESSIONS, IMAGE_DIMS, OPTIONAL_COORDS

__all__ = ["chunk_byte_budget", "create_store", "sources_per_chunk", "sources_per_shard",
           "write_chunk", "write_chunks", "write_coords"]

#: Default of config ``ingest.shard-bytes`` where a configuration lacks the key.
DEFAULT_SHARD_BYTES = "256 MiB"
#: Chunks per shard of a per-source coordinate (written at once by the client).
COORD_SHARD_CHUNKS = 1024


def sources_per_chunk(stamp: int, n_bands: int = 1, *, chunk_sources: int | None = None,
                      chunk_bytes: int | str | None = None, error: type[Exception] = StoreError,
                      ) -> int:
    """Sources per chunk of ``image``: from a byte budget unless a count is set.

    Precedence: ``chunk_sources``, then config ``ingest.chunk-sources`` when it
    is not null, then ``chunk_bytes`` (else config ``ingest.chunk-bytes``)
    divided by the bytes of one source, ``stamp * stamp * n_bands * 4``
    (float32), at least 1.

    Parameters
    ----------
    stamp, n_bands : int
        Stamp side (px) and bands of each source.
    chunk_sources : int, optional
        An explicit count (wins over everything).
    chunk_bytes : int or str, optional
        Bytes of ``image`` per chunk: a number or a size such as ``"16 MiB"``.
    error : type of Exception, default: StoreError
        What a bad value raises.

    Returns
    -------
    int
        From 1 to 2**20.
    """
    from pipeline import config

    count = config.resolve("ingest.chunk-sources", chunk_sources)
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not (
                1 <= count <= 1 << 20):
            raise error(f"chunk_sources must be an integer from 1 to {1 << 20}, got {count!r}")
        return int(count)
    per_source = 4 * int(stamp) * int(stamp) * max(1, int(n_bands))
    return int(min(1 << 20, max(1, chunk_byte_budget(chunk_bytes, error=error) // per_source)))


def chunk_byte_budget(chunk_bytes: int | str | None = None, *,
                      error: type[Exception] = StoreError) -> int:
    """Bytes of ``image`` per chunk: ``chunk_bytes``, else config ``ingest.chunk-bytes``.

    A number of bytes or a size string (``"16 MiB"``, parsed by
    :func:`dask.utils.parse_bytes`); raises ``error`` unless it is positive.
    """
    from pipeline import config

    return _bytes("ingest.chunk-bytes", config.resolve("ingest.chunk-bytes", chunk_bytes), error)


def _bytes(key: str, budget: Any, error: type[Exception]) -> int:
    """``budget`` (bytes, or a size string parsed by dask) as a positive int, else ``error``."""
    from dask.utils import parse_bytes

    from pipeline.checks import positive_int

    try:
        budget = parse_bytes(budget) if isinstance(budget, str) else budget
    except ValueError as exc:
        raise error(f"{key} is {budget!r}; give bytes, e.g. 16777216 or '16 MiB'") from exc
    return positive_int(key, budget, error=error)


def sources_per_shard(chunk_sources: int, n_sources: int, stamp: int, n_bands: int = 1, *,
                      shard_bytes: int | str | None = None, min_shards: int = 8,
                      error: type[Exception] = StoreError) -> int | None:
    """Sources per shard of ``image``: whole chunks filling ``ingest.shard-bytes``, or None.

    A shard is one file holding several chunks (Zarr v3 sharding), so a release's file
    count is bounded by its bytes, not its chunks.  Each ingest task writes whole shards,
    so memory per task is one shard.  A small store is cut into at least ``min_shards``
    shards (when it has as many chunks), so its writes still run in parallel.

    Parameters
    ----------
    chunk_sources, n_sources : int
        Sources per chunk and in the store.
    stamp, n_bands : int
        Stamp side (px) and bands of each source (float32 pixels).
    shard_bytes : int or str, optional
        Bytes of ``image`` per shard (default: config ``ingest.shard-bytes``, else
        :data:`DEFAULT_SHARD_BYTES`); ``0`` or ``"none"`` (or config null): unsharded.
    min_shards : int, default: 8
        Fewest shards a store of that many chunks is cut into.

    Returns
    -------
    int or None
        A multiple of ``chunk_sources``; None for an unsharded store (shards of one
        chunk would only add an index to every file).
    """
    import dask.config

    if shard_bytes is None:
        shard_bytes = dask.config.get("skysieve.ingest.shard-bytes", DEFAULT_SHARD_BYTES)
    if shard_bytes in (None, 0, "0", "none", "None", "null"):
        return None
    budget = _bytes("ingest.shard-bytes", shard_bytes, error)
    chunk_bytes = 4 * int(stamp) * int(stamp) * max(1, int(n_bands)) * int(chunk_sources)
    per_shard = max(1, budget // chunk_bytes)
    n_chunks = max(1, math.ceil(int(n_sources) / int(chunk_sources)))
    per_shard = min(per_shard, max(1, math.ceil(n_chunks / max(1, int(min_shards)))))
    return None if per_shard <= 1 else int(per_shard * chunk_sources)


def create_store(path: str | Path, table: pd.DataFrame, *, stamp: int, bands: Sequence[str],
                 chunk_sources: int, pixel_scale: float, inputs: list[dict[str, Any]],
                 rejects: list[dict[str, Any]], extra_attrs: dict[str, Any] | None = None,
                 image_compression: str | None = None, shard_sources: int | None = None,
                 statistics: dict[str, np.ndarray] | None = None) -> None:
    """Create a store at ``path``: all coordinates and attrs, an empty ``image`` and statistics.

    ``image`` is created NaN-filled (Zarr fill value) and written chunk by chunk
    afterwards with :func:`write_chunk`, which measures the per-stamp statistics as
    it goes unless they were given here (``statistics``: written now, whole); the
    rejects table is written as ``rejects.parquet``.

    Parameters
    ----------
    path : str or Path
        New directory (must not exist).
    table : pandas.DataFrame
        One row per source, in store order, with every column of
        :data:`COORDS` (and optionally ``label`` and those of :data:`OPTIONAL_COORDS`).
    stamp, chunk_sources : int
        Stamp side (px) and sources per chunk.
    bands : sequence of str
        Band names (length = the ``band`` dimension).
    pixel_scale : float
        Arcsec per pixel (NaN if unknown).
    inputs, rejects : list of dict
        Provenance ``{path, sha256, bytes}`` and ``{file, hdu, reason}``.
    image_compression : {"none", "zstd"}, optional
        Codec of ``image`` (default: config ``ingest.image-compression``).
    shard_sources : int, optional
        Sources per shard (a multiple of ``chunk_sources``, :func:`sources_per_shard`):
        ``image`` and the per-stamp statistics are then Zarr v3 sharded, one file per
        shard, and must be written a whole shard at a time (:func:`write_chunk`); the
        coordinates are sharded too, :data:`COORD_SHARD_CHUNKS` chunks a file.  None
        (the default): one file per chunk, as stores before sharding.
    statistics : dict of str to numpy.ndarray, optional
        Every variable of :data:`pipeline.imaging.stamp_stats.STAMP_STATS`, already
        measured (shapes ``(n, band)`` and ``(n,)``); then write the chunks with
        ``statistics=False``.
    """
    import dask.array as da
    from zarr.codecs import ZstdCodec

    from pipeline import config
    from pipeline.imaging.stamp_stats import STAMP_STATS

    path = Path(path)
    image_compression = config.resolve("ingest.image-compression", image_compression)
    if image_compression not in IMAGE_COMPRESSIONS:
        raise StoreError(f"ingest.image-compression is {image_compression!r}; use one of "
                         f"{', '.join(IMAGE_COMPRESSIONS)}")
    missing = [c for c in COORDS if c not in table.columns]
    if missing:
        raise StoreError(f"{path}: cannot create a store without coordinates {missing!r}")
    n = len(table)
    nb = len(bands)
    coords: dict[str, Any] = {}
    for name, dtype in COORDS.items():
        values = table[name].to_numpy()
        values = values.astype(object if dtype == "str" else dtype)
        coords[name] = ("source", values)
    for name, dtype in OPTIONAL_COORDS.items():
        if name in table.columns:
            coords[name] = ("source", table[name].to_numpy().astype(dtype))
    if "label" in table.columns:
        coords["label"] = ("source", table["label"].astype(str).to_numpy().astype(object))
    # Never computed (compute=False: written later, a write unit at a time); chunked by
    # that unit, a shard or a chunk, as xarray's safe-chunks check asks.
    unit = shard_sources or chunk_sources
    image = da.full((n, nb, stamp, stamp), np.nan, dtype=np.float32,
                    chunks=(unit, nb, stamp, stamp))
    sizes = {"source": n, "band": nb}
    stats = {name: (dims, da.full(tuple(sizes[d] for d in dims), np.nan, dtype=np.float32,
                                  chunks=tuple(unit if d == "source" else nb for d in dims)))
             for name, dims in STAMP_STATS.items()}
    if statistics is not None:  # numpy, not dask: to_zarr writes them now
        for name, dims in STAMP_STATS.items():
            values = np.asarray(statistics[name], dtype=np.float32)
            if values.shape != tuple(sizes[d] for d in dims):
                raise StoreError(f"{path}: statistic {name!r} has shape {values.shape!r}; "
                                 f"want {tuple(sizes[d] for d in dims)!r} {dims!r}")
            stats[name] = (dims, values)
    ds = xr.Dataset({"image": (IMAGE_DIMS, image), **stats}, coords=coords)
    attrs: dict[str, Any] = {
        "skysieve_version": __version__, "kind": "cutouts", "stamp": int(stamp),
        "bands": [str(b) for b in bands], "pixel_scale": float(pixel_scale),
        "chunk_sources": int(chunk_sources), "inputs": inputs, "rejects": rejects,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if "label" in table.columns:
        attrs["classes"] = sorted({str(v) for v in table["label"] if str(v)})
    if shard_sources is not None:
        if shard_sources < chunk_sources or shard_sources % chunk_sources:
            raise StoreError(f"{path}: shard_sources {shard_sources!r} must be a multiple of "
                             f"chunk_sources {chunk_sources!r}")
        attrs["shard_sources"] = int(shard_sources)
    attrs.update(extra_attrs or {})
    attrs = to_jsonable(attrs)
    # An unknown pixel scale stays NaN (Zarr v3 writes it as "NaN" and reads it back);
    # to_jsonable would have made it None.
    attrs["pixel_scale"] = float(pixel_scale)
    ds.attrs = attrs
    zstd = [ZstdCodec(level=3)]
    encoding: dict[str, Any] = {"image": {
        "chunks": (chunk_sources, nb, stamp, stamp),
        "compressors": zstd if image_compression == "zstd" else None}}
    for name, dims in STAMP_STATS.items():
        encoding[name] = {"chunks": tuple(chunk_sources if d == "source" else nb for d in dims),
                          "compressors": None}
    if shard_sources is not None:
        for name, enc in encoding.items():
            enc["shards"] = (shard_sources, *enc["chunks"][1:])
    coord_chunk = max(1, min(chunk_sources, n))
    for name in coords:
        encoding[name] = {"chunks": (coord_chunk,), "compressors": zstd}
        if shard_sources is not None:
            encoding[name]["shards"] = (coord_chunk * min(COORD_SHARD_CHUNKS,
                                                          math.ceil(n / coord_chunk)),)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr")
        ds.to_zarr(path, mode="w-", zarr_format=3, compute=False, encoding=encoding)
    _write_rejects(path, rejects)


def _write_rejects(path: Path, rejects: list[dict[str, Any]]) -> None:
    table = pa.table({
        "file": pa.array([str(r["file"]) for r in rejects], pa.string()),
        "hdu": pa.array([int(r["hdu"]) for r in rejects], pa.int32()),
        "reason": pa.array([str(r["reason"]) for r in rejects], pa.string()),
    })
    pq.write_table(table, Path(path) / "rejects.parquet")


def write_chunk(path: str | Path, start: int, stamps: np.ndarray, *,
                statistics: bool = True) -> None:
    """Write ``stamps`` (n, band, y, x) to ``image[start:start + n]``: whole chunks.

    In a sharded store (``attrs["shard_sources"]``) the rows must be whole shards:
    Zarr rewrites a shard whole, so two tasks writing parts of one shard would race.
    The per-stamp statistics (:mod:`pipeline.imaging.stamp_stats`) are measured here and
    written first, where the store has them, unless ``statistics`` is False (they
    were given to :func:`create_store`).

    Raises
    ------
    StoreError
        ``start`` not on a chunk (shard) boundary, or a partial chunk (shard) other
        than the last.
    """
    import zarr

    array = zarr.open_array(Path(path) / "image", mode="r+")
    unit = (array.shards or array.chunks)[0]
    what = "shard" if array.shards else "chunk"
    stop = start + stamps.shape[0]
    aligned = not start % unit and (not stop % unit or stop == array.shape[0])
    if not aligned or stamps.shape[1:] != array.shape[1:]:
        raise StoreError(f"{path}: rows {start}:{stop} of shape {stamps.shape!r} are not whole "
                         f"{what}s of 'image' {array.shape!r} ({what}s of {unit} sources)")
    stamps = stamps.astype(np.float32, copy=False)
    if statistics and (Path(path) / "stamp_fwhm").is_dir():
        from pipeline.imaging.stamp_stats import stamp_statistics

        step = array.chunks[0]  # measured chunk by chunk: temporaries stay one chunk's
        blocks = [stamp_statistics(stamps[i:i + step]) for i in range(0, len(stamps), step)]
        for name in blocks[0] if blocks else ():
            zarr.open_array(Path(path) / name, mode="r+")[start:stop] = np.concatenate(
                [b[name] for b in blocks])
    array[start:stop] = stamps


def write_chunks(path: str | Path, start: int, blocks: Iterable[np.ndarray], *,
                 statistics: bool = True) -> int:
    """Write consecutive whole chunks of ``image`` from ``start``, holding one at a time.

    Like :func:`write_chunk` on their concatenation, with the same alignment rules (in a
    sharded store, ``start`` opens a shard and the blocks fill it, or run to the array's
    end).  Each block is one chunk (``chunk_sources`` rows; the array's last may be
    shorter).  In a sharded store of uncompressed chunks the shard file is streamed
    (:class:`pipeline.store.shard_file.ShardFile`), so a writer holds one chunk, not a
    shard; an unsharded store writes each chunk as it comes; other layouts (zstd) gather
    the shard and write it through Zarr.  ``statistics`` as :func:`write_chunk`.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    StoreError
        As :func:`write_chunk`; or a block that is not one whole chunk, or blocks that
        do not fill their shard.
    """
    import zarr

    from pipeline.store.read import chunk_layout
    from pipeline.store.shard_file import ShardFile, streamable

    path = Path(path)
    array = zarr.open_array(path / "image", mode="r")
    step, n = array.chunks[0], array.shape[0]
    layout = chunk_layout(path, "image")
    if not array.shards:
        rows = start
        for block in blocks:
            write_chunk(path, rows, block, statistics=statistics)
            rows += block.shape[0]
        return rows - start
    if not streamable(layout):
        gathered = [np.asarray(b) for b in blocks]
        if gathered:
            write_chunk(path, start, np.concatenate(gathered), statistics=statistics)
        return sum(b.shape[0] for b in gathered)
    unit = array.shards[0]
    if start % unit:
        raise StoreError(f"{path}: rows from {start} do not open a shard of 'image' "
                         f"(shards of {unit} sources)")
    from pipeline.imaging.stamp_stats import stamp_statistics

    stats_on = statistics and (path / "stamp_fwhm").is_dir()
    stats: list[dict[str, np.ndarray]] = []
    rows = start
    with ShardFile(layout, start // unit) as shard:
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if block.shape[0] != min(step, n - rows):
                raise StoreError(f"{path}: a block of {block.shape[0]} rows at row {rows}; "
                                 f"blocks are whole chunks of {step} sources")
            shard.add(block)
            if stats_on:
                stats.append(stamp_statistics(block))
            rows += block.shape[0]
    for name in stats[0] if stats else ():  # small: one write per statistic, shard-aligned
        zarr.open_array(path / name, mode="r+")[start:rows] = np.concatenate(
            [b[name] for b in stats])
    return rows - start


def write_coords(path: str | Path, values: dict[str, np.ndarray]) -> None:
    """Overwrite whole per-source coordinates of a store being built (measured after its chunks).

    Parameters
    ----------
    path : str or Path
        The store (its temporary directory while building).
    values : dict of str to numpy.ndarray
        Coordinate name -> one value per source; cast to the coordinate's dtype.

    Raises
    ------
    StoreError
        A name the store lacks, or a length other than the number of sources.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for name, data in values.items():
        if name not in group or name not in {**COORDS, **OPTIONAL_COORDS}:
            raise StoreError(f"{path}: no per-source coordinate {name!r} to write")
        array = group[name]
        data = np.asarray(data)
        if data.shape != array.shape:
            raise StoreError(f"{path}: {name!r} has shape {array.shape!r}, got values of shape "
                             f"{data.shape!r}")
        array[:] = data.astype(array.dtype, copy=False)
