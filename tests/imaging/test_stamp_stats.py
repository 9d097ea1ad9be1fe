"""Per-stamp statistics stored at write time (``pipeline.imaging.stamp_stats``) and their readers."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.imaging.blur_score import apparent_fwhm
from pipeline.errors import StoreError
from pipeline.imaging.preprocess import DEFAULT_STRETCH, background_noise, prepare
from pipeline.imaging.stamp_stats import STAMP_STATS, stamp_statistics
from pipeline.store import create_store, open_store, pack_source_id, write_chunk


def _table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    t = pd.DataFrame({"exposure": ["exp_0000"] * n, "ccd": np.zeros(n, np.int16),
                      "x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n),
                      "ra": rng.uniform(10, 11, n), "dec": rng.uniform(-1, 1, n)})
    for name in ("flux", "a", "b", "theta", "fwhm", "psf_fwhm", "sky", "sky_rms", "snr"):
        t[name] = np.ones(n, np.float32)
    t["flags"] = np.zeros(n, np.int32)
    t["source_id"] = pack_source_id(t["exposure"], t["ccd"], np.arange(n))
    return t


def _stamps(n: int, stamp: int = 32, bands: int = 1) -> np.ndarray:
    """Gaussian sources of growing width on a sloped background with noise; one off-edge stamp."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:stamp, :stamp] - stamp // 2
    sigma = np.linspace(1.0, 4.0, n)[:, None, None, None]
    img = 200.0 * np.exp(-(xx**2 + yy**2) / (2 * sigma**2)) + 5.0 + 0.05 * xx
    img = img + rng.normal(0, 2.0, (n, bands, stamp, stamp))
    img = img.astype(np.float32)
    img[0, :, :, :5] = np.nan  # a stamp off the image edge
    return img


def _write(path: Path, images: np.ndarray, chunk: int, **kw) -> None:
    n, nb, stamp, _ = images.shape
    create_store(path, _table(n), stamp=stamp, bands=[f"b{i}" for i in range(nb)],
                 chunk_sources=chunk, pixel_scale=0.25, inputs=[], rejects=[], **kw)
    for start in range(0, n, chunk):
        write_chunk(path, start, images[start:start + chunk])


@pytest.mark.parametrize("bands", [1, 2])
def test_written_chunks_carry_the_statistics_of_their_stamps(tmp_path: Path, bands: int) -> None:
    images = _stamps(10, bands=bands)
    _write(tmp_path / "s.zarr", images, chunk=4)
    ds = open_store(tmp_path / "s.zarr")
    bg, noise = background_noise(images)
    np.testing.assert_array_equal(ds["stamp_bg"].values, bg.numpy())
    np.testing.assert_array_equal(ds["stamp_noise"].values, noise.numpy())
    np.testing.assert_array_equal(ds["stamp_fwhm"].values, apparent_fwhm(images))
    assert ds["stamp_bg"].dims == ("source", "band") and ds["stamp_fwhm"].dims == ("source",)
    # the measurements mean something: the background slope's median is ~5, widths grow
    assert np.all(np.abs(ds["stamp_bg"].values[1:] - 5.0) < 2.0)
    assert np.all(np.diff(ds["stamp_fwhm"].values[1:]) > 0)
    assert all(ds[name].chunks[0] == ds["image"].chunks[0] for name in STAMP_STATS)


def test_image_compression_follows_the_config(tmp_path: Path) -> None:
    images = _stamps(6)
    _write(tmp_path / "plain.zarr", images, chunk=3)
    with dask.config.set({"skysieve.ingest.image-compression": "zstd"}):
        _write(tmp_path / "zstd.zarr", images, chunk=3)

    def codecs(path: Path) -> list[str]:
        meta = json.loads((path / "image" / "zarr.json").read_text())
        return [c["name"] for c in meta["codecs"]]

    assert "zstd" not in codecs(tmp_path / "plain.zarr")
    assert "zstd" in codecs(tmp_path / "zstd.zarr")
    for name in ("plain.zarr", "zstd.zarr"):
        np.testing.assert_array_equal(open_store(tmp_path / name)["image"].values, images)
    with pytest.raises(StoreError, match="ingest.image-compression is 'lz4'.*none, zstd"):
        _write(tmp_path / "bad.zarr", images, chunk=3, image_compression="lz4")


def test_prepare_with_stored_statistics_equals_measuring_them() -> None:
    images = _stamps(300, bands=2)  # > one block of prepare's CPU loop
    stats = stamp_statistics(images)
    for size in (32, 24):
        want = prepare(images, stretch=DEFAULT_STRETCH, image_size=size)
        got = prepare(images, stretch=DEFAULT_STRETCH, image_size=size,
                      background=stats["stamp_bg"], noise=stats["stamp_noise"])
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="both background and noise"):
        prepare(images, stretch=None, image_size=32, background=stats["stamp_bg"])
    with pytest.raises(ValueError, match=r"noise has shape \(300, 1\), expected \(300, 2\)"):
        prepare(images, stretch=None, image_size=32, background=stats["stamp_bg"],
                noise=stats["stamp_noise"][:, :1])
