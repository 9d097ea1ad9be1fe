"""The ``real_skies`` benchmark's pieces on a small slice of the real data (issue 16).

Whole fields per cross-validation fold, hand-made features that tell real stars from
galaxies, and a results file that a rerun with the same settings leaves untouched.
Never a timing assertion; the benchmark itself is run by hand (see benchmarks/real_skies.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package: run it from the tree
    sys.path.insert(0, str(ROOT))

from benchmarks import _baselines as bl  # noqa: E402
from benchmarks import _real_data as rd  # noqa: E402
from benchmarks import real_skies  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

SAMPLE = 8  # cutouts per frame and class: ~250 in all


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the benchmark reuses the store the feature test made."""
    return tmp_path_factory.mktemp("real-skies-cache")


@pytest.fixture(scope="module")
def star_galaxy(shared_data: Path) -> Path:
    folder, why = rd.dataset(shared_data, "star_galaxy")
    if folder is None:
        pytest.skip(why)
    return folder


@pytest.fixture(scope="module")
def labels(star_galaxy: Path) -> pd.DataFrame:
    return pd.read_csv(star_galaxy / "labels.csv", dtype={"path": str, "label": str,
                                                          "frame": str})


def test_folds_keep_every_field_whole(labels: pd.DataFrame) -> None:
    field_of = rd.frame_fields(labels)
    joined = sorted({f for f in field_of.values() if "+" in f})
    assert len(joined) == 3  # three fields imaged by two frames each (see the star-galaxy card)
    fields = np.asarray([field_of[f] for f in labels["frame"]])
    k = 5
    fold_of = rd.assign_folds(fields, labels["label"].to_numpy(str), k)
    assert set(fold_of) == set(fields)  # every field in exactly one test fold
    assert set(fold_of.values()) == set(range(k))
    fold = np.asarray([fold_of[f] for f in fields])
    for field in joined:  # both frames of a field land in the same fold
        frames = field.split("+")
        assert len({int(f) for f in fold[labels["frame"].isin(frames).to_numpy()]}) == 1
    for j in range(k):  # every test fold holds both classes, none holds most of the galaxies
        in_j = labels["label"].to_numpy(str)[fold == j]
        assert {"galaxy", "star"} <= set(in_j)
        assert np.sum(in_j == "galaxy") < 0.5 * np.sum(labels["label"] == "galaxy")
    assert rd.assign_folds(fields, labels["label"].to_numpy(str), k) == fold_of  # deterministic
    with pytest.raises(ValueError, match="folds of whole fields"):
        rd.assign_folds(fields[:3], labels["label"].to_numpy(str)[:3], 2)


def test_hand_features_separate_stars_from_galaxies(star_galaxy: Path, labels: pd.DataFrame,
                                                    cache: Path) -> None:
    table = rd.subsample(labels, SAMPLE, ["frame", "label"], seed=0)  # as --sample SAMPLE does
    assert 200 <= len(table) <= 400
    store = rd.cached_import(star_galaxy, table, cache, "star_galaxy")
    rows = rd.read_store(store, ("label",))
    x = bl.hand_features(rows["image"])
    assert x.shape == (len(table), len(bl.FEATURES))
    assert not np.isinf(x).any()
    assert np.isfinite(x).all(axis=1).mean() > 0.95  # NaN only where a stamp has no flux
    field_of = rd.frame_fields(labels)
    fields = np.asarray([field_of[e] for e in rows["exposure"]])
    fold_of = rd.assign_folds(fields, rows["label"], 2)
    test = np.asarray([fold_of[f] for f in fields]) == 0  # fit on some fields, test on others
    y = (rows["label"] == "star").astype(int)
    model = bl.fit_logistic(x[~test], y[~test], 2)
    pred = bl.predict_logistic(model, x[test]).argmax(axis=1)
    s = rd.scores(np.where(y[test] == 1, "star", "galaxy"), np.where(pred == 1, "star", "galaxy"),
                  ["galaxy", "star"])
    assert s["balanced_accuracy"] > 0.65  # ~0.8 on the whole set; chance is 0.5


def test_a_rerun_with_the_same_settings_redoes_nothing(shared_data: Path, star_galaxy: Path,
                                                       cache: Path, tmp_path: Path) -> None:
    results = tmp_path / "r.json"
    argv = ["--quick", "--data", str(shared_data), "--cache", str(cache),
            "--results", str(results), "--sample", str(SAMPLE),
            "--parts", "default_zero_shot,star_galaxy_cv"]
    first = real_skies.main(argv)
    candidates = ("logreg", "plain_cnn", "recipe", "recipe_dihedral", "recipe_psf",
                  "recipe_psf_dihedral", "recipe_photometric", "recipe_photometric_dihedral")
    units = ["default_zero_shot"] + [f"star_galaxy_cv/{c}/fold{k}"
                                     for c in candidates for k in (0, 1)]
    assert first["ran"] == units and first["reused"] == []
    saved = json.loads(results.read_text())
    assert sorted(saved["units"]) == sorted(units)
    recipe = saved["units"]["star_galaxy_cv/recipe/fold0"]
    assert len(recipe["result"]["checkpoint_sha256"]) == 64
    assert recipe["settings"]["split_by"] == "field" and recipe["settings"]["epochs"] == 1
    zero = saved["units"]["default_zero_shot"]
    assert zero["settings"]["model_sha256"] == zero["result"]["checkpoint_sha256"]
    assert 0.0 <= saved["summary"]["default_zero_shot"]["balanced_accuracy_argmax"] <= 1.0
    cv = saved["summary"]["star_galaxy_cv"]
    assert set(cv["candidates"]) == set(candidates)
    assert set(cv["paired"]) == {f"{c} - {b}" for c in candidates[2:]
                                 for b in ("logreg", "plain_cnn")}
    # the dihedral candidates test the same trained checkpoint; PSF-width inputs train anew
    sha = {c: saved["units"][f"star_galaxy_cv/{c}/fold0"]["result"]["checkpoint_sha256"]
           for c in candidates[2:]}
    assert sha["recipe"] == sha["recipe_dihedral"] != sha["recipe_psf"] == sha[
        "recipe_psf_dihedral"] != sha["recipe_photometric"] == sha["recipe_photometric_dihedral"]
    assert sha["recipe_photometric"] != sha["recipe"]
    psf = saved["units"]["star_galaxy_cv/recipe_psf/fold0"]["settings"]["input_scale"]
    assert psf == {"mode": "psf", "fwhm_px": real_skies.PSF_PIXELS}
    assert results.with_suffix(".md").is_file()

    second = real_skies.main(argv)
    assert second["ran"] == [] and second["reused"] == units
    again = json.loads(results.read_text())
    assert again["units"] == saved["units"]  # nothing redone, nothing rewritten
    assert len(again["runs"]) == 2 and again["runs"][1]["units_reused"] == units

    third = real_skies.main(argv + ["--cnn-patience", "2"])  # one setting changed
    assert third["ran"] == [u for u in units if "/plain_cnn/" in u]


def test_absent_data_is_said_plainly(tmp_path: Path) -> None:
    out = real_skies.main(["--quick", "--data", str(tmp_path / "nowhere"), "--cache",
                           str(tmp_path / "c"), "--results", str(tmp_path / "r.json"),
                           "--parts", "default_zero_shot,dss_nebula_share"])
    assert out["ran"] == []
    assert set(out["skipped"]) == {"default_zero_shot", "dss_nebula_share"}
    assert all("not found" in why and "--data" in why for why in out["skipped"].values())


def test_one_writer_per_results_file(tmp_path: Path) -> None:
    from pipeline.classify.run_lock import exclusive
    from pipeline.errors import OutputLocked

    results = tmp_path / "r.json"
    with exclusive(results), pytest.raises(OutputLocked, match="another skysieve run"):
        real_skies.main(["--quick", "--data", str(tmp_path / "nowhere"), "--results",
                         str(results), "--cache", str(tmp_path / "c"),
                         "--parts", "default_zero_shot"])
    assert not results.exists()  # refused before writing anything
