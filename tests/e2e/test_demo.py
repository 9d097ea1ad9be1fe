"""`skysieve demo`: the README's first command, end to end, on the embedded default data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import catalogue
from pipeline.store import open_store

BIN = Path(sys.executable).with_name("skysieve")


def nearest_truth_class(df: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Class and pixel distance of the nearest truth source in the same exposure and CCD."""
    cls = np.empty(len(df), dtype=object)
    dist = np.full(len(df), np.inf)
    for (exposure, ccd), rows in df.groupby(["exposure", "ccd"]).indices.items():
        t = truth[(truth["exposure"] == exposure) & (truth["ccd"] == ccd)]
        if t.empty:
            continue
        d2 = ((df["x"].to_numpy()[rows, None] - t["x"].to_numpy()[None, :]) ** 2
              + (df["y"].to_numpy()[rows, None] - t["y"].to_numpy()[None, :]) ** 2)
        k = d2.argmin(axis=1)
        cls[rows] = t["class"].to_numpy()[k]
        dist[rows] = np.sqrt(d2[np.arange(len(rows)), k])
    return cls, dist


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run([str(BIN), "demo", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_demo_reaches_the_accuracy_goal(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    match = re.search(r"accuracy against the synthetic truth: ([0-9.]+) .* over (\d+) matched",
                      stdout)
    assert match, stdout
    accuracy, n = float(match.group(1)), int(match.group(2))
    assert n > 3000
    assert accuracy >= 0.90, stdout
    df = catalogue.read_catalogue(out / "catalogue")
    known = df[df["true_label"] != ""]
    assert len(known) == n
    # The accuracy printed is the one the catalogue gives ...
    assert abs((known["label"] == known["true_label"]).mean() - accuracy) < 1e-3
    # ... and the one the survey's own truth table gives, matched here by position.
    truth = pd.read_parquet(out / "survey" / "truth.parquet")
    cls, dist = nearest_truth_class(known, truth)
    assert np.median(dist) < 1.0, "catalogue positions do not follow the truth"
    assert (cls == known["true_label"].to_numpy()).mean() >= 0.99, "true_label is not the truth"
    assert (known["label"].to_numpy() == cls).mean() >= 0.90


def test_demo_catalogue_holds_every_stored_source_once(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    df = catalogue.read_catalogue(out / "catalogue")
    store = open_store(out / "cutouts.zarr")
    store_n = int(re.search(r"ingested ([\d,]+) sources", stdout).group(1).replace(",", ""))
    assert len(df) == store.sizes["source"] == store_n > 3000
    assert df["source_id"].is_unique
    assert set(df["source_id"]) == set(store["source_id"].values.tolist())


def test_demo_catalogue_columns_are_consistent(demo: tuple[Path, str]) -> None:
    out, _ = demo
    df = catalogue.read_catalogue(out / "catalogue")
    classes = catalogue.read_metadata(out / "catalogue")["classes"]
    assert len(classes) == 6 and len(set(classes)) == 6
    pcols = [c for c in df if c.startswith("p_")]
    assert sorted(pcols) == sorted(f"p_{c}" for c in classes)
    p = df[[f"p_{c}" for c in classes]].to_numpy(np.float64)
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert set(df["label"]) <= set(classes) and set(df["true_label"]) <= set(classes) | {""}
    # label is the most probable class and confidence its probability
    assert (df["label"].to_numpy() == np.asarray(classes)[p.argmax(axis=1)]).all()
    np.testing.assert_allclose(df["confidence"].to_numpy(), p.max(axis=1), atol=1e-6)
    # every class is predicted at least once (a collapsed model would not be)
    assert set(df["label"]) == set(classes)


def test_demo_rejects_table(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    rejects = pd.read_parquet(out / "catalogue" / "_rejects.parquet")
    assert list(rejects.columns) == ["file", "hdu", "reason"]
    printed = int(re.search(r"^rejects: (\d+)$", stdout, re.M).group(1))
    assert len(rejects) == printed
