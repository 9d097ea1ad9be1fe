"""Profile of one classification task, and what the alternatives to each stage would cost.

    python -m benchmarks profile_classify [--quick]

Not part of the default run.  On one chunk of stamps, in this process with 2
torch threads, medians over repeats:

- reading the chunk from Zarr stored as float32/zstd (today), float16/zstd,
  float32/blosc-lz4, float16/blosc-lz4 and uncompressed;
- preprocessing with ``prepare`` (today: border median + MAD per stamp, stretch)
  vs the same stretch given a per-stamp background and noise computed at ingest;
- the blur score (``apparent_fwhm``), which does not depend on the model and
  could be computed once at ingest;
- the model at batch 64 and 256.

It prints the ceiling ratio ``model / (all stages)`` today and with the cheaper
choices, which is what limits classify end to end vs the raw model on a CPU
where every stage shares the same cores.  Writes ``results/profile_classify.json``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import _templates, markdown_table, median_time, write_result

__all__ = ["main"]


def _stamps(n: int, stamp: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = _templates(stamp, 256, 0)
    img = t[rng.integers(0, len(t), n)] + rng.normal(0, 3, (n, stamp, stamp)).astype(np.float32)
    return img[:, None].astype(np.float32)


def _read_variants(images: np.ndarray, folder: Path, repeats: int) -> dict[str, float]:
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    out = {}
    variants = {"float32 zstd (today)": ("float32", [ZstdCodec()]),
                "float16 zstd": ("float16", [ZstdCodec()]),
                "float32 blosc-lz4": ("float32", [BloscCodec(cname="lz4", clevel=5,
                                                             shuffle="bitshuffle")]),
                "float16 blosc-lz4": ("float16", [BloscCodec(cname="lz4", clevel=5,
                                                             shuffle="bitshuffle")]),
                "float32 uncompressed": ("float32", None)}
    for i, (name, (dtype, comp)) in enumerate(variants.items()):
        arr = zarr.create_array(str(folder / f"v{i}.zarr"), shape=images.shape, dtype=dtype,
                                chunks=images.shape, compressors=comp)
        arr[:] = images.astype(dtype)
        size = sum(p.stat().st_size for p in (folder / f"v{i}.zarr").rglob("*") if p.is_file())
        t = median_time(lambda: np.asarray(arr[:], dtype=np.float32), repeats=repeats)
        out[name] = (t, size)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the profile and write its JSON; return the payload."""
    import torch

    from pipeline import models as bundled
    from pipeline.blur_score import apparent_fwhm
    from pipeline.preprocess import _stretch_, background_noise, prepare, validate_stretch
    from workers.checkpoint import load_checkpoint
    from workers.inference import Predictor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="default")
    args = parser.parse_args(argv)
    n, repeats = (1024, 2) if args.quick else (4096, 5)
    torch.set_num_threads(2)
    images = _stamps(n)
    net, card = load_checkpoint(bundled.resolve(args.model))
    stretch = validate_stretch(card.stretch)
    x = prepare(images, stretch=stretch, image_size=card.image_size)

    bg, noise = background_noise(images)  # what ingest could store per stamp and band

    def prepare_known_bg() -> torch.Tensor:
        t = torch.from_numpy(images)
        z = (t - bg[..., None, None]).div_((noise * stretch["softening"])[..., None, None])
        return _stretch_(torch.nan_to_num_(z, nan=0.0), stretch)

    times = {}
    with torch.inference_mode():
        times["preprocess: prepare (today)"] = median_time(
            lambda: prepare(images, stretch=stretch, image_size=card.image_size), repeats=repeats)
        times["preprocess: background+noise from ingest"] = median_time(prepare_known_bg,
                                                                        repeats=repeats)
    times["blur score (model-independent)"] = median_time(lambda: apparent_fwhm(images),
                                                         repeats=repeats)
    for b in (64, 256):
        pred = Predictor(net, card, device="cpu", batch_size=b)
        times[f"model batch {b}"] = median_time(lambda: pred.predict_proba(x), repeats=repeats)
    tmp = Path(tempfile.mkdtemp(prefix="skysieve-bench-prof-"))
    try:
        reads = _read_variants(images, tmp, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [{"stage": f"read: {k}", "ms_per_1000": 1e6 * t / n, "MB_on_disk": s / 1e6}
            for k, (t, s) in reads.items()]
    rows += [{"stage": k, "ms_per_1000": 1e6 * t / n, "MB_on_disk": float("nan")}
             for k, t in times.items()]
    model = min(times["model batch 64"], times["model batch 256"])
    today = (reads["float32 zstd (today)"][0] + times["preprocess: prepare (today)"]
             + times["blur score (model-independent)"] + model)
    best_read = min(t for t, _ in reads.values())
    proposed = best_read + times["preprocess: background+noise from ingest"] + model
    payload = {"settings": {"n": n, "threads": 2, "model": args.model, "repeats": repeats},
               "rows": rows,
               "ceiling_today": model / today,
               "ceiling_proposed": model / proposed,
               "proposed": "fastest read variant + background/noise stored at ingest + blur "
                           "score computed at ingest; ceilings exclude the Parquet write and "
                           "task overhead"}
    path = write_result("profile_classify", payload)
    print(markdown_table(rows))
    print(f"\nceiling model/(read+preprocess+blur+model): today {model / today:.2f}, "
          f"proposed {model / proposed:.2f}; wrote {path}")
    return payload


if __name__ == "__main__":
    main()
