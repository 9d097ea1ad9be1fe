"""A :class:`distributed.LocalCluster` sized for classification on this machine."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import dask.config
from distributed import LocalCluster

__all__ = ["local_cluster", "default_shape"]


def default_shape(cores: int | None = None) -> tuple[int, int]:
    """Return ``(n_workers, threads_per_worker)`` for ``cores`` CPU cores.

    One process per two cores, each with two threads: torch releases the GIL
    inside its kernels, and fewer processes hold fewer copies of the model.
    """
    cores = cores or len(os.sched_getaffinity(0))
    n_workers = max(1, cores // 2)
    return n_workers, max(1, cores // n_workers)


_DASK_MALLOC_TRIM = "65536"  # distributed.nanny.pre-spawn-environ's value


@contextmanager
def local_cluster(*, n_workers: int | None = None, threads_per_worker: int | None = None,
                  memory_limit: str | float = "auto", processes: bool = True,
                  ) -> Iterator[LocalCluster]:
    """Start a local cluster bound to localhost; stop it on exit.

    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker, which
    made small torch models 2-3x slower here (docs/architecture.md); it is unset,
    also when a Dask cluster started earlier in this process left dask's value in
    ``os.environ`` for new workers to inherit.
    """
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == _DASK_MALLOC_TRIM:
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    shape = default_shape()
    n_workers = n_workers or shape[0]
    threads_per_worker = threads_per_worker or shape[1]
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        # In-process workers talk over inproc://; only a process cluster binds a host.
        where = {"host": "127.0.0.1"} if processes else {}
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                               memory_limit=memory_limit, processes=processes,
                               dashboard_address="127.0.0.1:0", **where)
    try:
        yield cluster
    finally:
        cluster.close()
