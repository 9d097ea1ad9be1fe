"""read_rows reads plain and sharded chunk files itself: the same values as Zarr, every layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ZstdCodec

from pipeline.store import read as store_read
from pipeline.store import read_rows

N, CHUNK = 50, 16  # the last chunk is short (2 rows)


def _group(path: Path, *, shards: int | None, compress: bool, endian: str = "little") -> Path:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({"kind": "cutouts", "item": "source"})
    rng = np.random.default_rng(0)
    comp = [ZstdCodec(level=3)] if compress else None

    def make(name, values, chunks, **kw):
        shard = None if shards is None else (shards, *values.shape[1:])
        return group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                                  shards=shard, compressors=comp, **kw)

    image = rng.normal(0, 3, (N, 2, 8, 8)).astype(np.float32)
    image[3, 0, 0, 0] = np.nan
    make("image", image, (CHUNK, 2, 8, 8), serializer=BytesCodec(endian=endian))[:] = image
    half = image.astype(np.float16)
    make("image16", half, (CHUNK, 2, 8, 8))[:] = half
    ids = np.arange(N, dtype=np.int64) * 7
    make("source_id", ids, (CHUNK,))[:] = ids
    flags = make("flags", np.zeros(N, np.int32), (CHUNK,), fill_value=0)
    flags[CHUNK:2 * CHUNK] = 5  # chunks 0 and 3 never written: the fill value
    ra = make("ra", np.zeros(N), (CHUNK,), fill_value=np.nan)
    ra[:CHUNK] = np.linspace(0, 1, CHUNK)
    names = np.asarray([f"exp_{i % 3}" for i in range(N)], dtype=object)
    strings = group.create_array("exposure", shape=(N,), dtype=str, chunks=(CHUNK,),
                                 shards=None if shards is None else (shards,), compressors=comp)
    strings[:] = names
    return path


LAYOUTS = {"plain": dict(shards=None, compress=False),
           "zstd": dict(shards=None, compress=True),
           "big-endian": dict(shards=None, compress=False, endian="big"),
           "sharded": dict(shards=2 * CHUNK, compress=False),
           "sharded zstd": dict(shards=2 * CHUNK, compress=True)}
NAMES = ("image", "image16", "source_id", "flags", "ra", "exposure", "missing")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_same_values_as_zarr_for_every_chunk_and_slice(layout: str, tmp_path: Path) -> None:
    store = _group(tmp_path / "s.zarr", **LAYOUTS[layout])
    group = zarr.open_group(str(store), mode="r")
    read_directly = 0
    for start, stop in [(0, 16), (16, 32), (32, 48), (48, 50), (5, 30), (0, 50)]:
        rows, attrs = read_rows(store, start, stop, NAMES)
        assert attrs["kind"] == "cutouts"
        assert list(rows) == [n for n in NAMES if n != "missing"]
        for name, got in rows.items():
            want = np.asarray(group[name][start:stop])
            if want.dtype.kind == "T":
                want = want.astype(object)
            assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=f"{layout} {name} {start}:{stop}")
        if (start, stop) == (16, 32):
            for name in rows:
                plan = store_read._plan(store, name)
                read_directly += plan is not None and plan.read(start, stop) is not None
    # every variable of a whole chunk was read without Zarr (the point of the reader)
    assert read_directly == len(NAMES) - 1


def test_metadata_is_reread_when_the_store_changes(tmp_path: Path) -> None:
    store = _group(tmp_path / "s.zarr", shards=None, compress=False)
    first, _ = read_rows(store, 0, 16, ("source_id",))
    group = zarr.open_group(str(store), mode="r+")
    del group["source_id"]
    group.create_array("source_id", shape=(N,), dtype=np.int32, chunks=(8,))[:] = np.arange(N)
    second, _ = read_rows(store, 0, 16, ("source_id",))
    assert first["source_id"].dtype == np.int64
    assert second["source_id"].dtype == np.int32
    np.testing.assert_array_equal(second["source_id"], np.arange(16))
