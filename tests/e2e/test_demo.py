"""`skysieve demo`: the README's first command, end to end, on the embedded default data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from pipeline import catalogue

BIN = Path(sys.executable).with_name("skysieve")


def test_demo_reaches_the_accuracy_goal(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([str(BIN), "demo", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"accuracy against the synthetic truth: ([0-9.]+) .* over (\d+) matched",
                      proc.stdout)
    assert match, proc.stdout
    accuracy, n = float(match.group(1)), int(match.group(2))
    assert n > 3000
    assert accuracy >= 0.90, proc.stdout
    df = catalogue.read_catalogue(out / "catalogue")
    store_n = int(re.search(r"ingested ([\d,]+) sources", proc.stdout).group(1).replace(",", ""))
    assert len(df) == store_n and df["source_id"].is_unique
    pcols = [c for c in df if c.startswith("p_")]
    assert len(pcols) == 6
    assert ((df[pcols].sum(axis=1) - 1).abs() <= 1e-5).all()
    # The accuracy printed is the one the catalogue gives.
    known = df[df["true_label"] != ""]
    assert abs((known["label"] == known["true_label"]).mean() - accuracy) < 1e-3
    assert isinstance(pd.read_parquet(out / "catalogue" / "_rejects.parquet"), pd.DataFrame)
