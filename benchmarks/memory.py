"""Peak RSS per worker while classifying a store of N and of 10 N cutouts.

    python -m benchmarks memory [--quick]

Each store is classified on a fresh LocalCluster of the default shape for this
machine; a sampling thread inside every worker (started with ``client.run``)
records the worker's own resident set size every 10 ms, so the peak is the
worker's, not the client's.  Goal: peak(10 N) <= 1.10 x peak(N), i.e. memory is
bounded by the chunk size, not by the size of the release.
Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks._common import (make_store, parse_args, report, reset_worker_peaks, scratch,
                                worker_peaks)

__all__ = ["peak_rss", "main"]


def peak_rss(store: Path, model: str, *, n_workers: int | None = None,
             threads_per_worker: int | None = None) -> dict:
    """Classify ``store`` on a fresh cluster; return per-worker start and peak RSS (MiB)."""
    from cluster import connect
    from pipeline.classify.graph import classify

    with scratch("skysieve-bench-mem-") as out:
        with connect("local", n_workers=n_workers, threads_per_worker=threads_per_worker) as client:
            start = reset_worker_peaks(client)
            summary = classify(store, out / "cat", model=model, progress=False)
            peaks = worker_peaks(client)
            shape = (len(client.scheduler_info()["workers"]),
                     next(iter(client.nthreads().values())))
    mib = 2**20
    return {"workers": shape[0], "threads_per_worker": shape[1],
            "start_mib": {w: round(v / mib, 1) for w, v in start.items()},
            "peak_mib": {w: round(v / mib, 1) for w, v in peaks.items()},
            "max_peak_mib": round(max(peaks.values()) / mib, 1),
            "cutouts_per_s": summary.cutouts_per_s, "rows": summary.rows}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON; return the payload."""
    args = parse_args(__doc__, argv, quick_help="small stores")
    n, chunk = (2048, 512) if args.quick else (4096, 512)
    results = {}
    with scratch("skysieve-bench-memstore-") as tmp:
        for size in (n, 10 * n):
            store = make_store(tmp / f"s{size}.zarr", size, 64, chunk, seed=size)
            results[size] = peak_rss(store, args.model)
            shutil.rmtree(store, ignore_errors=True)
    rows = [{"store_cutouts": size, "chunk": chunk, "workers_x_threads":
             f"{r['workers']}x{r['threads_per_worker']}", "max_peak_rss_mib": r["max_peak_mib"],
             "cutouts_per_s": r["cutouts_per_s"]} for size, r in results.items()]
    ratio = results[10 * n]["max_peak_mib"] / results[n]["max_peak_mib"]
    payload = {"settings": {"quick": args.quick, "model": args.model, "n": n, "chunk": chunk,
                            "stamp": 64, "sampling_interval_s": 0.01,
                            "how": "psutil RSS sampled by a thread inside each worker"},
               "runs": {str(k): v for k, v in results.items()}, "rows": rows,
               "ratio_10n_to_n": ratio, "goal": "peak(10 N) <= 1.10 x peak(N)",
               "goal_met": ratio <= 1.10}
    return report("memory", payload, rows, f"peak RSS 10N / N = {ratio:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
