"""A skysieve run in a child process that stops at an exact point, to be SIGKILLed there.

Usage: ``python _driver.py MODE OUT MARKER INPUT...``.  The run uses the local
threaded scheduler (no cluster), so the hooks below are in the process that
does the writing.  At the chosen point the driver creates ``MARKER`` and sleeps;
the test then kills its whole process group with SIGKILL.

Modes
-----
ingest-chunk
    ``run_night(FITS..., OUT, truth=TRUTH)`` (INPUT = TRUTH FITS...): stops after the first cutout-store chunk
    of the (still hidden, temporary) store is written.
classify-after-part
    ``classify(INPUT store, OUT)``: stops after the first catalogue part is whole.
classify-in-part
    ``classify(INPUT store, OUT)``: stops inside the write of a part, after its
    temporary file is written and before it is renamed into place.
classify
    ``classify(INPUT store, OUT)`` to the end (used under resource limits).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def _stop_here(marker: Path) -> None:
    marker.write_text(str(os.getpid()))
    time.sleep(600)


def _stop_first(once: threading.Lock, marker: Path) -> None:
    """The first caller stops here (writes ``marker``); later callers wait to be killed too."""
    if once.acquire(blocking=False):
        _stop_here(marker)
    else:
        time.sleep(600)


def _stop_after(module, name: str, once: threading.Lock, marker: Path) -> None:
    """Patch ``module.<name>``: run the real function, then :func:`_stop_first`."""
    real = getattr(module, name)

    def stop_after(*args, **kwargs):
        real(*args, **kwargs)
        _stop_first(once, marker)

    setattr(module, name, stop_after)


def main(argv: list[str]) -> int:
    import dask

    dask.config.set({"num_workers": 1})  # one writer thread: the stop point is exact
    mode, out, marker, *inputs = argv
    out_path, marker_path = Path(out), Path(marker)
    once = threading.Lock()
    if mode == "ingest-chunk":
        import pipeline.ingest.exposures as ingest_mod

        _stop_after(ingest_mod, "write_chunks", once, marker_path)
        from pipeline.classify.night import run_night

        truth, *fits = inputs
        run_night([Path(p) for p in fits], out_path, truth=Path(truth), progress=False)
        return 0
    if mode == "classify-after-part":
        import pipeline.catalogue.part_files as cat_mod

        _stop_after(cat_mod, "write_part", once, marker_path)
    elif mode == "classify-in-part":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            name = Path(dst).name
            if name.startswith("part-") and name.endswith(".parquet"):
                _stop_first(once, marker_path)
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif mode != "classify":
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    from pipeline.classify.graph import classify

    summary = classify(Path(inputs[0]), out_path, progress=False)
    print(summary.describe())
    marker_path.write_text("done")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
