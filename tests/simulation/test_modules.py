"""The pieces of the simulation: source builders, the instrument, atomic writes, argument checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from pipeline.errors import SynthError
from pipeline.simulation import instrument, sources
from pipeline.simulation.pointed import TARGET_MORPHOLOGIES, synthesize_pointed
from pipeline.simulation.survey import CLASSES, synthesize


def test_sample_sources_is_stratified_and_has_fluxes() -> None:
    rng = np.random.default_rng(0)
    specs = sources.sample_sources(rng, 100, magzp=30.0)
    names = [s["class"] for s in specs]
    assert set(names) == set(CLASSES)
    assert names.count("star") == 30 and all(names.count(c) == 14 for c in CLASSES[1:])
    for s in specs:
        assert s["flux"] == pytest.approx(10 ** (-0.4 * (s["mag"] - 30.0)))
        assert (s["profile"] is None) == (s["class"] == "star")
        assert (s["size"] == 0.0) == (s["class"] == "star")
    # At least one saturated star (r < 13.5) among them.
    assert min(s["mag"] for s in specs if s["class"] == "star") < 13.5


def test_field_sources_are_stars_and_galaxies_only() -> None:
    specs = sources.field_sources(np.random.default_rng(1), 60, magzp=30.0)
    names = {s["class"] for s in specs}
    assert names <= {"star", *sources.GALAXY_TYPES} and "star" in names
    assert TARGET_MORPHOLOGIES["galaxy"] == sources.GALAXY_TYPES


@pytest.mark.parametrize("name", sources.GALAXY_TYPES)
def test_galaxy_builders(name: str) -> None:
    profile, extent = sources.BUILDERS[name](np.random.default_rng(2), 1.5)
    assert profile.flux == pytest.approx(1.0) and extent > 1.5
    # Centred on its centroid: the truth position is the flux-weighted centre.
    assert abs(profile.centroid.x) < 1e-9 and abs(profile.centroid.y) < 1e-9
    again, _ = sources.BUILDERS[name](np.random.default_rng(2), 1.5)
    assert again == profile          # deterministic for a seed


@pytest.mark.parametrize("form", ["star_cluster", "nebula"])
def test_nebula_cluster_forms(form: str) -> None:
    profile, extent = sources.nebula_cluster(np.random.default_rng(3), 1.5, form=form)
    assert profile.flux == pytest.approx(1.0) and extent >= 3 * 1.5
    again, _ = sources.nebula_cluster(np.random.default_rng(3), 1.5, form=form)
    assert again == profile          # deterministic for a seed


def test_place_keeps_sources_apart_and_inside() -> None:
    rng = np.random.default_rng(3)
    specs = sources.sample_sources(rng, 40, magzp=30.0)
    xy = sources.place(rng, specs, 512)
    assert xy.shape == (40, 2) and np.isfinite(xy).all()
    assert (xy >= 0).all() and (xy <= 511).all()
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    d[np.diag_indices(40)] = np.inf
    # Only the deliberate close pairs (4% of 40: two) come closer than 20 px.
    assert (d.min(axis=1) < 20).sum() <= 4


def test_pointing_header_and_wcs() -> None:
    pointing = instrument.draw_pointing(np.random.default_rng(4), index=7, blurred=True)
    assert pointing.psf.kind in ("bad seeing", "defocus") and pointing.psf.fwhm >= 1.4
    cards = instrument.header_cards(pointing, seed=9)
    header = instrument.image_header(pointing, cards, crpix=(64.5, 64.5))
    assert header["EXPNUM"] == 7 and header["SEED"] == 9 and header["BLURRED"] is True
    assert header["OBJECT"] == "SYNTH FIELD 0007"
    ra, dec = WCS(header).all_pix2world([63.5], [63.5], 0)
    assert ra[0] == pytest.approx(pointing.ra0) and dec[0] == pytest.approx(pointing.dec0)
    sharp = instrument.draw_pointing(np.random.default_rng(4), index=0, blurred=False)
    assert sharp.psf.kind == "seeing" and sharp.psf.fwhm == sharp.psf.seeing


def test_observe_adds_sky_noise_and_saturates() -> None:
    model = np.zeros((128, 128), dtype=np.float32)
    model[64, 64] = 1e7
    image = instrument.observe(np.random.default_rng(5), model, sky=200.0)
    assert image.dtype == np.float32 and image.max() == instrument.SATURATE
    sky = np.median(image)
    assert 190 < sky < 210 and 5 < image[:32, :32].std() < 20


def test_write_fits_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "x.fits"
    instrument.write_fits(path, [fits.PrimaryHDU(np.arange(4, dtype=np.float32))])
    assert np.array_equal(fits.getdata(path), np.arange(4, dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["x.fits"]


def test_runs_leave_no_temporaries(tmp_path: Path) -> None:
    synthesize(tmp_path / "s", exposures=1, size=128, seed=1)
    synthesize_pointed(tmp_path / "p", exposures=1, size=128, seed=1, processes=1)
    for folder in ("s", "p"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [
            "exp_0000.fits", "truth.parquet"]
        assert len(pd.read_parquet(tmp_path / folder / "truth.parquet")) >= 1


def test_numpy_integers_are_accepted(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, exposures=np.int64(1), size=np.int64(128),
                         ccds=np.int64(1), seed=np.int64(2))
    assert summary.n_sources == round(1000 * (128 / 2048) ** 2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"exposures": 0}, "exposures must be a positive integer"),
    ({"size": 100}, "size=100 is out of range"),
    ({"blurred_fraction": -0.1}, "blurred_fraction must be between 0 and 1"),
])
def test_pointed_bad_arguments_raise(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(SynthError, match=match):
        synthesize_pointed(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
