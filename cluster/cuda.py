"""GPUs: dask-cuda's ``LocalCUDACluster``, one worker per visible GPU (optional: ``skysieve[gpu]``),
or several worker processes per GPU.

One worker per GPU leaves a small model's GPU idle: on an H200 node (16 cores) one
dask-cuda worker classified 66-88k cutouts/s whatever its threads (the CPU side of a task
holds the GIL), 8 processes sharing the GPU 202k/s (``benchmarks/results/gpu.json``).
``workers_per_gpu > 1`` starts that many :class:`distributed.Nanny` workers per GPU, each
with ``CUDA_VISIBLE_DEVICES`` rotated so that its own GPU comes first, as dask-cuda does
(dask-cuda itself names its workers by GPU, one each); it needs no dask-cuda.

GPUs are counted without creating a CUDA context in this (the client's) process:
``CUDA_VISIBLE_DEVICES`` when it is set, else NVML through pynvml when it is
installed, else ``nvidia-smi -L``. Never ``torch.cuda.is_available()``: a
context made here before the cluster forks its workers breaks them or wastes
GPU memory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator, Mapping

import dask.config

from cluster.errors import ClusterError

__all__ = ["visible_gpus", "parse_visible_devices", "parse_nvidia_smi", "dask_cuda_installed",
           "rotated", "cuda_cluster", "MISSING"]

MISSING = ("dask-cuda is not installed, and --cluster cuda needs it: "
           "pip install 'skysieve[gpu]' (in the environment that runs skysieve)")


def parse_visible_devices(value: str) -> list[str]:
    """The devices named by a ``CUDA_VISIBLE_DEVICES`` value, in order.

    CUDA stops at the first invalid entry: ``"0,1"`` gives two, ``""`` and ``"-1"``
    none, ``"0,-1,1"`` one. UUIDs (``GPU-...``, ``MIG-...``) are kept as written.
    """
    devices: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item or item.startswith("-"):
            break
        devices.append(item)
    return devices


def parse_nvidia_smi(text: str) -> list[str]:
    """The GPU indices in ``nvidia-smi -L`` output (lines ``GPU 0: NVIDIA H100 (UUID: ...)``)."""
    return [line.split(":", 1)[0].split()[1] for line in text.splitlines()
            if line.startswith("GPU ") and ":" in line]


def _nvml_count() -> int | None:
    if importlib.util.find_spec("pynvml") is None:
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver, no GPU
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs a worker would see, as device names (indices or UUIDs), without touching CUDA.

    Parameters
    ----------
    env : mapping, optional
        Environment to read ``CUDA_VISIBLE_DEVICES`` from (default: ``os.environ``).

    Returns
    -------
    list of str
        Empty when there is no GPU, no driver, or ``CUDA_VISIBLE_DEVICES`` hides them all.
    """
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return parse_visible_devices(env["CUDA_VISIBLE_DEVICES"])
    count = _nvml_count()
    if count is not None:
        return [str(i) for i in range(count)]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else []


def dask_cuda_installed() -> bool:
    """Whether ``dask_cuda`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("dask_cuda") is not None


def rotated(devices: list[str], i: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` for the worker of GPU ``i``: its own first, then the rest in order."""
    return ",".join(devices[i:] + devices[:i])


@contextmanager
def cuda_cluster(*, n_workers: int | None = None, threads_per_worker: int | None = None,
                 memory_limit: str | float = "auto", workers_per_gpu: int = 1) -> Iterator[object]:
    """Start a cluster bound to localhost with ``workers_per_gpu`` workers per visible GPU; stop it on exit.

    Parameters
    ----------
    n_workers : int, optional
        Use only the first ``n_workers`` visible GPUs.
    threads_per_worker : int, optional
        Threads per worker (default: dask-cuda's, 1).
    memory_limit : str or float, default: "auto"
        Host memory limit per worker (``"auto"``: the host's memory shared among them).
    workers_per_gpu : int, default: 1
        1: dask-cuda's ``LocalCUDACluster``; more: that many worker processes per GPU
        (plain ``Nanny`` workers; no dask-cuda needed).

    Raises
    ------
    ClusterError
        dask-cuda is missing (``pip install 'skysieve[gpu]'``) with one worker per GPU, no GPU
        is visible, or a bad count.
    """
    if isinstance(workers_per_gpu, bool) or not isinstance(workers_per_gpu, int) \
            or workers_per_gpu < 1:
        raise ClusterError(f"workers-per-gpu {workers_per_gpu!r}: need a whole number >= 1")
    if workers_per_gpu == 1 and not dask_cuda_installed():
        raise ClusterError(MISSING)
    devices = visible_gpus()
    if not devices:
        raise ClusterError("--cluster cuda: no GPU is visible (nvidia-smi -L lists none, or "
                           f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} "
                           "hides them); use --cluster local")
    if n_workers is not None:
        if n_workers < 1:
            raise ClusterError(f"--workers {n_workers}: need at least one GPU worker")
        devices = devices[:n_workers]
    if workers_per_gpu > 1:
        with _shared_gpu_cluster(devices, workers_per_gpu, threads_per_worker or 1,
                                 memory_limit) as cluster:
            yield cluster
        return
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:  # installed but broken, e.g. no cuda-bindings
        raise ClusterError(f"dask-cuda failed to import ({exc}): pip install 'skysieve[gpu]' "
                           "with the cu12/cu13 extra matching the driver") from exc
    options = {} if threads_per_worker is None else {"threads_per_worker": threads_per_worker}
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devices), host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0", memory_limit=memory_limit,
                                   **options)
    try:
        yield cluster
    finally:
        cluster.close()


@contextmanager
def _shared_gpu_cluster(devices: list[str], per_gpu: int, threads: int,
                        memory_limit: str | float) -> Iterator[object]:
    """A ``SpecCluster`` of ``per_gpu`` Nanny workers per device, each seeing its device first."""
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    n = len(devices) * per_gpu
    limit = MEMORY_LIMIT // n if memory_limit == "auto" else memory_limit
    workers = {f"gpu{g}-{k}": {"cls": Nanny, "options": {
        "nthreads": threads, "memory_limit": limit,
        "env": {"CUDA_VISIBLE_DEVICES": rotated(devices, g)}}}
        for g in range(len(devices)) for k in range(per_gpu)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    cluster = SpecCluster(workers=workers, scheduler=scheduler, name="skysieve-gpus")
    try:
        yield cluster
    finally:
        cluster.close()
