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
    summary = import_images(folder, csv, out, stamp=32, chunk_sources=2)
    assert summary.n_sources == 3 and summary.n_exposures == 2
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
