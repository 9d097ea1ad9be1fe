"""The cutout store: a Zarr v3 directory written and read through xarray.

Contract (``docs/architecture.md``; others code against it)
-----------------------------------------------------------
- ``image`` (source, band, y, x), float32, chunked along ``source`` only:
  chunks ``(chunk_sources, n_band, stamp, stamp)``, the last may be shorter.
  ``chunk_sources`` follows from config ``ingest.chunk-bytes`` (16 MiB: 1,024
  stamps of 64x64x1, 7 of 423x423x3) unless ``ingest.chunk-sources`` or a
  call's ``chunk_sources`` sets it (:func:`sources_per_chunk`).
  Uncompressed by default (config ``ingest.image-compression``: noisy float32
  stamps shrink only to ~0.86 with zstd, and reading them back costs 2-4x more).
  Background-subtracted ADU; NaN where the stamp falls outside the image.
  ``image[k, 0, j, i]`` is the CCD pixel ``(row round(y) - stamp//2 + j,
  column round(x) - stamp//2 + i)``.
- per-source coordinates (dim ``source``): ``source_id`` int64, ``exposure``
  str, ``ccd`` int16, ``x``, ``y``, ``ra``, ``dec`` float64, ``flux``, ``a``,
  ``b``, ``theta``, ``fwhm``, ``psf_fwhm``, ``sky``, ``sky_rms``, ``snr``
  float32, ``flags`` int32, and ``label`` str where truth is known.
  ``psf_fwhm`` (px) is the PSF FWHM of the source's exposure/CCD (ingest:
  from its stars, :func:`pipeline.ingest.detect.estimate_psf_fwhm`, else the
  header) or frame (import-images: the low mode of its stamps' apparent FWHM;
  NaN when unknown).
- optional per-source coordinates (:data:`OPTIONAL_COORDS`; checked when
  present, stores written before them lack them and still open and classify):
  ``radius`` float32, the source's half-light radius in px, the radius of the
  circle holding half its Kron flux (:mod:`pipeline.imaging.radius`; ingest
  measures it on the exposure at detection, import-images on the stamp; NaN
  where unmeasured, and for whole-exposure items).
- optional ``healpix`` int64: the nested HEALPix index of (``ra``, ``dec``) at order
  ``attrs["healpix_order"]`` (config ``classify.healpix-order``), -1 without a
  position; ingest computes it once so that classify can read it.
- sharding (newer stores, ``attrs["shard_sources"]``): ``image`` and the per-stamp
  statistics are Zarr v3 sharded, ``shard_sources`` sources (whole chunks) per file
  (config ``ingest.shard-bytes``, :func:`sources_per_shard`), written a whole shard at
  a time; the coordinates are sharded too.  Reading is unchanged (chunks are still
  the read unit); stores without the attribute have one file per chunk.
- ``stamp_bg``, ``stamp_noise`` (source, band) and ``stamp_fwhm`` (source),
  float32, chunked like ``image``: per-stamp statistics measured on each stamp before it
  is written (:mod:`pipeline.imaging.stamp_stats`; ingest measures them as it cuts).  Optional: stores written before
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
  the directory.  ``bands`` names the ``band`` axis (ingest: the FITS filter;
  import-images: ``["grey"]``, ``["R", "G", "B"]`` or the ``--bands`` names,
  with ``band_channels`` saying which image channel each came from); a model
  must take as many bands (:func:`check_model_bands`).

Stores are built in a hidden sibling directory and renamed into place when
whole (:func:`building`).

Modules: :mod:`~pipeline.store.contract` (names and dtypes),
:mod:`~pipeline.store.ids` (``source_id``), :mod:`~pipeline.store.transaction`
(the output-folder transaction), :mod:`~pipeline.store.build` (writing),
:mod:`~pipeline.store.read` (opening and reading), :mod:`~pipeline.store.validate`
(checking the contract).
"""

from __future__ import annotations

from pipeline.store.build import (
    chunk_byte_budget,
    create_store,
    sources_per_chunk,
    sources_per_shard,
    write_chunk,
    write_chunks,
    write_coords,
)
from pipeline.store.contract import (
    COORDS,
    IMAGE_COMPRESSIONS,
    IMAGE_DIMS,
    OPTIONAL_ATTRS,
    OPTIONAL_COORDS,
    REJECT_COLUMNS,
)
from pipeline.store.transaction import (
    ABORT_FILE,
    abort_requested,
    building,
    commit_store,
    discard,
    prepare_output,
    request_abort,
    scratch,
    sweep_stale_temporaries,
    temporary_sibling,
)
from pipeline.store.ids import check_unique_ids, pack_source_id, path_source_id, unpack_source_id
from pipeline.store.read import describe, open_store, read_rejects, read_rows
from pipeline.store.validate import check_model_bands, validate_store

__all__ = [
    "ABORT_FILE",
    "COORDS",
    "IMAGE_COMPRESSIONS",
    "IMAGE_DIMS",
    "OPTIONAL_ATTRS",
    "OPTIONAL_COORDS",
    "REJECT_COLUMNS",
    "abort_requested",
    "building",
    "check_model_bands",
    "check_unique_ids",
    "chunk_byte_budget",
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
    "request_abort",
    "scratch",
    "sources_per_chunk",
    "sources_per_shard",
    "sweep_stale_temporaries",
    "temporary_sibling",
    "unpack_source_id",
    "validate_store",
    "write_chunk",
    "write_chunks",
    "write_coords",
]
