"""Running classify's tasks: on the distributed client (or threads), retried, parts flushed.

Each task hands its part to its process's writer thread
(:func:`pipeline.catalogue.part_files.write_part_soon`), so a task that finished has
not necessarily put its part on disk yet.  :func:`run_tasks` therefore flushes every
worker's writer after the tasks are done and only then decides: a part that failed to
write is reported with its error; a finished task whose part is not on disk (its worker
died between the task and the write) is run again, like a task lost with its worker.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.catalogue import part_files

__all__ = ["Job", "run_tasks"]


@dataclass(frozen=True)
class Job:
    """One task: rows ``[start, stop)`` of ``store``, read ``step`` (one chunk) at a time -> part ``part``."""

    part: Path
    store: str
    start: int
    stop: int
    step: int


def run_tasks(todo: list[Job], make_task: Callable[[Job], Any], *, out: Path, progress: bool,
              attempts: int = 3,
              preload: dict[str, Any] | None = None) -> tuple[list[dict], list[dict]]:
    """Run one task per job on the current distributed client (or local threads).

    On a distributed client, ``preload`` (the ``path``, ``sha256`` and ``batch_size``
    the tasks pass to :func:`workers.model_cache.get_predictor`) is registered first
    as a :class:`workers.model_cache.ModelPlugin`: every worker, and every worker
    that joins or restarts later, loads the model once before its first task, and
    the tasks find it in the worker's cache.  Registering it replaces the plugin of
    an earlier run (and drops that run's model); a worker that cannot load the
    checkpoint fails the run here with its error, before any task.

    A job whose future ends neither finished nor erred (cancelled or lost when the
    scheduler dropped it with a dead worker), or finished without its part on disk,
    is submitted again, up to ``attempts`` times: writing a part is atomic and
    deterministic, so a repeat cannot double rows.

    Parameters
    ----------
    todo : list of Job
    make_task : callable
        ``make_task(job)`` -> a dask delayed (under a fresh key each call).
    out : Path
        The catalogue directory (whose parts the writers are flushed for).
    progress : bool
        Show a progress bar on a terminal.
    attempts : int, default: 3
    preload : dict, optional

    Returns
    -------
    results, failed
        The summaries of the tasks whose part is on disk, and one entry per failed part:
        its file, its store and rows, its final status and the error (a worker that died
        on it - usually over its memory limit - says what to lower).
    """
    import dask

    if not todo:
        return [], []
    try:
        from distributed import get_client, wait
        client = get_client()
    except (ImportError, ValueError):
        client = None
    if client is None:
        done = list(dask.compute(*(make_task(job) for job in todo), scheduler="threads"))
        errors = part_files.flush_parts(out)
        results = [r for job, r in zip(todo, done) if job.part.name not in errors]
        return results, [_failure(job, "error", errors[job.part.name])
                         for job in todo if job.part.name in errors]
    from distributed import KilledWorker

    if preload is not None:
        from workers.model_cache import ModelPlugin

        client.register_plugin(ModelPlugin(**preload))
    results, failed = [], []
    for attempt in range(1, attempts + 1):
        futures = client.compute([make_task(job) for job in todo])
        if progress and sys.stderr.isatty():
            from distributed import progress as progress_bar
            progress_bar(futures)
        wait(futures)
        errors = _flush_workers(client, out)
        again = []
        for job, fut in zip(todo, futures):
            if fut.status == "finished" and job.part.name in errors:
                failed.append(_failure(job, "error", errors[job.part.name]))
            elif fut.status == "finished" and job.part.exists():
                results.append(fut.result())
            elif fut.status == "error":
                exc = fut.exception()
                error = repr(exc)
                if isinstance(exc, KilledWorker):
                    n = job.stop - job.start
                    error = (f"the workers running rows {job.start}:{job.stop} of {job.store} "
                             f"({n} cutouts) died, probably over their memory limit: give "
                             f"workers more memory or re-ingest with a smaller "
                             f"ingest.chunk-sources (now {n}) ({error})")
                failed.append(_failure(job, "error", error))
            elif attempt < attempts:
                again.append(job)
            else:
                failed.append(_failure(job, fut.status,
                                       f"the task ended {fut.status!r} {attempts} times"))
        if not again:
            break
        todo = again
    return results, failed


def _failure(job: Job, status: str, error: str) -> dict[str, Any]:
    return {"part": job.part.name, "store": job.store, "rows": [job.start, job.stop],
            "status": status, "error": error}


def _flush_workers(client: Any, out: Path) -> dict[str, str]:
    """Wait for every worker's part writer; the parts of ``out`` that failed, with their errors."""
    answers = client.run(part_files.flush_parts, str(out), on_error="return")
    errors: dict[str, str] = {}
    for answer in answers.values():
        if isinstance(answer, dict):  # a worker that died meanwhile answers an exception
            errors.update(answer)
    return errors
