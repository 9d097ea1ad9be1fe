"""GPU: raw model throughput on the GPU vs skysieve classify end to end, with GPU utilisation.

    python -m benchmarks gpu [--quick]

Only where CUDA is available (a lent GPU machine with a CUDA build of torch).
Otherwise the JSON says ``"status": "no GPU lent"`` and nothing is measured.
With a GPU: each listed model alone on the GPU (bf16 autocast, channels_last, the best
of batch 256/1024/4096); one classify task's stages, chunk by chunk, in this process
(:func:`benchmarks.classify_throughput.stage_profile`: what the CPU does per cutout beside
the GPU); then ``classify`` on a cluster with the GPU (``--cluster auto``: dask-cuda's
``LocalCUDACluster`` when installed, else a LocalCluster whose worker picks ``cuda:0``)
with one worker of 4, 8 and 16 threads (tasks read and write on the CPU while another's
stretch and model run on the GPU), and lenet5 and mobilenetv3_small at the best of those,
while ``nvidia-smi`` samples utilisation every 0.2 s.
Writes ``benchmarks/results/gpu.json`` (``pipeline.hpc.plan`` uses its rates).
"""

from __future__ import annotations

import subprocess
import threading

import numpy as np

from benchmarks._common import make_store, parse_args, report, scratch, write_result

__all__ = ["gpu_available", "nvidia_smi_sampler", "main"]


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
    args = parse_args(__doc__, argv)
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

    models = ["default"] if args.quick else ["default", "lenet5", "mobilenetv3_small",
                                            "resnet18", "resnet50", "vgg16"]
    rows = []
    for name in models:
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
    grouping = {"skysieve.classify.part-rows": 8 * chunk, "skysieve.classify.min-parts": 1}
    threads = (4,) if args.quick else (4, 8, 16)
    e2e_models = [args.model] if args.quick else [args.model, "lenet5", "mobilenetv3_small"]
    with scratch("skysieve-bench-gpu-") as tmp, dask.config.set(grouping):
        store = make_store(tmp / "bench.zarr", n, 64, chunk)
        checkpoints = {m: checkpoint_for(m, tmp) for m in e2e_models}
        stages = stage_profile(store, checkpoints[args.model], 1024, threads=1)
        best_threads = threads[0]
        for m in e2e_models:
            for t in (threads if m == args.model else (best_threads,)):
                with nvidia_smi_sampler() as smi:
                    rate = end_to_end(store, checkpoints[m], 1024, 1, t,
                                      repeats=1 if args.quick else 2, kind="auto")
                rows.append({"model": m, "arch": arch_of.get(m, m), "image_size": 64,
                             "what": f"skysieve classify end to end (1 GPU worker x {t} threads)",
                             "cutouts_per_s": rate, "gpu_util_pct": smi.mean,
                             "ratio_to_raw": rate / raw.get(m, float("nan"))})
            if m == args.model:
                best = max((r for r in rows if r["model"] == m and r["what"] != "raw GPU model"),
                           key=lambda r: r["cutouts_per_s"])
                best_threads = int(best["what"].split(" x ")[1].split()[0])
    e2e = best["cutouts_per_s"]
    stage_us = {k: 1e6 * v for k, v in stages.items()}
    payload = {"status": "measured",
               "settings": {"n": n, "chunk": chunk, "chunks_per_part": 8, "batch_size": 1024,
                            "autocast": "bf16", "threads": list(threads),
                            "cluster": "auto (LocalCUDACluster when dask-cuda imports)"},
               "rows": rows, "stages_us_per_cutout": stage_us,
               "stages_note": "one chunk at a time in this process, 1 torch CPU thread, the model "
                              "on the GPU; 'model' includes the copy to the GPU and back",
               "ratio_e2e_to_raw": e2e / raw[args.model], "best_threads": best_threads,
               "goal": "end to end >= 0.85 x the raw GPU model",
               "goal_met": e2e / raw[args.model] >= 0.85}
    return report("gpu", payload, rows, f"GPU end to end / raw = {e2e / raw[args.model]:.2f} "
                  f"({best_threads} threads); stages (us/cutout): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in stage_us.items()))


if __name__ == "__main__":
    main()
