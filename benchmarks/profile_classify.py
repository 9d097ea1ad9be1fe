"""Profile of one classification task, and what the alternatives to each stage would cost.

    python -m benchmarks profile_classify [--quick]

Not part of the default run.  On one chunk of stamps, in this process with 2
torch threads, medians over repeats, each stage as it was before the speed work
of issue #6 and as it is now:

- reading the chunk from Zarr stored as float32 uncompressed (now: the
  ``ingest.image-compression`` default), float32/zstd (before), float16/zstd,
  float32/blosc-lz4 and float16/blosc-lz4;
- preprocessing with ``prepare`` measuring each stamp's background and noise
  (before; still so for older stores) vs given the store's ``stamp_bg`` and
  ``stamp_noise`` (now: measured once at ingest, :mod:`pipeline.imaging.stamp_stats`);
- the same asinh stretch fused into one kernel by ``torch.compile`` (tried, not used: the
  kernel is no faster than the eager passes, see docs/performance.md);
- the blur score (``apparent_fwhm``): now measured at ingest, so not a classify stage;
- the model at batch 64 and 256, with batch norms folded (now) and not (before);
- issue #15, the rest of a task: reading one chunk's every variable through Zarr
  (before) vs ``read_rows`` decoding the chunk files itself (now), and writing the part
  with its fsync in the task (before) vs handing it to the writer thread (now).

It prints the ceiling ratio ``model / (read + preprocess + blur + model)`` before
and now, which is what limits classify end to end vs the raw model on a CPU where
every stage shares the same cores.  Writes ``results/profile_classify.json``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (_templates, make_store, median_time, parse_args, report,
                                scratch)

__all__ = ["main"]

_READ_NOW, _READ_BEFORE = "float32 uncompressed (now)", "float32 zstd (before)"
_PREP_BEFORE = "preprocess: prepare measuring background+noise (before)"
_PREP_NOW = "preprocess: prepare with the stored stamp_bg/stamp_noise (now)"
_BLUR = "blur score: apparent_fwhm (before; now at ingest)"
_PREP_COMPILED = "preprocess: the stretch as one torch.compile kernel (tried)"


def _compiled_stretch(images: np.ndarray, bg: Any, noise: Any, softening: float,
                      repeats: int) -> float:
    """Seconds for the asinh stretch of ``images`` as one fused ``torch.compile`` kernel.

    NaN where torch cannot compile here (no C++ compiler): the row then says so by its value.
    """
    import torch

    def stretch(x: Any, bg: Any, noise: Any) -> Any:
        u = (x - bg[..., None, None]) * (noise * softening).reciprocal()[..., None, None]
        a = u.abs().clamp(max=1e18)
        return torch.nan_to_num(torch.log(a + torch.sqrt(a * a + 1.0)).copysign(u), nan=0.0)

    x = torch.from_numpy(images)
    try:
        fused = torch.compile(stretch, dynamic=False)
        with torch.inference_mode():
            fused(x, bg, noise)  # compiles
            return median_time(lambda: fused(x, bg, noise), repeats=repeats)
    except Exception:  # noqa: BLE001 - a benchmark row, not a code path
        return float("nan")


def _stamps(n: int, stamp: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = _templates(stamp, 256, 0)
    img = t[rng.integers(0, len(t), n)] + rng.normal(0, 3, (n, stamp, stamp)).astype(np.float32)
    return img[:, None].astype(np.float32)


def _read_variants(images: np.ndarray, folder: Path, repeats: int) -> dict[str, float]:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    out = {}
    variants = {_READ_NOW: ("float32", None),
                _READ_BEFORE: ("float32", [ZstdCodec(level=3)]),
                "float16 zstd": ("float16", [ZstdCodec()]),
                "float32 blosc-lz4": ("float32", [BloscCodec(cname="lz4", clevel=5,
                                                             shuffle="bitshuffle")]),
                "float16 blosc-lz4": ("float16", [BloscCodec(cname="lz4", clevel=5,
                                                             shuffle="bitshuffle")])}
    for i, (name, (dtype, comp)) in enumerate(variants.items()):
        arr = zarr.create_array(str(folder / f"v{i}.zarr"), shape=images.shape, dtype=dtype,
                                chunks=images.shape, compressors=comp)
        arr[:] = images.astype(dtype)
        size = sum(p.stat().st_size for p in (folder / f"v{i}.zarr").rglob("*") if p.is_file())
        t = median_time(lambda: np.asarray(arr[:], dtype=np.float32), repeats=repeats)
        out[name] = (t, size)
    return out


def _task_io(folder: Path, n: int, repeats: int) -> dict[str, float]:
    """Seconds per chunk of a task's read and part write, before and now (issue #15)."""
    import pyarrow as pa

    from pipeline.catalogue import part_files
    from pipeline.classify.chunk import COORDS
    from pipeline.imaging.stamp_stats import STAMP_STATS
    from pipeline.store import read as store_read

    store = make_store(folder / "io.zarr", n, 64, n)
    names = ("image", *COORDS, "label", "healpix", *STAMP_STATS)
    present = list(store_read.read_rows(store, 0, n, names)[0])
    rng = np.random.default_rng(0)
    table = pa.table({"source_id": pa.array(np.arange(n, dtype=np.int64)),
                      "exposure": pa.array([f"exp{i % 4}" for i in range(n)], pa.string()),
                      **{f"c{k}": pa.array(rng.random(n).astype(np.float32)) for k in range(16)}})
    count = iter(range(10**6))

    def soon() -> None:
        part_files.write_part_soon(table, folder / f"part-{next(count):05d}.parquet", metadata={})

    out = {"read: every variable of a chunk through Zarr (before)":
           median_time(lambda: store_read._read_with_zarr(store, 0, n, present), repeats=repeats),
           "read: read_rows, chunk files decoded directly (now)":
           median_time(lambda: store_read.read_rows(store, 0, n, names), repeats=repeats),
           "write: part written and fsynced in the task (before)":
           median_time(lambda: part_files.write_part(table, folder / "p.parquet", metadata={}),
                       repeats=repeats),
           "write: part handed to the writer thread (now)": median_time(soon, repeats=repeats)}
    part_files.flush_parts(folder)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the profile and write its JSON; return the payload."""
    import torch

    from pipeline import bundled
    from pipeline.imaging.blur_score import apparent_fwhm
    from pipeline.imaging.preprocess import background_noise, prepare, validate_stretch
    from workers.checkpoint import load_checkpoint
    from workers.inference import Predictor

    args = parse_args(__doc__, argv)
    n, repeats = (1024, 2) if args.quick else (4096, 5)
    torch.set_num_threads(2)
    images = _stamps(n)
    net, card = load_checkpoint(bundled.resolve(args.model))
    stretch = validate_stretch(card.stretch)
    x = prepare(images, stretch=stretch, image_size=card.image_size)

    bg, noise = background_noise(images)  # what ingest stores per stamp and band

    times = {}
    with torch.inference_mode():
        times[_PREP_BEFORE] = median_time(
            lambda: prepare(images, stretch=stretch, image_size=card.image_size), repeats=repeats)
        times[_PREP_NOW] = median_time(
            lambda: prepare(images, stretch=stretch, image_size=card.image_size, background=bg,
                            noise=noise), repeats=repeats)
    times[_PREP_COMPILED] = _compiled_stretch(images, bg, noise, stretch["softening"], repeats)
    times[_BLUR] = median_time(lambda: apparent_fwhm(images), repeats=repeats)
    for b in (64, 256):
        for fuse in (False, True):
            pred = Predictor(copy.deepcopy(net), card, device="cpu", batch_size=b, fuse=fuse)
            times[f"model batch {b}{', batch norms folded (now)' if fuse else ' (before)'}"] = \
                median_time(lambda: pred.predict_proba(x), repeats=repeats)
    with scratch("skysieve-bench-prof-") as tmp:
        reads = _read_variants(images, tmp, repeats)
        times.update(_task_io(tmp, n, repeats))  # one chunk of n stamps
    rows = [{"stage": f"read: {k}", "ms_per_1000": 1e6 * t / n, "MB_on_disk": s / 1e6}
            for k, (t, s) in reads.items()]
    rows += [{"stage": k, "ms_per_1000": 1e6 * t / n, "MB_on_disk": float("nan")}
             for k, t in times.items()]
    model_before = times["model batch 256 (before)"]
    model_now = times["model batch 256, batch norms folded (now)"]
    before = (reads[_READ_BEFORE][0] + times[_PREP_BEFORE] + times[_BLUR] + model_before)
    now = reads[_READ_NOW][0] + times[_PREP_NOW] + model_now
    payload = {"settings": {"n": n, "threads": 2, "model": args.model, "repeats": repeats},
               "rows": rows,
               "ceiling_before": model_before / before,
               "ceiling_now": model_now / now,
               "seconds_per_chunk_before": before, "seconds_per_chunk_now": now,
               "note": "ceilings = model / (read + preprocess + blur + model), batch 256; they "
                       "exclude the Parquet write and task overhead"}
    summary = (f"ceiling model/(read+preprocess+blur+model): before {model_before / before:.2f}, "
               f"now {model_now / now:.2f}; stages {before / now:.2f}x faster")
    return report("profile_classify", payload, rows, summary)


if __name__ == "__main__":
    main()
