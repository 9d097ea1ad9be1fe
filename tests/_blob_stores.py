"""Small labelled cutout stores of three clearly different blob classes, for training tests.

Imported by the training, evaluation and comparison tests (``tests/`` is on
``sys.path`` under pytest's rootdir import mode).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from pipeline.store import COORDS

CLASSES = ("diffuse", "galaxy", "star")


def make_store(path: Path, *, n: int = 300, size: int = 32, n_exp: int = 3, seed: int = 0,
               flux: tuple[float, float] = (300.0, 1500.0), offset: bool = True,
               edge_nan: bool = True, first_id: int = 1000, unlabelled: int = 0,
               labels: Sequence[str] | None = None, psf: float | None = None) -> Path:
    """Write ``n`` stamps (stars: Gaussian sigma 1 px; galaxies: elongated exponential discs;
    diffuse: broad round blobs), class ``i % 3``, over ``n_exp`` exposures.

    ``offset`` adds a residual background U(-0.5, 0.5) per stamp; ``edge_nan`` blanks
    the top 5 rows of the first stamp (off the exposure edge); the last ``unlabelled``
    sources get label ""; ``labels`` overrides them all; ``psf`` is every source's
    ``psf_fwhm`` (default NaN: unknown, as ``import-images`` writes).  Noise sigma 1.
    The store follows the cutout-store contract (``pipeline.store.open_store``): the
    per-source coordinates it does not simulate (positions, shapes, sky) are NaN or 0.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        c = CLASSES[i % 3]
        cx, cy = size / 2 - 0.5 + rng.uniform(-1, 1, 2)
        if c == "star":
            img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2.0)
        elif c == "galaxy":
            q, th = rng.uniform(0.3, 0.6), rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
            v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
            img = np.exp(-np.sqrt(u ** 2 + (v / q) ** 2) / 2.0)
        else:
            img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 50.0)
        img *= rng.uniform(*flux) / img.sum()
        noise = rng.normal(0, 1.0, img.shape)
        images[i, 0] = img + noise + (rng.uniform(-0.5, 0.5) if offset else 0.0)
    if edge_nan:
        images[0, 0, :5, :] = np.nan
    names = np.asarray(list(labels) if labels is not None
                       else [CLASSES[i % 3] for i in range(n)], dtype=object)
    if unlabelled:
        names[n - unlabelled:] = ""
    coords = {name: ("source", np.full(n, np.nan if dtype.startswith("float") else 0, dtype))
              for name, dtype in COORDS.items() if dtype != "str"}  # what the blobs lack
    coords.update({
        "source_id": ("source", np.arange(n, dtype=np.int64) + first_id),
        "label": ("source", names.astype(str)),
        "exposure": ("source", np.asarray([f"exp{i * n_exp // n}" for i in range(n)])),
        "psf_fwhm": ("source", np.full(n, np.nan if psf is None else psf, np.float32)),
    })
    ds = xr.Dataset({"image": (("source", "band", "y", "x"), images)}, coords=coords,
                    attrs={"skysieve_version": "test", "kind": "cutouts", "stamp": size,
                           "bands": ["r"], "pixel_scale": 1.0, "chunk_sources": n,
                           "inputs": [], "classes": sorted(set(names) - {""}), "rejects": [],
                           "created": "2000-01-01T00:00:00+00:00"})
    with warnings.catch_warnings():  # zarr: fixed-length strings have no v3 spec yet
        warnings.simplefilter("ignore")
        ds.to_zarr(path, zarr_format=3, mode="w", encoding=image_encoding(ds))
    return path


def image_encoding(ds: xr.Dataset) -> dict[str, dict[str, tuple[int, ...]]]:
    """``to_zarr`` encoding that chunks ``image`` along ``source`` only, as the contract wants
    (Zarr's default chunks a new array along every axis)."""
    _, n_band, h, w = ds["image"].shape
    return {"image": {"chunks": (int(ds.attrs.get("chunk_sources", ds.sizes["source"])),
                                 n_band, h, w)}}
