"""Out-of-distribution columns of the catalogue: ``ood_score``, ``ood_energy``, ``FLAG_OOD``, ``ood_fraction``.

A model trained here for a few epochs on blob stamps (``tests/_blob_stores.py``) classifies
blobs of the same kind (in distribution) and checkerboards (clearly not).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from _blob_stores import make_store
from pipeline import catalogue
from pipeline.catalogue.layout import FLAG_OOD, SUMMARY_FILE
from pipeline.classify.graph import classify

pytestmark = pytest.mark.filterwarnings("ignore")


def _classifiable(path: Path) -> Path:
    """The blob stores record ``rejects`` as a count; classify copies the list of them."""
    zarr.open_group(str(path), mode="r+").attrs["rejects"] = []
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from pipeline.training.fit import train

    root = tmp_path_factory.mktemp("ood_model")
    store = make_store(root / "train.zarr", n=450, size=32, n_exp=3, seed=0)
    card = train(store, arch="smallcnn", out=root / "m.pt", epochs=4, batch_size=32,
                 progress=False, augment="geometric")
    assert card.ood["file"] == "m.ood.npz" and card.ood["threshold"] == 0.99
    return root / "m.pt"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ood_stores")
    blobs = _classifiable(make_store(root / "blobs.zarr", n=150, size=32, n_exp=3, seed=9))
    checkers = _classifiable(make_store(root / "checkers.zarr", n=150, size=32, n_exp=3, seed=4))
    yy, xx = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(4)
    period = rng.choice([2, 3, 4], size=150)
    images = np.stack([(((yy // p) + (xx // p)) % 2 * 2.0 - 1.0) * 40.0 for p in period])
    images = images[:, None] + rng.normal(0.0, 1.0, (150, 1, 32, 32))
    zarr.open_group(str(checkers), mode="r+")["image"][:] = images.astype(np.float32)
    return {"blobs": blobs, "checkers": checkers}


def _flagged(df) -> np.ndarray:
    return (df["flags"].to_numpy() & FLAG_OOD) != 0


def test_checkerboards_are_flagged_and_blobs_are_not(model: Path, stores, tmp_path: Path) -> None:
    results = {}
    for name, store in stores.items():
        out = tmp_path / name
        summary = classify(store, out, model=str(model), progress=False)
        df = catalogue.read_catalogue(out)
        assert df["ood_score"].dtype == np.float32 and df["ood_energy"].dtype == np.float32
        assert df["ood_score"].between(0.0, 1.0).all() and np.isfinite(df["ood_energy"]).all()
        flagged = _flagged(df)
        np.testing.assert_array_equal(flagged, df["ood_score"].to_numpy() > 0.99)
        # the summary counts what the parts flag, and says so on the terminal and on disk
        assert summary.ood_threshold == 0.99
        assert summary.ood_flagged == int(flagged.sum())
        assert summary.ood_fraction == pytest.approx(flagged.mean())
        written = json.loads((out / SUMMARY_FILE).read_text())
        assert written["ood_fraction"] == pytest.approx(flagged.mean())
        assert "out of domain" in summary.describe() and "ood_score > 0.99" in summary.describe()
        meta = catalogue.read_metadata(out)
        assert meta["ood"]["threshold"] == 0.99 and meta["ood"]["flag"] == FLAG_OOD
        results[name] = df
    blobs, checkers = results["blobs"], results["checkers"]
    assert _flagged(blobs).mean() <= 0.1
    assert _flagged(checkers).mean() >= 0.5
    assert checkers["ood_score"].median() > blobs["ood_score"].median() + 0.3


def test_model_without_statistics_gives_nan_and_no_flag(model: Path, stores,
                                                        tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    shutil.copyfile(model, bare)
    card = json.loads(model.with_suffix(".json").read_text())
    del card["ood"]
    bare.with_suffix(".json").write_text(json.dumps(card))
    out = tmp_path / "cat"
    summary = classify(stores["checkers"], out, model=str(bare), progress=False)
    df = catalogue.read_catalogue(out)
    assert df["ood_score"].isna().all() and df["ood_energy"].isna().all()
    assert df["ood_score"].dtype == np.float32
    assert not _flagged(df).any()
    assert summary.ood_fraction is None and summary.ood_threshold is None
    assert "no OOD statistics" in summary.describe()
    assert json.loads((out / SUMMARY_FILE).read_text())["ood_fraction"] is None
    assert catalogue.read_metadata(out)["ood"] is None


def test_resumed_run_counts_the_parts_it_kept(model: Path, tmp_path: Path) -> None:
    """``ood_fraction`` covers the whole catalogue, also the parts an earlier run wrote."""
    store = _classifiable(make_store(tmp_path / "s.zarr", n=120, size=32, seed=3))
    group = zarr.open_group(str(store), mode="r+")
    data = group["image"][:]
    # re-chunk into 3 parts so that one can be lost; then break the last third
    from pipeline.store import open_store

    ds = open_store(store).load()
    ds.attrs["chunk_sources"] = 40
    ds["image"].encoding = {}
    yy, xx = np.mgrid[0:32, 0:32]
    data[80:, 0] = ((yy // 2 + xx // 2) % 2 * 2.0 - 1.0) * 40.0
    ds["image"].values[:] = data
    chunked = tmp_path / "chunked.zarr"
    ds.to_zarr(chunked, zarr_format=3, mode="w",
               encoding={"image": {"chunks": (40, 1, 32, 32)}})
    _classifiable(chunked)
    out = tmp_path / "cat"
    first = classify(chunked, out, model=str(model), progress=False)
    assert first.parts == 3
    sorted(out.glob("part-*.parquet"))[0].unlink()
    again = classify(chunked, out, model=str(model), progress=False)
    assert again.parts_written == 1 and again.parts_skipped == 2
    assert again.ood_flagged == first.ood_flagged and again.ood_fraction == first.ood_fraction
    assert again.ood_flagged == int(_flagged(catalogue.read_catalogue(out)).sum()) > 0
