"""The machine a comparison ran on: CPU, cores, torch threads, GPU, platform, package versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "run_conditions"]


def _cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Describe this machine for a results file.

    Returns
    -------
    dict
        ``cpu`` (model name), ``cores``, ``torch_threads``, ``gpu`` (CUDA device 0's
        name, or None), ``python``, ``platform`` and ``versions`` (of skysieve, torch,
        numpy, scipy, xarray, zarr; None where not installed).
    """
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for pkg in ("skysieve", "torch", "numpy", "scipy", "xarray", "zarr"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions}


def run_conditions() -> dict[str, Any]:
    """What shares this machine right now, for a per-run record beside a speed or a time.

    Returns
    -------
    dict
        ``torch_threads``, ``cores`` and ``load_1min`` (the 1-minute load average, None
        where the platform has none): a run's seconds compare with another's only when
        its threads and the load beside it are known.
    """
    import torch

    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {"torch_threads": torch.get_num_threads(), "cores": os.cpu_count(), "load_1min": load}
