"""The labelled sources of a cutout store, read into memory for training and evaluation."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import StoreError
from pipeline.imaging.psf_shape import stored_psf_shape
from pipeline.store import open_store

__all__ = ["load_labelled", "data_sha256", "IMPORT_ATTRS"]

#: Store attributes of an ``import-images`` store that say how its images were made into
#: stamps; ``train`` copies them to the card (``training.store_import``), so the same import
#: can be repeated for the images a model is run on.
IMPORT_ATTRS = ("source", "band_channels", "resize")


def load_labelled(store: Path, *, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Read the labelled sources of a cutout store into memory.

    Parameters
    ----------
    store : Path
        Cutout store (Zarr, opened and checked by :func:`pipeline.store.open_store`)
        with per-source ``label`` (``""`` = unknown, skipped).
    exclude : sequence of str, default: ()
        Labels to treat as unknown (e.g. Galaxy Zoo's ``"uncertain"``): skipped too,
        and counted in ``n_excluded``.

    Returns
    -------
    dict
        ``images`` (float32 ``(N, band, y, x)``, labelled sources only, as stored),
        ``psf_shape`` (``(N, 2)`` their frames' PSF ellipticity to make round, as
        ``classify`` does, or ``None``: :func:`pipeline.imaging.psf_shape.stored_psf_shape`),
        ``labels`` and ``exposures`` (str arrays), ``bands`` (list of str),
        ``data_sha256`` (hash of every label, exposure and source id: identifies
        the labelled data a card was trained on), ``pixels_sha256`` (hash of the
        labelled stamps' float32 pixels), ``import`` (the store's :data:`IMPORT_ATTRS`
        present), ``n_unlabelled``, and ``x``,
        ``y`` (0-based pixel position on the exposure, x = column), ``ra``,
        ``dec`` (deg), ``psf_fwhm`` (px) of each labelled source (float64, NaN where
        the store has none), ``n_excluded`` (sources whose label is in ``exclude``).

    Raises
    ------
    pipeline.errors.StoreError
        Missing or unreadable store, one that breaks the store contract, no
        ``label`` or no labelled source.
    """
    ds, labels, exposures, excluded, known = _labels(store, exclude)
    image = ds["image"]
    images = (image.values if known.size == labels.size
              else image.isel(source=known).values).astype(np.float32, copy=False)
    n_band = images.shape[1]
    bands = ds.attrs.get("bands")
    if not isinstance(bands, (list, tuple)) or len(bands) != n_band:
        bands = ([str(b) for b in ds["band"].values] if "band" in ds.coords
                 else [f"band{i}" for i in range(n_band)])
    shape = stored_psf_shape({name: np.asarray(ds[name].values)[known]
                              for name in ("psf_e1", "psf_e2") if name in ds.variables})
    positions = {}
    for name in ("x", "y", "ra", "dec", "psf_fwhm"):
        v = (np.asarray(ds[name].values, dtype=np.float64) if name in ds.variables
             else np.full(labels.size, np.nan))
        positions[name] = v[known]
    return {"images": images, "labels": labels[known], "exposures": exposures[known],
            "bands": [str(b) for b in bands], "data_sha256": _hash(ds, labels, exposures),
            "import": {key: ds.attrs[key] for key in IMPORT_ATTRS if key in ds.attrs},
            "pixels_sha256": hashlib.sha256(np.ascontiguousarray(images, "<f4").data).hexdigest(),
            "n_unlabelled": int(labels.size - known.size - excluded.sum()),
            "n_excluded": int(excluded.sum()), "psf_shape": shape, **positions}


def data_sha256(store: Path) -> str:
    """The ``data_sha256`` :func:`load_labelled` gives ``store``, without reading its pixels.

    Raises
    ------
    pipeline.errors.StoreError
        As :func:`load_labelled` does for a store that cannot be trained or scored on.
    """
    ds, labels, exposures, _, _ = _labels(store, ())
    return _hash(ds, labels, exposures)


def _labels(store: Path, exclude: Sequence[str]) -> tuple[Any, np.ndarray, np.ndarray,
                                                         np.ndarray, np.ndarray]:
    """Open ``store``; its labels, exposures, excluded mask and labelled indices (checked)."""
    ds = open_store(store)
    for name in ("label", "exposure"):
        if name not in ds.variables:
            raise StoreError(f"{store}: no per-source {name!r}; training needs labels and the "
                             "exposure of each source (ingest with --truth)")
    labels = np.asarray(ds["label"].values, dtype=object).astype(str)
    exposures = np.asarray(ds["exposure"].values, dtype=object).astype(str)
    excluded = np.isin(labels, [str(c) for c in exclude]) & (labels != "")
    known = np.flatnonzero((labels != "") & ~excluded)
    if known.size == 0:
        raise StoreError(f"{store}: no labelled sources (every 'label' is empty"
                         + (f" or one of {sorted(exclude)!r})" if len(exclude) else ")"))
    return ds, labels, exposures, excluded, known


def _hash(ds: Any, labels: np.ndarray, exposures: np.ndarray) -> str:
    """sha256 of every label, exposure and source id of a store (its ``data_sha256``)."""
    h = hashlib.sha256()
    h.update("\x00".join(labels.tolist()).encode("utf-8"))
    h.update("\x00".join(exposures.tolist()).encode("utf-8"))
    if "source_id" in ds.variables:
        h.update(np.ascontiguousarray(ds["source_id"].values.astype("<i8")).tobytes())
    return h.hexdigest()
