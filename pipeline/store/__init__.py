"""The cutout store: a Zarr v3 directory written and read through xarray.

Contract (DESIGN.md; others code against it)
--------------------------------------------
- ``image`` (source, band, y, x), float32, chunked along ``source`` only:
  chunks ``(chunk_sources, n_band, stamp, stamp)``, the last may be shorter.
  Uncompressed by default (config ``ingest.image-compression``: noisy float32
  stamps shrink only to ~0.86 with zstd, and reading them back costs 2-4x more).
  Background-subtracted ADU; NaN where the stamp falls outside the image.
  ``image[k, 0, j, i]`` is the CCD pixel ``(row round(y) - stamp//2 + j,
  column round(x) - stamp//2 + i)``.
- per-source coordinates (dim ``source``): ``source_id`` int64, ``exposure``
  str, ``ccd`` int16, ``x``, ``y``, ``ra``, ``dec`` float64, ``flux``, ``a``,
  ``b``, ``theta``, ``fwhm``, ``psf_fwhm``, ``sky``, ``sky_rms``, ``snr``
  float32, ``flags`` int32, and ``label`` str where truth is known.
- ``stamp_bg``, ``stamp_noise`` (source, band) and ``stamp_fwhm`` (source),
  float32, chunked like ``image``: per-stamp statistics measured when each chunk
  is written (:mod:`pipeline.imaging.stamp_stats`).  Optional: stores written before
  them lack them, and readers measure them instead.
- ``flags`` bits: 1 the stamp touches the image edge (NaN-padded), 2 saturated
  pixels, 4 deblended/blended, 8 another sep flag.
- ``source_id`` packing (:func:`pack_source_id`): bits 27-62 the first 36 bits
  of blake2b(exposure name), bits 20-26 the ccd (0-127), bits 0-19 the
  detection number (0-1,048,575); always positive.  Images imported from a
  folder use a 63-bit hash of their relative path (:func:`path_source_id`).
- attrs: ``skysieve_version``, ``kind="cutouts"``, ``stamp``, ``bands``,
  ``pixel_scale``, ``chunk_sources``, ``inputs``, ``classes`` (when labelled),
  ``rejects``, ``created``; and ``rejects.parquet`` (file, hdu, reason) inside
  the directory.

Stores are built in a hidden sibling directory and renamed into place when
whole (:func:`prepare_output`, :func:`commit_store`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
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

__all__ = [
    "COORDS",
    "IMAGE_COMPRESSIONS",
    "IMAGE_DIMS",
    "REJECT_COLUMNS",
    "check_unique_ids",
    "commit_store",
    "create_store",
    "describe",
    "discard",
    "open_store",
    "pack_source_id",
    "path_source_id",
    "prepare_output",
    "read_rejects",
    "read_rows",
    "sweep_stale_temporaries",
    "temporary_sibling",
    "unpack_source_id",
    "validate_store",
    "write_chunk",
]

IMAGE_DIMS: tuple[str, ...] = ("source", "band", "y", "x")
#: Codecs ``create_store`` offers for ``image`` (config ``ingest.image-compression``).
IMAGE_COMPRESSIONS: tuple[str, ...] = ("none", "zstd")

#: Required per-source coordinates and their dtypes ("str" = any string dtype).
COORDS: dict[str, str] = {
    "source_id": "int64", "exposure": "str", "ccd": "int16",
    "x": "float64", "y": "float64", "ra": "float64", "dec": "float64",
    "flux": "float32", "a": "float32", "b": "float32", "theta": "float32",
    "fwhm": "float32", "psf_fwhm": "float32", "sky": "float32", "sky_rms": "float32",
    "snr": "float32", "flags": "int32",
}
REJECT_COLUMNS: tuple[str, ...] = ("file", "hdu", "reason")
_REQUIRED_ATTRS = ("skysieve_version", "kind", "stamp", "bands", "pixel_scale",
                   "chunk_sources", "inputs", "rejects", "created")

_HASH_BITS, _CCD_BITS, _DET_BITS = 36, 7, 20


def _name_hash(text: str, bits: int) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - bits)


def pack_source_id(exposure: Sequence[str] | np.ndarray, ccd: Iterable[int] | np.ndarray,
                   detection: Iterable[int] | np.ndarray) -> np.ndarray:
    """Stable int64 source ids: ``hash36(exposure) << 27 | ccd << 20 | detection``.

    Parameters
    ----------
    exposure : sequence of str
        Exposure names (file stems).
    ccd : array_like of int
        0-based HDU indices, 0-127.
    detection : array_like of int
        Detection numbers within the CCD, 0-1,048,575.

    Raises
    ------
    StoreError
        A ccd or detection number outside its bit field.
    """
    exposure = np.asarray(exposure, dtype=object)
    ccd = np.asarray(ccd, dtype=np.int64)
    detection = np.asarray(detection, dtype=np.int64)
    if ccd.size and (ccd.min() < 0 or ccd.max() >= 1 << _CCD_BITS):
        raise StoreError(f"ccd index {int(ccd.max())!r} does not fit the {_CCD_BITS}-bit field "
                         f"of source_id (0..{(1 << _CCD_BITS) - 1}); split the exposure file")
    if detection.size and (detection.min() < 0 or detection.max() >= 1 << _DET_BITS):
        raise StoreError(f"detection number {int(detection.max())!r} does not fit the "
                         f"{_DET_BITS}-bit field of source_id; raise the detection threshold "
                         "or give source_id in the source table")
    names, inverse = np.unique(exposure.astype(str), return_inverse=True)
    hashes = np.array([_name_hash(n, _HASH_BITS) for n in names], dtype=np.int64)
    return (hashes[inverse] << (_CCD_BITS + _DET_BITS)) | (ccd << _DET_BITS) | detection


def unpack_source_id(source_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split packed ids into ``(exposure hash, ccd, detection)`` arrays."""
    sid = np.asarray(source_id, dtype=np.int64)
    return (sid >> (_CCD_BITS + _DET_BITS), (sid >> _DET_BITS) & ((1 << _CCD_BITS) - 1),
            sid & ((1 << _DET_BITS) - 1))


def path_source_id(relative_paths: Sequence[str]) -> np.ndarray:
    """Stable positive int64 ids from a 63-bit hash of each (POSIX) relative path."""
    return np.array([_name_hash(str(p), 63) for p in relative_paths], dtype=np.int64)


def check_unique_ids(source_id: np.ndarray, labels: Sequence[str] | np.ndarray, *,
                     where: str) -> None:
    """Raise :class:`StoreError` naming the colliding entries when ids repeat."""
    sid = np.asarray(source_id, dtype=np.int64)
    uniq, counts = np.unique(sid, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        labels = np.asarray(labels, dtype=object)
        examples = [f"{int(d)}: {sorted(set(labels[sid == d].tolist()))[:4]!r}" for d in dup[:3]]
        raise StoreError(f"{where}: {int((counts > 1).sum())} source_id collision(s) "
                         f"({'; '.join(examples)}); rename the exposures (hash collision) or "
                         "give unique source_id values")


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
    """A fresh hidden directory next to ``out`` to build the store in.

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


# ---------------------------------------------------------------------------- writing
def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


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
        :data:`COORDS` (and optionally ``label``).
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
    ds.attrs = _jsonable(attrs)
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


# ---------------------------------------------------------------------------- reading
def _dtype_ok(dtype: np.dtype, want: str) -> bool:
    if want == "str":
        return dtype.kind in ("U", "T", "O", "S")
    return dtype == np.dtype(want)


def read_rows(path: str | Path, start: int, stop: int, names: Sequence[str],
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read rows ``[start, stop)`` of several store variables at once, and the store's attrs.

    One round trip through Zarr's event loop: the group and every array are
    opened, and every slice read, concurrently.  A chunk's dozen small
    coordinate reads cost ~3x less this way than one after another.

    Parameters
    ----------
    path : str or Path
        The store.
    start, stop : int
        Rows along ``source``.
    names : sequence of str
        Variables or coordinates to read; those the store lacks are left out of
        the result (check with ``in``).

    Returns
    -------
    (dict, dict)
        ``{name: numpy array}`` for the names present, and the group's attrs.
    """
    import asyncio

    import zarr.api.asynchronous as zarr_async
    from zarr.core.sync import sync  # what zarr's own synchronous API runs on

    async def read() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        group = await zarr_async.open_group(str(path), mode="r")
        found = await asyncio.gather(*(group.getitem(n) for n in names), return_exceptions=True)
        for item in found:
            if isinstance(item, BaseException) and not isinstance(item, KeyError):
                raise item
        arrays = {n: a for n, a in zip(names, found) if not isinstance(a, BaseException)}
        values = await asyncio.gather(*(a.getitem(slice(start, stop)) for a in arrays.values()))
        return {n: np.asarray(v) for n, v in zip(arrays, values)}, dict(group.attrs)

    return sync(read())


def open_store(path: str | Path) -> xr.Dataset:
    """Open a cutout store lazily (``xr.open_zarr``) and validate the contract.

    Parameters
    ----------
    path : str or Path
        The ``.zarr`` directory.

    Returns
    -------
    xarray.Dataset
        Dask-backed; ``ds.image`` chunked along ``source`` only; string
        coordinates (``exposure``, ``label``) as object arrays.

    Raises
    ------
    StoreError
        Not a store, or a missing/ill-typed variable, coordinate or attribute,
        wrong dims, or uneven chunks along ``source``; the message names the
        store, shows the offending value and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such cutout store; run `skysieve ingest ... --out {path}`")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(path, zarr_format=3)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a readable store"
        raise StoreError(f"{path}: not a readable Zarr v3 cutout store ({exc}); "
                         "write it with `skysieve ingest` or `skysieve import-images`") from exc
    # numpy's StringDType (what Zarr v3 strings read as) breaks ``.astype(str)``:
    # hand string coordinates out as object arrays, still lazily.
    strings = {name: ds[name].astype(object) for name in ("exposure", "label")
               if name in ds.coords and ds[name].dtype.kind == "T"}
    if strings:
        ds = ds.assign_coords(strings)
    validate_store(ds, name=str(path))
    return ds


def validate_store(ds: xr.Dataset, *, name: str = "store") -> None:
    """Check an opened dataset against the cutout-store contract.

    Parameters
    ----------
    ds : xarray.Dataset
        As returned by ``xr.open_zarr`` (or rechunked from it).
    name : str
        The store's path, for messages.

    Raises
    ------
    StoreError
        Naming ``name``, the problem (with ``!r`` values) and the fix.
    """
    path = name
    fix = "re-create it with `skysieve ingest` (or import-images) of this version"
    if ds.attrs.get("kind") != "cutouts":
        raise StoreError(f"{path}: attribute 'kind' is {ds.attrs.get('kind')!r}, not 'cutouts'; "
                         f"this is not a cutout store ({fix})")
    missing_attrs = [a for a in _REQUIRED_ATTRS if a not in ds.attrs]
    if missing_attrs:
        raise StoreError(f"{path}: missing attributes {missing_attrs!r}; {fix}")
    if "image" not in ds.data_vars:
        raise StoreError(f"{path}: no 'image' variable (found {sorted(ds.data_vars)!r}); {fix}")
    image = ds["image"]
    if image.dims != IMAGE_DIMS:
        raise StoreError(f"{path}: 'image' has dims {image.dims!r}, expected {IMAGE_DIMS!r}; "
                         f"{fix}")
    if image.dtype not in (np.float32, np.float16):
        raise StoreError(f"{path}: 'image' has dtype {str(image.dtype)!r}, expected float32 "
                         f"(or float16); {fix}")
    stamp = int(ds.attrs["stamp"])
    if image.sizes["y"] != stamp or image.sizes["x"] != stamp:
        raise StoreError(f"{path}: 'image' stamps are {image.sizes['y']}x{image.sizes['x']} but "
                         f"attrs['stamp'] is {stamp!r}; {fix}")
    if len(ds.attrs["bands"]) != image.sizes["band"]:
        raise StoreError(f"{path}: attrs['bands'] {ds.attrs['bands']!r} does not match the "
                         f"'band' dimension ({image.sizes['band']}); {fix}")
    missing = [c for c in COORDS if c not in ds.coords]
    if missing:
        raise StoreError(f"{path}: missing coordinates {missing!r}; {fix}")
    for name, want in {**COORDS, **({"label": "str"} if "label" in ds.coords else {})}.items():
        coord = ds.coords[name]
        if coord.dims != ("source",):
            raise StoreError(f"{path}: coordinate {name!r} has dims {coord.dims!r}, expected "
                             f"('source',); {fix}")
        if not _dtype_ok(coord.dtype, want):
            raise StoreError(f"{path}: coordinate {name!r} has dtype {str(coord.dtype)!r}, "
                             f"expected {want!r}; {fix}")
    chunks = image.chunks
    if chunks is not None:
        src = chunks[0]
        if any(len(c) != 1 for c in chunks[1:]):
            raise StoreError(f"{path}: 'image' is chunked along {chunks[1:]!r} besides "
                             "'source'; rewrite it chunked along 'source' only")
        if len(src) > 1 and (len(set(src[:-1])) > 1 or src[-1] > src[0]):
            raise StoreError(f"{path}: 'image' chunks along 'source' are uneven ({src!r}); "
                             "call ds.chunk(source=n) and rewrite the store")


def read_rejects(path: str | Path) -> pd.DataFrame:
    """The store's ``rejects.parquet`` as a DataFrame (file, hdu, reason)."""
    target = Path(path) / "rejects.parquet"
    if not target.is_file():
        raise StoreError(f"{path}: no rejects.parquet; {path} was not written by skysieve")
    return pq.read_table(target).to_pandas()


def describe(path: str | Path) -> str:
    """A human summary of a store: sources, chunks, stamp, bands, classes, provenance."""
    ds = open_store(path)
    a = ds.attrs
    n = ds.sizes["source"]
    chunks = ds["image"].chunks[0] if ds["image"].chunks else (n,)
    lines = [f"cutout store {Path(path)}",
             f"  sources:    {n:,} in {len(chunks)} chunk(s) of {a['chunk_sources']} "
             f"(image {str(ds['image'].dtype)} {tuple(ds['image'].shape)!r})",
             f"  stamp:      {a['stamp']} px; bands {a['bands']!r}; pixel scale "
             f"{_fmt(a['pixel_scale'])} arcsec/px"]
    exposures = pd.Series(np.asarray(ds["exposure"].values).astype(object), dtype=object)
    counts = exposures.value_counts()
    shown = ", ".join(f"{e} ({c})" for e, c in counts.sort_index().head(5).items())
    more = f", ... {len(counts) - 5} more" if len(counts) > 5 else ""
    lines.append(f"  exposures:  {len(counts)}: {shown}{more}")
    if "label" in ds.coords:
        labels = pd.Series(np.asarray(ds["label"].values).astype(object), dtype=object)
        vc = labels.value_counts()
        text = ", ".join(f"{k or '(unlabelled)'} {v:,}" for k, v in vc.sort_index().items())
        lines.append(f"  classes:    {text}")
    else:
        lines.append("  classes:    (no labels)")
    rejects = a.get("rejects", [])
    lines.append(f"  rejects:    {len(rejects)}")
    for r in rejects[:5]:
        lines.append(f"    {r['file']}[{r['hdu']}]: {r['reason']}")
    if len(rejects) > 5:
        lines.append(f"    ... {len(rejects) - 5} more (rejects.parquet)")
    inputs = a.get("inputs", [])
    total = sum(int(i.get("bytes", 0)) for i in inputs)
    lines.append(f"  inputs:     {len(inputs)} file(s), {total / 1e6:.1f} MB")
    lines.append(f"  written by skysieve {a['skysieve_version']} at {a['created']}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "unknown" if math.isnan(v) else f"{v:.3f}"
