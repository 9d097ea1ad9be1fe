"""Whole-exposure mode: pointed synthetic exposures -> one store item each -> one catalogue row each.

Real GalSim FITS files, a real Zarr store, real training and the real classify graph.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

from pipeline.ingest.detect import FLAG_EDGE
from pipeline.errors import SkysieveError, SourceTableError, StoreError
from pipeline.store import open_store, pack_source_id, read_rejects
from pipeline.simulation.pointed import (
    TARGET_CLASSES,
    TARGET_MORPHOLOGIES,
    PointedSummary,
    synthesize_pointed,
)
from pipeline.ingest.whole_exposure import block_average, ingest_whole

SIZE, N_EXP, FACTOR = 256, 6, 2


@pytest.fixture(scope="module")
def pointed(tmp_path_factory: pytest.TempPathFactory) -> PointedSummary:
    """Six 256^2 pointed exposures, two of them blurred."""
    return synthesize_pointed(tmp_path_factory.mktemp("pointed"), exposures=N_EXP, size=SIZE,
                              seed=3, blurred_fraction=0.34, processes=1)


@pytest.fixture(scope="module")
def whole(pointed: PointedSummary, tmp_path_factory: pytest.TempPathFactory):
    """The six exposures plus an unreadable file and one of another size, ingested whole."""
    extra = tmp_path_factory.mktemp("extra")
    bad = extra / "broken.fits"
    bad.write_bytes(b"SIMPLE  =  this is not FITS at all")
    with fits.open(pointed.files[0]) as hdul:
        crop = hdul[0].data[:200]
        header = hdul[0].header
    odd = extra / "odd_size.fits"
    fits.PrimaryHDU(crop, header).writeto(odd)
    out = tmp_path_factory.mktemp("store") / "whole.zarr"
    summary = ingest_whole([*pointed.files, bad, odd], out, downsample=FACTOR,
                           truth=pointed.truth)
    return summary, bad, odd


def test_pointed_synth_is_deterministic_with_both_classes(pointed: PointedSummary,
                                                          tmp_path: Path) -> None:
    truth = pd.read_parquet(pointed.truth)
    assert len(truth) == N_EXP and list(truth["exposure"]) == [p.stem for p in pointed.files]
    assert sorted(set(truth["target_class"])) == sorted(TARGET_CLASSES)
    assert truth["target_class"].value_counts().tolist() == [N_EXP // 2, N_EXP // 2]
    for cls, morph, label in zip(truth["target_class"], truth["morphology"], truth["class"]):
        assert morph in TARGET_MORPHOLOGIES[cls]
        assert label == (morph if cls == "galaxy" else "nebula_cluster")
    assert int(truth["blurred"].sum()) == 2 == sum(pointed.blurred)
    assert (truth.loc[truth["blurred"], "psf_fwhm"] >= 1.4).all()
    assert (truth.loc[~truth["blurred"], "psf_fwhm"] < 1.4).all()
    centre = (SIZE - 1) / 2
    assert (abs(truth["x"] - centre) <= 0.02 * SIZE + 1e-9).all()
    assert (abs(truth["y"] - centre) <= 0.02 * SIZE + 1e-9).all()
    assert (truth["radius_px"].between(0.01 * SIZE, 0.11 * SIZE)).all()
    assert (truth["radius_px"] >= 0.05 * SIZE).sum() >= N_EXP // 2
    for path, row in zip(pointed.files, truth.itertuples()):
        with fits.open(path) as hdul:
            data, header = hdul[0].data.astype(np.float64), hdul[0].header
        assert data.shape == (SIZE, SIZE) and np.isfinite(data).all()
        assert header["BLURRED"] == row.blurred
        assert "galaxy" not in repr(header).lower() and "nebula" not in repr(header).lower()
        ra, dec = WCS(header).all_pix2world([row.x], [row.y], 0)
        assert ra[0] == pytest.approx(row.ra, abs=1e-9) and dec[0] == pytest.approx(row.dec)
        # The target dominates: the middle of the frame is far above the sky at the border.
        sky = np.median(np.concatenate([data[:8].ravel(), data[-8:].ravel()]))
        mid = data[SIZE // 2 - 8:SIZE // 2 + 8, SIZE // 2 - 8:SIZE // 2 + 8]
        assert np.median(mid) - sky > 5 * np.sqrt(header["SKYLEVEL"] / header["GAIN"])

    again = synthesize_pointed(tmp_path / "again", exposures=N_EXP, size=SIZE, seed=3,
                               blurred_fraction=0.34, processes=1)
    pd.testing.assert_frame_equal(pd.read_parquet(again.truth), truth)
    for a, b in zip(pointed.files, again.files):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))
    other = synthesize_pointed(tmp_path / "other", exposures=2, size=128, seed=4)
    assert not np.array_equal(fits.getdata(other.files[0]),
                              fits.getdata(pointed.files[0])[:128, :128])


def test_ingest_whole_writes_one_item_per_exposure(pointed: PointedSummary, whole) -> None:
    summary, bad, odd = whole
    assert summary.n_sources == N_EXP and summary.n_exposures == N_EXP
    side = SIZE // FACTOR
    assert summary.side == side and summary.n_chunks == 1
    ds = open_store(summary.store)  # the cutout-store contract holds
    assert ds["image"].shape == (N_EXP, 1, side, side)
    assert ds.attrs["item"] == "exposure" and ds.attrs["downsample"] == FACTOR
    assert ds.attrs["stamp"] == side and ds.attrs["image_shape"] == [side, side]
    names = [p.stem for p in pointed.files]
    assert list(ds["exposure"].values) == names
    assert (ds["ccd"].values == 0).all()
    assert np.array_equal(ds["source_id"].values, pack_source_id(names, [0] * N_EXP,
                                                                 [0] * N_EXP))
    truth = pd.read_parquet(pointed.truth).set_index("exposure")
    assert list(ds["label"].values) == truth.loc[names, "target_class"].tolist()
    assert sorted(ds.attrs["classes"]) == sorted(TARGET_CLASSES)
    assert (ds["x"].values == (SIZE - 1) / 2).all() and (ds["y"].values == (SIZE - 1) / 2).all()
    assert (ds["dropped_x"].values == 0).all() and (ds["nx"].values == SIZE).all()

    # Pixels: the block mean of the raw exposure minus the stored sky, float32.
    with fits.open(pointed.files[1]) as hdul:
        raw = hdul[0].data.astype(np.float64)
        header = hdul[0].header
    expect = raw.reshape(side, FACTOR, side, FACTOR).mean(axis=(1, 3)) - float(ds["sky"][1])
    assert ds["image"].dtype == np.float32
    np.testing.assert_allclose(ds["image"][1, 0].values, expect, rtol=1e-5, atol=1e-2)
    assert float(ds["sky"][1]) == pytest.approx(header["SKYLEVEL"], rel=0.05)
    # WCS at the image centre; PSF in downsampled pixels (header fallback on so few stars).
    ra, dec = WCS(header).all_pix2world([(SIZE - 1) / 2], [(SIZE - 1) / 2], 0)
    assert float(ds["ra"][1]) == pytest.approx(ra[0]) and float(ds["dec"][1]) == pytest.approx(dec[0])
    psf = ds["psf_fwhm"].values.astype(float)
    true_px = truth.loc[names, "psf_fwhm"].to_numpy() / header["PIXSCALE"] / FACTOR
    np.testing.assert_allclose(psf, true_px, rtol=0.3)
    assert ds.attrs["pixel_scale"] == pytest.approx(header["PIXSCALE"] * FACTOR, rel=1e-3)
    assert (ds["flux"].values > 0).all() and (ds["snr"].values > 10).all()

    # The unreadable file and the CCD of another size are rejects, not errors.
    rejects = read_rejects(summary.store)
    assert len(rejects) == 2 == len(summary.rejects)
    by_file = dict(zip(rejects["file"], rejects["reason"]))
    assert "not a readable FITS file" in by_file[str(bad)]
    assert "200x256 px" in by_file[str(odd)] and f"{SIZE}x{SIZE} px" in by_file[str(odd)]
    assert "broken.fits" in summary.describe()


def test_block_average_is_nan_aware_and_drops_trailing_pixels() -> None:
    image = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    image[0, 0] = np.nan
    image[4:6, 2:4] = np.nan
    binned, dropped = block_average(image, 2)
    assert binned.shape == (3, 4) and dropped == (1, 1) and binned.dtype == np.float32
    assert binned[0, 0] == pytest.approx(np.mean([1.0, 9.0, 10.0]))  # NaN ignored
    assert np.isnan(binned[2, 1])                                      # all-NaN block
    assert binned[1, 2] == pytest.approx(image[2:4, 4:6].mean())
    same, none = block_average(image, 1)
    assert none == (0, 0) and np.array_equal(same, image, equal_nan=True)
    with pytest.raises(ValueError, match="positive integer"):
        block_average(image, 0)
    with pytest.raises(ValueError, match="smaller than one 8x8 block"):
        block_average(image, 8)


def test_non_square_images_are_centred_in_a_nan_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        data = rng.normal(100.0, 5.0, (130, 203)).astype(np.float32)
        data[50:80, 80:120] += 200.0 * (k + 1)
        path = tmp_path / f"plain_{k}.fits"
        fits.PrimaryHDU(data).writeto(path)
        paths.append(path)
    summary = ingest_whole(paths, tmp_path / "w.zarr", downsample=4, chunk_sources=1)
    ds = open_store(summary.store)
    assert summary.n_chunks == 2 and ds["image"].chunks[0] == (1, 1)
    assert ds["image"].shape == (2, 1, 50, 50)  # 130x203 -> 32x50, padded to 50x50
    assert ds.attrs["image_shape"] == [32, 50] and ds.attrs["dropped"] == [2, 3]
    assert (ds["dropped_y"].values == 2).all() and (ds["dropped_x"].values == 3).all()
    img = ds["image"][0, 0].values
    assert np.isnan(img[:9]).all() and np.isnan(img[41:]).all() and np.isfinite(img[9:41]).all()
    assert (ds["flags"].values & FLAG_EDGE).all()
    assert np.isnan(ds["ra"].values).all()  # no WCS
    assert (ds["x"].values == 99.5).all() and (ds["y"].values == 63.5).all()
    assert "label" not in ds.coords


def test_killed_run_is_swept_and_a_failed_one_leaves_nothing(pointed: PointedSummary,
                                                             tmp_path: Path, stale_temporary,
                                                             fail_after_first_chunk) -> None:
    import pipeline.ingest.whole_exposure as whole_exposure

    out = tmp_path / "w.zarr"
    stale = stale_temporary(out)
    summary = ingest_whole(pointed.files[:2], out, downsample=4, chunk_sources=1)
    assert summary.n_chunks == 2 and open_store(out).sizes["source"] == 2
    assert not stale.exists() and not list(tmp_path.glob(".w.zarr.*"))

    failed = tmp_path / "f.zarr"
    stale = stale_temporary(failed)
    fail_after_first_chunk(whole_exposure)
    with pytest.raises(RuntimeError, match="part-way"):
        ingest_whole(pointed.files[:2], failed, downsample=4, chunk_sources=1)
    assert not failed.exists() and not stale.exists()
    assert not list(tmp_path.glob(".f.zarr.*"))  # neither the killed run's nor its own


def test_bad_truth_and_arguments(pointed: PointedSummary, tmp_path: Path) -> None:
    dup = pd.DataFrame({"exposure": ["exp_0000", "exp_0000"], "target_class": ["galaxy"] * 2})
    with pytest.raises(SourceTableError, match="more than one row"):
        ingest_whole(pointed.files[:1], tmp_path / "a.zarr", truth=dup)
    with pytest.raises(SourceTableError, match="'target_class'"):
        ingest_whole(pointed.files[:1], tmp_path / "b.zarr",
                     truth=pd.DataFrame({"exposure": ["exp_0000"], "kind": ["x"]}))
    with pytest.raises(SkysieveError, match="downsample must be an integer from 1 to 256"):
        ingest_whole(pointed.files[:1], tmp_path / "c.zarr", downsample=0)
    (tmp_path / "d.zarr").mkdir()
    (tmp_path / "d.zarr" / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="already exists"):
        ingest_whole(pointed.files[:1], tmp_path / "d.zarr")
    nothing = ingest_whole([tmp_path / "d.zarr" / "keep.txt"], tmp_path / "e.zarr")
    assert nothing.store is None and len(nothing.rejects) == 1
    assert not (tmp_path / "e.zarr").exists()


def test_train_then_classify_gives_one_row_per_exposure(whole, pointed: PointedSummary,
                                                       tmp_path: Path) -> None:
    from pipeline.classify.graph import classify
    from pipeline.training.fit import train

    summary = whole[0]
    card = train(summary.store, arch="smallcnn", out=tmp_path / "m.pt", epochs=1,
                 batch_size=4, split_by="source", image_size=64, progress=False)
    assert list(card.classes) == sorted(TARGET_CLASSES)
    run = classify(summary.store, tmp_path / "cat", model=tmp_path / "m.pt", progress=False)
    assert run.rows == N_EXP and not run.failed
    cat = pd.read_parquet(tmp_path / "cat").sort_values("exposure", ignore_index=True)
    assert len(cat) == N_EXP and cat["source_id"].is_unique
    assert list(cat["exposure"]) == [p.stem for p in pointed.files]
    total = cat["p_galaxy"] + cat["p_nebula_cluster"]
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    assert set(cat["label"]) <= set(TARGET_CLASSES)
    truth = pd.read_parquet(pointed.truth).set_index("exposure")
    assert list(cat["true_label"]) == truth.loc[cat["exposure"], "target_class"].tolist()
    # Blur score of a whole exposure: its PSF FWHM over the store's median, finite here.
    psf = cat["psf_fwhm"].to_numpy(np.float64)
    np.testing.assert_allclose(cat["blur_score"], psf / np.median(psf), rtol=1e-5)
    blurred = truth.loc[cat["exposure"], "blurred"].to_numpy()
    assert cat["blur_score"][blurred].min() > cat["blur_score"][~blurred].max()
    assert np.isfinite(cat["ra"]).all() and (cat["healpix"] >= 0).all()


def test_cli_synth_pointed_and_ingest_whole(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    runner = CliRunner()
    made = runner.invoke(cli, ["synth", str(tmp_path / "p"), "--pointed", "--exposures", "2",
                               "--size", "128", "--seed", "1"])
    assert made.exit_code == 0, made.output
    assert "pointed exposures" in made.output and "nebula_cluster: 1" in made.output
    files = sorted(str(p) for p in (tmp_path / "p").glob("exp_*.fits"))
    assert len(files) == 2
    done = runner.invoke(cli, ["ingest", *files, "--out", str(tmp_path / "w.zarr"),
                               "--whole-exposure", "--downsample", "4", "--truth",
                               str(tmp_path / "p" / "truth.parquet"), "--cluster", "local",
                               "--workers", "1", "--threads", "1"])
    assert done.exit_code == 0, done.output
    ds = open_store(tmp_path / "w.zarr")
    assert ds["image"].shape == (2, 1, 32, 32)
    assert sorted(ds["label"].values) == ["galaxy", "nebula_cluster"]
    wrong = runner.invoke(cli, ["ingest", *files, "--out", str(tmp_path / "x.zarr"),
                                "--downsample", "2"])
    assert wrong.exit_code != 0 and "--whole-exposure" in wrong.output


def test_hr_celestialnet_takes_a_whole_exposure_at_native_size(tmp_path: Path) -> None:
    """The published whole-exposure form (>= 1,322 px) on one 1,400 px pointed exposure."""
    from pipeline.imaging.preprocess import DEFAULT_STRETCH, prepare
    from workers.models import create_model

    side = 1400
    made = synthesize_pointed(tmp_path / "p", exposures=1, size=side, seed=5, processes=1)
    summary = ingest_whole(made.files, tmp_path / "w.zarr", downsample=1,
                           truth=made.truth)
    ds = open_store(summary.store)
    assert ds["image"].shape == (1, 1, side, side)
    x = prepare(ds["image"].values, stretch=DEFAULT_STRETCH, image_size=side)
    assert x.shape == (1, 1, side, side) and torch.isfinite(x).all()
    torch.manual_seed(0)
    model = create_model("hr_celestialnet", num_classes=2, in_chans=1, image_size=side).eval()
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="1322x1322"):
        create_model("hr_celestialnet", num_classes=2, image_size=side // 2)
    assert math.isfinite(float(ds["psf_fwhm"][0])) and float(ds["psf_fwhm"][0]) > 1
