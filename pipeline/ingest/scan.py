"""What both FITS ingests share: argument checks, running tasks, the rejects row, and phase 0.

Phase 0 of ``skysieve ingest`` (cutouts, :mod:`pipeline.ingest.exposures`) and
of ``--whole-exposure`` (:mod:`pipeline.ingest.whole_exposure`) is the same:
one task per file checksums it and lists its CCDs (2-D image HDUs); files that
cannot be read, HDUs that are not images and repeated exposure names become
rejects rows ``{file, hdu, reason}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import dask
import numpy as np

from pipeline.errors import BadExposure, SkysieveError
from pipeline.ingest.fits_io import exposure_name, file_sha256, image_hdus, open_fits

__all__ = ["compute_tasks", "reject_lines", "reject_row", "scan_file", "scan_inputs",
           "validate_int", "validate_paths"]


def validate_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Return the exposures as a non-empty list of paths (one path is a list of one)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise SkysieveError("ingest needs at least one FITS exposure; got an empty list")
    return paths


def validate_int(name: str, value: Any, low: int, high: int, *,
                 error: type[Exception] = SkysieveError) -> int:
    """Return ``value`` as an int if it is an integer from ``low`` to ``high``, else raise.

    Parameters
    ----------
    name : str
        The option as the user spells it, named in the message.
    value : Any
        What was given (a Python or numpy integer; not a bool).
    low, high : int
        The valid range, both ends included.
    error : type of Exception, default: SkysieveError
        The class raised (one of :mod:`pipeline.errors`).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            low <= int(value) <= high):
        raise error(f"{name} must be an integer from {low} to {high}; got {value!r}")
    return int(value)


def compute_tasks(tasks: list[Any], *, on_error: Callable[[], None] | None = None) -> list[Any]:
    """Compute delayed tasks on the current client, else the local threaded scheduler.

    When a task fails, ``on_error()`` is called at once (e.g.
    :func:`pipeline.store.request_abort`, so that tasks not yet started return
    without writing), then every other task is awaited before the first error is
    raised: when this returns or raises, no task is still running, so the caller may
    remove what they write into.

    Parameters
    ----------
    tasks : list of dask.delayed
        One-function tasks (``dask.delayed(func)(*args)``).
    on_error : callable, optional
        Called once, with no argument, on the first failure.

    Each result is fetched as its task finishes and released on the cluster then, so
    workers do not hold the results of a whole night's tasks until the last one ends.

    Returns
    -------
    list
        The tasks' results, in order.
    """
    if not tasks:
        return []
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        from distributed import as_completed, wait

        futures = client.compute(tasks)
        position = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for future in as_completed(futures):
            if future.status == "error":
                if on_error is not None:
                    on_error()
                wait([f for f in futures if f is not None])  # the rest finish or return
                future.result()  # raises the error, with its traceback
            i = position[future.key]
            results[i] = future.result()
            futures[i] = None  # released at once: a worker holds no finished results
            future.release()
        return results
    return _compute_threads(tasks, on_error)


def _compute_threads(tasks: list[Any], on_error: Callable[[], None] | None) -> list[Any]:
    """:func:`compute_tasks` without a client: a thread pool of config ``num_workers``."""
    import os
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
    from concurrent.futures import wait as wait_all

    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks)))) as pool:
        futures = [pool.submit(dask.compute, task, scheduler="sync") for task in tasks]
        done, _ = wait_all(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            if on_error is not None:
                on_error()
            for future in futures:
                future.cancel()  # not started: never will; running: awaited on exit
    if failed:
        raise failed[0].exception()
    return [f.result()[0] for f in futures]


def reject_row(path: str, hdu: int, reason: str) -> dict[str, Any]:
    """One row of a store's rejects table: ``{"file", "hdu" (-1: the whole file), "reason"}``."""
    return {"file": str(path), "hdu": int(hdu), "reason": str(reason)}


def reject_lines(rejects: list[dict[str, Any]], *, show: int = 10) -> list[str]:
    """The CLI's lines for a rejects table: the count, then the first ``show`` rows."""
    lines = [f"rejects: {len(rejects)}"]
    lines += [f"  {r['file']}[{r['hdu']}]: {r['reason']}" for r in rejects[:show]]
    if len(rejects) > show:
        lines.append(f"  ... {len(rejects) - show} more (see rejects.parquet)")
    return lines


def scan_file(path: str, with_headers: bool) -> dict[str, Any]:
    """Phase 0 task: checksum and CCD list of one file (headers when forced RA/Dec).

    Returns
    -------
    dict
        ``path``, ``sha256``, ``bytes``, ``ccds`` (a list of ``(hdu, header
        text or None, (ny, nx))``) and ``rejects``.  It never raises: a bad
        file is a rejects row.
    """
    result: dict[str, Any] = {"path": path, "ccds": [], "rejects": [], "sha256": None,
                              "bytes": 0}
    try:
        result["sha256"], result["bytes"] = file_sha256(path)
        ccds, rejects = image_hdus(path)
        result["rejects"] = rejects
        with open_fits(path) as hdul:
            result["ccds"] = [(h, hdul[h].header.tostring() if with_headers else None,
                               tuple(int(n) for n in hdul[h].shape[-2:])) for h in ccds]
    except BadExposure as exc:
        result["rejects"] = [reject_row(path, -1, str(exc))]
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the night
        result["rejects"] = [reject_row(path, -1, f"{path}: unexpected {type(exc).__name__}: {exc}")]
    return result


def scan_inputs(paths: Sequence[Path], *, with_headers: bool
                ) -> tuple[list[tuple[dict[str, Any], str]], list[dict[str, Any]],
                           list[dict[str, Any]]]:
    """Phase 0 of an ingest: checksum and list the CCDs of every file, one task per file.

    Returns
    -------
    scans : list of (scan, exposure name)
        The files with at least one image HDU (:func:`scan_file` results).
    inputs : list of dict
        ``{"path", "sha256", "bytes"}`` of those files, for the store's provenance.
    rejects : list of dict
        Unreadable files, HDUs that are not images, and a second file whose
        exposure name (file stem) is already taken.
    """
    results = compute_tasks([dask.delayed(scan_file, pure=False)(str(p), with_headers)
                             for p in paths])
    scans: list[tuple[dict[str, Any], str]] = []
    inputs: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for scan in results:
        rejects.extend(scan["rejects"])
        if not scan["ccds"]:
            continue
        name = exposure_name(scan["path"])
        if name in seen:
            rejects.append(reject_row(scan["path"], -1, f"{scan['path']}: exposure name {name!r} "
                                      f"is also that of {seen[name]}; exposure names (file "
                                      "stems) must be unique in a store; rename one"))
            continue
        seen[name] = scan["path"]
        inputs.append({"path": str(Path(scan["path"]).resolve()), "sha256": scan["sha256"],
                       "bytes": scan["bytes"]})
        scans.append((scan, name))
    return scans, inputs, rejects
