"""Where skysieve runs: one entry point, :func:`connect`, and one small module per kind.

``cluster`` imports nothing else of skysieve's.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distributed import Client

__all__ = ["connect", "KINDS"]

KINDS = ("local", "tcp://host:port", "scheduler.json")


@contextmanager
def connect(kind: str = "local", *, profile: Path | None = None, n_workers: int | None = None,
            threads_per_worker: int | None = None, memory_limit: str | float = "auto",
            ) -> Iterator[Client]:
    """Start (or join) a Dask cluster and yield a client that is the default while open.

    Parameters
    ----------
    kind : str, default: "local"
        ``"local"`` (a :class:`distributed.LocalCluster` sized from the cores),
        an existing scheduler address (``"tcp://host:port"``) or the path of a
        scheduler file (``*.json``).
    profile : Path, optional
        YAML cluster profile (reserved for the batch-system kinds).
    n_workers, threads_per_worker : int, optional
        Override the local cluster's shape.
    memory_limit : str or float, default: "auto"
        Memory limit per local worker.

    Yields
    ------
    distributed.Client
    """
    from cluster import address, local

    if kind == "local":
        with local.local_cluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                 memory_limit=memory_limit) as lc, Client(lc) as client:
            yield client
    elif address.is_address(kind):
        with address.client_for(kind) as client:
            yield client
    else:
        raise ValueError(f"unknown cluster {kind!r}; use one of {', '.join(KINDS)} "
                         "(e.g. --cluster local or --cluster tcp://127.0.0.1:8786)")
