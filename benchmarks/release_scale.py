"""Release scale, simulated: a night of >= 500 exposures ingested, >= 2 million cutouts classified.

    python -m benchmarks release_scale [--quick] [--sources N] [--exposures M]

Cheap synthetic data, never GalSim, on a LocalCluster of one single-threaded worker per core:

- **ingest**: ``M`` FITS exposures (1024² px, sky + noise + ~300 Gaussian and Moffat sources
  from a template bank, TAN WCS), written by the workers, then ``ingest`` of all of them in
  one run, into a Zarr v3 sharded store (config ``ingest.shard-bytes``);
- **classify**: a store of ``N`` cutouts (64 px stamps: templates plus noise from a bank,
  written shard by shard, a chunk at a time, by the workers (``create_store`` / ``write_chunks``), so the
  per-stamp statistics are measured as ingest measures them), classified by ``classify``,
  together with the ingested store (several stores as one catalogue).  At full size the
  run is killed (``SIGKILL`` of a ``skysieve classify`` process group, its cluster with it)
  once ``--kill-at`` of its parts are on disk, then rerun to resume
  (:func:`killed_then_resumed`); the catalogue is checked for lost and doubled rows.

Each stage is run at a tenth of its size too, on a fresh cluster, so that memory per worker
is shown bounded: the peak RSS of every worker (a sampling thread inside it) and of the
client, at 1/10 and at full size.  Reported for both stages: cutouts/s, peak RSS per worker
and on the client, scheduler tasks/s (tasks the stage ran / its wall time) and files
written per million cutouts (the catalogue's; the built store's: ``store_files``).
Writes ``benchmarks/results/release_scale.json``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np

from benchmarks._common import (PeakRSS, parse_args, report, reset_worker_peaks, scratch,
                                worker_peaks)

__all__ = ["build_store", "cheap_exposures", "killed_then_resumed", "main"]

_MIB = 2**20


def _bank(stamp: int, count: int, seed: int) -> np.ndarray:
    """``count`` unit-flux Gaussian (even) and Moffat (odd) profiles of side ``stamp``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:stamp, :stamp] - stamp // 2
    out = np.empty((count, stamp, stamp), np.float32)
    for i in range(count):
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        r2 = (x - dx) ** 2 + (y - dy) ** 2
        img = np.exp(-r2 / (2 * rng.uniform(1.0, 2.5) ** 2)) if i % 2 == 0 else (
            1 + r2 / rng.uniform(2.0, 8.0)) ** -2.5
        out[i] = img / img.sum()
    return out


def cheap_exposures(folder: str, first: int, count: int, size: int, n_sources: int) -> int:
    """Write exposures ``first .. first+count-1`` as ``exp_NNNNN.fits``; return how many."""
    from astropy.io import fits
    from astropy.wcs import WCS

    bank = _bank(15, 64, seed=first)
    for k in range(first, first + count):
        rng = np.random.default_rng(k)
        image = rng.normal(400.0, 6.0, (size, size)).astype(np.float32)
        pos = rng.integers(8, size - 8, (n_sources, 2))
        flux = rng.uniform(2e3, 4e4, n_sources).astype(np.float32)
        pick = rng.integers(0, len(bank), n_sources)
        for (px, py), f, p in zip(pos, flux, pick):
            image[py - 7:py + 8, px - 7:px + 8] += f * bank[p]
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [(k * 0.07) % 360.0, -30.0 + (k % 600) * 0.1]
        wcs.wcs.crpix = [size / 2, size / 2]
        wcs.wcs.cd = np.diag([-0.25, 0.25]) / 3600
        header = wcs.to_header()
        header["FILTER"] = "r"
        fits.PrimaryHDU(image, header=header).writeto(Path(folder) / f"exp_{k:05d}.fits")
    return count


def _write_shard(store: str, start: int, stop: int, stamp: int, chunk: int) -> int:
    """Write rows ``[start, stop)`` of a benchmark store (bank templates + bank noise), a chunk at a time."""
    from pipeline.store import write_chunks

    templates = 3000.0 * _bank(stamp, 256, seed=0)

    def blocks() -> Any:
        for lo in range(start, stop, chunk):
            rng = np.random.default_rng(lo)
            noise = rng.normal(0.0, 3.0, (512, stamp, stamp)).astype(np.float32)
            n = min(stop, lo + chunk) - lo
            stamps = templates[rng.integers(0, len(templates), n)]
            stamps += np.roll(noise[rng.integers(0, len(noise), n)], int(rng.integers(stamp)),
                              axis=2)
            yield stamps[:, None]

    return write_chunks(store, start, blocks())


def build_store(client: Any, path: Path, n: int, stamp: int = 64) -> Path:
    """A sharded store of ``n`` cutouts, written shard by shard by the cluster's workers."""
    import pandas as pd

    from pipeline.store import create_store, pack_source_id, sources_per_chunk, sources_per_shard

    chunk = sources_per_chunk(stamp, 1)
    shard = sources_per_shard(chunk, n, stamp, 1)
    rng = np.random.default_rng(n)
    idx = np.arange(n)
    exposure = np.char.add("sim_", (idx // 4000).astype("U6")).astype(object)
    f32 = np.float32
    table = pd.DataFrame({
        "exposure": exposure, "ccd": np.zeros(n, np.int16), "x": rng.uniform(0, 4096, n),
        "y": rng.uniform(0, 4096, n), "ra": rng.uniform(0, 360, n),
        "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))), "flux": np.full(n, 3000, f32),
        "a": np.ones(n, f32), "b": np.ones(n, f32), "theta": np.zeros(n, f32),
        "fwhm": np.full(n, 3.0, f32), "psf_fwhm": np.full(n, 3.0, f32),
        "sky": np.zeros(n, f32), "sky_rms": np.full(n, 3.0, f32), "snr": np.full(n, 100, f32),
        "flags": np.zeros(n, np.int32)})
    table["source_id"] = pack_source_id(exposure, table["ccd"], idx % 4000)
    create_store(path, table, stamp=stamp, bands=["r"], chunk_sources=chunk, pixel_scale=0.25,
                 inputs=[], rejects=[], shard_sources=shard)
    del table
    step = shard or chunk
    futures = [client.submit(_write_shard, str(path), s, min(n, s + step), stamp, chunk,
                             pure=False)
               for s in range(0, n, step)]
    assert sum(client.gather(futures)) == n
    return path


def _files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def _stage(prepare, measure, n_workers: int) -> dict[str, Any]:
    """On a fresh cluster: ``prepare(client)``, then time and watch ``measure(client)``.

    ``measure`` returns ``(cutouts, tasks, files)``; the peaks of RSS (every worker, the
    client) count from after ``prepare``, so they are the stage's own.
    """
    from cluster import connect

    with connect("local", n_workers=n_workers, threads_per_worker=1) as client:
        prepare(client)
        reset_worker_peaks(client)
        sampler = PeakRSS()
        t0 = time.perf_counter()
        cutouts, tasks, files = measure(client)
        seconds = time.perf_counter() - t0
        client_peak = sampler.stop()
        peaks = worker_peaks(client)
    return {"cutouts": int(cutouts), "seconds": seconds, "cutouts_per_s": cutouts / seconds,
            "tasks": int(tasks), "scheduler_tasks_per_s": tasks / seconds,
            "files": int(files), "files_per_million_cutouts": files / cutouts * 1e6,
            "peak_rss_mib_per_worker": sorted(round(v / _MIB, 1) for v in peaks.values()),
            "max_worker_peak_rss_mib": round(max(peaks.values()) / _MIB, 1),
            "client_peak_rss_mib": round(client_peak / _MIB, 1)}


def _ingest_stage(work: Path, label: str, count: int, size: int, per_exposure: int,
                  n_workers: int) -> dict[str, Any]:
    """``count`` cheap exposures written by the workers, then one ``ingest`` of them all."""
    import zarr

    from pipeline.ingest.exposures import ingest

    folder, out = work / f"exposures_{label}", work / f"night_{label}.zarr"
    folder.mkdir()

    def prepare(client):
        per_task = 25
        client.gather([client.submit(cheap_exposures, str(folder), s, min(per_task, count - s),
                                     size, per_exposure, pure=False)
                       for s in range(0, count, per_task)])

    def measure(client):
        paths = sorted(folder.glob("*.fits"))
        summary = ingest(paths, out)
        image = zarr.open_group(str(out), mode="r")["image"]
        unit = (image.shards or image.chunks)[0]
        tasks = len(paths) + summary.n_ccds + math.ceil(summary.n_sources / unit)
        return summary.n_sources, tasks, _files(out)

    result = _stage(prepare, measure, n_workers)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def killed_then_resumed(stores: list[Path], out: Path, *, model: str, kill_at: float,
                        n_workers: int, timeout: float = 7200.0) -> dict[str, Any]:
    """Classify ``stores`` in a ``skysieve classify`` process, kill it, resume here.

    The process (its own session, with its own LocalCluster of ``n_workers``) is sent
    ``SIGKILL`` as a group once ``kill_at`` of the parts are on disk; ``classify`` is then
    run again in this process, on the current client, which keeps the whole parts and
    writes the rest.  The catalogue's ``source_id`` column is read back whole to count
    rows lost and doubled against the stores.

    Returns
    -------
    dict
        ``parts``, ``parts_at_kill`` (``None`` when the first run finished before it could
        be killed), ``parts_resumed``, ``rows``, ``rows_lost``, ``rows_doubled``,
        ``resume_seconds`` and the resumed run's ``summary``.
    """
    import pyarrow.dataset as pads
    import zarr

    from pipeline.catalogue.layout import PART_GLOB
    from pipeline.classify.graph import classify, planned_parts

    ids = np.concatenate([np.asarray(zarr.open_group(str(s), mode="r")["source_id"][:])
                          for s in stores])
    cmd = [str(Path(sys.executable).with_name("skysieve")), "classify", *map(str, stores),
           "--out", str(out), "--model", model, "--cluster", "local",
           "--workers", str(n_workers), "--threads", "1"]
    log = out.parent / f"{out.name}.log"  # a file, not a pipe: a long run never blocks on it
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=sink)
    total = planned_parts(stores)
    deadline, at_kill = time.monotonic() + timeout, None
    while proc.poll() is None and time.monotonic() < deadline:
        done = len(list(out.glob(PART_GLOB)))
        if done >= kill_at * total:
            os.killpg(proc.pid, signal.SIGKILL)
            at_kill = done
            break
        time.sleep(0.2)
    proc.wait(timeout=120)
    err = log.read_text(errors="replace")
    log.unlink()
    if at_kill is None and proc.returncode != 0:
        raise RuntimeError(f"release_scale: {' '.join(cmd)} exited {proc.returncode}:\n"
                           f"{err[-3000:]}")
    t0 = time.perf_counter()
    summary = classify(stores, out, model=model, progress=False)
    resume_seconds = time.perf_counter() - t0
    got = pads.dataset(str(out), format="parquet").to_table(columns=["source_id"])
    got = np.asarray(got["source_id"])
    uniq, counts = np.unique(got, return_counts=True)
    return {"parts": summary.parts, "parts_at_kill": at_kill,
            "parts_resumed": summary.parts_written, "rows": int(got.size),
            "rows_lost": int(np.setdiff1d(ids, uniq).size),
            "rows_doubled": int((counts - 1).sum()), "resume_seconds": resume_seconds,
            "summary": summary.to_dict()}


def _classify_stage(work: Path, label: str, count: int, model: str, n_workers: int,
                    extra: list[Path], kill_at: float | None = None) -> dict[str, Any]:
    """A cheap store of ``count`` cutouts, then one ``classify`` of it (and of ``extra``).

    With ``kill_at``, the same stores are classified again after the timed run, killed and
    resumed (:func:`killed_then_resumed`); ``kill_and_resume`` reports that check.
    """
    from pipeline.classify.graph import classify

    from cluster import connect

    store, out = work / f"release_{label}.zarr", work / f"catalogue_{label}"

    def prepare(client):
        build_store(client, store, count)

    def measure(client):
        summary = classify([store, *extra], out, model=model, progress=False)
        return summary.rows, summary.parts_written, _files(out)

    result = _stage(prepare, measure, n_workers)
    if kill_at:  # the same stores again, killed mid-run and resumed (after the timed run)
        with connect("local", n_workers=n_workers, threads_per_worker=1):
            result["kill_and_resume"] = killed_then_resumed(
                [store, *extra], work / f"catalogue_{label}_killed", model=model,
                kill_at=kill_at, n_workers=n_workers)
        shutil.rmtree(work / f"catalogue_{label}_killed", ignore_errors=True)
    result["store_files"] = _files(store)  # the sharded store's own files (its cutouts: count)
    result["store_files_per_million_cutouts"] = _files(store) / count * 1e6
    result["stores"] = [str(p.name) for p in (store, *extra)]
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return result


def _same_parts(tenth: int, sources: list[int], extra: list[Path]) -> tuple[int, int]:
    """The ``classify.min-parts`` that gives a store of ``tenth`` cutouts parts as large as the
    full run's (stores of ``sources`` cutouts plus ``extra``), and that part size in chunks.

    The tenth's default parts are smaller (a small run keeps at least ``min-parts`` parts
    to spread over the workers), so its memory alone does not show whether memory follows
    the store's size or the part's; this stage does.
    """
    import zarr

    from pipeline import config
    from pipeline.classify.graph import chunks_per_part
    from pipeline.store import sources_per_chunk

    chunk = sources_per_chunk(64, 1)
    chunks = [-(-n // chunk) for n in sources]
    for store in extra:
        image = zarr.open_group(str(store), mode="r")["image"]
        chunks.append(-(-image.shape[0] // image.chunks[0]))
    per_part = chunks_per_part(chunks, chunk, part_rows=int(config.get("classify.part-rows")),
                               min_parts=int(config.get("classify.min-parts")))
    return max(1, -(-tenth // chunk) // per_part), per_part


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return the result payload."""
    args = parse_args(__doc__, argv, quick_help="50 exposures of 512² px, a store of 40,000",
                      options={"--sources": {"type": int, "default": None},
                               "--exposures": {"type": int, "default": None},
                               "--workers": {"type": int, "default": 2},
                               "--kill-at": {"type": float, "default": 0.5}})
    n_store = args.sources or (40_000 if args.quick else 2_000_000)
    n_exp = args.exposures or (50 if args.quick else 500)
    size, per_exposure = (512, 100) if args.quick else (1024, 300)
    results: dict[str, dict[str, Any]] = {}
    with scratch("skysieve-bench-release-") as work:
        for label, count in (("tenth", max(2, n_exp // 10)), ("full", n_exp)):
            results[f"ingest_{label}"] = _ingest_stage(work, label, count, size, per_exposure,
                                                       args.workers)
        for label, count in (("tenth", n_store // 10), ("full", n_store)):
            # the full store is classified with the ingested night: two stores, one catalogue
            extra = [work / "night_full.zarr"] if label == "full" else []
            if label == "full":  # the tenth again, its parts as large as the full run's
                min_parts, per_part = _same_parts(count // 10, [count], extra)
                with dask.config.set({"skysieve.classify.min-parts": min_parts}):
                    results["classify_tenth_same_parts"] = _classify_stage(
                        work, "tenth_same_parts", count // 10, args.model, args.workers, [])
                results["classify_tenth_same_parts"]["chunks_per_part"] = per_part
            results[f"classify_{label}"] = _classify_stage(
                work, label, count, args.model, args.workers, extra,
                kill_at=args.kill_at if label == "full" else None)
    rows = [{"stage": k, "cutouts": v["cutouts"], "cutouts_per_s": v["cutouts_per_s"],
             "max_worker_rss_mib": v["max_worker_peak_rss_mib"],
             "client_rss_mib": v["client_peak_rss_mib"],
             "tasks_per_s": v["scheduler_tasks_per_s"],
             "files_per_M": v["files_per_million_cutouts"]} for k, v in results.items()]
    growth = {s: results[f"{s}_full"]["max_worker_peak_rss_mib"]
              / results[f"{s}_tenth"]["max_worker_peak_rss_mib"] for s in ("ingest", "classify")}
    growth["classify_same_part_size"] = (results["classify_full"]["max_worker_peak_rss_mib"]
                                         / results["classify_tenth_same_parts"]
                                         ["max_worker_peak_rss_mib"])
    payload = {"settings": {"quick": args.quick, "model": args.model, "workers": args.workers,
                            "threads_per_worker": 1, "store_cutouts": n_store,
                            "exposures": n_exp, "exposure_size": size,
                            "sources_per_exposure": per_exposure, "stamp": 64,
                            "how": "each stage on a fresh LocalCluster; RSS sampled every 10 ms "
                                   "by a thread in each worker and in the client, from the "
                                   "start of the stage (after its inputs were written)"},
               "stages": results, "rows": rows,
               "worker_peak_growth_full_over_tenth": growth,
               "goal": ">= 500 exposures ingested and >= 2e6 cutouts classified in one run, "
                       "memory per worker bounded"}
    return report("release_scale", payload, rows,
                  f"worker peak RSS full / tenth: ingest {growth['ingest']:.2f}, classify "
                  f"{growth['classify']:.2f} ({growth['classify_same_part_size']:.2f} against "
                  f"the tenth with parts as large as the full run's)")


if __name__ == "__main__":
    main()
