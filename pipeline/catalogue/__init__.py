"""The Parquet catalogue: one row per source, written part by part, atomically.

A catalogue is a directory (:mod:`pipeline.catalogue.layout`, ``docs/schema.md``):

* ``part-00000.parquet`` ... one part per cutout-store chunk, each written to a
  hidden temporary name and renamed, so a part is either whole or absent
  (:mod:`pipeline.catalogue.part_files`);
* ``_run.json``: the run's fingerprint (store, model sha256, settings) that a
  rerun must match to resume;
* ``_summary.json``: the last run's summary; ``_rejects.parquet``: inputs that
  were rejected at ingest (file, hdu, reason).

Readers that skip names starting with ``_`` or ``.`` (pyarrow.dataset, dask,
DuckDB with the ``part-*.parquet`` glob) see only the catalogue rows.

Reading it, for notebooks (``from pipeline import catalogue``; all in
:mod:`pipeline.catalogue.api`, lazy or pruned, none loads the whole catalogue
unless asked):

* :func:`open`: a lazy ``dask.dataframe.DataFrame`` over the parts;
* :func:`read_catalogue`: a small catalogue as one pandas DataFrame;
* :func:`cone`: the rows within a radius of a position, read only from the
  HEALPix pixels the cone touches, then filtered by exact angular distance;
* :func:`query` (and :func:`connect`): DuckDB SQL over the table ``catalogue``;
* :func:`crossmatch` (by sky position) and :func:`join_truth` (by
  ``source_id``) to compare with another table;
* :func:`read_metadata`: the run's provenance (classes, model, sha256...).

Other formats: :func:`pipeline.catalogue.export.to_table_file` (FITS or VOTable,
for TOPCAT), :func:`pipeline.catalogue.hats.to_hats` (HATS, for LSDB), and the HTML
report :func:`pipeline.catalogue.report.write_report`.

Columns (see docs/schema.md): ``source_id`` int64, ``exposure``
string, ``ccd`` int16, ``ra``/``dec`` float64 deg, ``x``/``y`` float64 px
(0-based), ``label`` string, ``p_<class>`` float32 (sum to 1), ``confidence``
float32, ``blur_score`` float32, ``psf_fwhm`` float32 px, ``ood_score`` and
``ood_energy`` float32 (NaN for a model without OOD statistics), ``healpix`` int64
(nested, order in the metadata), ``flags`` int32 (bits ``FLAG_*``), and
``true_label`` string when the store carries labels.
"""

from __future__ import annotations

from pipeline.catalogue.api import (connect, cone, crossmatch, join_truth, open, query,
                                    read_catalogue)
from pipeline.catalogue.layout import (FLAG_BLENDED, FLAG_EDGE, FLAG_EMPTY, FLAG_OOD,
                                       FLAG_SATURATED, FLAG_SEP, METADATA_KEY, PART_GLOB)
from pipeline.catalogue.part_files import parts, read_metadata

__all__ = ["read_catalogue", "query", "connect", "open", "cone", "crossmatch", "join_truth",
           "read_metadata", "parts", "PART_GLOB", "METADATA_KEY",
           "FLAG_EDGE", "FLAG_SATURATED", "FLAG_BLENDED", "FLAG_SEP", "FLAG_EMPTY", "FLAG_OOD"]
