"""Where skysieve runs: one entry point, :func:`connect`, and one small module per kind.

``cluster`` imports nothing else of skysieve's.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distributed import Client

from cluster.errors import ClusterError

__all__ = ["connect", "choose_kind", "ClusterError", "KINDS"]

KINDS = ("auto", "local", "cuda", "slurm", "pbs", "lsf", "tcp://host:port", "scheduler.json")


def choose_kind(kind: str = "auto", *, workers_per_gpu: int = 1) -> str:
    """Resolve ``"auto"``: ``"cuda"`` when GPUs are visible and dask-cuda is installed, else ``"local"``.

    GPUs are counted without creating a CUDA context in this process (see
    :func:`cluster.cuda.visible_gpus`); with ``workers_per_gpu > 1`` dask-cuda is not
    needed. Any other ``kind`` is returned unchanged.
    """
    if kind != "auto":
        return kind
    from cluster import cuda

    if not cuda.visible_gpus():
        return "local"
    if workers_per_gpu == 1 and not cuda.dask_cuda_installed():
        warnings.warn(f"GPUs are visible but {cuda.MISSING} Running on the CPU (--cluster local).",
                      stacklevel=2)
        return "local"
    return "cuda"


@contextmanager
def connect(kind: str = "auto", *, profile: Path | None = None, n_workers: int | None = None,
            threads_per_worker: int | None = None, memory_limit: str | float = "auto",
            workers_per_gpu: int = 1) -> Iterator[Client]:
    """Start (or join) a Dask cluster and yield a client that is the default while open.

    Parameters
    ----------
    kind : str, default: "auto"
        ``"auto"`` (``"cuda"`` when GPUs are visible and dask-cuda is installed,
        else ``"local"``), ``"local"`` (a :class:`distributed.LocalCluster` sized
        from the cores), ``"cuda"`` (dask-cuda's ``LocalCUDACluster``, one worker
        per visible GPU), ``"slurm"``, ``"pbs"`` or ``"lsf"`` (dask-jobqueue,
        configured by ``profile``), an existing scheduler address
        (``"tcp://host:port"``) or the path of a scheduler file (``*.json``).
    profile : Path, optional
        YAML cluster profile for the batch-system kinds (keys: see
        ``cluster/profiles.yaml``), read with ``yaml.safe_load``.
    n_workers, threads_per_worker : int, optional
        Override the local cluster's shape. For ``"cuda"``, ``n_workers`` caps
        the number of GPUs used; for the batch systems it asks for a fixed number
        of worker processes instead of adaptive scaling.
    memory_limit : str or float, default: "auto"
        Memory limit per local worker.
    workers_per_gpu : int, default: 1
        For ``"cuda"``: worker processes per GPU (more than one lets a small model's GPU
        serve several processes' CPU work; see :mod:`cluster.cuda`).

    Yields
    ------
    distributed.Client

    Raises
    ------
    ClusterError
        An unknown kind, a bad profile or a missing optional dependency.
    """
    from cluster import address, jobqueue, local

    kind = choose_kind(kind, workers_per_gpu=workers_per_gpu)
    if kind == "local":
        with local.local_cluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                 memory_limit=memory_limit) as lc, Client(lc) as client:
            yield client
    elif kind == "cuda":
        from cluster import cuda

        with cuda.cuda_cluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                               memory_limit=memory_limit, workers_per_gpu=workers_per_gpu,
                               ) as cc, Client(cc) as client:
            yield client
    elif kind in jobqueue.KINDS:
        if threads_per_worker is not None:
            raise ClusterError(f"--threads does not apply to --cluster {kind}: set `cores` and "
                               "`processes` in the profile instead (threads = cores / processes)")
        with jobqueue.start(kind, profile=profile, n_workers=n_workers) as jc, \
                Client(jc) as client:
            yield client
    elif address.is_address(kind):
        with address.client_for(kind) as client:
            yield client
    else:
        raise ClusterError(f"unknown cluster {kind!r}; use one of {', '.join(KINDS)} "
                           "(e.g. --cluster local or --cluster tcp://127.0.0.1:8786)")
