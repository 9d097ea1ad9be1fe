"""Several stores classified as one catalogue, resumed, refused when the set changes; float16 stores."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import zarr

from cluster import connect
from pipeline import catalogue
from pipeline.classify.graph import classify
from pipeline.errors import StoreError

pytestmark = pytest.mark.filterwarnings("ignore")
CHUNK = 32


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Two nights of a small synthetic survey, each ingested into its own store."""
    from pipeline.ingest.exposures import ingest
    from pipeline.simulation.survey import synthesize

    root = tmp_path_factory.mktemp("nights")
    survey = synthesize(root / "fits", exposures=2, size=384, seed=5)
    out = {}
    with dask.config.set({"skysieve.ingest.chunk-sources": CHUNK}):
        for name, fits in zip(("a", "b"), survey.files):
            ingest([fits], root / f"{name}.zarr", truth=survey.truth)
            out[name] = root / f"{name}.zarr"
    return out


@pytest.fixture(scope="module")
def client():
    with connect("local", n_workers=2, threads_per_worker=1) as c:
        yield c


def _chunks(store: Path) -> int:
    image = zarr.open_group(str(store), mode="r")["image"]
    return -(-image.shape[0] // image.chunks[0])


def _rows(out: Path) -> pd.DataFrame:
    return catalogue.read_catalogue(out).sort_values("source_id").reset_index(drop=True)


def test_two_stores_make_one_catalogue_that_resumes(stores, client, tmp_path: Path) -> None:
    a, b = stores["a"], stores["b"]
    out = tmp_path / "both"
    summary = classify([a, b], out, progress=False)
    both = _rows(out)
    alone = pd.concat([_rows(_classified(s, tmp_path / s.stem)) for s in (a, b)])
    alone = alone.sort_values("source_id").reset_index(drop=True)
    # every row of each store, once; the same classification as each store alone (the blur
    # score's reference is the median PSF of both stores, so it differs)
    assert summary.parts == _chunks(a) + _chunks(b) == len(list(out.glob("part-*.parquet")))
    assert summary.rows == len(both) == len(alone) and both["source_id"].is_unique
    same = [c for c in both.columns if c != "blur_score"]
    pd.testing.assert_frame_equal(both[same], alone[same])
    meta = catalogue.read_metadata(out)
    assert meta["stores"] == [str(a.resolve()), str(b.resolve())]
    assert meta["store"] == str(a.resolve())
    run = json.loads((out / "_run.json").read_text())
    assert [s["store"] for s in run["stores"]] == meta["stores"]
    # a kill loses parts: the rerun writes just those, and the catalogue is the same
    lost = sorted(out.glob("part-*.parquet"))[_chunks(a)]  # the first part of store b
    lost.unlink()
    again = classify([a, b], out, progress=False)
    assert again.parts_written == 1 and again.parts_skipped == summary.parts - 1
    pd.testing.assert_frame_equal(_rows(out), both)
    # another set of stores (or order) is another run: refused, nothing touched
    for other in ([b, a], [a]):
        with pytest.raises(FileExistsError, match="--overwrite"):
            classify(other, out, progress=False)
    with pytest.raises(StoreError, match="given twice"):
        classify([a, a], tmp_path / "twice", progress=False)
    assert not (tmp_path / "twice").exists()


def test_cli_takes_several_stores(stores, client, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    out = tmp_path / "cat"
    result = CliRunner().invoke(cli, ["classify", str(stores["a"]), str(stores["b"]), "--out",
                                      str(out), "--cluster", client.cluster.scheduler_address])
    assert result.exit_code == 0, result.output
    assert len(catalogue.read_catalogue(out)) == sum(
        zarr.open_group(str(s), mode="r")["image"].shape[0] for s in stores.values())


def test_float16_store_classifies_like_float32(stores, client, tmp_path: Path) -> None:
    """A store whose image is float16 (half the bytes) reads and classifies the same, to rounding."""
    import shutil

    half = tmp_path / "half.zarr"
    shutil.copytree(stores["a"], half)
    group = zarr.open_group(str(half), mode="r+")
    old = group["image"]
    pixels, chunks, attrs = old[:], old.chunks, dict(old.attrs)
    del group["image"]
    new = group.create_array("image", shape=pixels.shape, dtype="float16", chunks=chunks,
                             compressors=None, dimension_names=("source", "band", "y", "x"),
                             fill_value=np.nan)
    new.attrs.update(attrs)
    new[:] = pixels.astype(np.float16)
    zarr.consolidate_metadata(str(half))
    ref = _rows(_classified(stores["a"], tmp_path / "f32"))
    got = _rows(_classified(half, tmp_path / "f16"))
    pcols = [c for c in ref.columns if c.startswith("p_")]
    assert len(got) == len(ref)
    assert np.abs(got[pcols].to_numpy() - ref[pcols].to_numpy()).max() < 0.05
    assert (got["label"] == ref["label"]).mean() >= 0.95


def _classified(store: Path, out: Path) -> Path:
    summary = classify(store, out, progress=False)
    assert not summary.failed, summary.failed
    return out
