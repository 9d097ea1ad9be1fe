"""The catalogue read five ways (pandas, pyarrow.dataset, DuckDB, Dask, skysieve's API) agrees.

The catalogue here is written with ``pipeline.catalogue.part_files.write_part`` (random positions on a
small sky patch, Dirichlet probabilities), so these tests do not depend on a trained model.
``write_fake_catalogue`` is also used by tests/catalogue/test_hats.py and tests/catalogue/test_report.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from astropy_healpix import lonlat_to_healpix

from pipeline import catalogue
from pipeline.catalogue import api as catalogue_api
from pipeline.catalogue.layout import (REJECTS_FILE, RUN_FILE, SUMMARY_FILE, healpix_order_doc,
                                       part_path)
from pipeline.catalogue.part_files import write_part
from pipeline.errors import SourceTableError

CLASSES = ("star", "elliptical", "spiral")
CENTRE = (150.1, 2.2)


def write_fake_catalogue(out: Path, *, parts: int = 3, rows: int = 300, seed: int = 0,
                         half_width_deg: float = 0.5, no_position: int = 3,
                         order: int = 10) -> Path:
    """Write a catalogue directory like ``skysieve classify`` does, with random rows.

    Part 0 starts with ``no_position`` rows without a sky position (NaN ra/dec,
    healpix -1). Also writes ``_run.json``, ``_summary.json`` and ``_rejects.parquet``
    so that readers must skip the ``_`` files.
    """
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"classes": list(CLASSES), "model": "fake", "model_arch": "none",
            "model_sha256": "f" * 64, "skysieve_version": "0.1.0",
            "healpix_order": healpix_order_doc(order), "store": str(out / "no-store.zarr"),
            "run_config": {"batch_size": 64, "model": "fake"}, "blur_reference_fwhm": 3.1}
    next_id = 1
    for p in range(parts):
        ra = CENTRE[0] + rng.uniform(-half_width_deg, half_width_deg, rows) / np.cos(np.radians(CENTRE[1]))
        dec = CENTRE[1] + rng.uniform(-half_width_deg, half_width_deg, rows)
        if p == 0 and no_position:
            ra[:no_position] = np.nan
            dec[:no_position] = np.nan
        probs = rng.dirichlet(np.ones(len(CLASSES)) * 0.7, rows).astype(np.float32)
        probs /= probs.sum(axis=1, keepdims=True)
        healpix = np.full(rows, -1, dtype=np.int64)
        ok = np.isfinite(ra)
        healpix[ok] = lonlat_to_healpix(ra[ok] * u.deg, dec[ok] * u.deg, 2**order, order="nested")
        best = probs.argmax(axis=1)
        truth = np.where(rng.random(rows) < 0.8, best, rng.integers(0, len(CLASSES), rows))
        data = {
            "source_id": pa.array(np.arange(next_id, next_id + rows, dtype=np.int64) * 7919),
            "exposure": pa.array([f"exp_{p:04d}"] * rows, pa.string()),
            "ccd": pa.array(np.zeros(rows, np.int16)),
            "ra": pa.array(ra), "dec": pa.array(dec),
            "x": pa.array(rng.uniform(0, 768, rows)), "y": pa.array(rng.uniform(0, 768, rows)),
            "label": pa.array(np.asarray(CLASSES, dtype=object)[best], pa.string()),
        }
        for k, name in enumerate(CLASSES):
            data[f"p_{name}"] = pa.array(probs[:, k])
        data.update({
            "confidence": pa.array(probs.max(axis=1)),
            "blur_score": pa.array(rng.lognormal(0.1, 0.25, rows).astype(np.float32)),
            "psf_fwhm": pa.array(rng.normal(3.0 + p, 0.2, rows).astype(np.float32)),
            "healpix": pa.array(healpix),
            "flags": pa.array(rng.choice([0, 0, 0, 1, 4], rows).astype(np.int32)),
            "true_label": pa.array(np.asarray(CLASSES, dtype=object)[truth], pa.string()),
        })
        write_part(pa.table(data), part_path(out, p), metadata=meta)
        next_id += rows
    (out / RUN_FILE).write_text(json.dumps({"store": meta["store"], "model_sha256": "f" * 64}))
    (out / SUMMARY_FILE).write_text(json.dumps({
        "catalogue": str(out), "rows": parts * rows, "parts": parts, "parts_written": parts,
        "parts_skipped": 0, "rejects": 1, "seconds": 1.5, "model": "fake",
        "model_sha256": "f" * 64, "rows_this_run": parts * rows, "failed": [],
        "cutouts_per_s": parts * rows / 1.5}))
    pq.write_table(pa.table({"file": ["bad.fits"], "hdu": ["0"],
                             "reason": ["bad.fits: unreadable FITS (truncated)"]}),
                   out / REJECTS_FILE)
    return out


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> Path:
    return write_fake_catalogue(tmp_path_factory.mktemp("cat") / "catalogue")


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by source_id, plain numpy/object dtypes, so readers compare equal."""
    df = df.sort_values("source_id").reset_index(drop=True)
    out = {}
    for name in df.columns:
        col = df[name]
        if isinstance(col.dtype, pd.ArrowDtype) and pa.types.is_string(col.dtype.pyarrow_dtype) \
                or pd.api.types.is_string_dtype(col.dtype):
            out[name] = col.astype(object).to_numpy()
        else:
            out[name] = col.to_numpy(dtype=col.dtype.numpy_dtype if isinstance(col.dtype, pd.ArrowDtype)
                                     else col.dtype, na_value=np.nan)
    return pd.DataFrame(out)


def test_five_readers_agree(cat: Path) -> None:
    import dask.dataframe as dd
    import duckdb
    import pyarrow.dataset as ds

    files = sorted(cat.glob("part-*.parquet"))
    assert len(files) == 3 and (cat / "_rejects.parquet").exists()
    by_pandas = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    by_arrow = ds.dataset(str(cat), format="parquet").to_table().to_pandas()  # skips _ files
    glob = str(cat / "part-*.parquet")
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df()
    by_dask = dd.read_parquet(glob).compute()
    by_api = catalogue.open(cat).compute()

    ref = _canonical(by_pandas)
    assert len(ref) == 900 and ref["source_id"].is_unique
    assert list(ref.columns[:8]) == ["source_id", "exposure", "ccd", "ra", "dec", "x", "y", "label"]
    for name, df in {"pyarrow.dataset": by_arrow, "duckdb": by_duckdb, "dask": by_dask,
                     "catalogue.open": by_api}.items():
        got = _canonical(df)
        assert list(got.columns) == list(ref.columns), name
        pd.testing.assert_frame_equal(got, ref, check_dtype=False, obj=name)
    assert str(by_api["source_id"].dtype) == "int64"
    assert str(by_api["p_star"].dtype) == "float32"


def test_probabilities_and_metadata(cat: Path) -> None:
    df = catalogue.read_catalogue(cat)
    p = df[[f"p_{c}" for c in CLASSES]].to_numpy(np.float64)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (df["label"].to_numpy(object) == np.asarray(CLASSES, dtype=object)[p.argmax(axis=1)]).all()
    meta = catalogue.read_metadata(cat)
    assert meta["classes"] == list(CLASSES) and meta["healpix_order"]["order"] == 10


def test_open_is_lazy_and_selects_columns(cat: Path) -> None:
    ddf = catalogue.open(cat, columns=["source_id", "label", "confidence"])
    assert ddf.npartitions == 3
    assert list(ddf.columns) == ["source_id", "label", "confidence"]
    counts = ddf.groupby("label").size().compute().sort_index()
    sql = catalogue.query(cat, "SELECT label, count(*) AS n FROM catalogue GROUP BY 1 ORDER BY 1")
    assert counts.tolist() == sql["n"].tolist() and counts.sum() == 900


@pytest.mark.parametrize("radius_deg", [0.5 / 3600, 20 / 3600, 0.05, 0.3, 2.0])
def test_cone_equals_brute_force(cat: Path, radius_deg: float) -> None:
    full = catalogue.read_catalogue(cat)
    rng = np.random.default_rng(int(radius_deg * 1e6))
    # cone centres: random points, and exact source positions (a source on the centre)
    centres = [(CENTRE[0] + rng.uniform(-0.5, 0.5), CENTRE[1] + rng.uniform(-0.5, 0.5))
               for _ in range(8)]
    centres += [tuple(full[["ra", "dec"]].iloc[i]) for i in (10, 400)]
    for ra, dec in centres:
        got = catalogue.cone(cat, ra, dec, radius_deg)
        sep = catalogue_api._separation_deg(ra, dec, full["ra"].to_numpy(), full["dec"].to_numpy())
        want = np.sort(full["source_id"].to_numpy()[sep <= radius_deg])
        np.testing.assert_array_equal(got["source_id"].to_numpy(), want)
        assert (got["separation_arcsec"] <= radius_deg * 3600 + 1e-9).all()
        assert (got["healpix"] >= 0).all()
        if (ra, dec) in centres[8:]:
            assert len(got) >= 1  # the source at the centre itself


def test_cone_prunes_by_healpix(cat: Path) -> None:
    """A small cone touches few pixels; rows from other pixels never reach pandas."""
    got = catalogue.cone(cat, CENTRE[0], CENTRE[1], 0.05, columns=["source_id", "label"])
    assert list(got.columns) == ["source_id", "label", "separation_arcsec"]
    full = catalogue.read_catalogue(cat)
    assert 0 < len(got) < 0.1 * len(full)


def test_cone_rejects_bad_input(cat: Path) -> None:
    with pytest.raises(ValueError, match="radius_deg=0"):
        catalogue.cone(cat, 150.0, 2.0, 0)
    with pytest.raises(ValueError, match=r"dec=95"):
        catalogue.cone(cat, 150.0, 95, 0.1)
    with pytest.raises(ValueError, match="ra=nan"):
        catalogue.cone(cat, float("nan"), 2.0, 0.1)
    with pytest.raises(ValueError, match="unknown columns"):
        catalogue.cone(cat, 150.0, 2.0, 0.1, columns=["nope"])
    with pytest.raises(FileNotFoundError, match="no such catalogue directory"):
        catalogue.cone(cat / "_missing", 150.0, 2.0, 0.1)
    with pytest.raises(FileNotFoundError, match="no catalogue parts"):
        catalogue.open(cat.parent)


def test_crossmatch_recovers_shifted_copy(cat: Path) -> None:
    full = catalogue.read_catalogue(cat)
    rng = np.random.default_rng(5)
    other = full[["source_id", "ra", "dec"]].dropna().sample(frac=0.5, random_state=1)
    other = other.rename(columns={"source_id": "ext_id"})
    # shift each by up to 0.3 arcsec in a random direction
    shift = rng.uniform(0, 0.3, len(other)) / 3600
    angle = rng.uniform(0, 2 * np.pi, len(other))
    other["ra"] += shift * np.cos(angle) / np.cos(np.radians(other["dec"]))
    other["dec"] += shift * np.sin(angle)

    matched = catalogue.crossmatch(full, other, radius_arcsec=1.0)
    assert len(matched) == len(other)
    assert (matched["source_id"] == matched["ext_id"]).all()
    assert matched["separation_arcsec"].max() <= 0.31
    assert {"ra_other", "dec_other", "p_star"} <= set(matched.columns)

    left = catalogue.crossmatch(full, other, radius_arcsec=1.0, how="left")
    assert len(left) == len(full)
    assert left["ext_id"].notna().sum() == len(other)
    assert left.loc[full["ra"].isna().to_numpy(), "ext_id"].isna().all()  # no position, no match
    assert len(catalogue.crossmatch(full, other, radius_arcsec=1e-4)) < len(other) // 2
    with pytest.raises(SourceTableError, match=r"missing columns \['RA'\]"):
        catalogue.crossmatch(full, other, radius_arcsec=1.0, other_ra="RA")


def test_join_truth_by_source_id(cat: Path) -> None:
    full = catalogue.read_catalogue(cat)
    truth = full[["source_id", "true_label"]].rename(columns={"true_label": "label"})
    truth = truth.sample(n=100, random_state=2)
    truth["spec_z"] = np.linspace(0, 1, 100)
    joined = catalogue.join_truth(full, truth)
    assert len(joined) == len(full)
    assert joined["source_id"].tolist() == full["source_id"].tolist()
    assert joined["true_label"].notna().sum() == 100
    inner = catalogue.join_truth(full, truth, how="inner")
    assert len(inner) == 100
    want = dict(zip(truth["source_id"], truth["spec_z"]))
    assert np.allclose(inner["spec_z"], inner["source_id"].map(want))
    with pytest.raises(SourceTableError, match="repeated source_id"):
        catalogue.join_truth(full, pd.concat([truth, truth.head(2)]))
