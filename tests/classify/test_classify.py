"""End to end on real components: synth FITS -> ingest (Zarr) -> classify on a LocalCluster -> Parquet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cluster import connect
from pipeline import catalogue
from pipeline.classify.graph import classify
from pipeline.classify.night import score_against_truth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from _reliability import compare_catalogues, kill_group, start_driver, wait_for  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
BIN = Path(sys.executable).with_name("skysieve")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small synthetic survey ingested with 64 cutouts per chunk (several parts)."""
    from pipeline.ingest.exposures import ingest
    from pipeline.simulation.survey import synthesize

    root = tmp_path_factory.mktemp("survey")
    survey = synthesize(root / "fits", exposures=2, size=768, seed=11)
    with dask.config.set({"skysieve.ingest.chunk-sources": 64}):
        summary = ingest(survey.files, root / "cutouts.zarr", truth=survey.truth)
    assert summary.n_sources > 150
    return root / "cutouts.zarr"


@pytest.fixture(scope="module")
def client():
    with connect("local", n_workers=2, threads_per_worker=1) as c:
        yield c


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("source_id").reset_index(drop=True)


def test_catalogue_contract(store: Path, client, tmp_path: Path) -> None:
    import xarray as xr
    from astropy_healpix import lonlat_to_healpix
    import astropy.units as u

    out = tmp_path / "cat"
    summary = classify(store, out, model="default", batch_size=64, progress=False)
    ds = xr.open_zarr(store)
    n = ds.sizes["source"]
    df = catalogue.read_catalogue(out)
    meta = catalogue.read_metadata(out)
    classes = meta["classes"]
    pcols = [f"p_{c}" for c in classes]

    assert summary.rows == n == len(df)
    assert summary.parts == len(ds["image"].chunks[0]) == len(list(out.glob("part-*.parquet")))
    assert df["source_id"].is_unique
    assert set(df["source_id"]) == set(ds["source_id"].values.tolist())
    assert np.allclose(df[pcols].sum(axis=1), 1.0, atol=1e-5)
    assert (df[pcols].dtypes == np.float32).all()
    assert (df["label"] == np.asarray(classes)[df[pcols].to_numpy().argmax(axis=1)]).all()
    assert np.allclose(df["confidence"], df[pcols].max(axis=1))
    assert meta["model"] == "default" and len(meta["model_sha256"]) == 64
    assert meta["healpix_order"]["scheme"] == "nested"
    expected = lonlat_to_healpix(df["ra"].to_numpy() * u.deg, df["dec"].to_numpy() * u.deg,
                                 meta["healpix_order"]["nside"], order="nested")
    assert (df["healpix"].to_numpy() == expected).all()
    assert df["blur_score"].notna().mean() > 0.95
    assert (df["psf_fwhm"] > 0).all()
    # the bundled model carries OOD statistics: every row is scored, FLAG_OOD follows the score
    assert (df[["ood_score", "ood_energy"]].dtypes == np.float32).all()
    assert df["ood_score"].between(0.0, 1.0).all() and np.isfinite(df["ood_energy"]).all()
    flagged = (df["flags"].to_numpy() & catalogue.FLAG_OOD) != 0
    np.testing.assert_array_equal(flagged, df["ood_score"].to_numpy() > 0.99)
    assert summary.ood_threshold == 0.99 and summary.ood_flagged == int(flagged.sum())
    assert summary.ood_fraction == pytest.approx(flagged.mean()) and summary.ood_fraction < 0.2
    assert meta["ood"]["threshold"] == 0.99 and len(meta["ood"]["sha256"]) == 64
    # Parquet details analysts rely on: zstd and the metadata key in every part.
    part = sorted(out.glob("part-*.parquet"))[0]
    assert pq.ParquetFile(part).metadata.row_group(0).column(0).compression == "ZSTD"
    written = json.loads((out / "_summary.json").read_text())
    assert written["rows"] == n and written["cutouts_per_s"] > 0
    assert written["ood_fraction"] == pytest.approx(summary.ood_fraction)
    assert "out of domain" in summary.describe()


def test_each_worker_preloads_the_model_once(store: Path, client, tmp_path: Path) -> None:
    """classify registers a ModelPlugin: every worker loads the model once, every task reuses it."""
    import os

    from workers.model_cache import ModelPlugin, cache_info

    before = client.run(cache_info)
    out = tmp_path / "cat"
    summary = classify(store, out, model="default", batch_size=32, progress=False)
    after = client.run(cache_info)
    assert len(after) == 2 and summary.parts_written == summary.parts > 2
    for address, info in after.items():
        assert info["pid"] != os.getpid()
        # the run's model (sha256, batch size 32) is in this worker's cache, loaded once
        held = [k for k in info["keys"] if k[0] == summary.model_sha256 and k[2] == 32]
        assert len(held) == 1, info
        assert info["loads"] - before[address]["loads"] == 1, (before[address], info)
    # every task found the preloaded model instead of loading it
    assert sum(after[a]["hits"] - before[a]["hits"] for a in after) == summary.parts_written
    plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert all(ModelPlugin.name in names for names in plugins.values())
    # the run records were written whole (strict JSON) and no temporary was left behind
    for name in ("_run.json", "_summary.json"):
        json.loads((out / name).read_text(), parse_constant=lambda c: pytest.fail(c))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_rerun_resumes_and_refuses_another_model(store: Path, client, tmp_path: Path) -> None:
    out = tmp_path / "cat"
    first = classify(store, out, model="default", progress=False)
    before = _sorted(catalogue.read_catalogue(out))
    # Lose one part, as if the run had died before writing it.
    victim = sorted(out.glob("part-*.parquet"))[1]
    victim.unlink()
    again = classify(store, out, model="default", progress=False)
    assert again.parts_written == 1 and again.parts_skipped == first.parts - 1
    pd.testing.assert_frame_equal(before, _sorted(catalogue.read_catalogue(out)))
    card = json.loads((Path(__file__).parents[2] / "pipeline/bundled/default.json").read_text())
    run = json.loads((out / "_run.json").read_text())
    assert run["model_sha256"] == card["sha256"]
    run["model_sha256"] = "0" * 64  # pretend the directory holds another model's catalogue
    (out / "_run.json").write_text(json.dumps(run))
    with pytest.raises(FileExistsError, match="--overwrite"):
        classify(store, out, model="default", progress=False)
    fresh = classify(store, out, model="default", overwrite=True, progress=False)
    assert fresh.parts_written == fresh.parts


def test_parts_of_several_chunks_give_the_same_catalogue_and_resume(store: Path, client,
                                                                    tmp_path: Path) -> None:
    import xarray as xr

    chunks = len(xr.open_zarr(store)["image"].chunks[0])
    assert chunks >= 3  # so that two chunks a part leaves a short last part
    one = classify(store, tmp_path / "one", model="default", progress=False)
    assert one.parts == chunks  # a small store: one chunk a part (min-parts)
    grouped = {"skysieve.classify.part-rows": 128, "skysieve.classify.min-parts": 1}
    out = tmp_path / "two"
    with dask.config.set(grouped):
        two = classify(store, out, model="default", progress=False)
    assert two.parts == len(list(out.glob("part-*.parquet"))) == -(-chunks // 2)
    assert json.loads((out / "_run.json").read_text())["chunks_per_part"] == 2
    expected = _sorted(catalogue.read_catalogue(tmp_path / "one"))
    pd.testing.assert_frame_equal(expected, _sorted(catalogue.read_catalogue(out)))
    sorted(out.glob("part-*.parquet"))[0].unlink()  # lost, as if the run had died
    with pytest.raises(FileExistsError, match="chunks_per_part"):  # other parts: refused
        classify(store, out, model="default", progress=False)
    with dask.config.set(grouped):
        again = classify(store, out, model="default", progress=False)
    assert again.parts_written == 1 and again.rows_this_run == 2 * 64
    pd.testing.assert_frame_equal(expected, _sorted(catalogue.read_catalogue(out)))


def test_chunks_per_part_follows_the_release_not_the_cluster() -> None:
    from pipeline.classify.graph import chunks_per_part

    release = 10**9 // 1024 + 1
    assert chunks_per_part([release], 1024, part_rows=16384, min_parts=256) == 16
    assert chunks_per_part([1000, 1097], 1024, part_rows=16384, min_parts=256) == 8
    assert chunks_per_part([10], 1024, part_rows=16384, min_parts=256) == 1
    assert chunks_per_part([release], 7, part_rows=16384, min_parts=256) == 2340
    with pytest.raises(ValueError, match="part-rows"):
        chunks_per_part([10], 1024, part_rows=0, min_parts=256)


def test_store_without_stamp_statistics_gives_the_same_catalogue(store: Path, client,
                                                                 tmp_path: Path) -> None:
    """Stores written before ``stamp_bg``/``stamp_noise``/``stamp_fwhm`` existed: measured per task."""
    import xarray as xr

    from pipeline.imaging.stamp_stats import STAMP_STATS
    from pipeline.store import open_store

    ds = open_store(store)
    assert all(name in ds.data_vars for name in STAMP_STATS)
    old = tmp_path / "old.zarr"
    ds.drop_vars(list(STAMP_STATS)).to_zarr(old, zarr_format=3, mode="w")
    assert not any(name in xr.open_zarr(old).data_vars for name in STAMP_STATS)
    new_cat = _sorted(catalogue.read_catalogue(
        classify(store, tmp_path / "new", progress=False).catalogue))
    old_cat = _sorted(catalogue.read_catalogue(
        classify(old, tmp_path / "old", progress=False).catalogue))
    assert len(new_cat) == ds.sizes["source"]
    p_cols = [c for c in new_cat.columns if c.startswith("p_")]
    np.testing.assert_allclose(new_cat[p_cols].to_numpy(), old_cat[p_cols].to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(new_cat["blur_score"].to_numpy(), old_cat["blur_score"].to_numpy())
    assert new_cat["label"].tolist() == old_cat["label"].tolist()


def test_a_model_of_other_bands_is_refused_before_any_part(store: Path, client,
                                                           tmp_path: Path) -> None:
    """A 1-band model on a 3-band store: one StoreError naming both band lists and the fix."""
    import xarray as xr

    from pipeline.errors import StoreError
    from pipeline.store import open_store

    ds = open_store(store).isel(source=slice(0, 64))
    three = xr.concat([ds["image"]] * 3, dim="band").transpose("source", "band", "y", "x")
    rgb = ds.drop_vars(["image", "stamp_bg", "stamp_noise", "band"], errors="ignore")
    rgb["image"] = three.chunk({"source": 64, "band": 3})
    rgb.attrs = {**ds.attrs, "bands": ["g", "r", "i"]}
    for name in ("stamp_bg", "stamp_noise"):
        if name in ds:
            rgb[name] = xr.concat([ds[name]] * 3, dim="band").transpose("source", "band")
    path = tmp_path / "rgb.zarr"
    for v in rgb.variables.values():
        v.encoding.clear()
    rgb.to_zarr(path, zarr_format=3, mode="w")
    with pytest.raises(StoreError, match=r"\['g', 'r', 'i'\].*--bands grey"):
        classify(path, tmp_path / "cat", progress=False)
    assert not (tmp_path / "cat").exists() or not list((tmp_path / "cat").glob("part-*.parquet"))


def test_accuracy_against_truth(store: Path, client, tmp_path: Path) -> None:
    out = tmp_path / "cat"
    classify(store, out, progress=False)
    score = score_against_truth(out)
    assert score["n"] > 100
    # The bundled model must be far above chance (1/6) on a survey it never saw.
    assert score["accuracy"] > 0.6, score


def test_sigkill_mid_run_then_rerun_equals_clean_run(store: Path, tmp_path: Path) -> None:
    """SIGKILL the whole classify process group right after its first part is whole; rerun.

    The run is the reliability suite's marker-file driver: it stops at that exact
    point and says so with a marker file, so the kill always lands mid-run.
    """
    args = [str(BIN), "classify", str(store), "--workers", "1", "--threads", "1",
            "--batch-size", "16"]
    clean = tmp_path / "clean"
    subprocess.run(args + ["--out", str(clean)], check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    marker = tmp_path / "stopped"
    proc = start_driver("classify-after-part", str(killed), str(marker), str(store),
                        env={"DASK_SKYSIEVE__CLASSIFY__BATCH_SIZE": "16"})
    try:
        wait_for(marker, proc, timeout=240)
    finally:
        kill_group(proc)
    n_parts = len(list(clean.glob("part-*.parquet")))
    kept = sorted(killed.glob("part-*.parquet"))
    assert len(kept) == 1 < n_parts, f"kill landed outside the run ({len(kept)}/{n_parts} parts)"
    kept_file = (kept[0].stat().st_ino, kept[0].stat().st_mtime_ns, kept[0].read_bytes())
    subprocess.run(args + ["--out", str(killed)], check=True, capture_output=True, timeout=300)
    assert not list(killed.glob(".part-*")), "temporary part files left behind"
    assert (kept[0].stat().st_ino, kept[0].stat().st_mtime_ns, kept[0].read_bytes()) == kept_file, \
        "the rerun rewrote a part that was whole"
    assert len(list(killed.glob("part-*.parquet"))) == n_parts
    compare_catalogues(catalogue.read_catalogue(clean), catalogue.read_catalogue(killed))


def test_query_cli(store: Path, client, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    out = tmp_path / "cat"
    classify(store, out, progress=False)
    result = CliRunner().invoke(cli, ["query", str(out), "--csv",
                                      "SELECT label, count(*) AS n FROM catalogue GROUP BY 1"])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(__import__("io").StringIO(result.output))
    assert rows["n"].sum() == len(catalogue.read_catalogue(out))
    bad = CliRunner().invoke(cli, ["query", str(out), "SELECT nope FROM catalogue"])
    assert bad.exit_code != 0 and "query failed" in bad.output


def test_existing_scheduler_gives_the_same_catalogue(store: Path, tmp_path: Path) -> None:
    """`--cluster tcp://...` (a scheduler someone else started) equals `--cluster local`."""
    from distributed import LocalCluster

    local = tmp_path / "local"
    subprocess.run([str(BIN), "classify", str(store), "--out", str(local), "--cluster", "local",
                    "--workers", "1", "--threads", "1"], check=True, capture_output=True, timeout=300)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
            LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                         dashboard_address=":0") as existing:
        remote = tmp_path / "remote"
        proc = subprocess.run([str(BIN), "classify", str(store), "--out", str(remote),
                               "--cluster", existing.scheduler_address],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    pd.testing.assert_frame_equal(_sorted(catalogue.read_catalogue(local)),
                                  _sorted(catalogue.read_catalogue(remote)))


def test_concurrent_run_on_the_same_output_is_refused(store: Path, tmp_path: Path) -> None:
    from pipeline.classify.run_lock import OutputLocked, exclusive

    out = tmp_path / "cat"
    with exclusive(out), pytest.raises(OutputLocked, match="another skysieve run"):
        classify(store, out, progress=False)
    assert not list(out.glob("part-*.parquet"))
