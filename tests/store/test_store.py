"""The cutout store contract: write, open/validate, describe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pipeline
from pipeline.errors import StoreError
from pipeline.store import (
    COORDS,
    building,
    check_unique_ids,
    commit_store,
    create_store,
    describe,
    open_store,
    pack_source_id,
    path_source_id,
    prepare_output,
    read_rejects,
    unpack_source_id,
    validate_store,
    write_chunk,
)


def _table(n: int, *, labels: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    exposure = np.where(np.arange(n) < n // 2, "exp_0000", "exp_0001")
    t = pd.DataFrame({
        "exposure": exposure, "ccd": np.zeros(n, np.int16), "detection": np.arange(n),
        "x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n),
        "ra": rng.uniform(10, 11, n), "dec": rng.uniform(-1, 1, n),
    })
    for name in ("flux", "a", "b", "theta", "fwhm", "psf_fwhm", "sky", "sky_rms", "snr"):
        t[name] = rng.uniform(1, 10, n).astype(np.float32)
    t["flags"] = rng.integers(0, 16, n).astype(np.int32)
    t["source_id"] = pack_source_id(t["exposure"], t["ccd"], t["detection"])
    if labels:
        t["label"] = rng.choice(["star", "galaxy", ""], n)
    return t


def _write(path: Path, n: int = 10, *, stamp: int = 8, chunk: int = 4, **kw) -> np.ndarray:
    table = _table(n, **kw)
    create_store(path, table, stamp=stamp, bands=["r"], chunk_sources=chunk, pixel_scale=0.25,
                 inputs=[{"path": "/x/exp_0000.fits", "sha256": "0" * 64, "bytes": 10}],
                 rejects=[{"file": "/x/bad.fits", "hdu": -1, "reason": "empty file"}])
    images = np.random.default_rng(1).normal(size=(n, 1, stamp, stamp)).astype(np.float32)
    images[0, 0, :2] = np.nan  # an edge stamp
    for start in range(0, n, chunk):
        write_chunk(path, start, images[start:start + chunk])
    return images


def test_round_trip_values_coords_attrs(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    images = _write(path, 10)
    ds = open_store(path)
    table = _table(10)
    assert ds["image"].dims == ("source", "band", "y", "x")
    assert ds["image"].dtype == np.float32
    np.testing.assert_array_equal(ds["image"].values, images)  # NaN positions equal too
    for name, dtype in COORDS.items():
        got = ds[name].values
        if dtype == "str":
            assert got.astype(str).tolist() == table[name].astype(str).tolist()
        else:
            assert got.dtype == np.dtype(dtype), name
            np.testing.assert_array_equal(got, table[name].to_numpy().astype(dtype))
    assert ds["label"].values.astype(str).tolist() == table["label"].tolist()
    a = ds.attrs
    assert a["kind"] == "cutouts" and a["stamp"] == 8 and a["bands"] == ["r"]
    assert a["skysieve_version"] == pipeline.__version__ and a["chunk_sources"] == 4
    assert a["classes"] == sorted(set(table["label"]) - {""})
    assert a["inputs"][0]["sha256"] == "0" * 64 and a["rejects"][0]["reason"] == "empty file"
    assert ds["image"].chunks[0] == (4, 4, 2)  # along source only, last shorter
    assert ds["image"].chunks[1:] == ((1,), (8,), (8,))
    rejects = read_rejects(path)
    assert list(rejects.columns) == ["file", "hdu", "reason"] and len(rejects) == 1


def test_describe_lists_counts(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _write(path, 10)
    text = describe(path)
    table = _table(10)
    assert "10 in 3 chunk(s)" in text and "exp_0000 (5)" in text
    n_star = int((table["label"] == "star").sum())
    assert f"star {n_star}" in text
    assert "rejects:    1" in text and "empty file" in text


def test_unlabelled_store_has_no_label(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _write(path, 5, labels=False)
    ds = open_store(path)
    assert "label" not in ds.coords and "classes" not in ds.attrs
    assert "(no labels)" in describe(path)


def test_write_chunk_refuses_misaligned(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    _write(path, 10)
    with pytest.raises(StoreError, match="whole chunk"):
        write_chunk(path, 2, np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(StoreError, match="whole chunk"):
        write_chunk(path, 0, np.zeros((3, 1, 8, 8), np.float32))


def test_source_id_packing_is_stable_and_unique() -> None:
    exp = np.repeat([f"exp_{i:04d}" for i in range(50)], 200)
    ccd = np.tile(np.repeat([0, 1], 100), 50)
    det = np.tile(np.arange(100), 100)
    sid = pack_source_id(exp, ccd, det)
    assert sid.dtype == np.int64 and (sid > 0).all() and len(np.unique(sid)) == sid.size
    np.testing.assert_array_equal(pack_source_id(exp, ccd, det), sid)  # deterministic
    _, c, d = unpack_source_id(sid)
    np.testing.assert_array_equal(c, ccd)
    np.testing.assert_array_equal(d, det)
    with pytest.raises(StoreError, match="ccd index 128"):
        pack_source_id(["a"], [128], [0])
    with pytest.raises(StoreError, match="detection number"):
        pack_source_id(["a"], [0], [1 << 20])
    ids = path_source_id(["star/a.jpg", "star/b.jpg"])
    assert ids[0] != ids[1] and (ids > 0).all()


def test_collision_is_reported() -> None:
    with pytest.raises(StoreError, match="collision.*'a#1'"):
        check_unique_ids(np.array([5, 7, 5]), ["a#1", "b", "a#1"], where="store")
    check_unique_ids(np.array([1, 2, 3]), ["a", "b", "c"], where="store")


def test_prepare_output_and_commit(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "s.zarr"
    assert prepare_output(out) == out and out.parent.is_dir()
    _write(out, 4)
    with pytest.raises(StoreError, match="--overwrite"):
        prepare_output(out)
    prepare_output(out, overwrite=True)  # an existing store may be replaced
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(StoreError, match="not a skysieve cutout store"):
        prepare_output(other, overwrite=True)
    new = tmp_path / "new.zarr"
    _write(new, 6)
    commit_store(new, out, overwrite=True)
    assert open_store(out).sizes["source"] == 6 and not new.exists()


def test_building_commits_whole_or_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    with building(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".s.zarr.tmp-") and not out.exists()
        _write(tmp, 4)
    assert open_store(out).sizes["source"] == 4 and not tmp.exists()
    with pytest.raises(StoreError, match="--overwrite"):
        with building(out):
            pass
    with pytest.raises(KeyboardInterrupt):  # an interrupt part-way: old store kept, no temporary
        with building(out, overwrite=True) as tmp:
            _write(tmp, 6)
            raise KeyboardInterrupt
    assert open_store(out).sizes["source"] == 4 and not tmp.exists()
    with building(out, overwrite=True) as tmp:
        _write(tmp, 6)
    assert open_store(out).sizes["source"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def _rewrite(path: Path, ds: xr.Dataset) -> None:
    """Write a modified copy of a store (dropping the original encodings)."""
    ds = ds.copy()
    for name in ds.variables:
        ds[name].encoding = {}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)


def test_open_store_validation_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such cutout store"):
        open_store(tmp_path / "missing.zarr")
    notstore = tmp_path / "plain"
    notstore.mkdir()
    with pytest.raises(StoreError, match="not a readable Zarr"):
        open_store(notstore)
    src = tmp_path / "s.zarr"
    _write(src, 10)
    good = xr.open_zarr(src).load()

    bad = tmp_path / "nokind.zarr"
    _rewrite(bad, good.assign_attrs(kind="catalogue"))
    with pytest.raises(StoreError, match="'kind' is 'catalogue'"):
        open_store(bad)

    bad = tmp_path / "nox.zarr"
    _rewrite(bad, good.drop_vars(["snr"]))
    with pytest.raises(StoreError, match=r"missing coordinates \['snr'\]"):
        open_store(bad)

    bad = tmp_path / "dtype.zarr"
    _rewrite(bad, good.assign_coords(ccd=good["ccd"].astype(np.int64)))
    with pytest.raises(StoreError, match="'ccd' has dtype 'int64', expected 'int16'"):
        open_store(bad)

    bad = tmp_path / "f64.zarr"
    _rewrite(bad, good.assign(image=good["image"].astype(np.float64)))
    with pytest.raises(StoreError, match="'image' has dtype 'float64'"):
        open_store(bad)

    bad = tmp_path / "dims.zarr"
    _rewrite(bad, good.assign(image=good["image"].transpose("source", "band", "x", "y")))
    with pytest.raises(StoreError, match="'image' has dims"):
        open_store(bad)

    uneven = open_store(src).chunk({"source": (3, 5, 2)})
    with pytest.raises(StoreError, match=r"uneven \(\(3, 5, 2\)\)"):
        validate_store(uneven, name=str(src))
    validate_store(open_store(src).chunk({"source": 5}), name=str(src))  # even: fine

    bad = tmp_path / "ychunk.zarr"
    _rewrite(bad, good.chunk({"source": 5, "y": 4}))
    with pytest.raises(StoreError, match="chunked along"):
        open_store(bad)


def test_nan_pixel_scale_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    create_store(path, _table(3), stamp=4, bands=["unknown"], chunk_sources=2,
                 pixel_scale=math.nan, inputs=[], rejects=[])
    ds = open_store(path)
    assert math.isnan(ds.attrs["pixel_scale"]) and ds.attrs["rejects"] == []
    assert np.isnan(ds["image"].values).all()  # unwritten chunks read as NaN
    assert len(read_rejects(path)) == 0


def test_sources_per_chunk_precedence(tmp_path: Path) -> None:
    import dask

    from pipeline.store import chunk_byte_budget, sources_per_chunk

    assert sources_per_chunk(64, 1, chunk_bytes=16 << 20) == 1024
    assert sources_per_chunk(423, 3, chunk_bytes="32 MiB") == 15  # 2.1 MB a GZ1 image
    assert sources_per_chunk(423, 3, chunk_bytes=1) == 1  # at least one
    assert sources_per_chunk(64, 1) == 1024  # the default: 16 MiB
    with dask.config.set({"skysieve.ingest.chunk-bytes": "1 MiB"}):
        assert sources_per_chunk(32, 2) == 128 and chunk_byte_budget() == 1 << 20
        with dask.config.set({"skysieve.ingest.chunk-sources": 10}):
            assert sources_per_chunk(32, 2) == 10  # an explicit count wins
            assert sources_per_chunk(32, 2, chunk_sources=3) == 3  # and an argument over it
    with pytest.raises(StoreError, match="chunk_sources must be an integer from 1"):
        sources_per_chunk(32, 1, chunk_sources=0)
    with pytest.raises(StoreError, match="ingest.chunk-bytes must be a positive integer"):
        sources_per_chunk(32, 1, chunk_bytes=0)
    with pytest.raises(StoreError, match="ingest.chunk-bytes is 'big'"):
        sources_per_chunk(32, 1, chunk_bytes="big")


def test_optional_radius_is_written_checked_and_may_be_absent(tmp_path: Path) -> None:
    from pipeline.store import write_coords

    old = tmp_path / "old.zarr"
    create_store(old, _table(3), stamp=4, bands=["r"], chunk_sources=2, pixel_scale=0.25,
                 inputs=[], rejects=[])
    assert "radius" not in open_store(old).coords  # a store from before radius still opens

    new = tmp_path / "new.zarr"
    table = _table(3).assign(radius=np.float32(np.nan))
    create_store(new, table, stamp=4, bands=["r"], chunk_sources=2, pixel_scale=0.25,
                 inputs=[], rejects=[])
    write_coords(new, {"radius": np.array([1.0, 2.0, 3.0]), "psf_fwhm": np.full(3, 2.5)})
    ds = open_store(new)
    assert ds["radius"].dtype == np.float32 and ds["radius"].values.tolist() == [1.0, 2.0, 3.0]
    assert ds["psf_fwhm"].values.tolist() == [2.5] * 3
    with pytest.raises(StoreError, match="shape"):
        write_coords(new, {"radius": np.zeros(2)})
    with pytest.raises(StoreError, match="no per-source coordinate 'image'"):
        write_coords(new, {"image": np.zeros(3)})
    bad = ds.assign_coords(radius=("source", np.zeros(3, np.float64)))
    with pytest.raises(StoreError, match="'radius' has dtype 'float64', expected 'float32'"):
        validate_store(bad, name="bad")


def test_model_bands_must_match_the_store() -> None:
    from pipeline.store import check_model_bands

    check_model_bands(["grey"], in_chans=1, model_bands=["r"])  # names are advisory
    with pytest.raises(StoreError, match=r"s\.zarr: the store has 3 band\(s\) \['g', 'r', 'i'\] "
                                         r"but star-galaxy takes 1 band\(s\) \['grey'\].*"
                                         r"skysieve train s\.zarr.*--bands grey"):
        check_model_bands(["g", "r", "i"], in_chans=1, model_bands=["grey"], store="s.zarr",
                          model="star-galaxy")
    with pytest.raises(StoreError, match="use a store of 3 band"):
        check_model_bands(["grey"], in_chans=3)


def _sharded(path: Path, n: int, *, stamp: int = 8, chunk: int = 4, shard: int = 12) -> None:
    create_store(path, _table(n), stamp=stamp, bands=["r"], chunk_sources=chunk,
                 pixel_scale=0.25, inputs=[], rejects=[], shard_sources=shard)


def _shard_files(path: Path) -> dict[str, bytes]:
    folder = path / "image" / "c"
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
            if f.is_file()}


def test_streamed_shards_are_the_files_zarr_writes(tmp_path: Path) -> None:
    """write_chunks streams each shard chunk by chunk: the same bytes and values as Zarr's."""
    import zarr

    from pipeline.store import write_chunks
    from pipeline.store.read import chunk_layout
    from pipeline.store.shard_file import streamable

    n, chunk, shard = 30, 4, 12  # 3 shards, the last of 6 rows: one full chunk, one of 2
    images = np.random.default_rng(5).normal(size=(n, 1, 8, 8)).astype(np.float32)
    images[3, 0, :3] = np.nan
    by_zarr, streamed = tmp_path / "zarr.zarr", tmp_path / "stream.zarr"
    for path in (by_zarr, streamed):
        _sharded(path, n, chunk=chunk, shard=shard)
    assert streamable(chunk_layout(streamed, "image"))
    for start in range(0, n, shard):
        write_chunk(by_zarr, start, images[start:start + shard])
        blocks = (images[lo:min(lo + chunk, start + shard, n)]
                  for lo in range(start, min(start + shard, n), chunk))
        assert write_chunks(streamed, start, blocks) == min(shard, n - start)
    assert _shard_files(streamed) == _shard_files(by_zarr)
    np.testing.assert_array_equal(zarr.open_array(str(streamed / "image"))[:], images)
    for name in ("stamp_bg", "stamp_noise", "stamp_fwhm"):
        np.testing.assert_array_equal(zarr.open_array(str(streamed / name))[:],
                                      zarr.open_array(str(by_zarr / name))[:])
    assert not list((streamed / "image").rglob("*.partial"))


def test_streamed_shard_refuses_a_short_or_misplaced_write(tmp_path: Path) -> None:
    from pipeline.store import write_chunks

    path = tmp_path / "s.zarr"
    _sharded(path, 30)
    images = np.zeros((30, 1, 8, 8), np.float32)
    with pytest.raises(StoreError, match="do not open a shard"):
        write_chunks(path, 4, iter([images[4:8]]))
    with pytest.raises(StoreError, match="2 of its 3 chunks"):
        write_chunks(path, 0, iter([images[0:4], images[4:8]]))
    with pytest.raises(StoreError, match="whole chunks of 4"):
        write_chunks(path, 0, iter([images[0:3]]))
    # nothing left behind, not even a partial file
    assert not [f for f in (path / "image").rglob("*") if f.is_file() and f.name != "zarr.json"]
