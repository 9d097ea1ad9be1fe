"""GPU: raw model throughput on the GPU vs skysieve classify end to end, with GPU utilisation.

    python -m benchmarks gpu [--quick]

Only where CUDA is available (a lent GPU machine with a CUDA build of torch).
Otherwise the JSON says ``"status": "no GPU lent"`` and nothing is measured.
With a GPU: each listed model alone on the GPU (bf16 autocast, channels_last,
batch 256/1024), then ``classify`` on a cluster with the GPU (``--cluster auto``:
dask-cuda's ``LocalCUDACluster`` when installed, else a LocalCluster whose worker picks
``cuda:0``; one worker, 4 threads, so tasks read and write on the CPU while another's
stretch and model run on the GPU), while ``nvidia-smi`` samples utilisation every 0.2 s.
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

    from benchmarks.classify_throughput import end_to_end
    from benchmarks.raw_model import _build, model_rate

    models = ["default"] if args.quick else ["default", "mobilenetv3_small", "resnet18",
                                            "resnet50", "vgg16"]
    rows = []
    for name in models:
        net, arch, in_chans = _build(name, 64)
        rate = max(model_rate(net, 64, batch_size=b, threads=1, in_chans=in_chans,
                              device="cuda", target_s=1.0) for b in (256, 1024))
        rows.append({"model": name, "arch": arch, "image_size": 64, "what": "raw GPU model",
                     "cutouts_per_s": rate, "gpu_util_pct": float("nan")})
    n, chunk = (8192, 2048) if args.quick else (65536, 8192)
    with scratch("skysieve-bench-gpu-") as tmp:
        store = make_store(tmp / "bench.zarr", n, 64, chunk)
        with nvidia_smi_sampler() as smi:
            e2e = end_to_end(store, args.model, 1024, 1, 4, repeats=1 if args.quick else 3,
                             kind="auto")
    raw = rows[0]["cutouts_per_s"]
    rows.append({"model": args.model, "arch": rows[0]["arch"], "image_size": 64,
                 "what": "skysieve classify end to end (1 GPU worker)", "cutouts_per_s": e2e,
                 "gpu_util_pct": smi.mean})
    payload = {"status": "measured", "settings": {"n": n, "chunk": chunk, "batch_size": 1024,
                                                  "autocast": "bf16"},
               "rows": rows, "ratio_e2e_to_raw": e2e / raw}
    return report("gpu", payload, rows, f"GPU end to end / raw = {e2e / raw:.2f}")


if __name__ == "__main__":
    main()
