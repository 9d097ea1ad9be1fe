"""What every ``skysieve`` command module shares: help, path types, one-line errors, cluster options.

Command modules import this module only, never ``pipeline.cli`` (the package, which
imports them to register their commands).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click

__all__ = ["CONTEXT", "EXISTING", "NEW", "one_line_errors", "cluster_options", "connect_cluster"]

CONTEXT = {"help_option_names": ["-h", "--help"]}

EXISTING = click.Path(exists=True, path_type=Path)
"""An input file or folder that must exist."""

NEW = click.Path(path_type=Path)
"""An output path (it may not exist yet)."""


def one_line_errors() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: report bad input as one line on stderr and exit 1, without a traceback.

    Caught: skysieve's own errors (:class:`pipeline.errors.SkysieveError` and its
    subclasses), the worker and cluster layers' ``CheckpointError`` and
    ``ClusterError``, and ``OSError`` (missing files, permissions, a full or
    read-only disk). Nothing else: any other exception (a bare ``ValueError``
    included) is a bug and keeps its traceback.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from cluster import ClusterError
            from pipeline.errors import SkysieveError
            from workers.checkpoint import CheckpointError

            try:
                return func(*args, **kwargs)
            except (SkysieveError, CheckpointError, ClusterError, OSError) as exc:
                click.echo(f"skysieve: error: {exc}", err=True)
                sys.exit(1)

        return wrapper

    return decorate


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options that choose where a computing command runs.

    The command receives ``cluster_kind``, ``profile``, ``n_workers`` and
    ``threads_per_worker``; pass them to :func:`connect_cluster`.
    """
    func = click.option("--threads", "threads_per_worker", type=int, default=None,
                        help="Threads per worker (default: chosen from the cores).")(func)
    func = click.option("--workers", "n_workers", type=int, default=None,
                        help="Worker processes (default: chosen from the cores).")(func)
    func = click.option("--profile", type=EXISTING, default=None,
                        help="YAML cluster profile (read with yaml.safe_load).")(func)
    func = click.option("--cluster", "cluster_kind", default=None,
                        help="auto | local | cuda | slurm | pbs | lsf | tcp://host:port | scheduler.json "
                             "(default: auto = cuda when GPUs are visible, else local).")(func)
    return func


def connect_cluster(cluster_kind: str | None, profile: Path | None, n_workers: int | None,
                    threads_per_worker: int | None):
    """:func:`cluster.connect` with the options of :func:`cluster_options` (kind from the config)."""
    from cluster import connect

    from pipeline import config

    return connect(config.resolve("cluster.kind", cluster_kind), profile=profile,
                   n_workers=n_workers, threads_per_worker=threads_per_worker,
                   workers_per_gpu=int(config.get("cluster.workers-per-gpu")))
