"""Zarr v3 sharded stores: file counts bounded by shards, whole-shard writes, the same reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from pipeline.errors import StoreError
from pipeline.store import (
    create_store,
    open_store,
    pack_source_id,
    read_rows,
    sources_per_shard,
    write_chunk,
)


def _table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    t = pd.DataFrame({"exposure": np.repeat(["exp_a", "exp_b"], [n // 2, n - n // 2]),
                      "ccd": np.zeros(n, np.int16), "x": rng.uniform(0, 99, n),
                      "y": rng.uniform(0, 99, n), "ra": rng.uniform(10, 11, n),
                      "dec": rng.uniform(-1, 1, n)})
    for name in ("flux", "a", "b", "theta", "fwhm", "psf_fwhm", "sky", "sky_rms", "snr"):
        t[name] = rng.uniform(1, 10, n).astype(np.float32)
    t["flags"] = np.zeros(n, np.int32)
    t["source_id"] = pack_source_id(t["exposure"], t["ccd"], np.arange(n))
    return t


def _build(path: Path, n: int, *, chunk: int, shard: int | None) -> np.ndarray:
    create_store(path, _table(n), stamp=8, bands=["r"], chunk_sources=chunk, pixel_scale=0.2,
                 inputs=[], rejects=[], shard_sources=shard)
    images = np.random.default_rng(2).normal(size=(n, 1, 8, 8)).astype(np.float32)
    step = shard or chunk
    for start in range(0, n, step):
        write_chunk(path, start, images[start:start + step])
    return images


def _files(path: Path, name: str) -> int:
    return sum(1 for p in (path / name).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_sharded_store_reads_as_the_unsharded_one_with_fewer_files(tmp_path: Path) -> None:
    n, chunk, shard = 100, 4, 16
    plain, sharded = tmp_path / "plain.zarr", tmp_path / "sharded.zarr"
    images = _build(plain, n, chunk=chunk, shard=None)
    assert np.array_equal(_build(sharded, n, chunk=chunk, shard=shard), images)

    ds = open_store(sharded)  # the contract holds, the read unit is still the chunk
    assert ds.attrs["shard_sources"] == shard and ds.attrs["chunk_sources"] == chunk
    assert ds["image"].chunks[0][0] == chunk
    assert "shard_sources" not in open_store(plain).attrs
    np.testing.assert_array_equal(ds["image"].values, images)
    group = zarr.open_group(str(sharded), mode="r")
    assert group["image"].shards[0] == shard and group["image"].chunks[0] == chunk
    for name in ("image", "stamp_bg", "stamp_noise", "stamp_fwhm"):
        assert _files(sharded, name) == -(-n // shard)   # 7 files, one per shard
        assert _files(plain, name) == -(-n // chunk)     # 25 files, one per chunk
    assert _files(sharded, "source_id") == 1
    a, _ = read_rows(plain, 40, 44, ("image", "stamp_fwhm", "source_id", "exposure"))
    b, _ = read_rows(sharded, 40, 44, ("image", "stamp_fwhm", "source_id", "exposure"))
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))


def test_writes_must_be_whole_shards(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    create_store(path, _table(40), stamp=8, bands=["r"], chunk_sources=4, pixel_scale=0.2,
                 inputs=[], rejects=[], shard_sources=16)
    one_chunk = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(StoreError, match="not whole shards"):
        write_chunk(path, 0, one_chunk)  # a chunk is part of a shard: a race between tasks
    with pytest.raises(StoreError, match="not whole shards"):
        write_chunk(path, 4, np.zeros((16, 1, 8, 8), np.float32))
    write_chunk(path, 32, np.ones((8, 1, 8, 8), np.float32))  # the last, shorter shard
    assert float(open_store(path)["image"][32:].mean()) == 1.0
    with pytest.raises(StoreError, match="multiple of chunk_sources"):
        create_store(tmp_path / "bad.zarr", _table(40), stamp=8, bands=["r"], chunk_sources=4,
                     pixel_scale=0.2, inputs=[], rejects=[], shard_sources=6)


def test_sources_per_shard_fills_the_byte_budget_in_whole_chunks() -> None:
    chunk = 1024  # 16 MiB of 64x64 float32 stamps
    assert sources_per_shard(chunk, 2_000_000, 64, shard_bytes="256 MiB") == 16 * chunk
    assert sources_per_shard(chunk, 2_000_000, 64, shard_bytes=64 * 2**20) == 4 * chunk
    # a small store is cut into >= 8 shards, so its writes still run in parallel
    assert sources_per_shard(chunk, 20 * chunk, 64, shard_bytes="256 MiB") == 3 * chunk
    assert sources_per_shard(chunk, 5 * chunk, 64, shard_bytes="256 MiB") is None
    assert sources_per_shard(chunk, 2_000_000, 64, shard_bytes="none") is None
    assert sources_per_shard(chunk, 2_000_000, 64, shard_bytes="8 MiB") is None  # < a chunk
    with pytest.raises(StoreError, match="ingest.shard-bytes"):
        sources_per_shard(chunk, 2_000_000, 64, shard_bytes="lots")
