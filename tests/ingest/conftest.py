"""Fixtures of the ingest tests: a killed earlier run's temporary, a write that dies part-way,
and astropy's bundled m13 exposure as plain, gzip and tile-compressed files."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import dask
import pytest

from pipeline.store import temporary_sibling


@pytest.fixture
def stale_temporary() -> Callable[[Path], Path]:
    """Plant next to ``out`` the half-built store of an earlier run of this host that was killed."""
    def plant(out: Path) -> Path:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        mine = temporary_sibling(out)
        stale = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
        stale.mkdir(parents=True)
        (stale / "zarr.json").write_text('{"attributes": {"kind": "cutouts"}}')
        return stale
    return plant


@pytest.fixture
def fail_after_first_chunk(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModuleType], None]:
    """Make ``module.write_chunk`` (or ``write_chunks``) write the first chunk (or shard), then raise on the next.

    Tasks run in this process meanwhile, one at a time (Dask's threaded scheduler
    with one worker, even while another test's distributed client is current), so
    the patch applies and no task is still writing when the failure surfaces.
    """
    import distributed

    def no_client():
        raise ValueError("no client in this test")

    monkeypatch.setattr(distributed, "get_client", no_client)
    monkeypatch.setitem(dask.config.config, "num_workers", 1)

    def apply(module: ModuleType) -> None:
        name = "write_chunks" if hasattr(module, "write_chunks") else "write_chunk"
        real = getattr(module, name)

        def failing(path, start, stamps, **kwargs):
            if start > 0:
                raise RuntimeError("disk died part-way")
            return real(path, start, stamps, **kwargs)

        monkeypatch.setattr(module, name, failing)
    return apply


M13_DIR = Path(importlib.util.find_spec("astropy").origin).parent / "io/fits/hdu/compressed/tests/data"


@pytest.fixture
def m13_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """astropy's bundled ``m13.fits``, a gzip copy ``m13_gz.fits.gz`` and its RICE tile-compressed
    twin ``m13_rice.fits.fz`` (both in ``tmp_path``); skips when astropy does not ship them."""
    plain = M13_DIR / "m13.fits"
    if not plain.is_file():
        pytest.skip(f"astropy's bundled m13.fits not found at {plain}")
    gz = tmp_path / "m13_gz.fits.gz"
    with open(plain, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    fz = tmp_path / "m13_rice.fits.fz"
    shutil.copy(M13_DIR / "m13_rice.fits", fz)
    return plain, gz, fz
