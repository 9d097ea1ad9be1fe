"""One writer per output: a lock file beside the directory a run writes.

Two runs pointed at the same catalogue would each skip the parts the other
has not yet finished and then race on them; the second run refuses instead,
naming the process that holds the lock. A lock left by a process that died
(SIGKILL, a lost node) is taken over, so a rerun always resumes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import OutputLocked, OutputNotWritable

__all__ = ["exclusive", "lock_path", "OutputLocked", "OutputNotWritable"]

#: A lock file still empty after this many seconds was left by a run killed
#: between creating it and writing its pid: stale.
EMPTY_LOCK_GRACE_S = 30.0


def lock_path(out: Path) -> Path:
    """The lock file of output directory ``out``: ``.<name>.lock`` beside it."""
    out = Path(out).resolve()
    return out.with_name(f".{out.name}.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


@contextmanager
def exclusive(out: Path) -> Iterator[Path]:
    """Hold the lock of ``out`` for the duration of the ``with`` block.

    Raises
    ------
    OutputLocked
        A live process on this host (or any process on another host) holds it.
    OutputNotWritable
        The lock cannot be created (read-only or full disk, no permission).
    """
    path = lock_path(out)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                path.unlink(missing_ok=True)  # stale: its run died; take over
                continue
            if not holder and _age(path) > EMPTY_LOCK_GRACE_S:
                path.unlink(missing_ok=True)  # killed between creating and writing it
                continue
            raise OutputLocked(
                f"{out}: another skysieve run (pid {holder.get('pid')!r} on "
                f"{holder.get('host')!r}) is writing it; wait for it to finish, or delete "
                f"{path} if that run is gone") from None
        except OSError as exc:  # read-only, full, or not ours: say so before any work
            raise OutputNotWritable(
                f"{out}: cannot write there ({exc.strerror or exc}: {exc.filename or path}); "
                "choose a writable --out or free space") from exc
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise OutputNotWritable(f"{out}: cannot write the lock file {path} ({exc}); "
                                    "choose a writable --out or free space") from exc
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
