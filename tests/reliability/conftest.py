"""Fixtures of the reliability suite: one tiny synthetic survey, its store, a cluster, a clean run.

Everything is built once per session and kept small (2 exposures of 320x320 px,
8 cutouts per chunk, so the store has several chunks and the catalogue several
parts).  The results table of every case is printed at the end of the run and
written to ``reliability_results.json`` / ``.md`` in pytest's base temp dir
(and to the directory ``$SKYSIEVE_RELIABILITY_RESULTS`` when set).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dask
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reliability import RESULTS, markdown_table  # noqa: E402

CHUNK = 8


@pytest.fixture(scope="session")
def survey(tmp_path_factory: pytest.TempPathFactory):
    """Two small synthetic exposures with truth (pipeline.simulation.survey)."""
    from pipeline.simulation.survey import synthesize

    return synthesize(tmp_path_factory.mktemp("survey") / "fits", exposures=2, size=320, seed=8)


@pytest.fixture(scope="session")
def client():
    """A real LocalCluster (2 worker processes, 1 thread each) through cluster.connect."""
    from cluster import connect

    with connect("local", n_workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture(scope="session")
def store(survey, client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The survey ingested with 8 cutouts per chunk."""
    from pipeline.ingest.exposures import ingest

    out = tmp_path_factory.mktemp("store") / "cutouts.zarr"
    summary = ingest(survey.files, out, truth=survey.truth, chunk_sources=CHUNK)
    assert summary.n_sources >= 4 * CHUNK, summary.describe()
    return out


@pytest.fixture(scope="session")
def clean(store: Path, client, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The catalogue of an undisturbed classify run of ``store``."""
    from pipeline import catalogue
    from pipeline.classify.graph import classify

    out = tmp_path_factory.mktemp("clean") / "catalogue"
    summary = classify(store, out, progress=False)
    assert not summary.failed and summary.parts > 3
    return catalogue.read_catalogue(out)


@pytest.fixture
def chunk_config():
    """Config for code that ingests inside the test: the session's chunk size."""
    with dask.config.set({"skysieve.ingest.chunk-sources": CHUNK}):
        yield


def _write_results(directory: Path) -> None:
    from pipeline.files import atomic_write, write_json

    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "reliability_results.json", RESULTS)
    atomic_write(directory / "reliability_results.md", markdown_table(RESULTS) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RESULTS:
        return
    targets = []
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        targets.append(factory.getbasetemp())
    if os.environ.get("SKYSIEVE_RELIABILITY_RESULTS"):
        targets.append(Path(os.environ["SKYSIEVE_RELIABILITY_RESULTS"]))
    for target in targets:
        _write_results(Path(target))
    lost = sum(r["rows_lost"] or 0 for r in RESULTS)
    doubled = sum(r["rows_doubled"] or 0 for r in RESULTS)
    failed = sum(not r.get("held", True) for r in RESULTS)
    terminalreporter.section("skysieve reliability results")
    terminalreporter.write_line(markdown_table(RESULTS))
    terminalreporter.write_line(f"{len(RESULTS)} cases, {failed} did not hold; rows lost {lost}, "
                                f"rows doubled {doubled}"
                                + (f"; written to {targets[0]}" if targets else ""))
