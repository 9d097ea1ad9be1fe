"""Ingest into a sharded store (whole shards per task), HEALPix at ingest, and a failing task
that never leaves another task writing into the temporary store being removed."""

from __future__ import annotations

import operator
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS

from pipeline.imaging.stamp_stats import STAMP_STATS, stamp_statistics
from pipeline.ingest.exposures import _copy_shard_task, ingest
from pipeline.ingest.scan import compute_tasks
from pipeline.ingest.sky_index import healpix_index
from pipeline.store import create_store, open_store, request_abort


def _exposure(path: Path, seed: int, n: int = 60, size: int = 256) -> None:
    rng = np.random.default_rng(seed)
    image = rng.normal(300.0, 5.0, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for x, y in rng.uniform(12, size - 12, (n, 2)):
        image += 2e4 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2)) / (2 * np.pi * 1.5**2)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0 + seed * 0.01, 2.0]
    w.wcs.crpix = [size / 2, size / 2]
    w.wcs.cd = np.diag([-0.25, 0.25]) / 3600
    header = w.to_header()
    header["FILTER"] = "r"
    fits.PrimaryHDU(image.astype(np.float32), header=header).writeto(path)


@pytest.fixture(scope="module")
def exposures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("shards")
    paths = [root / f"exp_{i:04d}.fits" for i in range(3)]
    for i, path in enumerate(paths):
        _exposure(path, i)
    return paths


@pytest.fixture(scope="module")
def plain(exposures: list[Path], tmp_path_factory: pytest.TempPathFactory):
    """The exposures ingested unsharded (Dask threads: before this module's cluster starts)."""
    with dask.config.set({"skysieve.ingest.shard-bytes": "none"}):
        return ingest(exposures, tmp_path_factory.mktemp("plain") / "plain.zarr", stamp=16,
                      chunk_sources=8)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def test_sharded_ingest_equals_unsharded_and_carries_healpix(exposures: list[Path], plain,
                                                             tmp_path: Path) -> None:
    with dask.config.set({"skysieve.ingest.shard-bytes": 16 * 16 * 4 * 8 * 3}):  # 3 chunks
        sharded = ingest(exposures, tmp_path / "sharded.zarr", stamp=16, chunk_sources=8)
    assert sharded.n_sources == plain.n_sources > 100
    a, b = open_store(plain.store), open_store(sharded.store)
    assert "shard_sources" not in a.attrs and b.attrs["shard_sources"] == 24
    assert zarr.open_group(str(sharded.store), mode="r")["image"].shards[0] == 24
    np.testing.assert_array_equal(a["image"].values, b["image"].values)
    np.testing.assert_array_equal(a["stamp_fwhm"].values, b["stamp_fwhm"].values)
    # measured as the stamps were cut (phase 1), yet each row's are its own stamp's
    again = stamp_statistics(b["image"].values)
    for name in STAMP_STATS:
        np.testing.assert_array_equal(b[name].values, again[name])
    assert not list(tmp_path.glob(".*")), "the spill's scratch directory outlived the ingest"
    image_files = [p for p in (sharded.store / "image").rglob("*") if p.is_file()
                   and p.name != "zarr.json"]
    assert len(image_files) == -(-sharded.n_sources // 24)
    # HEALPix once at ingest: nested, the configured order, as classify computes it
    assert b.attrs["healpix_order"] == 10
    want = healpix_index(b["ra"].values, b["dec"].values, 10)
    assert b["healpix"].dtype == np.int64 and (want >= 0).all()
    np.testing.assert_array_equal(b["healpix"].values, want)


def test_healpix_index_is_minus_one_without_a_position() -> None:
    hp = healpix_index(np.array([10.0, np.nan, 200.0]), np.array([-5.0, 1.0, 89.0]), 4)
    assert hp[1] == -1 and 0 <= hp[0] < 12 * 4**4 and 0 <= hp[2] < 12 * 4**4 and hp[0] != hp[2]


def test_an_aborted_store_gets_no_more_writes(plain, tmp_path: Path) -> None:
    ds = open_store(plain.store)
    spill = tmp_path / "spill.npy"  # phase 1's spill of 3 + 5 stamps, in two runs
    np.save(spill, ds["image"][:8, 0].values[[5, 6, 7, 0, 1, 2, 3, 4]])
    fresh = tmp_path / "fresh.zarr"
    create_store(fresh, ds.coords.to_dataset().to_dataframe().reset_index(drop=True),
                 stamp=16, bands=["r"], chunk_sources=4, pixel_scale=0.25, inputs=[], rejects=[])
    segments = [(str(spill), 3, 5), (str(spill), 0, 3)]
    request_abort(fresh)
    assert _copy_shard_task(str(fresh), 0, segments, 4) == 0
    assert np.isnan(open_store(fresh)["image"][:8].values).all()  # nothing written
    fresh.joinpath(".abort").unlink()
    assert _copy_shard_task(str(fresh), 0, segments, 4) == 8  # runs that straddle chunks
    np.testing.assert_array_equal(open_store(fresh)["image"][:8].values, ds["image"][:8].values)


def _slow_write(path: Path, delay: float):
    """A task that writes ``path`` ``delay`` s after it starts (built from library functions,
    so worker processes can unpickle it)."""
    waited = dask.delayed(time.sleep, pure=False)(delay)
    return dask.delayed(Path.write_text, pure=False)(path, dask.delayed(str)(waited))


def _check_failure_awaits_the_rest(tmp_path: Path) -> None:
    calls = []
    tasks = [dask.delayed(operator.truediv, pure=False)(1, 0)]
    tasks += [_slow_write(tmp_path / f"late_{i}.txt", 0.4) for i in range(4)]
    with pytest.raises(ZeroDivisionError):
        compute_tasks(tasks, on_error=lambda: calls.append(1))
    written = sorted(p.name for p in tmp_path.glob("late_*"))
    time.sleep(1.0)  # nothing may still be running: no file appears after the raise
    assert sorted(p.name for p in tmp_path.glob("late_*")) == written
    assert calls == [1]


def test_a_failing_task_awaits_the_others_on_a_cluster(client, tmp_path: Path) -> None:
    _check_failure_awaits_the_rest(tmp_path)


def test_a_failing_task_awaits_the_others_without_a_client(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    def no_client():
        raise ValueError("no client in this test")

    monkeypatch.setattr(distributed, "get_client", no_client)
    with dask.config.set(num_workers=2):
        _check_failure_awaits_the_rest(tmp_path)


def _payload(i: int) -> bytes:
    return bytes(100_000) + bytes([i])


def _results_held_after(delay: float) -> int:
    """How many task results this worker holds, ``delay`` s after it starts."""
    from distributed import get_worker

    time.sleep(delay)
    return len(get_worker().data)


def test_a_cluster_releases_each_result_as_it_arrives() -> None:
    """Workers must not hold a night's results until its last task ends (memory per worker
    would grow with the number of CCDs it measured)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster):
        tasks = [dask.delayed(_payload, pure=False)(i) for i in range(12)]
        with dask.annotate(priority=-100):  # runs after the others, on the one thread
            tasks.append(dask.delayed(_results_held_after, pure=False)(1.5))
        *payloads, held = compute_tasks(tasks)
    assert [p[-1] for p in payloads] == list(range(12))  # results in order, all of them
    assert held <= 1, f"the worker still held {held} finished results"
