"""Opening exposures (plain, gzip, tile-compressed, DSS plates) and detecting on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
import astropy.units as u

from pipeline.ingest.detect import FLAG_SATURATED, detect, estimate_psf_fwhm, header_psf_fwhm
from pipeline.errors import BadExposure
from pipeline.ingest.fits_io import exposure_name, file_sha256, image_hdus, read_ccd


def _wcs(nx: int, ny: int, scale: float = 0.25, ra: float = 150.0, dec: float = 2.0) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    w.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]]) / 3600.0
    return w


def make_image(ny: int = 256, nx: int = 320, *, n: int = 40, fwhm: float = 3.5,
               profile: str = "gauss", seed: int = 0, sky: float = 200.0, noise: float = 4.0,
               margin: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of point sources; returns (image (ny, nx) float32, positions (n, 2) x, y)."""
    rng = np.random.default_rng(seed)
    image = np.full((ny, nx), sky, np.float64)
    pos = np.empty((0, 2))
    while len(pos) < n:  # isolated sources: at least 4 FWHM apart
        p = np.array([rng.uniform(margin, nx - margin), rng.uniform(margin, ny - margin)])
        if len(pos) == 0 or np.hypot(*(pos - p).T).min() > 4 * fwhm:
            pos = np.vstack([pos, p])
    flux = rng.uniform(3e3, 3e4, n)
    r = int(4 * fwhm) + 3
    for (x, y), f in zip(pos, flux):
        x0, y0 = int(x) - r, int(y) - r
        yy, xx = np.mgrid[max(y0, 0):min(y0 + 2 * r, ny), max(x0, 0):min(x0 + 2 * r, nx)]
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        if profile == "gauss":
            s = fwhm / 2.3548
            prof = np.exp(-r2 / (2 * s * s)) / (2 * np.pi * s * s)
        else:  # Moffat, beta = 3
            beta = 3.0
            alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
            prof = (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
        image[yy, xx] += f * prof
    image = rng.normal(image, noise)
    return image.astype(np.float32), pos


def write_exposure(path: Path, image: np.ndarray, **header) -> Path:
    hdr = _wcs(image.shape[1], image.shape[0]).to_header()
    for k, v in header.items():
        hdr[k] = v
    fits.PrimaryHDU(image, header=hdr).writeto(path, overwrite=True)
    return path


def test_exposure_name() -> None:
    assert exposure_name("/a/b/exp_0001.fits") == "exp_0001"
    assert exposure_name("exp.2.fits.fz") == "exp.2"
    assert exposure_name("x.FITS.GZ") == "x"
    assert exposure_name("y.fit") == "y"


def test_m13_plain_gzip_and_tile_compressed_agree(m13_files: tuple[Path, Path, Path]) -> None:
    plain, gz, fz = m13_files
    ref = read_ccd(plain, 0)
    assert ref.data.dtype == np.float32 and ref.data.dtype.isnative
    assert ref.wcs is not None and abs(ref.pixel_scale - 1.0) < 0.01
    assert image_hdus(gz) == ([0], [])
    assert image_hdus(fz) == ([1], [])
    np.testing.assert_array_equal(read_ccd(gz, 0).data, ref.data)
    np.testing.assert_array_equal(read_ccd(fz, 1).data, ref.data)  # RICE on int16 is lossless
    table, info = detect(ref.data, saturation=ref.saturation)
    assert len(table) > 30 and info["sky_rms"] > 0
    assert table["x"].between(0, 299).all() and table["y"].between(0, 299).all()
    sha, size = file_sha256(plain)
    assert size == plain.stat().st_size and len(sha) == 64


def test_dss_plate_wcs_and_central_galaxy(shared_data: Path) -> None:
    path = shared_data / "dss_galaxies" / "M061_dss.fits"
    ccd = read_ccd(path, 0)
    assert ccd.wcs is not None and ccd.wcs.has_celestial
    assert abs(ccd.pixel_scale - 1.7004) < 0.01
    table, _ = detect(ccd.data, saturation=ccd.saturation)
    ny, nx = ccd.data.shape
    d = np.hypot(table["x"] - (nx - 1) / 2, table["y"] - (ny - 1) / 2)
    central = table.loc[d.idxmin()]
    assert d.min() < 10 and central["flux"] == table["flux"].max()  # the galaxy, brightest
    assert central["radius"] > 3 * table["radius"].median()  # and far larger than the stars
    ra, dec = ccd.wcs.pixel_to_world_values(central["x"], central["y"])
    target = SkyCoord(ccd.header["OBJCTRA"], ccd.header["OBJCTDEC"], unit=(u.hourangle, u.deg))
    sep = SkyCoord(float(ra), float(dec), unit="deg").separation(target).arcsec
    assert sep < 10.0, f"central detection {sep:.1f} arcsec from OBJCTRA/OBJCTDEC"


@pytest.mark.parametrize("profile", ["gauss", "moffat"])
def test_detection_recovers_positions_and_psf(profile: str) -> None:
    image, pos = make_image(n=40, fwhm=4.0, profile=profile, seed=3)
    table, _ = detect(image)
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(table[["x", "y"]].to_numpy()).query(pos)
    assert (dist < 1.0).mean() >= 0.95
    assert np.median(dist) < 0.3
    psf, n = estimate_psf_fwhm(table)
    assert n >= 5 and abs(psf - 4.0) / 4.0 < 0.15, psf
    # radius: the half-light radius, FWHM / 2 for a Gaussian; a Moffat's wings make it larger
    radius = float(table["radius"].median())
    if profile == "gauss":
        assert abs(radius / 2.0 - 1) < 0.1, radius
    else:
        assert 2.0 < radius < 4.0, radius


def test_saturated_source_is_flagged() -> None:
    image, pos = make_image(n=5, seed=1)
    x, y = pos[0].astype(int)
    image[y - 1:y + 2, x - 1:x + 2] = 5e4
    table, _ = detect(image, saturation=5e4)
    near = np.hypot(table["x"] - x, table["y"] - y) < 2
    assert near.any() and (table.loc[near, "flags"] & FLAG_SATURATED).all()
    assert not (table.loc[~near, "flags"] & FLAG_SATURATED).any()


def test_header_psf_fallback() -> None:
    hdr = fits.Header({"PSF_FWHM": 0.9})
    assert header_psf_fwhm(hdr, 0.25) == pytest.approx(3.6)
    assert np.isnan(header_psf_fwhm(fits.Header(), 0.25))
    psf, n = estimate_psf_fwhm(detect(make_image(n=2, seed=2)[0])[0])
    assert np.isnan(psf) and n < 5


def test_multi_extension_and_big_endian(tmp_path: Path) -> None:
    image, _ = make_image(64, 64, n=3)
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(image.astype(">f4"), name="CCD1"),
            fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))]),
            fits.ImageHDU(image * 2, name="CCD2")]
    path = tmp_path / "mef.fits"
    fits.HDUList(hdus).writeto(path)
    assert image_hdus(path) == ([1, 3], [])
    ccd = read_ccd(path, 3)
    assert ccd.data.dtype.isnative and ccd.wcs is None and np.isnan(ccd.pixel_scale)
    np.testing.assert_allclose(ccd.data, image * 2)


def test_bad_files_raise_bad_exposure(tmp_path: Path) -> None:
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(BadExposure, match=r"empty\.fits: empty file"):
        image_hdus(empty)
    text = tmp_path / "notes.fits"
    text.write_text("these are not pixels\n" * 20)
    with pytest.raises(BadExposure, match=r"notes\.fits: not a readable FITS"):
        image_hdus(text)
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column("a", "E", array=np.ones(3))])]).writeto(table)
    with pytest.raises(BadExposure, match=r"table\.fits: no image data"):
        image_hdus(table)
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.ones((3, 8, 8), np.float32)).writeto(cube)
    ccds, rejects = image_hdus(cube)
    assert ccds == [] and rejects[0]["hdu"] == 0 and "3-D" in rejects[0]["reason"]
    nan = tmp_path / "nan.fits"
    fits.PrimaryHDU(np.full((8, 8), np.nan, np.float32)).writeto(nan)
    with pytest.raises(BadExposure, match=r"nan\.fits\[0\]: every pixel is NaN"):
        read_ccd(nan, 0)
    flat = tmp_path / "flat.fits"
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(flat)
    with pytest.raises(BadExposure, match=r"flat\.fits\[0\]: constant image"):
        read_ccd(flat, 0)
    good, _ = make_image(128, 128, n=3)
    truncated = tmp_path / "truncated.fits"
    write_exposure(truncated, good)
    truncated.write_bytes(truncated.read_bytes()[: 2880 + 20000])
    with pytest.raises(BadExposure, match=r"truncated\.fits"):
        read_ccd(truncated, 0)
