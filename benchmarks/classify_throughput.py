"""skysieve classify end to end (Zarr -> preprocess + blur -> model -> Parquet) vs the raw model.

    python -m benchmarks.classify_throughput [--quick] [--model default]

Raw: the same model, one process, batched, ``inference_mode``, on tensors already
in memory (the physical limit). End to end: ``classify`` on a LocalCluster,
workers x threads = 1x2 and 2x1, on a store of identical-size cutouts. Medians
over repeats, side by side in one run. Writes ``benchmarks/results/classify_throughput.json``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, median_time, write_result


def make_store(path: Path, n: int, stamp: int, chunk: int, seed: int = 0) -> Path:
    """A store of ``n`` realistic-looking stamps (Moffat stars and exponential galaxies + noise)."""
    import xarray as xr

    from pipeline import __version__

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:stamp, :stamp] - stamp // 2
    r2 = x**2 + y**2
    images = np.empty((n, 1, stamp, stamp), np.float32)
    for i in range(n):
        if i % 2:
            img = (1 + r2 / 4.0) ** -3.0
        else:
            q, th = rng.uniform(0.4, 1), rng.uniform(0, np.pi)
            u = x * np.cos(th) + y * np.sin(th)
            v = (-x * np.sin(th) + y * np.cos(th)) / q
            img = np.exp(-np.hypot(u, v) / rng.uniform(2, 6))
        images[i, 0] = 3000 * img / img.sum() + rng.normal(0, 3, (stamp, stamp))
    idx = np.arange(n)
    ds = xr.Dataset(
        {"image": (("source", "band", "y", "x"), images)},
        coords={
            "source_id": ("source", idx.astype(np.int64)),
            "exposure": ("source", np.asarray([f"exp_{i // 500:04d}" for i in idx])),
            "ccd": ("source", np.zeros(n, np.int16)),
            "x": ("source", rng.uniform(0, 2048, n)), "y": ("source", rng.uniform(0, 2048, n)),
            "ra": ("source", rng.uniform(150, 150.5, n)), "dec": ("source", rng.uniform(2, 2.5, n)),
            "flux": ("source", np.full(n, 3000, np.float32)),
            "a": ("source", np.ones(n, np.float32)), "b": ("source", np.ones(n, np.float32)),
            "theta": ("source", np.zeros(n, np.float32)),
            "fwhm": ("source", np.full(n, 3.0, np.float32)),
            "psf_fwhm": ("source", np.full(n, 3.0, np.float32)),
            "sky": ("source", np.zeros(n, np.float32)), "sky_rms": ("source", np.full(n, 3, np.float32)),
            "snr": ("source", np.full(n, 100, np.float32)), "flags": ("source", np.zeros(n, np.int32)),
        },
        attrs={"skysieve_version": __version__, "kind": "cutouts", "stamp": stamp, "bands": ["r"],
               "pixel_scale": 0.25, "chunk_sources": chunk, "inputs": [], "rejects": [],
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    ).chunk({"source": chunk})
    ds.to_zarr(path, zarr_format=3, mode="w")
    return path


def raw_throughput(model: str, images: np.ndarray, batch_size: int, threads: int) -> float:
    """Cutouts/s of the model alone on preprocessed tensors in memory, one process."""
    import torch

    from pipeline import models as bundled
    from pipeline.preprocess import prepare
    from workers.inference import Predictor
    from workers.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    ckpt = bundled.resolve(model)
    net, card = load_checkpoint(ckpt)
    predictor = Predictor(net, card, device="cpu", batch_size=batch_size)
    x = prepare(images, stretch=card.stretch, image_size=card.image_size)
    seconds = median_time(lambda: predictor.predict_proba(x), repeats=3)
    return len(images) / seconds


def end_to_end(store: Path, model: str, batch_size: int, workers: int, threads: int,
               repeats: int) -> float:
    """Cutouts/s of ``classify`` on a fresh LocalCluster (model loaded once per worker, warm)."""
    from cluster import connect
    from pipeline.classify import classify

    rates = []
    with connect("local", n_workers=workers, threads_per_worker=threads):
        out = Path(tempfile.mkdtemp(prefix="skysieve-bench-"))
        try:
            classify(store, out / "warm", model=model, batch_size=batch_size, progress=False)
            for i in range(repeats):
                s = classify(store, out / f"r{i}", model=model, batch_size=batch_size, progress=False)
                rates.append(s.cutouts_per_s)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return float(np.median(rates))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON; return the payload."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small store, one repeat")
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    n = 4096 if args.quick else 32768
    chunk = 1024 if args.quick else 4096
    repeats = 1 if args.quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="skysieve-bench-store-"))
    try:
        store = make_store(tmp / "bench.zarr", n, 64, chunk)
        import zarr
        images = np.asarray(zarr.open_group(str(store), mode="r")["image"][:min(n, 8192)])
        raw = raw_throughput(args.model, images, args.batch_size, threads=2)
        rows = [{"what": "raw model, 1 process x 2 threads (in memory)", "cutouts_per_s": raw,
                 "ratio_to_raw": 1.0}]
        for workers, threads in ((1, 2), (2, 1)):
            rate = end_to_end(store, args.model, args.batch_size, workers, threads, repeats)
            rows.append({"what": f"skysieve classify, LocalCluster {workers}x{threads}",
                         "cutouts_per_s": rate, "ratio_to_raw": rate / raw})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    payload = {"settings": {"n": n, "chunk": chunk, "stamp": 64, "batch_size": args.batch_size,
                            "model": args.model, "repeats": repeats},
               "rows": rows, "goal": "end-to-end >= 0.90 x raw"}
    path = write_result("classify_throughput", payload)
    print(markdown_table(rows))
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
