"""The bundled ``star-galaxy`` model on real cutouts it never saw in training.

The model was trained by ``skysieve train --split-by field`` on the real
``star_galaxy`` cutouts of the team's test data (the ``shared_data`` fixture) with
whole fields held out for validation (frames that image the same field, found by a
constant pixel offset between their sources, are joined: the card's ``split.groups``;
``val_exposures`` lists the held-out frames).  Here ~200 cutouts of those validation
fields go through the real CLI: ``import-images`` ->
``classify --model star-galaxy`` on a LocalCluster -> Parquet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.bundled import names, resolve
from workers.checkpoint import file_sha256, load_card

pytestmark = pytest.mark.filterwarnings("ignore")

N_GALAXY, N_STAR = 80, 120
FLOOR_CARD = 0.86  # the card: 0.874 on the held-out fields (see the test)
FLOOR_SAMPLE = 0.82  # 0.863 on the 80 galaxies + 120 stars sampled below


def _balanced_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[true == c] == c) for c in np.unique(true)]))


@pytest.fixture(scope="module")
def card():
    assert "star-galaxy" in names()
    return load_card(resolve("star-galaxy"))


@pytest.fixture(scope="module")
def star_galaxy(shared_data: Path) -> Path:
    folder = shared_data / "star_galaxy"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"real star/galaxy cutouts not found at {folder} (only CI and the team's "
                    "machines have the real test data)")
    return folder


def test_bundled_card(card) -> None:
    pt = resolve("star-galaxy")
    assert card.classes == ["galaxy", "star"]
    assert card.sha256 == file_sha256(pt)
    assert pt.stat().st_size < 5_000_000
    assert card.in_chans == 1 and card.image_size == 64
    split = card.training["split"]
    assert split["val_exposures"], "the card must name its held-out frames"
    assert split["by"] == "field" and len(split["groups"]) == 3  # three fields seen twice
    val = set(split["val_exposures"])
    for group in split["groups"]:  # a field is held out whole or not at all
        assert set(group.split("+")) <= val or not set(group.split("+")) & val
    assert card.training["augment"] == "geometric"
    # held-out fields, 189 galaxies / 397 stars; a moment-feature logistic regression gets
    # ~0.76 balanced accuracy there; the shipped model FLOOR_CARD (the 0.95 goal of issue #4
    # is not reached: compact galaxies look like stars on these 8-bit stamps)
    assert card.metrics["balanced_accuracy"] >= FLOOR_CARD
    command = card.training["command"].split()
    assert "train" in command and Path(command[command.index("--out") + 1]).name == "star-galaxy.pt"
    assert "--split-by" in command and command[command.index("--split-by") + 1] == "field"


def test_classify_validation_fields(card, star_galaxy: Path, tmp_path: Path) -> None:
    labels = pd.read_csv(star_galaxy / "labels.csv")
    val_frames = {f for group in card.training["split"]["val_exposures"] for f in group.split("+")}
    assert val_frames <= set(labels["frame"]), "card names frames absent from labels.csv"
    val = labels[labels["frame"].isin(val_frames)].sort_values("path")
    picked = pd.concat([
        val[val["label"] == "galaxy"].sample(n=min(N_GALAXY, (val["label"] == "galaxy").sum()),
                                             random_state=0),
        val[val["label"] == "star"].sample(n=min(N_STAR, (val["label"] == "star").sum()),
                                           random_state=0),
    ])
    assert (picked["label"] == "galaxy").sum() >= 20, "too few validation galaxies to judge"
    folder = tmp_path / "cutouts"
    for rel in picked["path"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(star_galaxy / rel, folder / rel)
    picked.to_csv(tmp_path / "labels.csv", index=False)

    runner = CliRunner()
    store, cat = tmp_path / "sg.zarr", tmp_path / "cat"
    result = runner.invoke(cli, ["import-images", str(folder), "--labels",
                                 str(tmp_path / "labels.csv"), "--out", str(store)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["classify", str(store), "--model", "star-galaxy", "--out",
                                 str(cat), "--cluster", "local", "--workers", "1",
                                 "--threads", "1"])
    assert result.exit_code == 0, result.output

    df = pd.read_parquet(cat)
    assert len(df) == len(picked)
    assert {"p_galaxy", "p_star", "label", "true_label"} <= set(df.columns)
    np.testing.assert_allclose(df["p_galaxy"] + df["p_star"], 1.0, atol=1e-5)
    assert set(df["label"]) <= {"galaxy", "star"}
    assert (df["label"] == np.where(df["p_galaxy"] > df["p_star"], "galaxy", "star")).all()
    truth = df["true_label"].to_numpy(str)
    assert dict(pd.Series(truth).value_counts()) == dict(picked["label"].value_counts())
    bacc = _balanced_accuracy(truth, df["label"].to_numpy(str))
    assert bacc >= FLOOR_SAMPLE, f"balanced accuracy {bacc:.3f} on validation-field cutouts"
