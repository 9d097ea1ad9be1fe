"""Writing a cutout store: the output-folder transaction, then the store's arrays chunk by chunk.

A store is built in a hidden sibling directory and renamed into place only when
whole, so ``out`` always holds the old store, the new one or nothing; every
ingest path goes through :func:`building`::

    out = prepare_output(out, overwrite=overwrite)      # refuse early, before any work
    ...
    with building(out, overwrite=overwrite) as tmp:     # sweeps dead runs' temporaries
        create_store(tmp, table, ...)
        write_chunk(tmp, 0, stamps)
    # committed by rename here; on any error the temporary is removed instead

The temporary's name, ``.<name>.tmp-<host>-<pid>-<random>``, says which process
builds it, so a later run can remove the half-built stores of runs that were
killed (SIGKILL, a lost node) without touching a live run's.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from pipeline import __version__
from pipeline.errors import StoreError
from pipeline.files import to_jsonable
from pipeline.store.contract import COORDS, IMAGE_COMPRESSIONS, IMAGE_DIMS, OPTIONAL_COORDS

__all__ = ["building", "chunk_byte_budget", "commit_store", "create_store", "discard", "prepare_output",
           "sources_per_chunk", "sweep_stale_temporaries", "temporary_sibling", "write_chunk",
           "write_coords"]


# ---------------------------------------------------------------------------- output dir
def _is_cutout_store(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("kind") == "cutouts"


def prepare_output(out: str | Path, *, overwrite: bool = False) -> Path:
    """Validate the output path before any work; return it as a Path.

    Parameters
    ----------
    out : str or Path
        The store directory to write; its parent is created when missing.
    overwrite : bool, default: False
        Whether an existing cutout store (or empty directory) may be replaced.

    Raises
    ------
    StoreError
        ``out`` exists and ``overwrite`` is False, or it exists and is not a
        cutout store (never replaced, to protect unrelated files).
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise StoreError(f"{out}: already exists; pass --overwrite (overwrite=True) to "
                             "replace it, or choose another --out")
        if not out.is_dir() or not (_is_cutout_store(out) or not any(out.iterdir())):
            raise StoreError(f"{out}: exists and is not a skysieve cutout store; refusing to "
                             "replace it (remove it yourself or choose another --out)")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _host_tag() -> str:
    import socket

    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"


def temporary_sibling(out: Path) -> Path:
    """A fresh hidden directory name next to ``out`` to build the store in.

    Its name, ``.<name>.tmp-<host>-<pid>-<random>``, says which process builds
    it, so that :func:`sweep_stale_temporaries` can remove it after that
    process died (SIGKILL, a lost node) without touching a live run's.
    """
    return out.with_name(f".{out.name}.tmp-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def sweep_stale_temporaries(out: str | Path) -> list[Path]:
    """Remove the half-built stores of dead ingests of ``out`` (same host, pid gone).

    Returns
    -------
    list of Path
        The directories removed.
    """
    out = Path(out)
    host, removed = _host_tag(), []
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        tail = tmp.name[len(f".{out.name}.tmp-"):]
        parts = tail.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue  # another host's (or an unknown) build: never ours to remove
        pid = int(parts[1])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def commit_store(tmp: Path, out: Path, *, overwrite: bool) -> Path:
    """Rename the finished store ``tmp`` to ``out`` (replacing an old store if allowed)."""
    old = None
    if out.exists():
        prepare_output(out, overwrite=overwrite)  # re-check: it may have appeared meanwhile
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def discard(tmp: Path | None) -> None:
    """Remove a half-built store directory, if any."""
    if tmp is not None and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def building(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a store at ``out`` as one transaction: whole on success, absent on error.

    Checks ``out`` (:func:`prepare_output`), removes the temporaries of earlier
    runs of ``out`` that were killed (:func:`sweep_stale_temporaries`), and
    yields a fresh hidden sibling path for the body to create the store in.
    When the body returns, the store is renamed into place
    (:func:`commit_store`); when it raises (``KeyboardInterrupt`` included),
    the temporary is removed and the error propagates.

    Parameters
    ----------
    out : str or Path
        The store directory to write.
    overwrite : bool, default: False
        Replace an existing store at ``out``.

    Yields
    ------
    Path
        The temporary directory path (not yet created).

    Raises
    ------
    StoreError
        ``out`` exists and may not be replaced (see :func:`prepare_output`).
    """
    out = prepare_output(out, overwrite=overwrite)
    sweep_stale_temporaries(out)
    tmp = temporary_sibling(out)
    try:
        yield tmp
        commit_store(tmp, out, overwrite=overwrite)
    except BaseException:
        discard(tmp)
        raise


# ---------------------------------------------------------------------------- writing
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
    from dask.utils import parse_bytes

    from pipeline import config
    from pipeline.checks import positive_int

    budget = config.resolve("ingest.chunk-bytes", chunk_bytes)
    try:
        budget = parse_bytes(budget) if isinstance(budget, str) else budget
    except ValueError as exc:
        raise error(f"ingest.chunk-bytes is {budget!r}; give bytes, e.g. 16777216 or "
                    "'16 MiB'") from exc
    return positive_int("ingest.chunk-bytes", budget, error=error)


def create_store(path: str | Path, table: pd.DataFrame, *, stamp: int, bands: Sequence[str],
                 chunk_sources: int, pixel_scale: float, inputs: list[dict[str, Any]],
                 rejects: list[dict[str, Any]], extra_attrs: dict[str, Any] | None = None,
                 image_compression: str | None = None) -> None:
    """Create a store at ``path``: all coordinates and attrs, an empty ``image`` and statistics.

    ``image`` and the per-stamp statistics are created NaN-filled (Zarr fill
    value) and written chunk by chunk afterwards with :func:`write_chunk`; the
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
    image = da.full((n, nb, stamp, stamp), np.nan, dtype=np.float32,
                    chunks=(chunk_sources, nb, stamp, stamp))
    sizes = {"source": n, "band": nb}
    stats = {name: (dims, da.full(tuple(sizes[d] for d in dims), np.nan, dtype=np.float32,
                                  chunks=tuple(chunk_sources if d == "source" else nb
                                               for d in dims)))
             for name, dims in STAMP_STATS.items()}
    ds = xr.Dataset({"image": (IMAGE_DIMS, image), **stats}, coords=coords)
    attrs: dict[str, Any] = {
        "skysieve_version": __version__, "kind": "cutouts", "stamp": int(stamp),
        "bands": [str(b) for b in bands], "pixel_scale": float(pixel_scale),
        "chunk_sources": int(chunk_sources), "inputs": inputs, "rejects": rejects,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if "label" in table.columns:
        attrs["classes"] = sorted({str(v) for v in table["label"] if str(v)})
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
    for name, (dims, values) in stats.items():
        encoding[name] = {"chunks": values.chunksize, "compressors": None}
    for name in coords:
        encoding[name] = {"chunks": (max(1, min(chunk_sources, n)),), "compressors": zstd}
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


def write_chunk(path: str | Path, start: int, stamps: np.ndarray) -> None:
    """Write ``stamps`` (n, band, y, x) to ``image[start:start + n]``: one whole chunk.

    The per-stamp statistics (:mod:`pipeline.imaging.stamp_stats`) are measured here and
    written first, where the store has them.

    Raises
    ------
    StoreError
        ``start`` not on a chunk boundary, or a partial chunk other than the last.
    """
    import zarr

    array = zarr.open_array(Path(path) / "image", mode="r+")
    cs = array.chunks[0]
    stop = start + stamps.shape[0]
    if start % cs or (stop % cs and stop != array.shape[0]) or stamps.shape[1:] != array.shape[1:]:
        raise StoreError(f"{path}: rows {start}:{stop} of shape {stamps.shape!r} are not one "
                         f"whole chunk of 'image' {array.shape!r} chunked {array.chunks!r}")
    stamps = stamps.astype(np.float32, copy=False)
    if (Path(path) / "stamp_fwhm").is_dir():
        from pipeline.imaging.stamp_stats import stamp_statistics

        for name, values in stamp_statistics(stamps).items():
            zarr.open_array(Path(path) / name, mode="r+")[start:stop] = values
    array[start:stop] = stamps


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
