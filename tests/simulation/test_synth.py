"""The synthetic survey: real FITS files, real WCS, real Parquet truth, deterministic."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from pipeline.errors import SkysieveError, SynthError
from pipeline.simulation.survey import CLASSES, SynthSummary, synthesize

HEADER_KEYS = ("PIXSCALE", "PSF_FWHM", "SEEING", "GAIN", "RDNOISE", "SATURATE", "SKYLEVEL",
               "EXPTIME", "MAGZP", "FILTER", "BLURRED", "OBJECT", "SEED")
TRUTH_DTYPES = {"id": "int64", "exposure": "str", "ccd": "int64", "x": "float64",
                "y": "float64", "ra": "float64", "dec": "float64", "class": "str",
                "flux": "float64", "mag": "float64", "size": "float64",
                "psf_fwhm": "float64", "blurred": "bool"}
GALAXIES = ("elliptical", "lenticular", "spiral", "irregular")


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """Two 512^2 exposures (one blurred), ~60 sources each."""
    return synthesize(tmp_path_factory.mktemp("survey"), exposures=2, size=512, seed=7,
                      blurred_fraction=0.5)


@pytest.fixture(scope="module")
def truth(survey: SynthSummary) -> pd.DataFrame:
    return pd.read_parquet(survey.truth)


def _pixel_sigma(header: fits.Header) -> float:
    """Noise of one sky pixel in ADU."""
    gain = header["GAIN"]
    return float(np.sqrt(header["SKYLEVEL"] * gain + header["RDNOISE"] ** 2) / gain)


def test_files_open_with_headers(survey: SynthSummary) -> None:
    assert [p.name for p in survey.files] == ["exp_0000.fits", "exp_0001.fits"]
    for path in survey.files:
        with fits.open(path) as hdul:
            assert len(hdul) == 1
            data, header = hdul[0].data, hdul[0].header
            assert data.dtype == np.dtype(">f4") and data.shape == (512, 512)
            assert np.isfinite(data).all()
            missing = [k for k in HEADER_KEYS if k not in header]
            assert not missing, f"{path.name}: missing header keys {missing}"
            assert 0.2 <= header["PIXSCALE"] <= 0.3
            assert header["FILTER"] == "r" and header["SEED"] == 7
            assert isinstance(header["BLURRED"], bool)
            assert header["SATURATE"] > header["SKYLEVEL"] > 0
            assert header["CTYPE1"] == "RA---TAN" and header["CTYPE2"] == "DEC--TAN"
            # The sky is not subtracted: the median pixel sits near SKYLEVEL.
            assert abs(np.median(data) - header["SKYLEVEL"]) < 3 * _pixel_sigma(header)
            wcs = WCS(header)
            assert wcs.has_celestial
            scales = proj_plane_pixel_scales(wcs) * 3600
            np.testing.assert_allclose(scales, header["PIXSCALE"], rtol=1e-6)


def test_pointings_differ(survey: SynthSummary) -> None:
    centres = [fits.getheader(p)["CRVAL1"] for p in survey.files]
    assert centres[0] != centres[1]


def test_truth_columns_and_dtypes(survey: SynthSummary, truth: pd.DataFrame) -> None:
    assert list(truth.columns) == list(TRUTH_DTYPES)
    for column, dtype in TRUTH_DTYPES.items():
        if dtype == "str":
            assert pd.api.types.is_string_dtype(truth[column]), column
        else:
            assert truth[column].dtype == np.dtype(dtype), (column, truth[column].dtype)
    assert truth["id"].is_unique
    assert len(truth) == survey.n_sources == sum(survey.class_counts.values())
    assert set(truth["exposure"]) == {"exp_0000", "exp_0001"}
    assert (truth["ccd"] == 0).all()
    assert set(truth["class"]) <= set(CLASSES)
    assert ((truth["size"] == 0) == (truth["class"] == "star")).all()
    np.testing.assert_allclose(truth["mag"], 30 - 2.5 * np.log10(truth["flux"]), atol=0.3)
    inside = truth["x"].between(0, 511) & truth["y"].between(0, 511)
    assert inside.all()
    # Most sources are >= 8 px inside the edges; a few edge cases are allowed.
    margin = np.minimum.reduce([truth["x"], truth["y"], 511 - truth["x"], 511 - truth["y"]])
    assert (margin >= 8).mean() > 0.95


def test_all_classes_present(truth: pd.DataFrame) -> None:
    counts = truth["class"].value_counts()
    assert set(counts.index) == set(CLASSES)
    assert counts["star"] == counts.max()            # common...
    assert counts["star"] < 0.5 * len(truth)         # ...not overwhelming


def test_wcs_round_trip(survey: SynthSummary, truth: pd.DataFrame) -> None:
    for path in survey.files:
        rows = truth[truth["exposure"] == path.stem]
        wcs = WCS(fits.getheader(path))
        x, y = wcs.all_world2pix(rows["ra"], rows["dec"], 0)
        assert np.abs(x - rows["x"]).max() < 0.01
        assert np.abs(y - rows["y"]).max() < 0.01


def test_sources_stand_above_the_sky(survey: SynthSummary, truth: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    for path in survey.files:
        data, header = fits.getdata(path, header=True)
        sky, box_sigma = header["SKYLEVEL"], _pixel_sigma(header) / 3  # noise of a 3x3 mean
        padded = np.pad(data, 1, mode="edge")
        rows = truth[truth["exposure"] == path.stem]
        ix, iy = np.rint(rows["x"]).astype(int) + 1, np.rint(rows["y"]).astype(int) + 1
        boxes = np.array([padded[j - 1:j + 2, i - 1:i + 2].mean() for i, j in zip(ix, iy)])
        assert (boxes > sky + 3 * box_sigma).mean() > 0.95, path.name
        # Random empty-looking places sit at the sky level on average.
        far = []
        while len(far) < 200:
            i, j = rng.integers(10, 502, 2)
            if np.hypot(rows["x"] - i, rows["y"] - j).min() > 30:
                far.append(data[j - 1:j + 2, i - 1:i + 2].mean())
        assert abs(np.median(far) - sky) < 2 * box_sigma


def test_saturated_stars(survey: SynthSummary, truth: pd.DataFrame) -> None:
    for path in survey.files:
        data, header = fits.getdata(path, header=True)
        assert data.max() == np.float32(header["SATURATE"])
        ys, xs = np.nonzero(data >= header["SATURATE"])
        stars = truth[(truth["exposure"] == path.stem) & (truth["class"] == "star")]
        # Every saturated pixel belongs to a bright star.
        d = np.hypot(xs[:, None] - stars["x"].to_numpy(), ys[:, None] - stars["y"].to_numpy())
        nearest = stars["mag"].to_numpy()[d.argmin(axis=1)]
        assert (nearest < 15).all()


def _star_widths(data: np.ndarray, sky: float, stars: pd.DataFrame) -> np.ndarray:
    """Second-moment sigma (px) of isolated, unsaturated stars."""
    widths = []
    for x, y in zip(stars["x"], stars["y"]):
        ix, iy = int(round(x)), int(round(y))
        if not (10 <= ix < data.shape[1] - 10 and 10 <= iy < data.shape[0] - 10):
            continue
        box = data[iy - 7:iy + 8, ix - 7:ix + 8] - sky
        yy, xx = np.mgrid[-7:8, -7:8]
        w = np.clip(box, 0, None)
        r2 = ((xx + ix - x) ** 2 + (yy + iy - y) ** 2)
        widths.append(np.sqrt((w * r2).sum() / w.sum() / 2))
    return np.array(widths)


def test_blurred_exposures_have_wider_psf(survey: SynthSummary, truth: pd.DataFrame) -> None:
    headers = {p.stem: fits.getheader(p) for p in survey.files}
    blurred = {k for k, h in headers.items() if h["BLURRED"]}
    assert len(blurred) == 1                                  # 0.5 of 2 exposures
    sharp = set(headers) - blurred
    assert min(headers[k]["PSF_FWHM"] for k in blurred) > \
        max(headers[k]["PSF_FWHM"] for k in sharp)
    for stem, header in headers.items():
        rows = truth[truth["exposure"] == stem]
        assert (rows["blurred"] == header["BLURRED"]).all()
        # Truth FWHM is the local PSF: within the mild field variation of the header's.
        assert np.allclose(rows["psf_fwhm"], header["PSF_FWHM"], rtol=0.1)
    # The pixels agree: stars really are wider in the blurred exposure.
    width = {}
    for path in survey.files:
        data, header = fits.getdata(path, header=True)
        stars = truth[(truth["exposure"] == path.stem) & (truth["class"] == "star")
                      & truth["mag"].between(16, 19.5)]
        width[path.stem] = np.median(_star_widths(data, header["SKYLEVEL"], stars))
    (b,) = blurred
    (s,) = sharp
    assert width[b] > 1.4 * width[s]


def test_class_not_given_away_by_size_or_flux(truth: pd.DataFrame) -> None:
    size = {c: truth.loc[truth["class"] == c, "size"] for c in GALAXIES}
    for a, b in itertools.combinations(GALAXIES, 2):
        # No single threshold on size separates any two galaxy classes.
        assert max(size[a].min(), size[b].min()) < min(size[a].max(), size[b].max()), (a, b)
    # Interquartile ranges overlap substantially for at least two pairs.
    iqr = {c: (s.quantile(0.25), s.quantile(0.75)) for c, s in size.items()}
    overlaps = [min(iqr[a][1], iqr[b][1]) - max(iqr[a][0], iqr[b][0]) for a, b in
                itertools.combinations(GALAXIES, 2)]
    assert sum(o > 0 for o in overlaps) >= 2
    # Flux alone does not separate stars from any other class either.
    flux = {c: truth.loc[truth["class"] == c, "flux"] for c in CLASSES}
    for c in CLASSES[1:]:
        assert flux["star"].min() < flux[c].max() and flux[c].min() < flux["star"].max(), c


def test_deterministic_for_a_seed(survey: SynthSummary, truth: pd.DataFrame,
                                  tmp_path: Path) -> None:
    again = synthesize(tmp_path / "again", exposures=2, size=512, seed=7, blurred_fraction=0.5)
    for a, b in zip(survey.files, again.files):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))
        assert fits.getheader(a) == fits.getheader(b)
    pd.testing.assert_frame_equal(truth, pd.read_parquet(again.truth))
    other = synthesize(tmp_path / "other", exposures=2, size=512, seed=8, blurred_fraction=0.5)
    assert not np.array_equal(fits.getdata(survey.files[0]), fits.getdata(other.files[0]))
    assert not pd.read_parquet(other.truth)[["x", "y"]].equals(truth[["x", "y"]])


def test_processes_do_not_change_the_output(tmp_path: Path) -> None:
    one = synthesize(tmp_path / "one", exposures=2, size=128, seed=3, processes=1)
    two = synthesize(tmp_path / "two", exposures=2, size=128, seed=3, processes=2)
    for a, b in zip(one.files, two.files):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))
    pd.testing.assert_frame_equal(pd.read_parquet(one.truth), pd.read_parquet(two.truth))


def test_multi_ccd_layout(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, exposures=1, size=256, ccds=4, seed=2, sources=40)
    truth = pd.read_parquet(summary.truth)
    assert len(truth) == 40 and set(truth["ccd"]) == {1, 2, 3, 4}
    with fits.open(summary.files[0]) as hdul:
        assert len(hdul) == 5 and hdul[0].data is None
        assert hdul[0].header["BLURRED"] in (True, False) and hdul[0].header["NCCD"] == 4
        assert [h.name for h in hdul[1:]] == ["CCD1", "CCD2", "CCD3", "CCD4"]
        wcses = {k: WCS(hdul[k].header) for k in range(1, 5)}
        for k in range(1, 5):
            assert hdul[k].data.shape == (256, 256)
            assert all(key in hdul[k].header for key in HEADER_KEYS)
    for k, wcs in wcses.items():
        rows = truth[truth["ccd"] == k]
        x, y = wcs.all_world2pix(rows["ra"], rows["dec"], 0)
        assert np.abs(x - rows["x"]).max() < 0.01 and np.abs(y - rows["y"]).max() < 0.01
        # CCDs tile the sky: a source of CCD k falls outside every other CCD.
        for other, owcs in wcses.items():
            if other != k:
                ox, oy = owcs.all_world2pix(rows["ra"], rows["dec"], 0)
                assert not ((ox > -0.5) & (ox < 255.5) & (oy > -0.5) & (oy < 255.5)).any()
    # Neighbouring CCDs: centres one CCD plus a gap apart on the sky.
    c1 = wcses[1].pixel_to_world(127.5, 127.5)
    c2 = wcses[2].pixel_to_world(127.5, 127.5)
    sep_px = c1.separation(c2).arcsec / 0.263
    assert 256 < sep_px < 256 * 1.5


def test_default_density_scales_with_area(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, exposures=1, size=256, seed=1)
    assert summary.n_sources == round(1000 * (256 / 2048) ** 2)
    text = summary.describe()
    assert "1 exposure x 1 CCD of 256x256 px" in text and f"{summary.n_sources:,} sources" in text
    assert all(name in text for name in CLASSES)


def test_stale_exposures_are_removed(tmp_path: Path) -> None:
    synthesize(tmp_path, exposures=2, size=128, seed=1)
    summary = synthesize(tmp_path, exposures=1, size=128, seed=1)
    assert sorted(p.name for p in tmp_path.glob("exp_*.fits")) == ["exp_0000.fits"]
    assert set(pd.read_parquet(summary.truth)["exposure"]) == {"exp_0000"}


def test_a_prefix_names_the_files_and_the_truth_not_the_pixels(tmp_path: Path) -> None:
    plain = synthesize(tmp_path / "plain", exposures=2, size=128, seed=5)
    named = synthesize(tmp_path / "named", exposures=2, size=128, seed=5, prefix="w_")
    assert [f.name for f in named.files] == ["w_exp_0000.fits", "w_exp_0001.fits"]
    truth = pd.read_parquet(named.truth)
    assert set(truth["exposure"]) == {"w_exp_0000", "w_exp_0001"}
    for a, b in zip(plain.files, named.files):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))
    plain_truth = pd.read_parquet(plain.truth)
    assert (truth["exposure"] == "w_" + plain_truth["exposure"]).all()
    pd.testing.assert_frame_equal(truth.drop(columns="exposure"),
                                  plain_truth.drop(columns="exposure"))
    # a smaller rerun removes its own stale exposures, not another prefix's
    (tmp_path / "named" / "exp_0005.fits").write_bytes(b"someone else's")
    synthesize(tmp_path / "named", exposures=1, size=128, seed=5, prefix="w_")
    assert sorted(p.name for p in (tmp_path / "named").glob("*.fits")) == [
        "exp_0005.fits", "w_exp_0000.fits"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"exposures": 0}, "exposures must be a positive integer, got 0"),
    ({"exposures": 10000}, "exposures=10000 is out of range"),
    ({"size": 64}, "size=64"),
    ({"size": 256.0}, "size=256.0"),
    ({"ccds": 0}, "ccds must be a positive integer, got 0"),
    ({"ccds": 65}, "ccds=65 is out of range"),
    ({"sources": 0}, "sources=0"),
    ({"sources": 10**9}, "sources=1000000000"),
    ({"seed": -1}, "seed=-1"),
    ({"blurred_fraction": 1.5}, "blurred_fraction must be between 0 and 1, got 1.5"),
    ({"blurred_fraction": float("nan")}, "blurred_fraction must be between 0 and 1"),
    ({"processes": 0}, "processes must be a positive integer, got 0"),
    ({"processes": 2.0}, "processes must be a positive integer, got 2.0"),
    ({"prefix": "../w_"}, "prefix='../w_' must be letters, digits"),
    ({"prefix": ".hidden"}, "prefix='.hidden'"),
])
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(SynthError, match=match) as info:
        synthesize(tmp_path / "out", **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SkysieveError)
    assert not (tmp_path / "out").exists()   # refused before anything is written


def test_out_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("not a folder")
    with pytest.raises(SynthError, match="file.txt: exists and is not a folder"):
        synthesize(target, exposures=1, size=128)
