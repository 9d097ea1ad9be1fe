"""Ingest end to end: real FITS -> real Dask (LocalCluster and threads) -> real Zarr store."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
import astropy.units as u

from pipeline.ingest.detect import FLAG_EDGE
from pipeline.errors import SkysieveError, SourceTableError, StoreError
from pipeline.ingest.exposures import ingest
from pipeline.store import describe, open_store, read_rejects

STAMP = 24


def _header(nx: int, ny: int, ra: float, dec: float, scale: float = 0.25) -> fits.Header:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    w.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]]) / 3600.0
    h = w.to_header()
    h["FILTER"] = "r"
    h["SATURATE"] = 6e4
    return h


def _render(rng: np.random.Generator, ny: int, nx: int, n: int, *, fwhm: float = 3.5,
            edge: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian point sources + sky + noise; positions (n, 2) as (x, y), isolated."""
    image = np.full((ny, nx), 300.0)
    pos: list[tuple[float, float]] = []
    if edge:  # two deliberate edge sources whose stamps leave the image
        pos += [(2.3, ny / 2 + 0.2), (nx / 2 - 0.3, ny - 3.1)]
    while len(pos) < n:
        p = (rng.uniform(15, nx - 15), rng.uniform(15, ny - 15))
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) > 16 for q in pos):
            pos.append(p)
    s = fwhm / 2.3548
    yy, xx = np.mgrid[:ny, :nx]
    for x, y in pos:
        image += rng.uniform(5e3, 3e4) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s)) / (
            2 * np.pi * s * s)
    return rng.normal(image, 5.0).astype(np.float32), np.array(pos)


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three good exposures (one with 2 CCDs) and six bad files, plus the truth table."""
    root = tmp_path_factory.mktemp("survey")
    rng = np.random.default_rng(42)
    truth = []
    good = []
    for i in range(2):
        image, pos = _render(rng, 160, 200, 20)
        path = root / f"exp_{i:04d}.fits"
        fits.PrimaryHDU(image, header=_header(200, 160, 150.0 + i * 0.02, 2.0)).writeto(path)
        good.append(path)
        truth += [(f"exp_{i:04d}", 0, x, y, "star" if k % 2 else "galaxy")
                  for k, (x, y) in enumerate(pos)]
    hdus = [fits.PrimaryHDU()]
    for c in range(2):
        image, pos = _render(rng, 120, 150, 12, edge=False)
        hdus.append(fits.ImageHDU(image.astype(">f4"), header=_header(150, 120, 150.1, 2.0 + c * 0.01),
                                  name=f"CCD{c + 1}"))
        truth += [("exp_mef", c + 1, x, y, "star") for x, y in pos]
    mef = root / "exp_mef.fits.gz"  # gzip on the fly
    buf = root / "tmp.fits"
    fits.HDUList(hdus).writeto(buf)
    with open(buf, "rb") as src, gzip.open(mef, "wb") as dst:
        shutil.copyfileobj(src, dst)
    buf.unlink()
    good.append(mef)

    bad = {}
    (root / "empty.fits").write_bytes(b"")
    bad["empty.fits"] = "empty file"
    trunc = root / "truncated.fits"
    trunc.write_bytes(good[0].read_bytes()[: 2880 + 40000])
    bad["truncated.fits"] = "truncated"
    (root / "notes.fits").write_text("observing log, not pixels\n" * 100)
    bad["notes.fits"] = "not a readable FITS"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column("a", "E", array=np.ones(4))])]).writeto(root / "table.fits")
    bad["table.fits"] = "no image data"
    fits.PrimaryHDU(np.ones((3, 40, 40), np.float32)).writeto(root / "cube.fits")
    bad["cube.fits"] = "3-D array"
    fits.PrimaryHDU(np.full((40, 40), np.nan, np.float32)).writeto(root / "allnan.fits")
    bad["allnan.fits"] = "every pixel is NaN"
    truth_df = pd.DataFrame(truth, columns=["exposure", "ccd", "x", "y", "class"])
    truth_path = root / "truth.parquet"
    truth_df.to_parquet(truth_path)
    return {"root": root, "good": good, "bad": bad, "truth": truth_df, "truth_path": truth_path}


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def _cutout_ref(path: Path, hdu: int, x: float, y: float, sky: float) -> np.ndarray:
    with fits.open(path) as hdul:
        data = hdul[hdu].data.astype(np.float32)
    pos = (int(np.floor(x + 0.5)), int(np.floor(y + 0.5)))
    return Cutout2D(data, pos, STAMP, mode="partial", fill_value=np.nan).data - np.float32(sky)


def test_ingest_on_local_cluster(client, survey: dict, tmp_path: Path) -> None:
    out = tmp_path / "cutouts.zarr"
    bad_paths = [survey["root"] / name for name in survey["bad"]]
    paths = [survey["good"][0], *bad_paths, *survey["good"][1:]]
    summary = ingest(paths, out, truth=survey["truth_path"], stamp=STAMP, chunk_sources=16)

    # every bad file is a rejects row with its reason; good files still ingested
    rejects = read_rejects(out)
    assert sorted(Path(f).name for f in rejects["file"]) == sorted(survey["bad"])
    for name, reason in survey["bad"].items():
        row = rejects[rejects["file"].str.endswith(name)]
        assert reason in row["reason"].iloc[0], (name, row["reason"].iloc[0])
        assert name in row["reason"].iloc[0]  # the message names the file
    assert summary.n_exposures == 3 and summary.n_ccds == 4 and len(summary.rejects) == 6

    ds = open_store(out)
    n = ds.sizes["source"]
    truth = survey["truth"]
    assert summary.n_sources == n and n >= 0.95 * len(truth)
    assert ds["image"].chunks[0] == tuple([16] * (n // 16) + ([n % 16] if n % 16 else []))
    assert ds.attrs["bands"] == ["r"] and abs(ds.attrs["pixel_scale"] - 0.25) < 1e-6
    sid = ds["source_id"].values
    assert len(np.unique(sid)) == n

    # rows sorted by exposure, ccd, detection
    frame = pd.DataFrame({"exposure": ds["exposure"].values.astype(str),
                          "ccd": ds["ccd"].values, "x": ds["x"].values, "y": ds["y"].values,
                          "label": ds["label"].values.astype(str), "sky": ds["sky"].values,
                          "flags": ds["flags"].values})
    assert frame.equals(frame.sort_values(["exposure", "ccd"], kind="stable"))
    assert set(frame["exposure"]) == {"exp_0000", "exp_0001", "exp_mef"}
    assert set(frame.loc[frame["exposure"] == "exp_mef", "ccd"]) == {1, 2}

    # labels: every truth source matched with its own class
    merged = frame.merge(truth, on=["exposure", "ccd"], suffixes=("", "_t"))
    merged["d"] = np.hypot(merged["x"] - merged["x_t"], merged["y"] - merged["y_t"])
    best = merged.loc[merged.groupby(["exposure", "ccd", "x_t", "y_t"])["d"].idxmin()]
    assert (best["d"] < 0.3).mean() >= 0.95 and best["d"].median() < 0.1
    matched = best[best["d"] < 1.0]
    assert (matched["label"] == matched["class"]).all()
    assert ds.attrs["classes"] == ["galaxy", "star"]

    # pixels: raw minus the recorded sky, exactly Cutout2D's stamp; edges NaN and flagged
    files = {p.name.split(".")[0]: p for p in survey["good"]}
    for k in [0, n // 2, n - 1]:
        ref = _cutout_ref(files[frame["exposure"][k]], int(frame["ccd"][k]), frame["x"][k],
                          frame["y"][k], frame["sky"][k])
        np.testing.assert_allclose(ds["image"][k, 0].values, ref, rtol=1e-6, atol=1e-3)
    edge = (frame["flags"] & FLAG_EDGE) != 0
    assert edge.sum() >= 4  # the two planted edge sources in each single-CCD exposure
    images = ds["image"].values
    assert np.isnan(images[edge.to_numpy()]).any(axis=(1, 2, 3)).all()
    assert not np.isnan(images[~edge.to_numpy()]).any()
    inputs = {Path(i["path"]).name: i for i in ds.attrs["inputs"]}
    assert hashlib.sha256(survey["good"][0].read_bytes()).hexdigest() == inputs["exp_0000.fits"]["sha256"]
    assert not list(tmp_path.glob(".cutouts.zarr.*"))  # no temporary left behind
    assert "rejects:    6" in describe(out) and "galaxy" in describe(out)


def test_chunks_follow_chunk_bytes_and_radius_is_measured(survey: dict, tmp_path: Path) -> None:
    import dask

    with dask.config.set({"skysieve.ingest.chunk-bytes": "8 KiB"}):  # 16x16 float32: 1 KiB each
        summary = ingest(survey["good"][:1], tmp_path / "s.zarr", stamp=16)
    ds = open_store(tmp_path / "s.zarr")
    n = ds.sizes["source"]
    assert ds.attrs["chunk_sources"] == 8 and summary.n_chunks == -(-n // 8)
    # point sources of FWHM 3.5 px: half-light radius ~ FWHM / 2, psf_fwhm ~ 3.5
    clean = (ds["flags"].values == 0)
    radius = ds["radius"].values[clean]
    assert ds["radius"].dtype == np.float32 and np.isfinite(radius).all()
    assert abs(np.median(radius) / (ds["psf_fwhm"].values[0] / 2) - 1) < 0.15
    with dask.config.set({"skysieve.ingest.chunk-sources": 5}):  # an explicit count wins
        ingest(survey["good"][:1], tmp_path / "c.zarr", stamp=16)
    assert open_store(tmp_path / "c.zarr").attrs["chunk_sources"] == 5


def test_nothing_usable_writes_nothing(survey: dict, tmp_path: Path) -> None:
    out = tmp_path / "none.zarr"
    summary = ingest([survey["root"] / n for n in survey["bad"]], out)
    assert summary.n_sources == 0 and summary.store is None and len(summary.rejects) == 6
    assert not out.exists() and not list(tmp_path.iterdir())
    assert "no sources ingested" in summary.describe()


def test_killed_run_is_swept_and_a_failed_one_leaves_nothing(survey: dict, tmp_path: Path,
                                                             stale_temporary,
                                                             fail_after_first_chunk) -> None:
    import pipeline.ingest.exposures as exposures

    out = tmp_path / "s.zarr"
    stale = stale_temporary(out)
    stale_spill = stale.with_name(f"{stale.name}.scratch")  # its stamps' spill, too
    stale_spill.mkdir()
    summary = ingest(survey["good"][:1], out, stamp=16, chunk_sources=8)
    assert summary.n_chunks >= 2 and open_store(out).sizes["source"] == summary.n_sources
    assert not stale.exists() and not stale_spill.exists()
    assert not list(tmp_path.glob(".s.zarr.*"))

    failed = tmp_path / "f.zarr"
    stale = stale_temporary(failed)
    fail_after_first_chunk(exposures)
    with pytest.raises(RuntimeError, match="part-way"):
        ingest(survey["good"][:1], failed, stamp=16, chunk_sources=8)
    assert not failed.exists() and not stale.exists()
    assert not list(tmp_path.glob(".f.zarr.*"))  # neither the killed run's nor its own


def test_overwrite_rules(survey: dict, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    first = ingest(survey["good"][:1], out, stamp=16)
    assert first.n_sources > 0
    with pytest.raises(StoreError, match="already exists; pass --overwrite"):
        ingest(survey["good"], out)
    second = ingest(survey["good"], out, stamp=16, overwrite=True)
    assert open_store(out).sizes["source"] == second.n_sources > first.n_sources
    with pytest.raises(SkysieveError, match="stamp must be an integer"):
        ingest(survey["good"], tmp_path / "x.zarr", stamp=2)
    with pytest.raises(SkysieveError, match="at least one"):
        ingest([], tmp_path / "x.zarr")


def test_duplicate_exposure_name_is_rejected(survey: dict, tmp_path: Path) -> None:
    copy = tmp_path / "exp_0000.fits.gz"
    with open(survey["good"][0], "rb") as src, gzip.open(copy, "wb") as dst:
        shutil.copyfileobj(src, dst)
    summary = ingest([survey["good"][0], copy], tmp_path / "s.zarr", stamp=16)
    assert summary.n_exposures == 1
    assert len(summary.rejects) == 1 and "also that of" in summary.rejects[0]["reason"]


def test_forced_radec_and_xy_cutouts(survey: dict, tmp_path: Path) -> None:
    path = survey["good"][0]
    wcs = WCS(fits.getheader(path))
    xy = np.array([[50.0, 60.0], [120.4, 33.6], [10.0, 150.0]])
    ra, dec = wcs.pixel_to_world_values(xy[:, 0], xy[:, 1])
    table = pd.DataFrame({"ra": [*ra, np.nan, 10.0], "dec": [*dec, 2.0, -40.0],
                          "source_id": [11, 12, 13, 14, 15]})
    table.to_parquet(tmp_path / "src.parquet")
    summary = ingest([path], tmp_path / "f.zarr", sources=tmp_path / "src.parquet", stamp=16)
    assert summary.n_sources == 3, summary.rejects
    reasons = [r["reason"] for r in summary.rejects]
    assert any("row 3: NaN" in r for r in reasons) and any("row 4" in r and "not on any" in r
                                                             for r in reasons)
    ds = open_store(tmp_path / "f.zarr")
    assert ds["source_id"].values.tolist() == [11, 12, 13]
    np.testing.assert_allclose(ds["x"].values, xy[:, 0], atol=1e-6)
    np.testing.assert_allclose(ds["y"].values, xy[:, 1], atol=1e-6)
    ref = _cutout_ref(path, 0, 50.0, 60.0, float(ds["sky"].values[0]))[4:20, 4:20]
    # the 16-px stamp is the centre of the 24-px reference
    np.testing.assert_allclose(ds["image"][0, 0].values, ref, rtol=1e-6, atol=1e-3)

    csv = tmp_path / "xy.csv"
    pd.DataFrame({"exposure": ["exp_0000", "exp_0001"], "x": [30.0, 40.0],
                  "y": [30.0, 45.0]}).to_csv(csv, index=False)
    summary = ingest(survey["good"][:2], tmp_path / "xy.zarr", sources=csv, stamp=16)
    ds = open_store(tmp_path / "xy.zarr")
    assert ds["exposure"].values.astype(str).tolist() == ["exp_0000", "exp_0001"]
    assert ds["y"].values.tolist() == [30.0, 45.0]
    assert len(np.unique(ds["source_id"].values)) == 2


def test_bad_source_tables(survey: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ra": [1.0], "foo": [2.0]}).to_csv(bad, index=False)
    with pytest.raises(SourceTableError, match=r"missing columns \['dec'\]"):
        ingest(survey["good"], tmp_path / "s.zarr", sources=bad)
    nofile = tmp_path / "table.xlsx"
    nofile.write_text("x")
    with pytest.raises(SourceTableError, match="unknown source table format"):
        ingest(survey["good"], tmp_path / "s.zarr", sources=nofile)
    xy = tmp_path / "xy.csv"
    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(xy, index=False)
    with pytest.raises(SourceTableError, match="'exposure' column"):
        ingest(survey["good"], tmp_path / "s.zarr", sources=xy)
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"exposure": ["a"], "x": [1.0], "y": [2.0]}).to_csv(truth, index=False)
    with pytest.raises(SourceTableError, match="class"):
        ingest(survey["good"], tmp_path / "s.zarr", truth=truth)
    assert not (tmp_path / "s.zarr").exists()


def test_m13_plain_gzip_and_tile_compressed(tmp_path: Path,
                                            m13_files: tuple[Path, Path, Path]) -> None:
    plain, gz, fz = m13_files
    summary = ingest([plain, gz, fz], tmp_path / "m13.zarr", stamp=32)
    assert summary.rejects == [] and summary.n_exposures == 3
    ds = open_store(tmp_path / "m13.zarr")
    exp = ds["exposure"].values.astype(str)
    counts = pd.Series(exp).value_counts()
    assert set(counts.index) == {"m13", "m13_gz", "m13_rice"} and counts.nunique() == 1
    images = ds["image"].values
    a, b = images[exp == "m13"], images[exp == "m13_rice"]
    np.testing.assert_array_equal(a, b)  # same pixels, same detections, same stamps
    assert np.isfinite(ds["ra"].values).all()
    assert (ds["psf_fwhm"].values > 1).all()


def test_dss_plates_central_galaxy(shared_data: Path, tmp_path: Path) -> None:
    paths = [shared_data / "dss_galaxies" / f for f in ("M061_dss.fits", "M063_dss.fits")]
    summary = ingest(paths, tmp_path / "dss.zarr", stamp=64)
    assert summary.rejects == [] and summary.n_exposures == 2
    ds = open_store(tmp_path / "dss.zarr")
    assert abs(ds.attrs["pixel_scale"] - 1.70) < 0.01
    for path in paths:
        header = fits.getheader(path)
        sel = ds["exposure"].values.astype(str) == path.stem
        x, y = ds["x"].values[sel], ds["y"].values[sel]
        centre = np.argmin(np.hypot(x - header["NAXIS1"] / 2, y - header["NAXIS2"] / 2))
        assert np.hypot(x[centre] - header["NAXIS1"] / 2, y[centre] - header["NAXIS2"] / 2) < 15
        target = SkyCoord(header["OBJCTRA"], header["OBJCTDEC"], unit=(u.hourangle, u.deg))
        got = SkyCoord(ds["ra"].values[sel][centre], ds["dec"].values[sel][centre], unit="deg")
        assert got.separation(target).arcsec < 15.0
        stamp = ds["image"].values[np.flatnonzero(sel)[centre], 0]
        assert np.isfinite(stamp).all() and stamp[32, 32] > 10 * float(
            ds["sky_rms"].values[sel][centre])


@pytest.fixture(scope="module")
def synth_survey(tmp_path_factory: pytest.TempPathFactory):
    import pipeline.simulation.survey as synth

    root = tmp_path_factory.mktemp("synth")
    summary = synth.synthesize(root, exposures=2, size=512, sources=100, ccds=1, seed=7)
    return summary


def test_synthetic_survey_recovery_and_labels(synth_survey, tmp_path: Path) -> None:
    """>= 95% of isolated sources with S/N >= 30 recovered, median error < 0.3 px, labels right.

    S/N of a truth source: flux / (sky_rms * sqrt(pi) * r) with r = max(PSF FWHM,
    2 half-light radii) in px, the noise in an aperture of radius r.  Recovered: a
    detection within max(3 px, the half-light radius) of the truth position
    (clumpy irregulars and clusters may be split by the deblender).
    """
    out = tmp_path / "synth.zarr"
    files = sorted(synth_survey.files)
    summary = ingest(files, out, truth=synth_survey.truth, stamp=32)
    assert summary.rejects == []
    ds = open_store(out)
    det = pd.DataFrame({"exposure": ds["exposure"].values.astype(str), "ccd": ds["ccd"].values,
                        "x": ds["x"].values, "y": ds["y"].values,
                        "label": ds["label"].values.astype(str),
                        "sky_rms": ds["sky_rms"].values, "psf_fwhm": ds["psf_fwhm"].values})
    truth = pd.read_parquet(synth_survey.truth)
    # each CCD's PSF ellipticity from its stars: one value a CCD, near round (the survey's
    # PSF shear |g| <= 0.04, an ellipticity of about 2|g|)
    e = pd.Series(np.hypot(ds["psf_e1"].values, ds["psf_e2"].values)).groupby(det["exposure"])
    assert (e.nunique() == 1).all() and (e.first() < 0.12).all(), e.first()
    from scipy.spatial import cKDTree

    recovered, errors, labels_ok = [], [], []
    for path in files:
        header = fits.getheader(path)
        scale = header["PIXSCALE"]
        d = det[det["exposure"] == path.name.split(".")[0]]
        t = truth[truth["exposure"] == path.name.split(".")[0]].reset_index(drop=True)
        # the CCD's PSF estimate against the true one (pixel-integrated, so a bit wider)
        true_psf = header["PSF_FWHM"] / scale
        assert 0.9 * true_psf < d["psf_fwhm"].iloc[0] < 1.2 * true_psf
        tt = cKDTree(t[["x", "y"]].to_numpy())
        nearest, _ = tt.query(t[["x", "y"]].to_numpy(), k=2)
        r = np.maximum(true_psf, 2 * t["size"].to_numpy() / scale)
        snr = t["flux"].to_numpy() / (np.median(d["sky_rms"]) * np.sqrt(np.pi) * r)
        inside = (t["x"].between(10, header["NAXIS1"] - 11)
                  & t["y"].between(10, header["NAXIS2"] - 11)).to_numpy()
        sel = (snr >= 30) & (nearest[:, 1] > 20) & inside
        dist, j = cKDTree(d[["x", "y"]].to_numpy()).query(t[["x", "y"]].to_numpy()[sel])
        hit = dist <= np.maximum(3.0, t["size"].to_numpy()[sel] / scale)
        recovered += list(hit)
        errors += list(dist[hit])
        labels_ok += list(d["label"].to_numpy()[j[hit]] == t["class"].to_numpy()[sel][hit])
    assert len(recovered) >= 50
    assert np.mean(recovered) >= 0.95
    assert np.median(errors) < 0.3
    assert np.mean(labels_ok) >= 0.95
    assert set(ds.attrs["classes"]) <= set(truth["class"]) and len(ds.attrs["classes"]) >= 4


def test_two_synth_runs_ingest_into_one_store_with_two_truth_tables(tmp_path: Path) -> None:
    """``synth --prefix`` + ``ingest --truth A --truth B``: each run labelled from its own table."""
    from click.testing import CliRunner

    import pipeline.simulation.survey as synth
    from pipeline.cli import cli

    a = synth.synthesize(tmp_path / "a", exposures=1, size=256, seed=3, prefix="s_")
    b = synth.synthesize(tmp_path / "b", exposures=1, size=256, seed=4, prefix="w_")
    runner = CliRunner()
    res = runner.invoke(cli, ["ingest", *map(str, a.files + b.files), "--truth", str(a.truth),
                              "--truth", str(b.truth), "--out", str(tmp_path / "ab.zarr"),
                              "--cluster", "local", "--workers", "1", "--threads", "1"])
    assert res.exit_code == 0, res.output
    ds = open_store(tmp_path / "ab.zarr")
    joined = pd.DataFrame({"exposure": ds["exposure"].values.astype(str),
                           "x": ds["x"].values, "label": ds["label"].values.astype(str)})
    assert set(joined["exposure"]) == {"s_exp_0000", "w_exp_0000"}
    for run in (a, b):  # the same labels as the run ingested alone with its own truth
        out = tmp_path / f"{run.files[0].stem}.zarr"
        ingest(run.files, out, truth=run.truth)
        alone = open_store(out)
        mine = joined[joined["exposure"] == run.files[0].stem].sort_values("x")
        order = np.argsort(alone["x"].values)
        assert (mine["label"] != "").sum() > 0
        assert list(mine["label"]) == list(alone["label"].values.astype(str)[order])
    # the same exposures twice, or a ccd column in one table only: refused, naming the files
    twice = runner.invoke(cli, ["ingest", *map(str, a.files), "--truth", str(a.truth), "--truth",
                                str(a.truth), "--out", str(tmp_path / "aa.zarr")])
    assert twice.exit_code == 1 and "exposure 's_exp_0000' is also in" in twice.output
    no_ccd = tmp_path / "no_ccd.csv"
    pd.read_parquet(b.truth).drop(columns="ccd").to_csv(no_ccd, index=False)
    mixed = runner.invoke(cli, ["ingest", *map(str, a.files), "--truth", str(a.truth), "--truth",
                                str(no_ccd), "--out", str(tmp_path / "m.zarr")])
    assert mixed.exit_code == 1 and "no_ccd.csv: truth table has no 'ccd' column" in mixed.output
    assert not (tmp_path / "aa.zarr").exists() and not (tmp_path / "m.zarr").exists()
