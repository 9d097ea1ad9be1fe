"""The output-folder transaction of a cutout store: whole on success, absent on error.

A store is built in a hidden sibling directory and renamed into place only when
whole, so ``out`` always holds the old store, the new one or nothing; every
ingest path goes through :func:`building`::

    out = prepare_output(out, overwrite=overwrite)      # refuse early, before any work
    ...
    with building(out, overwrite=overwrite) as tmp:     # sweeps dead runs' temporaries
        create_store(tmp, table, ...)                   # pipeline.store.build
        write_chunk(tmp, 0, stamps)
    # committed by rename here; on any error the temporary is removed instead

The temporary's name, ``.<name>.tmp-<host>-<pid>-<random>``, says which process
builds it, so a later run can remove the half-built stores of runs that were
killed (SIGKILL, a lost node) without touching a live run's.  A build whose task
failed is marked (:func:`request_abort`) so that tasks starting later write nothing
while the running ones are awaited.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import StoreError

__all__ = ["ABORT_FILE", "abort_requested", "building", "commit_store", "discard",
           "prepare_output", "request_abort", "scratch", "sweep_stale_temporaries",
           "temporary_sibling"]

#: Marker file inside a store being built: its build failed, so tasks not yet started write nothing.
ABORT_FILE = ".abort"


def _is_cutout_store(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("kind") == "cutouts"


def prepare_output(out: str | Path, *, overwrite: bool = False) -> Path:
    """Validate the output path before any work; return it as a Path.

    Parameters
    ----------
    out : str or Path
        The store directory to write; its parent is created when missing.
    overwrite : bool, default: False
        Whether an existing cutout store (or empty directory) may be replaced.

    Raises
    ------
    StoreError
        ``out`` exists and ``overwrite`` is False, or it exists and is not a
        cutout store (never replaced, to protect unrelated files).
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise StoreError(f"{out}: already exists; pass --overwrite (overwrite=True) to "
                             "replace it, or choose another --out")
        if not out.is_dir() or not (_is_cutout_store(out) or not any(out.iterdir())):
            raise StoreError(f"{out}: exists and is not a skysieve cutout store; refusing to "
                             "replace it (remove it yourself or choose another --out)")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _host_tag() -> str:
    import socket

    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"


def temporary_sibling(out: Path) -> Path:
    """A fresh hidden directory name next to ``out`` to build the store in.

    Its name, ``.<name>.tmp-<host>-<pid>-<random>``, says which process builds
    it, so that :func:`sweep_stale_temporaries` can remove it after that
    process died (SIGKILL, a lost node) without touching a live run's.
    """
    return out.with_name(f".{out.name}.tmp-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def scratch(out: str | Path) -> Iterator[Path]:
    """A hidden working directory next to ``out`` for a build's intermediate files.

    Named like the store's temporary plus ``.scratch``
    (``.<name>.tmp-<host>-<pid>-<random>.scratch``), so that
    :func:`sweep_stale_temporaries` removes it after a killed run; removed on exit,
    whether the body returns or raises.  It sits next to ``out``, so every worker
    that can write the store can read it.

    Yields
    ------
    Path
        The directory, created empty.
    """
    path = temporary_sibling(Path(out))
    path = path.with_name(f"{path.name}.scratch")
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale_temporaries(out: str | Path) -> list[Path]:
    """Remove the half-built stores (and scratch) of dead ingests of ``out`` (same host, pid gone).

    Returns
    -------
    list of Path
        The directories removed.
    """
    out = Path(out)
    host, removed = _host_tag(), []
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        tail = tmp.name[len(f".{out.name}.tmp-"):]
        parts = tail.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue  # another host's (or an unknown) build: never ours to remove
        pid = int(parts[1])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def commit_store(tmp: Path, out: Path, *, overwrite: bool) -> Path:
    """Rename the finished store ``tmp`` to ``out`` (replacing an old store if allowed)."""
    old = None
    if out.exists():
        prepare_output(out, overwrite=overwrite)  # re-check: it may have appeared meanwhile
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def discard(tmp: Path | None) -> None:
    """Remove a half-built store directory, if any."""
    if tmp is not None and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


def request_abort(path: str | Path) -> None:
    """Mark the store being built at ``path`` as failed: tasks that start later write nothing.

    :func:`pipeline.ingest.scan.compute_tasks` calls it (through its ``on_error``) on
    the first failed task, then waits for the tasks already running before the
    temporary is removed, so no task writes into a directory being deleted.
    """
    path = Path(path)
    if path.is_dir():
        (path / ABORT_FILE).touch()


def abort_requested(path: str | Path) -> bool:
    """Whether :func:`request_abort` marked the store being built at ``path``."""
    return (Path(path) / ABORT_FILE).exists()


@contextmanager
def building(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a store at ``out`` as one transaction: whole on success, absent on error.

    Checks ``out`` (:func:`prepare_output`), removes the temporaries of earlier
    runs of ``out`` that were killed (:func:`sweep_stale_temporaries`), and
    yields a fresh hidden sibling path for the body to create the store in.
    When the body returns, the store is renamed into place
    (:func:`commit_store`); when it raises (``KeyboardInterrupt`` included),
    the temporary is removed and the error propagates.

    Parameters
    ----------
    out : str or Path
        The store directory to write.
    overwrite : bool, default: False
        Replace an existing store at ``out``.

    Yields
    ------
    Path
        The temporary directory path (not yet created).

    Raises
    ------
    StoreError
        ``out`` exists and may not be replaced (see :func:`prepare_output`).
    """
    out = prepare_output(out, overwrite=overwrite)
    sweep_stale_temporaries(out)
    tmp = temporary_sibling(out)
    try:
        yield tmp
        commit_store(tmp, out, overwrite=overwrite)
    except BaseException:
        discard(tmp)
        raise
