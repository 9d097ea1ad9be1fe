"""GPU: raw model throughput on the GPU vs skysieve classify end to end, with GPU utilisation.

    python -m benchmarks gpu [--quick]

Only where CUDA is available (a lent GPU machine with a CUDA build of torch).
Otherwise the JSON says ``"status": "no GPU lent"`` and nothing is measured.
With a GPU: each listed model alone on the GPU (bf16 autocast, channels_last, the best
of batch 256/1024/4096); one classify task's stages, chunk by chunk, in this process
(:func:`benchmarks.classify_throughput.stage_profile`: what the CPU does per cutout beside
the GPU); then ``classify`` at each ``--shapes`` (default: 1, 2, 4 and 8 worker processes
sharing one GPU, ``cluster.workers-per-gpu``; 1 is dask-cuda's ``LocalCUDACluster``),
the other ``--e2e-models`` at the first and last two, ``--copies`` stores as one run,
while ``nvidia-smi`` samples utilisation every 0.2 s.
Writes ``benchmarks/results/gpu.json`` (``pipeline.hpc.plan`` uses its rates).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from benchmarks._common import make_store, parse_args, report, scratch, write_result

__all__ = ["gpu_available", "nvidia_smi_sampler", "main"]

RAW_MODELS = ("default", "lenet5", "mobilenetv3_small", "resnet18", "resnet50", "vgg16")
#: One dask-cuda worker (more threads did not help: 87k/s at 4, 68k/s at 16 on an H200
#: node), then several worker processes sharing the GPU (``cluster.workers-per-gpu``).
SHAPES = ("cuda:1x4", "cuda:2x4", "cuda:4x4", "cuda:8x2")


def gpu_available() -> bool:
    """Whether this process can use CUDA."""
    import torch

    return torch.cuda.is_available()


class nvidia_smi_sampler:  # noqa: N801 - used as a context manager
    """Sample GPU utilisation (%) with ``nvidia-smi`` (argument list, no shell) while open."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()

    def _run(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self.interval):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self) -> "nvidia_smi_sampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        """Mean utilisation over the samples (NaN when none)."""
        return float(np.mean(self.samples)) if self.samples else float("nan")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (or record that no GPU was lent) and write its JSON."""
    args = parse_args(__doc__, argv, options={
        "--raw-models": {"default": ",".join(RAW_MODELS), "help": "models timed alone"},
        "--e2e-models": {"default": "default,lenet5,mobilenetv3_small",
                         "help": "models classified end to end (the first at every shape)"},
        "--copies": {"type": int, "default": 1,
                     "help": "classify the store and COPIES-1 copies of it as one run (a "
                             "release ingested in pieces), so the fixed cost of a run is small"},
        "--shapes": {"default": ",".join(SHAPES),
                     "help": "cluster shapes KIND:WORKERSxTHREADS; KIND cuda (WORKERS per GPU, "
                             "one GPU: 1 is dask-cuda's LocalCUDACluster) or local (a "
                             "LocalCluster: every worker picks cuda:0)"}})
    if not gpu_available():
        payload = {"status": "no GPU lent",
                   "detail": "torch.cuda.is_available() is False on this machine; run "
                             "`python -m benchmarks gpu` on a GPU machine with a CUDA build of "
                             "torch to measure GPU end-to-end vs raw GPU model throughput",
                   "rows": []}
        path = write_result("gpu", payload)
        print(f"no GPU lent; wrote {path}")
        return payload

    import dask

    from benchmarks.classify_throughput import checkpoint_for, end_to_end, stage_profile
    from benchmarks.raw_model import _build, model_rate
    from pipeline.store import sources_per_chunk

    e2e_models = [m for m in args.e2e_models.split(",") if m][:1 if args.quick else None]
    raw_models = list(dict.fromkeys(e2e_models + args.raw_models.split(",")))
    shapes = [_shape(s) for s in args.shapes.split(",")][:1 if args.quick else None]
    rows = []
    for name in raw_models:
        net, arch, in_chans = _build(name, 64)
        rate = max(model_rate(net, 64, batch_size=b, threads=1, in_chans=in_chans,
                              device="cuda", target_s=0.5) for b in (256, 1024, 4096))
        rows.append({"model": name, "arch": arch, "image_size": 64, "what": "raw GPU model",
                     "cutouts_per_s": rate, "gpu_util_pct": float("nan"), "ratio_to_raw": 1.0})
    raw = {r["model"]: r["cutouts_per_s"] for r in rows}
    arch_of = {r["model"]: r["arch"] for r in rows}
    # A store as `skysieve ingest` writes it (its chunk size), parts of several chunks as a
    # release gets them; long enough that the cluster's fixed cost is small beside it.
    n = 16384 if args.quick else 131072
    chunk = sources_per_chunk(64, 1)
    grouping = {"skysieve.classify.part-rows": 4 * chunk, "skysieve.classify.min-parts": 1}
    with scratch("skysieve-bench-gpu-") as tmp, dask.config.set(grouping):
        store = make_store(tmp / "bench.zarr", n, 64, chunk)
        stores = [store] + [Path(shutil.copytree(store, tmp / f"copy{i}.zarr"))
                            for i in range(1, args.copies)]
        checkpoints = {m: checkpoint_for(m, tmp) for m in e2e_models}
        stages = stage_profile(store, checkpoints[e2e_models[0]], 1024, threads=1)
        for m in e2e_models:
            # the first model at every shape; the others at the first and the last two
            for kind, workers, threads in (shapes if m == e2e_models[0] else
                                           list(dict.fromkeys([shapes[0], *shapes[-2:]]))):
                with nvidia_smi_sampler() as smi:
                    rate = end_to_end(stores, checkpoints[m], 1024, workers, threads,
                                      repeats=1 if args.quick else 2, kind=kind)
                rows.append({"model": m, "arch": arch_of[m], "image_size": 64,
                             "what": f"skysieve classify end to end ({kind} {workers}x{threads})",
                             "cluster": kind, "workers": workers, "threads": threads,
                             "cutouts_per_s": rate, "gpu_util_pct": smi.mean,
                             "ratio_to_raw": rate / raw[m]})
    best = {m: max((r for r in rows if r["model"] == m and "cluster" in r),
                   key=lambda r: r["cutouts_per_s"]) for m in e2e_models}
    first = best[e2e_models[0]]
    stage_us = {k: 1e6 * v for k, v in stages.items()}
    payload = {"status": "measured",
               "settings": {"n": n * len(stores), "stores": len(stores), "chunk": chunk, "chunks_per_part": 4, "batch_size": 1024,
                            "autocast": "bf16", "shapes": args.shapes, "models": e2e_models},
               "rows": rows, "stages_us_per_cutout": stage_us,
               "stages_note": "one chunk at a time in this process, 1 torch CPU thread, the model "
                              "on the GPU; 'model' includes the copy to the GPU and back",
               "best": {m: {"what": r["what"], "cutouts_per_s": r["cutouts_per_s"],
                            "ratio_to_raw": r["ratio_to_raw"]} for m, r in best.items()},
               "ratio_e2e_to_raw": first["ratio_to_raw"],
               "goal": "end to end >= 0.85 x the raw GPU model",
               "goal_met": first["ratio_to_raw"] >= 0.85}
    return report("gpu", payload, rows, "GPU end to end / raw: " + ", ".join(
        f"{m} {r['ratio_to_raw']:.2f} ({r['what'].split('(')[1][:-1]})" for m, r in best.items())
        + "; stages (us/cutout): " + ", ".join(f"{k} {v:.1f}" for k, v in stage_us.items()))


def _shape(text: str) -> tuple[str, int, int]:
    """``"local:4x2"`` -> ``("local", 4, 2)``."""
    kind, _, shape = text.partition(":")
    workers, _, threads = shape.partition("x")
    if kind not in ("cuda", "local", "auto") or not workers.isdigit() or not threads.isdigit():
        raise SystemExit(f"--shapes: {text!r} is not KIND:WORKERSxTHREADS (e.g. cuda:1x4)")
    return kind, int(workers), int(threads)


if __name__ == "__main__":
    main()
