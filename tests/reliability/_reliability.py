"""Shared helpers of the reliability suite: the results table, catalogue comparison, kill helpers.

Every case records one row (``record``, or ``recorded`` around a check, which
records whether the check held or failed); ``conftest.py`` writes them to
``reliability_results.json`` / ``reliability_results.md`` in pytest's base temp
directory (and ``$SKYSIEVE_RELIABILITY_RESULTS`` when set) and prints the table
at the end of the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["RESULTS", "record", "recorded", "compare_catalogues", "sorted_catalogue", "start_driver",
           "wait_for", "kill_group", "DRIVER", "markdown_table"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DRIVER = HERE / "_driver.py"
RESULTS: list[dict[str, Any]] = []


def record(case: str, category: str, outcome: str, *, lost: int | None = 0,
           doubled: int | None = 0, held: bool = True) -> None:
    """Add a row to the results table (``lost``/``doubled`` None: not a row-producing case).

    ``held`` is False for a case whose check failed (``outcome`` then says how).
    """
    RESULTS.append({"case": case, "category": category, "outcome": outcome, "held": held,
                    "rows_lost": lost, "rows_doubled": doubled})


@contextmanager
def recorded(case: str, category: str, outcome: str, *, lost: int | None = None,
             doubled: int | None = None) -> Iterator[None]:
    """Run the block as the check of ``case``: record ``outcome`` if it passes, the failure if not.

    The exception is re-raised, so the test fails and the table says the case did not hold.
    """
    try:
        yield
    except Exception as exc:  # a skip or an interrupt (BaseException) records nothing
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        record(case, category, f"FAILED: {type(exc).__name__}: {first}", lost=lost,
               doubled=doubled, held=False)
        raise
    record(case, category, outcome, lost=lost, doubled=doubled, held=True)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = ["| category | case | held | outcome | rows lost | rows doubled |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        def cell(v: Any) -> str:
            return "-" if v is None else str(v)
        held = "yes" if r.get("held", True) else "NO"
        lines.append(f"| {r['category']} | {r['case']} | {held} | {r['outcome'].replace('|', '/')} | "
                     f"{cell(r['rows_lost'])} | {cell(r['rows_doubled'])} |")
    return "\n".join(lines)


def sorted_catalogue(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by ``source_id`` and columns by name, index reset."""
    return df.sort_values("source_id", kind="stable").reset_index(drop=True)[sorted(df.columns)]


def compare_catalogues(clean: pd.DataFrame, got: pd.DataFrame) -> tuple[int, int]:
    """Assert ``got`` holds the same rows as ``clean``; return ``(rows lost, rows doubled)``.

    Rows are compared sorted by ``source_id``; float32 model outputs within 1e-5
    (worker processes and the threaded scheduler may use different torch thread
    counts), everything else exactly.
    """
    ids_clean = set(clean["source_id"].tolist())
    ids_got = got["source_id"].tolist()
    lost = len(ids_clean - set(ids_got))
    doubled = len(ids_got) - len(set(ids_got))
    assert lost == 0 and doubled == 0, f"rows lost {lost}, rows doubled {doubled}"
    assert set(ids_got) == ids_clean, "catalogue holds source_ids the clean run does not"
    a, b = sorted_catalogue(clean), sorted_catalogue(got)
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        if a[col].dtype == np.float32:
            np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=0, atol=1e-5,
                                       equal_nan=True, err_msg=col)
        else:
            pd.testing.assert_series_equal(a[col], b[col], check_names=True, obj=col)
    return lost, doubled


def start_driver(mode: str, *args: str, env: dict[str, str] | None = None,
                 **popen: Any) -> subprocess.Popen:
    """Start ``_driver.py MODE ARGS`` in its own session (so its whole group can be killed)."""
    full_env = {**os.environ, "DASK_SKYSIEVE__INGEST__CHUNK_SOURCES": "8",
                "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, str(DRIVER), mode, *args], env=full_env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)


def wait_for(path: Path, proc: subprocess.Popen, *, timeout: float = 180.0) -> None:
    """Wait until ``path`` exists; fail with the process output if it exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"driver exited {proc.returncode} before {path.name}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            kill_group(proc)
            raise AssertionError(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group that ``proc`` leads and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    if proc.stdout:
        proc.stdout.close()
