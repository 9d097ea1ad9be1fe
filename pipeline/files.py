"""Writing result files safely: whole or absent (temporary name, then rename), in strict JSON.

Every run record, card, table and figure skysieve writes goes through
:func:`atomic_write`: the bytes land in a hidden temporary beside the target and
are renamed over it, so a reader (or a rerun after a crash) sees the old file or
the new one, never half of one.  Temporaries are named ``.<name>.<random>.tmp``
so a sweep can tell them from results.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "write_json", "to_jsonable", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary beside it, then a rename.

    Parameters
    ----------
    path : str or Path
        The file to (re)place; its folder must exist.
    data : bytes or str
        The whole content; ``str`` is written as UTF-8.
    fsync : bool, default: False
        Flush the file to disk before the rename (for files a crash must not lose).

    Returns
    -------
    Path
        ``path``.  The file gets the umask's permissions (``mkstemp`` alone would
        make it private).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` to what strict JSON holds.

    Dict keys become strings, tuples lists, numpy scalars and arrays Python
    numbers and lists, paths strings, and NaN/inf ``None`` (``allow_nan=False``
    JSON has no NaN).  Anything else is returned as it is.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Any, *, fsync: bool = False) -> Path:
    """Write ``data`` as indented strict JSON (see :func:`to_jsonable`), atomically."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, text, fsync=fsync)
