"""The wide domain (domain randomisation) and the survey domain it must leave unchanged."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import SynthError
from pipeline.simulation import responses, wide, wide_exposure
from pipeline.simulation.survey import CLASSES, SynthSummary, synthesize

#: Keys every wide exposure carries (pipeline/simulation/wide.py documents them).
WIDE_KEYS = ("DOMAIN", "PIXSCALE", "PSF_FWHM", "PSFPIX", "SEEING", "PSFMODEL", "PSFBETA",
             "PSFG1", "PSFG2", "PSFOBSC", "SPIKES", "SPIKEANG", "SPIKEWID", "HALOFRAC",
             "HALORAD", "HALOBETA", "RESPONSE", "GAIN", "RDNOISE", "FULLWELL", "BLEED",
             "SATURATE", "SATLIN", "SKYLEVEL", "SKYLIN", "SKYSUB", "EXPTIME", "MAGZP",
             "MAGLIM", "MAGSAT", "DEPTH", "DENSITY", "NSOURCE", "NSATSTAR", "NCOSMIC",
             "PLCURVE", "PLDMAX", "PLFOG", "PLXSAT", "PLGAMMA", "PLCLIP", "PLGRAIN", "PLUNIT",
             "JPEGQ", "STRETCH", "BLACKPT", "WHITEPT", "SOFTEN", "STRGAMMA", "FILTER",
             "BLURRED", "OBJECT", "SEED")


def _digest(summary: SynthSummary) -> str:
    """sha256 of every HDU's pixels and header cards and of the truth table's values."""
    h = hashlib.sha256()
    for path in summary.files:
        with fits.open(path) as hdul:
            for hdu in hdul:
                if hdu.data is not None:
                    h.update(np.ascontiguousarray(hdu.data, dtype=">f4").tobytes())
                h.update(repr([(k, hdu.header[k]) for k in hdu.header]).encode())
    truth = pd.read_parquet(summary.truth)
    h.update(pd.util.hash_pandas_object(truth, index=False).to_numpy().tobytes())
    return h.hexdigest()


def test_survey_domain_is_unchanged(tmp_path: Path) -> None:
    # The digests of the code before the wide domain existed (same numpy/GalSim):
    # the demo and the bundled model's training survey depend on these pixels.
    one = synthesize(tmp_path / "a", exposures=2, size=128, seed=5, blurred_fraction=0.5)
    assert _digest(one) == "83f7a0d94c7dfae6fdced38730017d8ad75ec7dbf591f36fe65b9eba1bd820e6"
    two = synthesize(tmp_path / "b", exposures=1, size=128, ccds=2, seed=6, domain="survey")
    assert _digest(two) == "cbce649e87709b5df4c5e00b8c0bb8f325b6acea83ad611c504e864166aa89f8"
    assert one.domain == "survey" and one.conditions == []
    assert "DOMAIN" not in fits.getheader(one.files[0])


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """Five small wide exposures."""
    return synthesize(tmp_path_factory.mktemp("wide"), exposures=5, size=160, seed=3,
                      domain="wide", processes=1)


@pytest.fixture(scope="module")
def truth(survey: SynthSummary) -> pd.DataFrame:
    return pd.read_parquet(survey.truth)


def test_headers_carry_the_drawn_parameters(survey: SynthSummary) -> None:
    headers = [fits.getheader(p) for p in survey.files]
    for path, header in zip(survey.files, headers):
        missing = [k for k in WIDE_KEYS if k not in header]
        assert not missing, f"{path.name}: missing {missing}"
        assert header["DOMAIN"] == "wide" and header["SEED"] == 3
        assert 0.04 <= header["PIXSCALE"] <= 1.7
        assert 1.3 <= header["PSFPIX"] <= 8.0
        assert header["PSF_FWHM"] == pytest.approx(header["PSFPIX"] * header["PIXSCALE"],
                                                   rel=1e-3)
        assert header["RESPONSE"] in ("ccd", "plate", "ccd+jpeg", "plate+jpeg")
        assert header["PSFMODEL"] in ("moffat", "kolmogorov", "airy")
        assert header["MAGSAT"] < header["MAGLIM"]
        # The WCS matches the drawn pixel scale.
        scales = proj_plane_pixel_scales(WCS(header)) * 3600
        np.testing.assert_allclose(scales, header["PIXSCALE"], rtol=1e-6)
    # Drawn per exposure: they vary.
    for key in ("PIXSCALE", "PSFPIX", "SKYLIN", "MAGZP", "DENSITY", "CRVAL1"):
        assert len({h[key] for h in headers}) == len(headers), key


def test_truth_labels_every_source(survey: SynthSummary, truth: pd.DataFrame) -> None:
    assert set(truth["class"]) <= set(CLASSES) and truth["class"].notna().all()
    assert truth["id"].is_unique and len(truth) == survey.n_sources
    for path in survey.files:
        header = fits.getheader(path)
        assert (truth["exposure"] == path.stem).sum() == header["NSOURCE"]
    assert {"saturated", "pixscale", "response"} <= set(truth.columns)
    assert truth.loc[truth["class"] == "star", "size"].eq(0).all()
    assert truth.loc[truth["class"] != "star", "size"].gt(0).all()
    # Galaxy sizes follow the PSF: 0.6-6 times its FWHM.
    ext = truth[truth["class"] != "star"]
    ratio = ext["size"] / ext["psf_fwhm"]
    assert ratio.between(0.6 - 1e-9, 6 + 1e-9).all()
    # Every exposure has saturated stars, labelled star.
    sat = truth[truth["saturated"] & (truth["class"] == "star")]
    assert set(sat["exposure"]) == {p.stem for p in survey.files}


def test_truth_metadata_records_each_exposure(survey: SynthSummary) -> None:
    meta = json.loads(pq.read_schema(survey.truth).metadata[b"skysieve"])
    assert meta["domain"] == "wide" and meta["classes"] == list(CLASSES)
    exposures = meta["exposures"]
    assert sorted(exposures) == [p.stem for p in survey.files]
    for path in survey.files:
        header, cond = fits.getheader(path), exposures[path.stem]
        assert cond["pixscale"] == pytest.approx(header["PIXSCALE"], rel=1e-5)
        assert cond["response"] == header["RESPONSE"]
        assert cond["magzp"] == pytest.approx(header["MAGZP"], abs=1e-3)
    assert "pixel scale" in survey.describe() and "responses" in survey.describe()


def test_wcs_round_trip(survey: SynthSummary, truth: pd.DataFrame) -> None:
    for path in survey.files:
        rows = truth[truth["exposure"] == path.stem]
        ra, dec = WCS(fits.getheader(path)).all_pix2world(rows["x"], rows["y"], 0)
        np.testing.assert_allclose(ra, rows["ra"], atol=1e-9)
        np.testing.assert_allclose(dec, rows["dec"], atol=1e-9)


def test_wide_is_deterministic(tmp_path: Path) -> None:
    one, two, other = (synthesize(tmp_path / name, exposures=2, size=128, seed=seed,
                                  domain="wide", processes=1)
                       for name, seed in (("one", 4), ("two", 4), ("other", 5)))
    for a, b in zip(one.files, two.files):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))
        assert fits.getheader(a) == fits.getheader(b)
    pd.testing.assert_frame_equal(pd.read_parquet(one.truth), pd.read_parquet(two.truth))
    assert fits.getheader(one.files[0])["PIXSCALE"] != fits.getheader(other.files[0])["PIXSCALE"]


# --------------------------------------------------------------------------- forced kinds


def _conditions(kind: str) -> wide.WideConditions:
    """The first drawn conditions of ``kind`` (local seeds; independent of the survey's)."""
    for i in range(500):
        cond = wide.draw_conditions(np.random.default_rng(i), i, False)
        if {"plate": cond.detector == "plate" and not cond.jpeg,
            "ccd": cond.detector == "ccd" and not cond.jpeg and cond.psf_model != "airy",
            "jpeg": cond.jpeg,
            "airy": cond.psf_model == "airy" and not cond.jpeg}[kind]:
            return cond
    raise AssertionError(f"no {kind} exposure drawn")


def _render(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cond: wide.WideConditions,
            size: int = 128, n: int = 12) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Render one exposure with conditions ``cond``; return pixels, header and result."""
    monkeypatch.setattr(wide_exposure, "draw_conditions",
                        lambda rng, index, blurred, preview=False: copy.deepcopy(cond))
    job = SimpleNamespace(index=0, stem="exp_0000", out_dir=str(tmp_path), size=size, ccds=1,
                          per_ccd=(n,), seed=1, blurred=False, domain="wide")
    result = wide_exposure.render_exposure(job)
    with fits.open(tmp_path / "exp_0000.fits") as hdul:
        return hdul[0].data.astype(np.float64), hdul[0].header, result


def test_jpeg_is_quantised_to_256_levels_then_compressed(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    seen: list[tuple[np.ndarray, int]] = []
    real = wide_exposure.jpeg_encode

    def spy(levels: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
        seen.append((levels.copy(), quality))
        return real(levels, quality)

    monkeypatch.setattr(wide_exposure, "jpeg_encode", spy)
    data, header, _ = _render(monkeypatch, tmp_path, _conditions("jpeg"))
    (levels, quality), = seen
    assert levels.dtype == np.uint8 and np.unique(levels).size <= 256
    assert 40 <= quality <= 95 and header["JPEGQ"] == quality
    assert "+jpeg" in header["RESPONSE"] and header["SATURATE"] == 255.0
    # Stored as float, the decoded 8-bit values: integers 0-255, not the levels themselves.
    assert fits.getdata(tmp_path / "exp_0000.fits").dtype.kind == "f"
    assert np.array_equal(data, np.rint(data)) and data.min() >= 0 and data.max() <= 255
    assert not np.array_equal(data, levels.astype(np.float64))   # lossy compression
    assert header["WHITEPT"] > header["BLACKPT"]


def test_jpeg_encode_round_trip() -> None:
    levels = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    out, n_bytes = responses.jpeg_encode(levels, 90)
    assert out.shape == levels.shape and out.dtype == np.float32
    assert 0 < n_bytes < levels.size and np.abs(out - levels).max() < 12
    with pytest.raises(ValueError, match="uint8"):
        responses.jpeg_encode(levels.astype(np.float32), 90)
    p = {"stretch": "asinh", "black": 10.0, "white": 100.0, "soften": 5.0, "gamma": 0.5}
    u8 = responses.stretch_to_uint8(np.linspace(0, 200, 1000), p)
    assert u8.dtype == np.uint8 and u8[0] == 0 and u8[-1] == 255
    assert np.all(np.diff(u8.astype(int)) >= 0)


@pytest.mark.parametrize("kind", ["ccd", "plate", "airy"])
def test_saturation_level_is_respected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       kind: str) -> None:
    data, header, result = _render(monkeypatch, tmp_path, _conditions(kind), size=160, n=30)
    assert data.max() <= header["SATURATE"] * (1 + 1e-6)
    truth = pd.DataFrame(result["truth"])
    sat = truth[truth["saturated"] & (truth["class"] == "star")]
    assert len(sat) >= 1 and header["NSATSTAR"] == len(sat)
    # Flat-topped: a saturated star's core sits at the saturation level.
    inside = sat[sat["x"].between(2, 157) & sat["y"].between(2, 157)]
    assert len(inside) >= 1
    for _, star in inside.iterrows():
        x, y = int(round(star["x"])), int(round(star["y"]))
        assert data[y - 1:y + 2, x - 1:x + 2].max() >= 0.999 * header["SATURATE"]
    if kind == "plate":
        assert header["PLCURVE"] in responses.PLATE_CURVES and header["NCOSMIC"] == 0
        assert header["SATURATE"] == pytest.approx(header["PLCLIP"] * header["PLUNIT"],
                                                   rel=1e-3)
    else:
        assert header["BLEED"] is True and header["FULLWELL"] > 0
    if kind == "airy":
        assert header["SPIKES"] == 4 and header["PSFOBSC"] > 0


def test_bleed_columns_conserve_charge_along_columns() -> None:
    e = np.zeros((40, 5), dtype=np.float32)
    e[18:22, 2] = 5000.0
    e[20, 1] = 1500.0
    total = float(e.sum())
    n = responses.bleed_columns(e, full_well=1000.0)
    assert n == 2 and e.max() <= 1000.0
    assert float(e.sum()) == pytest.approx(total)
    assert (e[:, 2] == 1000.0).sum() == 20 and e[:, [0, 3, 4]].sum() == 0
    assert responses.bleed_columns(e, full_well=1000.0) == 0


def test_cosmic_rays_and_plate_curve() -> None:
    image = np.zeros((64, 64), dtype=np.float32)
    responses.add_cosmic_rays(np.random.default_rng(0), image, 10)
    assert 10 <= np.count_nonzero(image) <= 10 * 21 and image.min() >= 0
    for curve in responses.PLATE_CURVES:
        p = {"curve": curve, "fog": 0.2, "dmax": 3.0, "xsat": 100.0, "gamma": 2.0}
        d = responses.plate_density(np.array([0.0, 10.0, 100.0, 1e3, 1e5]), p)
        assert np.all(np.diff(d) > 0) and d[0] == pytest.approx(0.2)
        assert d[-1] == pytest.approx(3.2, abs=1e-3)        # saturates at fog + dmax


def test_star_stamps_match_galsim() -> None:
    import galsim

    psf = galsim.Moffat(beta=2.5, fwhm=0.6)
    stars = wide.StarStamps(psf, 0.4, half=31)
    image = np.zeros((81, 81), dtype=np.float32)
    x, y = stars.add(image, 40.3, 39.8, 1.0, 30)
    assert (x, y) == (40.25, 39.75)
    ref = galsim.ImageF(81, 81, scale=0.4)
    psf.drawImage(image=ref, offset=(x - 40, y - 40))
    assert np.abs(image - ref.array).max() < 0.02 * ref.array.max()
    assert image.sum() == pytest.approx(1.0, abs=0.01)


def test_cli_and_bad_domain(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "w"), "--domain", "wide",
                                      "--exposures", "1", "--size", "128", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "wide-domain" in result.output
    assert fits.getheader(tmp_path / "w" / "exp_0000.fits")["DOMAIN"] == "wide"
    bad = CliRunner().invoke(cli, ["synth", str(tmp_path / "p"), "--domain", "wide",
                                   "--pointed"])
    assert bad.exit_code != 0 and "--pointed" in bad.output
    with pytest.raises(SynthError, match="domain"):
        synthesize(tmp_path / "x", exposures=1, size=128, domain="real")


def test_preview_domain_makes_every_exposure_a_preview_jpeg(tmp_path: Path) -> None:
    # The wide draw is untouched by the option: a seed's conditions are the same
    # with preview=False as with the call that has no such argument.
    for i in range(40):
        plain = wide.draw_conditions(np.random.default_rng(i), i, False)
        assert plain == wide.draw_conditions(np.random.default_rng(i), i, False, preview=False)
    drawn = [wide.draw_conditions(np.random.default_rng(i), i, i % 3 == 0, preview=True)
             for i in range(40)]
    assert all(c.jpeg for c in drawn)
    # Previews: white point 4-15 sigma above the sky, so bright cores clip flat.
    assert all(4.0 <= c.jpeg_params["white_sigma"] <= 15.0 for c in drawn)
    assert {c.detector for c in drawn} == {"ccd", "plate"}
    # Wide draws far fewer previews (45% JPEGs, 45% of those previews).
    wide_previews = sum(c.jpeg and c.jpeg_params["white_sigma"] <= 15.0 for c in (
        wide.draw_conditions(np.random.default_rng(i), i, False) for i in range(40)))
    assert wide_previews < 20
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "p"), "--domain", "preview",
                                      "--exposures", "2", "--size", "128", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "preview-domain" in result.output
    meta = json.loads(pq.read_schema(tmp_path / "p" / "truth.parquet").metadata[b"skysieve"])
    assert meta["domain"] == "preview"
    for name in ("exp_0000", "exp_0001"):
        header = fits.getheader(tmp_path / "p" / f"{name}.fits")
        assert header["DOMAIN"] == "preview" and header["RESPONSE"].endswith("+jpeg")
        assert 4.0 <= meta["exposures"][name]["jpeg_params"]["white_sigma"] <= 15.0
