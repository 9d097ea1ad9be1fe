"""Reading a cutout store: open and validate it lazily, read rows at once, its rejects, a summary."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import xarray as xr

from pipeline.errors import StoreError
from pipeline.store.validate import validate_store

__all__ = ["describe", "open_store", "read_rejects", "read_rows"]


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
