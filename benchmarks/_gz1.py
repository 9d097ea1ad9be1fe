"""Part ``gz1_morphology`` of ``real_skies``: a checkpoint and the hand-feature baseline on GZ1.

A fixed seeded 20% of the ``gz1_galaxies`` objects (stratified by class; every galaxy is a
different object, so this is a split by object) is held out; the checkpoint (``--gz1-model``,
default the bundled ``sdss-morphology`` when there is one) and a logistic regression on the
hand-made features of 64x64 grey thumbnails are scored there: elliptical-vs-spiral balanced
accuracy, 3-class (elliptical, merger, spiral) balanced accuracy and merger recall.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _baselines as bl
from benchmarks import _real_data as rd
from benchmarks._units import UnitLog, load

__all__ = ["gz1_morphology"]


def _grey64(folder: Path, paths: list[str], cache: Path, key: str) -> np.ndarray:
    """Grey (RGB mean) 64x64 box-averaged thumbnails minus their outer-ring median; cached."""
    from PIL import Image

    npy = cache / f"gz1-grey64-{key}.npy"
    if npy.is_file():
        return np.load(npy)
    out = np.empty((len(paths), 64, 64), np.float32)
    for i, rel in enumerate(paths):
        with Image.open(folder / rel) as img:
            g = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BOX), np.float32)
        out[i] = g.mean(axis=2)
    ring = np.ones((64, 64), bool)
    ring[2:-2, 2:-2] = False
    out -= np.median(out[:, ring], axis=1)[:, None, None]
    cache.mkdir(parents=True, exist_ok=True)
    np.save(npy, out)
    return out


def _restricted(probs: np.ndarray, classes: list[str], true: np.ndarray,
                keep: list[str]) -> dict[str, Any] | None:
    """Scores over the objects of the ``keep`` classes, argmax over those columns only."""
    if not set(keep) <= set(classes):
        return None
    mask = np.isin(true, keep)
    cols = [classes.index(c) for c in keep]
    pred = np.asarray(keep)[probs[mask][:, cols].argmax(axis=1)]
    s = rd.scores(true[mask], pred, keep)
    return {k: s[k] for k in ("balanced_accuracy", "accuracy", "recall", "support", "confusion")}


THREE = ["elliptical", "merger", "spiral"]
TEST_FRACTION = 0.2


def gz1_split(folder: Path, *, seed: int = 0, sample: int = 0
              ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The benchmark's table of GZ1 objects and its held-out split, by object.

    Parameters
    ----------
    folder : Path
        The ``gz1_galaxies`` folder (``labels.csv`` and ``images/``).
    seed : int
        Seed of the stratified split (the benchmark's ``--seed``).
    sample : int
        At most ``4 * sample`` objects per class (0 = all).

    Returns
    -------
    table, train_idx, test_idx
        The rows of the three learned classes sorted by path, and the sorted indices of
        the training objects and of the held-out ``TEST_FRACTION`` of each class.
    """
    table = pd.read_csv(folder / "labels.csv", dtype=str)
    table = table[table["label"].isin(THREE)]
    if sample:
        table = rd.subsample(table, sample * 4, ["label"], seed)
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    train_idx, test_idx = rd.stratified_split(table["label"].to_numpy(str), TEST_FRACTION, seed)
    return table, train_idx, test_idx


def write_training_csv(folder: Path, out: Path, *, seed: int = 0, part: str = "train") -> int:
    """Write the labels CSV of one side of the benchmark's GZ1 split.

    ``part="train"``: the training objects (held-out ones left out), so a model trained on
    ``skysieve import-images FOLDER --labels OUT ...`` has never seen the galaxies
    ``gz1_morphology`` scores it on; ``part="test"``: the held-out objects themselves
    (a test store for ``skysieve compare --test-store``).  Returns the number of rows written.
    """
    if part not in ("train", "test"):
        raise ValueError(f"write_training_csv: part must be 'train' or 'test', got {part!r}")
    table, train_idx, test_idx = gz1_split(folder, seed=seed)
    rows = train_idx if part == "train" else test_idx
    out.parent.mkdir(parents=True, exist_ok=True)
    table.iloc[rows].to_csv(out, index=False)
    return int(rows.size)


def gz1_morphology(log: UnitLog, args: argparse.Namespace) -> None:
    """A checkpoint and the hand-feature baseline on a held-out 20% of GZ1 galaxies."""
    folder, why = rd.dataset(args.data, "gz1_galaxies")
    if folder is None:
        log.skipped["gz1_morphology"] = why
        return
    from pipeline import bundled

    table, train_idx, test_idx = gz1_split(folder, seed=args.seed, sample=args.sample)
    true = table["label"].to_numpy(str)
    data_sha = rd.csv_sha256(table)
    three = THREE
    base = {"data": data_sha, "seed": args.seed, "test_fraction": TEST_FRACTION,
            "n_test": int(test_idx.size)}
    summary: dict[str, Any] = {"n_test": int(test_idx.size)}

    def report(probs: np.ndarray, classes: list[str], t: np.ndarray) -> dict[str, Any]:
        e_s = _restricted(probs, classes, t, ["elliptical", "spiral"])
        tri = _restricted(probs, classes, t, three)
        return {"elliptical_vs_spiral": e_s, "three_class": tri,
                "merger_recall": tri["recall"]["merger"] if tri else None}

    def run_logreg() -> dict[str, Any]:
        grey = _grey64(folder, table["path"].tolist(), args.cache, data_sha[:16])
        x = bl.hand_features(grey)
        y = np.searchsorted(three, true)
        model = bl.fit_logistic(x[train_idx], y[train_idx], 3)
        return report(bl.predict_logistic(model, x[test_idx]), three, true[test_idx])

    res = log.run("gz1_morphology/logreg", {**base, "features": list(bl.FEATURES),
                                            "input": "grey 64x64 box-averaged",
                                            "version": bl.BASELINES_VERSION}, run_logreg,
                  machine=load)
    summary["logreg"] = _gz1_row(res)
    model = args.gz1_model or ("sdss-morphology" if "sdss-morphology" in bundled.names() else None)
    if model is None:
        log.skipped["gz1_morphology/model"] = ("no checkpoint: no bundled 'sdss-morphology' model "
                                               "and no --gz1-model PATH given")
    else:
        from workers.checkpoint import file_sha256, load_card

        path = bundled.resolve(model)
        card = load_card(path)
        imports = _import_settings(card)
        if isinstance(imports, str):
            log.skipped["gz1_morphology/model"] = f"{model}: {imports}"
        else:
            def run_model() -> dict[str, Any]:
                store = rd.cached_import(folder, table.iloc[test_idx], args.cache, "gz1-test",
                                         **imports)
                rows = rd.read_store(store, ("label",))
                probs, classes, sha = rd.predict(path, rows)
                return {**report(probs, classes, rows["label"]), "checkpoint_sha256": sha,
                        "classes": classes, "import": imports,
                        "note": "held out here by object; a model trained on the rows of "
                                "write_training_csv never saw them"}

            res = log.run("gz1_morphology/model", {**base, "model": str(model),
                                                   "model_sha256": file_sha256(path),
                                                   "import": imports}, run_model,
                          machine=load)
            summary["model"] = {"name": str(model), **_gz1_row(res)}
    log.summary["gz1_morphology"] = summary


def _import_settings(card: Any) -> dict[str, Any] | str:
    """How to import the held-out images for ``card``'s model, or why it cannot take them.

    As the model's training store was imported (the card's ``training.store_import``:
    bands, ``resize``; the stamp is the training stamp); a one-band card without that
    record gets the grey import at its training stamp.
    """
    training = card.training or {}
    stamp = training.get("stamp", [None])[0]
    made = training.get("store_import") or {}
    channels = made.get("band_channels")
    if channels:
        bands = ",".join(f"{name}:{ch}" for name, ch in channels.items())
        if len(channels) != card.in_chans:
            return f"{card.in_chans} input bands but its store had {bands!r}"
        return {"stamp": stamp, "bands": bands, "resize": made.get("resize")}
    if card.in_chans == 1:
        return {"stamp": stamp}
    return (f"{card.in_chans} input bands and no record of how its training images were "
            "imported (card training.store_import)")


def _gz1_row(res: dict[str, Any]) -> dict[str, Any]:
    e_s, tri = res["elliptical_vs_spiral"], res["three_class"]
    return {"balanced_accuracy_e_vs_s": e_s and e_s["balanced_accuracy"],
            "balanced_accuracy_3class": tri and tri["balanced_accuracy"],
            "merger_recall": res["merger_recall"]}
