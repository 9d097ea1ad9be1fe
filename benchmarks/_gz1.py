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


def gz1_morphology(log: UnitLog, args: argparse.Namespace) -> None:
    """A checkpoint and the hand-feature baseline on a held-out 20% of GZ1 galaxies."""
    folder, why = rd.dataset(args.data, "gz1_galaxies")
    if folder is None:
        log.skipped["gz1_morphology"] = why
        return
    from pipeline import bundled

    table = pd.read_csv(folder / "labels.csv", dtype=str)
    table = table[table["label"].isin(["elliptical", "spiral", "merger"])]
    if args.sample:
        table = rd.subsample(table, args.sample * 4, ["label"], args.seed)
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    train_idx, test_idx = rd.stratified_split(table["label"].to_numpy(str), 0.2, args.seed)
    true = table["label"].to_numpy(str)
    data_sha = rd.csv_sha256(table)
    three = ["elliptical", "merger", "spiral"]
    base = {"data": data_sha, "seed": args.seed, "test_fraction": 0.2,
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
        if card.in_chans != 1:
            log.skipped["gz1_morphology/model"] = (f"{model}: {card.in_chans} input bands; "
                                                   "import-images makes one grey band")
        else:
            stamp = (card.training or {}).get("stamp", [None])[0]

            def run_model() -> dict[str, Any]:
                store = rd.cached_import(folder, table.iloc[test_idx], args.cache, "gz1-test",
                                         stamp=stamp)
                rows = rd.read_store(store, ("label",))
                probs, classes, sha = rd.predict(path, rows)
                return {**report(probs, classes, rows["label"]), "checkpoint_sha256": sha,
                        "classes": classes, "stamp": stamp,
                        "note": "held out here by object; check the card's own split for overlap"}

            res = log.run("gz1_morphology/model", {**base, "model": str(model),
                                                   "model_sha256": file_sha256(path),
                                                   "stamp": stamp}, run_model, machine=load)
            summary["model"] = {"name": str(model), **_gz1_row(res)}
    log.summary["gz1_morphology"] = summary


def _gz1_row(res: dict[str, Any]) -> dict[str, Any]:
    e_s, tri = res["elliptical_vs_spiral"], res["three_class"]
    return {"balanced_accuracy_e_vs_s": e_s and e_s["balanced_accuracy"],
            "balanced_accuracy_3class": tri and tri["balanced_accuracy"],
            "merger_recall": res["merger_recall"]}
