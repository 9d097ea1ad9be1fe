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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["exclusive", "lock_path", "OutputLocked"]


class OutputLocked(FileExistsError):
    """Another live run is writing the same output."""


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


@contextmanager
def exclusive(out: Path) -> Iterator[Path]:
    """Hold the lock of ``out`` for the duration of the ``with`` block.

    Raises
    ------
    OutputLocked
        A live process on this host (or any process on another host) holds it.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
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
            raise OutputLocked(
                f"{out}: another skysieve run (pid {holder.get('pid')!r} on "
                f"{holder.get('host')!r}) is writing it; wait for it to finish, or delete "
                f"{path} if that run is gone") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
