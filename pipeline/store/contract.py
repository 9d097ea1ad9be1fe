"""The names and dtypes of the cutout-store contract, shared by writing, reading and checking.

The contract itself is described in :mod:`pipeline.store` and ``docs/architecture.md``.
"""

from __future__ import annotations

__all__ = ["COORDS", "IMAGE_COMPRESSIONS", "IMAGE_DIMS", "OPTIONAL_ATTRS", "OPTIONAL_COORDS",
           "REJECT_COLUMNS", "REQUIRED_ATTRS"]

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
#: Per-source coordinates newer stores carry; checked when present, older stores lack them.
#: ``radius``: the source's half-light radius in px (:mod:`pipeline.imaging.radius`);
#: ``healpix``: its nested HEALPix index at order ``attrs["healpix_order"]``, -1 without a
#: position, computed once at ingest so that classify need not; ``psf_e1``, ``psf_e2``: the
#: ellipticity of the PSF of the source's exposure/CCD or frame
#: (:mod:`pipeline.imaging.psf_shape`), NaN where unmeasured.
OPTIONAL_COORDS: dict[str, str] = {"radius": "float32", "healpix": "int64",
                                   "psf_e1": "float32", "psf_e2": "float32"}
#: Columns of ``rejects.parquet``.
REJECT_COLUMNS: tuple[str, ...] = ("file", "hdu", "reason")
#: Attributes every store carries.
REQUIRED_ATTRS: tuple[str, ...] = ("skysieve_version", "kind", "stamp", "bands", "pixel_scale",
                                   "chunk_sources", "inputs", "rejects", "created")
#: Attributes newer stores carry (older ones lack them and read the same):
#: ``shard_sources`` (sources per Zarr v3 shard of ``image`` and the per-stamp statistics;
#: absent: one file per chunk) and ``healpix_order`` (of the ``healpix`` coordinate).
OPTIONAL_ATTRS: tuple[str, ...] = ("shard_sources", "healpix_order")
