"""import-images: labelled PNG/JPEG cutouts -> the cutout store contract."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.ingest.detect import FLAG_EDGE
from pipeline.errors import ImageFolderError, SourceTableError, StoreError
from pipeline.ingest.images import import_images
from pipeline.store import describe, open_store, path_source_id, read_rejects


def _png(path: Path, array: np.ndarray, mode: str = "RGB") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    (img.convert(mode) if mode != img.mode else img).save(path)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_folder_with_odd_sizes_and_bad_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    rows = []
    a = rng.integers(0, 255, (32, 32, 3))
    rows.append(("star/a.png", "star", "f1", 10, 20, _png(folder / "star/a.png", a)))
    b = rng.integers(0, 255, (40, 40))
    rows.append(("galaxy/b.png", "galaxy", "f2", 5, 6, _png(folder / "galaxy/b.png", b, "L")))
    c = rng.integers(0, 255, (24, 30, 3))
    rows.append(("galaxy/c.png", "galaxy", "f1", 7, 8, _png(folder / "galaxy/c.png", c)))
    _png(folder / "star/d.png", a)
    rows.append(("star/d.png", "star", "f2", 1, 1, "0" * 32))  # md5 mismatch
    (folder / "star/e.png").write_text("not an image")
    rows.append(("star/e.png", "star", "f2", 1, 1, ""))
    rows.append(("../outside.png", "star", "f2", 1, 1, ""))
    rows.append(("star/missing.png", "star", "f2", 1, 1, ""))
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "label", "frame", "x", "y", "md5"]).to_csv(csv, index=False)

    out = tmp_path / "s.zarr"
    # colour (a, c) and greyscale (b) mixed: the store's bands must be chosen
    with pytest.raises(ImageFolderError, match=r"2 colour and 1 greyscale.*--bands grey"):
        import_images(folder, csv, out, stamp=32, chunk_sources=2)
    assert not out.exists()
    summary = import_images(folder, csv, out, stamp=32, chunk_sources=2, bands="grey")
    assert summary.n_sources == 3 and summary.n_exposures == 2 and summary.n_chunks == 2
    reasons = read_rejects(out)["reason"].tolist()
    assert len(reasons) == 4
    assert any("MD5 mismatch" in r for r in reasons)
    assert any("not a readable image" in r for r in reasons)
    assert any("outside the image folder" in r for r in reasons)
    assert any("cannot read" in r for r in reasons)

    ds = open_store(out)
    assert ds.attrs["bands"] == ["grey"] and ds.attrs["classes"] == ["galaxy", "star"]
    assert ds["image"].chunks[0] == (2, 1)
    # sorted by exposure (frame) then path: f1 galaxy/c, f1 star/a, f2 galaxy/b
    assert ds["exposure"].values.astype(str).tolist() == ["f1", "f1", "f2"]
    rel = ["galaxy/c.png", "star/a.png", "galaxy/b.png"]
    assert ds["source_id"].values.tolist() == path_source_id(rel).tolist()
    assert ds["label"].values.astype(str).tolist() == ["galaxy", "star", "galaxy"]
    assert ds["x"].values.tolist() == [7.0, 10.0, 5.0]
    assert np.isnan(ds["ra"].values).all() and np.isnan(ds["psf_fwhm"].values).all()
    img = ds["image"].values[:, 0]
    sky = ds["sky"].values
    np.testing.assert_allclose(img[1] + sky[1], a.mean(axis=2), rtol=1e-6)  # mean of RGB
    np.testing.assert_allclose(img[2] + sky[2], b[4:36, 4:36], rtol=1e-6)  # centre crop
    # c (24 x 30) padded into 32 x 32: NaN border, flagged
    assert np.isnan(img[0, :4]).all() and np.isnan(img[0, :, :1]).all()
    np.testing.assert_allclose(img[0, 4:28, 1:31] + sky[0], c.mean(axis=2), rtol=1e-6)
    assert ds["flags"].values.tolist() == [FLAG_EDGE, 0, 0]
    assert "galaxy 2" in describe(out)

    with pytest.raises(StoreError, match="--overwrite"):
        import_images(folder, csv, out)


def test_bad_labels_csv(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"file": ["a.png"], "label": ["star"]}).to_csv(csv, index=False)
    with pytest.raises(SourceTableError, match=r"missing columns \['path'\]"):
        import_images(tmp_path, csv, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    with pytest.raises(ImageFolderError, match="not a directory of images"):
        import_images(tmp_path / "nowhere", csv, tmp_path / "s.zarr")
    with pytest.raises(ImageFolderError, match="stamp must be an integer from 4 to 1024"):
        import_images(tmp_path, csv, tmp_path / "s.zarr", stamp=2)
    with pytest.raises(ImageFolderError, match="chunk_sources must be an integer"):
        import_images(tmp_path, csv, tmp_path / "s.zarr", chunk_sources=0)


def test_killed_run_is_swept_and_a_failed_one_leaves_nothing(tmp_path: Path, stale_temporary,
                                                             fail_after_first_chunk) -> None:
    import pipeline.ingest.images as images

    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    rows = [(f"star/{k}.png", "star", _png(folder / f"star/{k}.png",
                                           rng.integers(0, 255, (16, 16, 3))))
            for k in range(3)]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["path", "label", "md5"]).to_csv(csv, index=False)

    out = tmp_path / "s.zarr"
    stale = stale_temporary(out)
    summary = import_images(folder, csv, out, chunk_sources=1)
    assert summary.n_sources == 3 and open_store(out)["image"].chunks[0] == (1, 1, 1)
    assert not stale.exists() and not list(tmp_path.glob(".s.zarr.*"))

    failed = tmp_path / "f.zarr"
    stale = stale_temporary(failed)
    fail_after_first_chunk(images)
    with pytest.raises(RuntimeError, match="part-way"):
        import_images(folder, csv, failed, chunk_sources=1)
    assert not failed.exists() and not stale.exists()
    assert not list(tmp_path.glob(".f.zarr.*"))  # neither the killed run's nor its own


def test_real_star_galaxy_subset(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "star_galaxy"
    labels = pd.read_csv(folder / "labels.csv")
    subset = pd.concat([labels[labels["label"] == "galaxy"].head(40),
                        labels[labels["label"] == "star"].head(60)])
    csv = tmp_path / "labels.csv"
    subset.to_csv(csv, index=False)
    summary = import_images(folder, csv, tmp_path / "sg.zarr")
    assert summary.rejects == [] and summary.n_sources == 100 and summary.stamp == 64
    ds = open_store(tmp_path / "sg.zarr")
    assert dict(pd.Series(ds["label"].values.astype(str)).value_counts()) == {"star": 60,
                                                                              "galaxy": 40}
    assert set(ds["exposure"].values.astype(str)) == set(subset["frame"].astype(str))
    img = ds["image"].values
    assert np.isfinite(img).all()
    # the labelled source sits at the centre: the centre is brighter than the sky ring
    centre = img[:, 0, 28:36, 28:36].mean(axis=(1, 2))
    assert (centre > 0).mean() > 0.9
    assert ds.attrs["bands"] == ["grey"]  # greyscale stored as RGB: one band
    # resolution-aware measurements: galaxies are larger than stars; frames have a PSF
    got = pd.DataFrame({"label": ds["label"].values.astype(str), "radius": ds["radius"].values,
                        "frame": ds["exposure"].values.astype(str),
                        "psf": ds["psf_fwhm"].values})
    assert got["radius"].notna().mean() > 0.95
    median = got.groupby("label")["radius"].median()
    assert median["galaxy"] > 1.2 * median["star"], median
    sizes = got.groupby("frame").size()
    big = got[got["frame"].isin(sizes[sizes >= 5].index)]
    assert big["psf"].notna().all() and big["psf"].between(1.0, 20.0).all()
    # the frames' PSF ellipticity: the trailed J1530 frame's stars are elongated (median
    # moments e ~ 0.19 in the whole set); most frames are rounder than that
    e = np.hypot(ds["psf_e1"].values, ds["psf_e2"].values)
    assert np.isfinite(e[got["frame"].isin(sizes[sizes >= 10].index).to_numpy()]).all()
    assert (e[np.isfinite(e)] < 0.6).all()


def _colour_folder(tmp_path: Path, n: int = 5, size: int = 32) -> tuple[Path, Path, list]:
    """``n`` RGB PNGs whose channels differ: R a bright disc, G a ramp, B flat noise."""
    rng = np.random.default_rng(5)
    folder, rows, arrays = tmp_path / "colour", [], []
    yy, xx = np.mgrid[:size, :size] - size // 2
    for k in range(n):
        rgb = np.stack([10 + 200 * np.exp(-(xx**2 + yy**2) / (2 * (1.5 + k) ** 2)),
                        np.tile(np.linspace(0, 120, size), (size, 1)),
                        rng.integers(20, 40, (size, size))], axis=2)
        rows.append((f"g/{k}.png", "galaxy", _png(folder / f"g/{k}.png", rgb)))
        arrays.append(rgb.astype(np.uint8).astype(np.float32))
    csv = tmp_path / "colour.csv"
    pd.DataFrame(rows, columns=["path", "label", "md5"]).to_csv(csv, index=False)
    return folder, csv, arrays


def test_colour_images_keep_their_channels_as_bands(tmp_path: Path) -> None:
    folder, csv, arrays = _colour_folder(tmp_path)
    summary = import_images(folder, csv, tmp_path / "rgb.zarr")
    ds = open_store(tmp_path / "rgb.zarr")
    assert summary.bands == ds.attrs["bands"] == ["R", "G", "B"]
    assert ds["image"].shape == (5, 3, 32, 32) and ds.attrs["band_channels"]["G"] == "G"
    img = ds["image"].values
    # each band minus its own ring median: the ramp (G) keeps its shape, the disc (R) peaks
    for b in range(3):
        ring = np.ones((32, 32), bool)
        ring[2:-2, 2:-2] = False
        want = arrays[0][..., b] - np.median(arrays[0][..., b][ring])
        np.testing.assert_allclose(img[0, b], want, atol=1e-4)
    assert img[0, 0, 16, 16] > 150 and np.ptp(img[0, 1, 0]) > 100

    # names for the R, G, B channels, in that order; or NAME:CHANNEL pairs in any order
    import_images(folder, csv, tmp_path / "irg.zarr", bands="i,r,g")
    import_images(folder, csv, tmp_path / "gri.zarr", bands="g:B, r:G, i:R")
    irg, gri = open_store(tmp_path / "irg.zarr"), open_store(tmp_path / "gri.zarr")
    assert irg.attrs["bands"] == ["i", "r", "g"] and gri.attrs["bands"] == ["g", "r", "i"]
    np.testing.assert_array_equal(gri["image"].values, irg["image"].values[:, ::-1])
    # one name: one band, the mean of the channels
    import_images(folder, csv, tmp_path / "grey.zarr", bands="grey")
    grey = open_store(tmp_path / "grey.zarr")
    assert grey.attrs["bands"] == ["grey"] and grey.sizes["band"] == 1
    np.testing.assert_allclose(grey["image"].values[0, 0] + grey["sky"].values[0],
                               arrays[0].mean(axis=2), rtol=1e-6)


def test_greyscale_stored_as_rgb_stays_one_band(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder, rows = tmp_path / "grey", []
    for k in range(3):
        plane = rng.integers(0, 255, (16, 16))
        rows.append((f"s/{k}.png", "star", _png(folder / f"s/{k}.png",
                                                np.stack([plane] * 3, axis=2))))
    csv = tmp_path / "grey.csv"
    pd.DataFrame(rows, columns=["path", "label", "md5"]).to_csv(csv, index=False)
    summary = import_images(folder, csv, tmp_path / "g.zarr")
    ds = open_store(tmp_path / "g.zarr")
    assert summary.bands == ds.attrs["bands"] == ["grey"] and ds["image"].shape == (3, 1, 16, 16)
    # an explicit three-band plan repeats the one plane
    import_images(folder, csv, tmp_path / "g3.zarr", bands="R,G,B")
    img = open_store(tmp_path / "g3.zarr")["image"].values
    assert img.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(img[:, 0], img[:, 2])


@pytest.mark.parametrize("spec, message", [
    ("g,r", "2 names"), ("a,b,c,d", "4 names"), ("g,,i", "empty band name"),
    ("g:B,r", "mixes plain names"), ("g:X", "a channel R, G or B"), ("r,r,i", "repeats")])
def test_bad_bands_are_refused_before_any_work(tmp_path: Path, spec: str, message: str) -> None:
    folder, csv, _ = _colour_folder(tmp_path, n=1)
    with pytest.raises(ImageFolderError, match=message):
        import_images(folder, csv, tmp_path / "s.zarr", bands=spec)
    assert not (tmp_path / "s.zarr").exists()


def test_chunks_follow_chunk_bytes(tmp_path: Path) -> None:
    import dask

    folder, csv, _ = _colour_folder(tmp_path, n=7, size=16)
    per_source = 16 * 16 * 3 * 4
    summary = import_images(folder, csv, tmp_path / "a.zarr", chunk_bytes=3 * per_source + 5)
    assert summary.n_chunks == 3 and open_store(tmp_path / "a.zarr")["image"].chunks[0] == (3, 3, 1)
    with dask.config.set({"skysieve.ingest.chunk-bytes": f"{2 * per_source}B"}):
        import_images(folder, csv, tmp_path / "b.zarr")
        # an explicit ingest.chunk-sources wins over the byte budget
        with dask.config.set({"skysieve.ingest.chunk-sources": 4}):
            import_images(folder, csv, tmp_path / "c.zarr")
    assert open_store(tmp_path / "b.zarr")["image"].chunks[0] == (2, 2, 2, 1)
    assert open_store(tmp_path / "c.zarr").attrs["chunk_sources"] == 4
    with pytest.raises(ImageFolderError, match="ingest.chunk-bytes"):
        import_images(folder, csv, tmp_path / "d.zarr", chunk_bytes="lots")


def _gaussian_png(path: Path, sigma: float, size: int = 48, peak: float = 220.0) -> str:
    yy, xx = np.mgrid[:size, :size] - size // 2
    grey = 10 + peak * np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return _png(path, np.stack([grey] * 3, axis=2))


def test_psf_fwhm_per_frame_and_radius(tmp_path: Path) -> None:
    folder, rows = tmp_path / "g", []
    seeing = {"f1": 1.5, "f2": 2.5}  # the stars' Gaussian sigma per frame
    for frame, sigma in seeing.items():
        for k in range(6):
            rows.append((f"{frame}/s{k}.png", "star", frame,
                         _gaussian_png(folder / f"{frame}/s{k}.png", sigma)))
        for k, size in enumerate((4.0, 6.0)):
            rows.append((f"{frame}/g{k}.png", "galaxy", frame,
                         _gaussian_png(folder / f"{frame}/g{k}.png", size)))
    rows.append(("f3/s0.png", "star", "f3", _gaussian_png(folder / "f3/s0.png", 2.0)))
    csv = tmp_path / "labels.csv"
    table = pd.DataFrame(rows, columns=["path", "label", "frame", "md5"])
    table.to_csv(csv, index=False)
    import_images(folder, csv, tmp_path / "s.zarr")
    ds = open_store(tmp_path / "s.zarr")
    got = pd.DataFrame({"frame": ds["exposure"].values.astype(str),
                        "label": ds["label"].values.astype(str),
                        "psf": ds["psf_fwhm"].values, "radius": ds["radius"].values})
    for frame, sigma in seeing.items():
        psf = got.loc[got["frame"] == frame, "psf"]
        assert psf.nunique() == 1 and abs(psf.iloc[0] / (2.3548 * sigma) - 1) < 0.1, psf
    assert np.isnan(got.loc[got["frame"] == "f3", "psf"]).all()  # one stamp: too few
    # radius: the half-light radius, sqrt(2 ln 2) sigma for a Gaussian; grows with size
    stars = got[(got["label"] == "star") & (got["frame"] == "f1")]
    assert np.allclose(stars["radius"] / (1.1774 * 1.5), 1, atol=0.1)
    f1 = got[got["frame"] == "f1"].sort_values("radius")
    assert f1["label"].tolist() == ["star"] * 6 + ["galaxy"] * 2
    assert ds["radius"].dtype == np.float32 and np.isfinite(ds["radius"].values).all()

    # without a frame column: one psf_fwhm from the whole folder
    table.drop(columns="frame").to_csv(csv, index=False)
    import_images(folder, csv, tmp_path / "nf.zarr")
    psf = open_store(tmp_path / "nf.zarr")["psf_fwhm"].values
    assert len(set(psf.tolist())) == 1 and 2.3548 * 1.4 < psf[0] < 2.3548 * 2.6


def _elliptical_png(path: Path, sx: float, sy: float, seed: int, size: int = 64) -> str:
    yy, xx = np.mgrid[:size, :size] - size // 2
    rng = np.random.default_rng(seed)
    grey = 40 + 180 * np.exp(-0.5 * ((xx / sx) ** 2 + (yy / sy) ** 2)) + rng.normal(0, 4, xx.shape)
    return _png(path, np.stack([np.clip(grey, 0, 255)] * 3, axis=2))


def test_each_frame_gets_its_psf_ellipticity(tmp_path: Path) -> None:
    folder, rows = tmp_path / "e", []
    shapes = {"round": (2.0, 2.0), "trailed": (3.2, 2.0)}  # stars' sigmas along x and y
    for frame, (sx, sy) in shapes.items():
        for k in range(8):
            rows.append((f"{frame}/s{k}.png", "star", frame,
                         _elliptical_png(folder / f"{frame}/s{k}.png", sx, sy, seed=k)))
    csv = tmp_path / "labels.csv"
    table = pd.DataFrame(rows, columns=["path", "label", "frame", "md5"])
    table.to_csv(csv, index=False)
    import_images(folder, csv, tmp_path / "s.zarr")
    ds = open_store(tmp_path / "s.zarr")
    frame = ds["exposure"].values.astype(str)
    e1, e2 = ds["psf_e1"].values, ds["psf_e2"].values
    assert ds["psf_e1"].dtype == np.float32
    assert np.hypot(e1, e2)[frame == "round"].max() < 0.04  # left as it is at classify
    trailed = frame == "trailed"
    # (3.2^2 - 2^2) / (3.2^2 + 2^2) = 0.44 along x, every source of the frame alike
    assert np.allclose(e1[trailed], e1[trailed][0]) and 0.35 < e1[trailed][0] < 0.5
    assert abs(e2[trailed][0]) < 0.05
    # without a frame column: no one PSF for the folder, nothing to round by
    table.drop(columns="frame").to_csv(csv, index=False)
    import_images(folder, csv, tmp_path / "nf.zarr")
    assert np.isnan(open_store(tmp_path / "nf.zarr")["psf_e1"].values).all()


def test_paths_relative_to_another_folder_get_a_hint(tmp_path: Path) -> None:
    folder, csv, _ = _colour_folder(tmp_path, n=2)
    table = pd.read_csv(csv)
    table["path"] = "colour/" + table["path"]
    table.to_csv(csv, index=False)  # the CSV's paths are relative to tmp_path, not colour/
    summary = import_images(folder, csv, tmp_path / "s.zarr")
    assert summary.store is None and f"relative to {tmp_path}" in summary.describe()


def test_resize_downscales_the_whole_image_instead_of_cropping(tmp_path: Path) -> None:
    """--resize: a Gaussian of sigma s on 96 px becomes sigma s/3 on 32 px, all of it kept."""
    folder = tmp_path / "big"
    rows = [(f"g{k}.png", "galaxy", _gaussian_png(folder / f"g{k}.png", 12.0, size=96))
            for k in range(3)]
    csv = tmp_path / "big.csv"
    pd.DataFrame(rows, columns=["path", "label", "md5"]).to_csv(csv, index=False)
    import_images(folder, csv, tmp_path / "small.zarr", resize=32)
    import_images(folder, csv, tmp_path / "crop.zarr", stamp=32)
    small, crop = open_store(tmp_path / "small.zarr"), open_store(tmp_path / "crop.zarr")
    assert small["image"].shape == crop["image"].shape == (3, 1, 32, 32)
    # the downscaled galaxy: half-light radius 1.1774 * 12 / 3 px; the crop sees its core only
    assert np.allclose(small["radius"].values / (1.1774 * 4.0), 1, atol=0.12)
    corner = {name: float(ds["image"].values[0, 0, 0, 0] + ds["sky"].values[0])
              for name, ds in (("small", small), ("crop", crop))}
    assert corner["crop"] > 40  # cropped: the galaxy still bright at the corner (10 + 220 e^-1.78)
    assert corner["small"] < 12  # downscaled: the sky (10) at the corner
    with pytest.raises(ImageFolderError, match="resize"):
        import_images(folder, csv, tmp_path / "bad.zarr", resize=2)
