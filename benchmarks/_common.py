"""Shared helpers: arguments, scratch folders, machine description, timing, synthetic stores,
worker RSS, the JSON result file and the printed report."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.files import write_json

__all__ = ["RESULTS", "results_dir", "parse_args", "scratch", "machine", "median_time",
           "write_result", "markdown_table", "report", "make_store", "PeakRSS", "worker_peaks",
           "reset_worker_peaks"]

RESULTS = Path(__file__).with_name("results")


def results_dir() -> Path:
    """Where results go: ``$SKYSIEVE_BENCHMARKS_OUT`` if set (tests use it), else ``benchmarks/results``."""
    return Path(os.environ.get("SKYSIEVE_BENCHMARKS_OUT") or RESULTS)


def parse_args(doc: str, argv: list[str] | None, *, quick_help: str | None = None,
               model: bool = True,
               options: dict[str, dict[str, Any]] | None = None) -> argparse.Namespace:
    """Parse a benchmark's command line: ``--quick``, ``--model`` (if ``model``), ``options``.

    Parameters
    ----------
    doc : str
        The benchmark's module docstring; its first line is the ``--help`` description.
    argv : list of str or None
        The arguments (``None``: ``sys.argv[1:]``).
    quick_help : str, optional
        The ``--help`` text of ``--quick``.
    model : bool
        Whether to take ``--model`` (default ``"default"``).
    options : dict, optional
        More options, flag -> ``add_argument`` keywords, added in order.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if model:
        parser.add_argument("--model", default="default")
    for flag, kwargs in (options or {}).items():
        parser.add_argument(flag, **kwargs)
    return parser.parse_args(argv)


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A fresh temporary folder named ``<prefix>...``, removed (errors ignored) on exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def machine() -> dict[str, Any]:
    """CPU, cores, memory, load average and library versions of this run."""
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("skysieve", "torch", "dask", "distributed", "zarr",
                                             "numpy", "pyarrow", "astropy")},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def median_time(func: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``func()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        func()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``<results>/<name>.json`` with the machine description (and load average) added.

    Strict JSON, written atomically (:func:`pipeline.files.write_json`; NaN becomes
    ``null``).  ``<results>`` is ``benchmarks/results`` unless ``$SKYSIEVE_BENCHMARKS_OUT``
    names another folder.
    """
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    body = {"benchmark": name, "machine": machine(), **payload}
    body["note"] = ("the development machine is shared by several engineers at once: numbers are "
                    "noisy; compare rows of one run (they were measured side by side)")
    return write_json(path, body)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Render rows (dicts with the same keys) as a Markdown table."""
    if not rows:
        return ""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        out.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
    return "\n".join(out)


def report(name: str, payload: dict[str, Any], rows: list[dict[str, Any]],
           summary: str | None = None) -> dict[str, Any]:
    """Write ``payload`` (:func:`write_result`), print ``rows`` as a table and a last line.

    The last line is ``<summary>; wrote <path>`` (``wrote <path>`` without a summary),
    after a blank line.  Returns ``payload``, as every benchmark's ``main`` does.
    """
    path = write_result(name, payload)
    print(markdown_table(rows))
    print(f"\n{summary}; wrote {path}" if summary else f"\nwrote {path}")
    return payload


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


# --------------------------------------------------------------------------- synthetic stores

def _templates(stamp: int, count: int, seed: int) -> np.ndarray:
    """``count`` noiseless stamps: Moffat stars and inclined exponential discs (flux 3000)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:stamp, :stamp] - stamp // 2
    r2 = x**2 + y**2
    out = np.empty((count, stamp, stamp), np.float32)
    for i in range(count):
        if i % 2:
            img = (1 + r2 / rng.uniform(2.0, 6.0)) ** -3.0
        else:
            q, th = rng.uniform(0.4, 1), rng.uniform(0, np.pi)
            u = x * np.cos(th) + y * np.sin(th)
            v = (-x * np.sin(th) + y * np.cos(th)) / q
            img = np.exp(-np.hypot(u, v) / rng.uniform(2, 6))
        out[i] = 3000 * img / img.sum()
    return out


def make_store(path: Path, n: int, stamp: int, chunk: int, seed: int = 0) -> Path:
    """Write a cutout store of ``n`` realistic-looking stamps (stars, galaxies, noise sigma 3 ADU).

    Written as ``skysieve ingest`` writes (``pipeline.store.create_store`` then
    ``write_chunk`` chunk by chunk: the configured image codec and the per-stamp
    statistics), so reads cost what they cost there, and a store of 10^5 stamps
    never sits in memory at once.  Layout ``image (source, band=1, y, x)``, chunked
    along ``source`` by ``chunk``, with every coordinate ``skysieve classify`` reads.
    """
    import pandas as pd

    from pipeline.store import create_store, pack_source_id, write_chunk

    templates = _templates(stamp, 256, seed)
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    exposure = np.asarray([f"exp_{i // 2000:04d}" for i in idx])
    table = pd.DataFrame({
        "exposure": exposure, "ccd": np.zeros(n, np.int16),
        "x": rng.uniform(0, 2048, n), "y": rng.uniform(0, 2048, n),
        "ra": rng.uniform(150, 150.5, n), "dec": rng.uniform(2, 2.5, n),
        "flux": np.full(n, 3000, np.float32), "a": np.ones(n, np.float32),
        "b": np.ones(n, np.float32), "theta": np.zeros(n, np.float32),
        "fwhm": np.full(n, 3.0, np.float32), "psf_fwhm": np.full(n, 3.0, np.float32),
        "sky": np.zeros(n, np.float32), "sky_rms": np.full(n, 3, np.float32),
        "snr": np.full(n, 100, np.float32), "flags": np.zeros(n, np.int32),
    })
    table["source_id"] = pack_source_id(exposure, table["ccd"], idx % 2000)
    create_store(path, table, stamp=stamp, bands=["r"], chunk_sources=chunk, pixel_scale=0.25,
                 inputs=[], rejects=[])
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block_rng = np.random.default_rng([seed, start])
        pick = block_rng.integers(0, len(templates), stop - start)
        img = templates[pick] + block_rng.normal(0, 3, (stop - start, stamp, stamp)).astype(np.float32)
        write_chunk(path, start, img[:, None])
    return path


# --------------------------------------------------------------------------- worker memory

class PeakRSS:
    """A thread sampling this process's resident set size every ``interval`` s; keeps the peak.

    Used inside Dask workers (started through ``client.run``), so the peak is the
    worker's own, not the client's.  Besides the thread's samples, :meth:`reset`,
    :meth:`sample` and :meth:`stop` each take one, so the RSS at the start and at
    the end always counts, however short the run.  ``samples`` counts the samples taken.
    """

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self._lock = threading.Lock()
        self.samples = 0
        self.peak = 0
        self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="skysieve-peak-rss")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        """Take one sample now; return the RSS in bytes."""
        rss = self._proc.memory_info().rss
        with self._lock:
            self.peak = max(self.peak, rss)
            self.samples += 1
        return rss

    def reset(self) -> int:
        """Start a new peak from the current RSS; return it."""
        rss = self._proc.memory_info().rss
        with self._lock:
            self.peak = rss
            self.samples += 1
        return rss

    def stop(self) -> int:
        """Stop sampling (after a last sample); return the peak in bytes."""
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak


_SAMPLER: PeakRSS | None = None


def _start_or_reset_sampler() -> int:
    global _SAMPLER
    if _SAMPLER is None:
        _SAMPLER = PeakRSS()
    return _SAMPLER.reset()


def _sampler_peak() -> int:
    if _SAMPLER is None:
        return -1
    _SAMPLER.sample()  # the RSS now counts too
    return int(_SAMPLER.peak)


def reset_worker_peaks(client: Any) -> dict[str, int]:
    """Start (or restart) the RSS sampler in every worker; return each worker's RSS now."""
    return client.run(_start_or_reset_sampler)


def worker_peaks(client: Any) -> dict[str, int]:
    """Peak RSS (bytes) of every worker since :func:`reset_worker_peaks`."""
    return client.run(_sampler_peak)
