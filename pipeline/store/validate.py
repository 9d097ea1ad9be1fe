"""Checking an opened dataset against the cutout-store contract (attrs, image, coordinates, chunks)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.errors import StoreError
from typing import Sequence

from pipeline.store.contract import COORDS, IMAGE_DIMS, OPTIONAL_COORDS, REQUIRED_ATTRS

__all__ = ["check_model_bands", "validate_store"]

_FIX = "re-create it with `skysieve ingest` (or import-images) of this version"


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
    _validate_attrs(ds, name)
    _validate_image(ds, name)
    _validate_coords(ds, name)
    _validate_chunks(ds["image"], name)


def _validate_attrs(ds: xr.Dataset, path: str) -> None:
    if ds.attrs.get("kind") != "cutouts":
        raise StoreError(f"{path}: attribute 'kind' is {ds.attrs.get('kind')!r}, not 'cutouts'; "
                         f"this is not a cutout store ({_FIX})")
    missing_attrs = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing_attrs:
        raise StoreError(f"{path}: missing attributes {missing_attrs!r}; {_FIX}")


def _validate_image(ds: xr.Dataset, path: str) -> None:
    if "image" not in ds.data_vars:
        raise StoreError(f"{path}: no 'image' variable (found {sorted(ds.data_vars)!r}); {_FIX}")
    image = ds["image"]
    if image.dims != IMAGE_DIMS:
        raise StoreError(f"{path}: 'image' has dims {image.dims!r}, expected {IMAGE_DIMS!r}; "
                         f"{_FIX}")
    if image.dtype not in (np.float32, np.float16):
        raise StoreError(f"{path}: 'image' has dtype {str(image.dtype)!r}, expected float32 "
                         f"(or float16); {_FIX}")
    stamp = int(ds.attrs["stamp"])
    if image.sizes["y"] != stamp or image.sizes["x"] != stamp:
        raise StoreError(f"{path}: 'image' stamps are {image.sizes['y']}x{image.sizes['x']} but "
                         f"attrs['stamp'] is {stamp!r}; {_FIX}")
    if len(ds.attrs["bands"]) != image.sizes["band"]:
        raise StoreError(f"{path}: attrs['bands'] {ds.attrs['bands']!r} does not match the "
                         f"'band' dimension ({image.sizes['band']}); {_FIX}")


def _dtype_ok(dtype: np.dtype, want: str) -> bool:
    if want == "str":
        return dtype.kind in ("U", "T", "O", "S")
    return dtype == np.dtype(want)


def _validate_coords(ds: xr.Dataset, path: str) -> None:
    missing = [c for c in COORDS if c not in ds.coords]
    if missing:
        raise StoreError(f"{path}: missing coordinates {missing!r}; {_FIX}")
    optional = {n: t for n, t in {**OPTIONAL_COORDS, "label": "str"}.items() if n in ds.coords}
    for name, want in {**COORDS, **optional}.items():
        coord = ds.coords[name]
        if coord.dims != ("source",):
            raise StoreError(f"{path}: coordinate {name!r} has dims {coord.dims!r}, expected "
                             f"('source',); {_FIX}")
        if not _dtype_ok(coord.dtype, want):
            raise StoreError(f"{path}: coordinate {name!r} has dtype {str(coord.dtype)!r}, "
                             f"expected {want!r}; {_FIX}")


def _validate_chunks(image: xr.DataArray, path: str) -> None:
    chunks = image.chunks
    if chunks is None:
        return
    src = chunks[0]
    if any(len(c) != 1 for c in chunks[1:]):
        raise StoreError(f"{path}: 'image' is chunked along {chunks[1:]!r} besides "
                         "'source'; rewrite it chunked along 'source' only")
    if len(src) > 1 and (len(set(src[:-1])) > 1 or src[-1] > src[0]):
        raise StoreError(f"{path}: 'image' chunks along 'source' are uneven ({src!r}); "
                         "call ds.chunk(source=n) and rewrite the store")


def check_model_bands(store_bands: Sequence[str], *, in_chans: int,
                      model_bands: Sequence[str] = (), store: str = "store",
                      model: str = "the model") -> None:
    """Check that a model takes the store's bands; raise naming both and the fix otherwise.

    Only the number of bands must match (a model's band names are advisory: a
    model trained on ``["grey"]`` classifies an ``["r"]`` store).

    Parameters
    ----------
    store_bands : sequence of str
        ``attrs["bands"]`` of the store.
    in_chans : int
        Input bands the model takes (``ModelCard.in_chans``).
    model_bands : sequence of str, optional
        The bands it was trained on (``ModelCard.bands``), for the message.
    store, model : str
        Names for the message (the store's path, the model's name or checkpoint).

    Raises
    ------
    StoreError
        ``len(store_bands) != in_chans``.
    """
    store_bands = [str(b) for b in store_bands]
    if len(store_bands) == int(in_chans):
        return
    trained = f" {list(model_bands)!r}" if model_bands else ""
    fix = (f"re-import the images as one band (`skysieve import-images ... --bands grey`)"
           if int(in_chans) == 1 else
           f"use a store of {int(in_chans)} band(s)")
    raise StoreError(f"{store}: the store has {len(store_bands)} band(s) {store_bands!r} but "
                     f"{model} takes {int(in_chans)} band(s){trained}; train a model on this "
                     f"store (`skysieve train {store} --out MODEL.pt`) or {fix}")
