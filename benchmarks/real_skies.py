"""Real skies (issue 16): models judged on REAL data held out by field or object, beside baselines.

``python -m benchmarks real_skies [--data DIR] [--quick] [--parts a,b,c] [--folds 5]``

Parts (``--parts``, default all):

* ``default_zero_shot``: the bundled ``default`` model (never trained on real data) on every
  ``star_galaxy`` cutout: star-vs-rest balanced accuracy (argmax ``star``, and
  ``p_star > 0.5``), accuracy, and the confusion of real stars/galaxies against its classes;
* ``dss_nebula_share``: the 6 DSS plate FITS ingested (``pipeline.ingest.exposures.ingest``)
  and classified with ``default``: the share of sources in each class, per field and
  overall (goal: ``nebula_cluster`` <= 10%);
* ``star_galaxy_cv``: leave-fields-out cross-validation over every field of ``star_galaxy``
  (frames of one field joined by :func:`pipeline.training.splits.group_fields`): per fold
  the bundled star-galaxy recipe (:func:`pipeline.training.fit.train`), a logistic
  regression on hand-made features and a plain CNN, trained and tested on the same folds;
  mean ± std over folds and paired per-fold differences with a paired t-test;
* ``gz1_morphology``: a fixed seeded 20% test split of ``gz1_galaxies`` (by object,
  stratified by class) for a checkpoint (``--gz1-model``) and the hand-feature baseline.

Stamps are prepared for a checkpoint exactly as ``skysieve classify`` does
(:func:`benchmarks._real_data.predict`).  Resumable: every finished unit (a model x
fold) is saved to the JSON at once with its settings (and checkpoint sha256); a rerun
skips the units whose settings match.  Stores and trained checkpoints go to ``--cache``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _baselines as bl
from benchmarks import _real_data as rd
from benchmarks._common import markdown_table, results_dir
from benchmarks._gz1 import gz1_morphology, write_training_csv
from benchmarks._units import UnitLog, load
from pipeline.classify.run_lock import exclusive
from pipeline.files import atomic_write

__all__ = ["PARTS", "main", "parse_args", "cv_table", "summarize_cv"]

PARTS = ("default_zero_shot", "dss_nebula_share", "star_galaxy_cv", "gz1_morphology")
NEBULA_GOAL = 0.10
KNOWN = {"default_zero_shot": "balanced accuracy 0.52 (issue 16)",
         "dss_nebula_share": "~61% of sources nebula_cluster (issue 16)",
         "star_galaxy_cv": "bundled star-galaxy 0.816, logistic regression on 17 features 0.826, "
                           "plain 107k CNN 0.849 on 6 unseen fields (issue 16)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's options (``--quick`` shortens every part)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks real_skies",
                                description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=rd.DEFAULT_DATA,
                   help="folder holding star_galaxy/, dss_galaxies/, gz1_galaxies/ "
                        "(default: $SKYSIEVE_REAL_DATA)")
    p.add_argument("--cache", type=Path, default=rd.DEFAULT_CACHE,
                   help="where stores and trained checkpoints go (default %(default)s)")
    p.add_argument("--results", type=Path, default=None,
                   help="results JSON (default <results>/real_skies.json; real_skies_quick.json "
                        "with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a few stamps per frame and class, 2 folds, 1 epoch: a smoke run")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {PARTS}")
    p.add_argument("--folds", type=int, default=None, help="cross-validation folds (5; quick 2)")
    p.add_argument("--sample", type=int, default=None,
                   help="at most N cutouts per frame and class (star_galaxy) or per class "
                        "(gz1); 0 = all (default all; quick 10 / 40)")
    p.add_argument("--epochs", type=int, default=None, help="recipe epochs (60; quick 1)")
    p.add_argument("--patience", type=int, default=None, help="recipe patience (20; quick 1)")
    p.add_argument("--cnn-epochs", type=int, default=None, help="plain CNN epochs (40; quick 1)")
    p.add_argument("--cnn-patience", type=int, default=8, help="plain CNN patience (8)")
    p.add_argument("--with-init-default", action="store_true",
                   help="also train the recipe started from the bundled default model")
    p.add_argument("--gz1-model", default=None,
                   help="checkpoint for gz1_morphology (default the bundled sdss-morphology "
                        "if present, else the model is skipped with a reason)")
    p.add_argument("--write-gz1-test", type=Path, default=None, metavar="CSV",
                   help="write the labels CSV of gz1_morphology's held-out objects and exit")
    p.add_argument("--write-gz1-train", type=Path, default=None, metavar="CSV",
                   help="write the labels CSV of gz1_morphology's training objects (its "
                        "held-out 20%% left out; paths relative to DATA/gz1_galaxies) and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="default",
                   help="the model of the zero-shot parts (default_zero_shot, dss_nebula_share): "
                        "a bundled name or a checkpoint path (default %(default)s)")
    args = p.parse_args(argv)
    if args.data is None:
        p.error("no real data folder: pass --data DIR (the folder holding star_galaxy/, "
                "dss_galaxies/, gz1_galaxies/) or set SKYSIEVE_REAL_DATA")
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = [s for s in parts if s not in PARTS]
    if bad or not parts:
        p.error(f"unknown part(s) {bad!r}; choose from {', '.join(PARTS)}")
    args.parts = parts
    q = args.quick
    args.folds = args.folds or (2 if q else 5)
    args.sample = (10 if q else 0) if args.sample is None else args.sample
    args.epochs = args.epochs or (1 if q else 60)
    args.patience = args.patience or (1 if q else 20)
    args.cnn_epochs = args.cnn_epochs or (1 if q else 40)
    if args.results is None:
        args.results = results_dir() / ("real_skies_quick.json" if q else "real_skies.json")
    return args


def _machine() -> dict[str, Any]:
    from pipeline.training.machine import machine_info

    return {**machine_info(), **load(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _model_sha(name: str) -> str:
    from pipeline import bundled
    from workers.checkpoint import file_sha256

    return file_sha256(bundled.resolve(name))


def _round_psf() -> bool:
    """Whether classify (and so these units) rounds elongated PSFs (``classify.round-psf``)."""
    from pipeline import config

    return bool(config.get("classify.round-psf"))


def _star_galaxy_table(folder: Path, sample: int, seed: int) -> pd.DataFrame:
    table = pd.read_csv(folder / "labels.csv", dtype={"path": str, "label": str, "frame": str})
    return rd.subsample(table, sample, ["frame", "label"], seed) if sample else table


# --------------------------------------------------------------------------- part 1
def default_zero_shot(log: UnitLog, args: argparse.Namespace) -> None:
    """The bundled ``default`` model asked "star or not" on every real star/galaxy cutout."""
    folder, why = rd.dataset(args.data, "star_galaxy")
    if folder is None:
        log.skipped["default_zero_shot"] = why
        return
    table = _star_galaxy_table(folder, args.sample, args.seed)
    settings = {"data": rd.csv_sha256(table), "model": str(args.model), "round_psf": _round_psf(),
                "model_sha256": _model_sha(args.model), "n": len(table)}

    def work() -> dict[str, Any]:
        store = rd.cached_import(folder, table, args.cache, "star_galaxy")
        rows = rd.read_store(store, ("label",))
        probs, classes, sha = rd.predict(args.model, rows)
        true = rows["label"]
        is_star = true == "star"
        star = classes.index("star")
        out: dict[str, Any] = {"store": str(store), "checkpoint_sha256": sha, "classes": classes,
                               "n": int(true.size), "n_star": int(is_star.sum()),
                               "n_galaxy": int((~is_star).sum())}
        for name, said in (("argmax", probs.argmax(axis=1) == star),
                           ("p_star_gt_0.5", probs[:, star] > 0.5)):
            pred = np.where(said, "star", "galaxy")
            s = rd.scores(np.where(is_star, "star", "galaxy"), pred, ["galaxy", "star"])
            out[name] = {k: s[k] for k in ("balanced_accuracy", "accuracy", "recall",
                                           "confusion")}
        best = np.asarray(classes)[probs.argmax(axis=1)]
        out["confusion"] = {lab: {c: int(np.sum((true == lab) & (best == c))) for c in classes}
                            for lab in sorted(set(true))}
        out["mean_probability"] = {lab: dict(zip(classes, probs[true == lab].mean(axis=0).round(4)))
                                   for lab in sorted(set(true))}
        return out

    res = log.run("default_zero_shot", settings, work, machine=load)
    log.summary["default_zero_shot"] = {
        "balanced_accuracy_argmax": res["argmax"]["balanced_accuracy"],
        "balanced_accuracy_p_star": res["p_star_gt_0.5"]["balanced_accuracy"],
        "accuracy_argmax": res["argmax"]["accuracy"], "n": res["n"],
        "known": KNOWN["default_zero_shot"]}


# --------------------------------------------------------------------------- part 2
def dss_nebula_share(log: UnitLog, args: argparse.Namespace) -> None:
    """The share of DSS plate sources ``default`` puts in each class (``nebula_cluster``!)."""
    folder, why = rd.dataset(args.data, "dss_galaxies")
    if folder is None:
        log.skipped["dss_nebula_share"] = why
        return
    labels = pd.read_csv(folder / "labels.csv", dtype=str)
    from pipeline.ingest.fits_io import file_sha256

    settings = {"data": rd.csv_sha256(labels), "model": str(args.model), "round_psf": _round_psf(),
                "model_sha256": _model_sha(args.model),
                "files": {f: file_sha256(folder / f)[0] for f in labels["file"]}}

    def work() -> dict[str, Any]:
        from pipeline.ingest.exposures import ingest
        from pipeline.store import open_store

        args.cache.mkdir(parents=True, exist_ok=True)
        store = args.cache / f"dss-{rd.csv_sha256(labels)[:16]}.zarr"
        if not store.is_dir():
            summary = ingest([folder / f for f in labels["file"]], store)
            if summary.store is None:
                raise RuntimeError(f"ingest found no sources: {summary.describe()}")
        attrs = dict(open_store(store).attrs)
        rows = rd.read_store(store, ("flags", "snr"))
        probs, classes, sha = rd.predict(args.model, rows)
        best = np.asarray(classes)[probs.argmax(axis=1)]

        def shares(mask: np.ndarray) -> dict[str, Any]:
            n = int(mask.sum())
            return {"n": n, "share": {c: (float(np.mean(best[mask] == c)) if n else None)
                                      for c in classes},
                    "mean_probability": {c: (float(probs[mask, i].mean()) if n else None)
                                         for i, c in enumerate(classes)}}

        per_field = {e: shares(rows["exposure"] == e) for e in sorted(set(rows["exposure"]))}
        clean = np.asarray(rows["flags"]) == 0
        return {"store": str(store), "checkpoint_sha256": sha, "classes": classes,
                "detect": attrs.get("detect"), "stamp": int(rows["image"].shape[-1]),
                "per_field": per_field, "overall": shares(np.ones(best.size, bool)),
                "overall_unflagged": shares(clean),
                "note": "M051a and M051b image the same field: their sources overlap"}

    res = log.run("dss_nebula_share", settings, work, machine=load)
    share = res["overall"]["share"]["nebula_cluster"]
    log.summary["dss_nebula_share"] = {
        "nebula_cluster_share": share, "goal": f"<= {NEBULA_GOAL:.0%}",
        "goal_met": share is not None and share <= NEBULA_GOAL, "n": res["overall"]["n"],
        "per_field_nebula_cluster": {e: v["share"]["nebula_cluster"]
                                     for e, v in res["per_field"].items()},
        "shares": res["overall"]["share"], "known": KNOWN["dss_nebula_share"]}


# --------------------------------------------------------------------------- part 3
#: PSF FWHM (px) the ``recipe_psf`` candidates resample every stamp to (``train --psf-pixels``).
PSF_PIXELS = 5.0


def _cv_candidates(args: argparse.Namespace) -> list[str]:
    return (["logreg", "plain_cnn", "recipe", "recipe_dihedral", "recipe_psf",
             "recipe_psf_dihedral", "recipe_photometric", "recipe_photometric_dihedral"]
            + (["recipe_init_default"] if args.with_init_default else []))


def star_galaxy_cv(log: UnitLog, args: argparse.Namespace) -> None:
    """Leave-fields-out cross-validation of the star-galaxy recipe and two baselines."""
    folder, why = rd.dataset(args.data, "star_galaxy")
    if folder is None:
        log.skipped["star_galaxy_cv"] = why
        return
    import torch

    from pipeline import bundled
    from pipeline.imaging.preprocess import prepare
    from pipeline.imaging.psf_shape import round_psf, stored_psf_shape
    from pipeline.training.fit import train  # imported now: a broken tree fails before any unit
    from pipeline.training.splits import split_validation

    full = pd.read_csv(folder / "labels.csv", dtype={"path": str, "label": str, "frame": str})
    field_of = rd.frame_fields(full)  # on every cutout, as train --split-by field would
    table = _star_galaxy_table(folder, args.sample, args.seed)
    fields_t = np.asarray([field_of[f] for f in table["frame"]])
    fold_of = rd.assign_folds(fields_t, table["label"].to_numpy(str), args.folds)
    store = rd.cached_import(folder, table, args.cache, "star_galaxy")
    rows = rd.read_store(store, ("label",))
    # the baselines see the pixels the models see: frames' PSF made round (classify.round-psf)
    shape = stored_psf_shape(rows)
    pixels = rows["image"] if shape is None else round_psf(rows["image"], shape, rows["stamp_bg"])
    true = rows["label"]
    fields = np.asarray([field_of[e] for e in rows["exposure"]])
    fold = np.asarray([fold_of[f] for f in fields])
    classes = ["galaxy", "star"]
    y = np.searchsorted(classes, true)
    data_sha = rd.csv_sha256(table)
    cache: dict[str, Any] = {}

    def features() -> np.ndarray:
        if "x" not in cache:
            cache["x"] = bl.hand_features(pixels)
        return cache["x"]

    def prepared() -> torch.Tensor:
        if "p" not in cache:
            with torch.inference_mode():
                cache["p"] = prepare(pixels.astype(np.float32), stretch=None,
                                     image_size=64, background=rows["stamp_bg"],
                                     noise=rows["stamp_noise"]).clone()
        return cache["p"]

    def finish(k: int, pred: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
        s = rd.scores(true[fold == k], pred, classes)
        return {**s, **extra}

    def run_logreg(k: int) -> dict[str, Any]:
        tr, te = fold != k, fold == k
        model = bl.fit_logistic(features()[tr], y[tr], 2)
        pred = np.asarray(classes)[bl.predict_logistic(model, features()[te]).argmax(axis=1)]
        return finish(k, pred, {"n_train": int(tr.sum()), "features": list(bl.FEATURES),
                                "l2": model["l2"]})

    def run_cnn(k: int) -> dict[str, Any]:
        tr = np.flatnonzero(fold != k)
        inner_tr, inner_val, val_fields = split_validation(fields[tr], true[tr], by="field",
                                                           seed=args.seed)
        x = prepared()
        model, info = bl.train_plain_cnn(x[tr[inner_tr]], y[tr[inner_tr]], x[tr[inner_val]],
                                         y[tr[inner_val]], 2, epochs=args.cnn_epochs,
                                         patience=args.cnn_patience, seed=args.seed)
        pred = np.asarray(classes)[bl.predict_cnn(model, x[fold == k]).argmax(axis=1)]
        return finish(k, pred, {**info, "n_train": int(inner_tr.size),
                                "n_early_stopping": int(inner_val.size),
                                "early_stopping_fields": val_fields})

    def run_recipe(k: int, init: str | None, psf: float | None = None,
                   dihedral: bool = False, augment: str = "geometric") -> dict[str, Any]:
        """Train (or reuse: the candidates with and without dihedral averaging share one
        checkpoint per fold, its name carrying every training setting) and test fold ``k``."""
        from workers.checkpoint import load_card

        train_rows = table[np.asarray([fold_of[f] for f in fields_t]) != k]
        fold_store = rd.cached_import(folder, train_rows, args.cache, "star_galaxy-train")
        name = (f"fold{k}of{args.folds}-{init or 'scratch'}-psf{psf or 0:g}"
                f"{'' if augment == 'geometric' else '-' + augment}{'-round' if _round_psf() else ''}"
                f"-e{args.epochs}"
                f"p{args.patience}s{args.seed}-{data_sha[:12]}.pt")
        out = args.cache / "checkpoints" / name
        if out.is_file() and out.with_suffix(".json").is_file():
            card = load_card(out)
        else:
            card = train(fold_store, arch="smallcnn", out=out, epochs=args.epochs,
                         patience=args.patience, lr=1e-3, seed=args.seed, split_by="field",
                         augment=augment, device="cpu",
                         init=bundled.resolve(init) if init else None,
                         input_scale=None if psf is None else {"mode": "psf", "fwhm_px": psf})
        probs, cls, sha = rd.predict(out, rows, np.flatnonzero(fold == k), dihedral=dihedral)
        pred = np.asarray(cls)[probs.argmax(axis=1)]
        t = card.training
        return finish(k, pred, {"checkpoint": str(out), "checkpoint_sha256": sha,
                                "n_train": t["split"]["n_train"],
                                "n_early_stopping": t["split"]["n_val"],
                                "early_stopping_fields": t["split"].get("val_fields"),
                                "epochs_run": t["epochs_run"], "best_epoch": t["best_epoch"],
                                "train_seconds": t["seconds"],
                                "inner_val_balanced_accuracy": card.metrics["balanced_accuracy"]})

    recipe = {"arch": "smallcnn", "split_by": "field", "augment": "geometric",
              "epochs": args.epochs, "patience": args.patience, "lr": 1e-3, "batch_size": 128,
              "weight_decay": 1e-4}
    specific = {
        "logreg": ({"features": list(bl.FEATURES), "l2": 1e-3, "version": bl.BASELINES_VERSION},
                   run_logreg),
        "plain_cnn": ({"epochs": args.cnn_epochs, "patience": args.cnn_patience, "lr": 1e-3,
                       "batch_size": 64, "version": bl.BASELINES_VERSION}, run_cnn),
        "recipe": (recipe, lambda k: run_recipe(k, None)),
        "recipe_dihedral": ({**recipe, "predict": "mean of 8 rotations and flips"},
                            lambda k: run_recipe(k, None, dihedral=True)),
        "recipe_psf": ({**recipe, "input_scale": {"mode": "psf", "fwhm_px": PSF_PIXELS}},
                       lambda k: run_recipe(k, None, PSF_PIXELS)),
        "recipe_psf_dihedral": ({**recipe, "input_scale": {"mode": "psf", "fwhm_px": PSF_PIXELS},
                                 "predict": "mean of 8 rotations and flips"},
                                lambda k: run_recipe(k, None, PSF_PIXELS, dihedral=True)),
        "recipe_photometric": ({**recipe, "augment": "photometric"},
                               lambda k: run_recipe(k, None, augment="photometric")),
        "recipe_photometric_dihedral": ({**recipe, "augment": "photometric",
                                         "predict": "mean of 8 rotations and flips"},
                                        lambda k: run_recipe(k, None, dihedral=True,
                                                             augment="photometric")),
        "recipe_init_default": ({**recipe, "init": "default",
                                 "init_sha256": _model_sha("default")},
                                lambda k: run_recipe(k, "default")),
    }
    layout = {str(k): sorted({f for f, j in fold_of.items() if j == k}) for k in range(args.folds)}
    plan = {(cand, k): (f"star_galaxy_cv/{cand}/fold{k}",
                        {"candidate": cand, "folds": args.folds, "fold": k,
                         "test_fields": layout[str(k)], "data": data_sha, "seed": args.seed,
                         **({"round_psf": True} if _round_psf() else {}), **specific[cand][0]})
            for cand in _cv_candidates(args) for k in range(args.folds)}
    log.summary["star_galaxy_cv"] = summarize_cv(log, plan, layout)
    for (cand, k), (unit, settings) in plan.items():  # fast baselines first: results come early
        log.run(unit, settings, partial(specific[cand][1], k), machine=load)
        log.summary["star_galaxy_cv"] = summarize_cv(log, plan, layout)
        log.save()


def summarize_cv(log: UnitLog, plan: dict[tuple[str, int], tuple[str, dict[str, Any]]],
                 layout: dict[str, list[str]]) -> dict[str, Any]:
    """Mean ± std over the finished folds, pooled confusion, and paired model - baseline tests.

    ``plan`` maps ``(candidate, fold)`` to the unit's name and settings; only units that
    finished under those settings count.
    """
    from pipeline.training.statistics import paired_study, summarize

    per: dict[str, dict[int, dict[str, Any]]] = {}
    for (cand, k), (unit, settings) in plan.items():
        rec = log.done(unit, settings)
        if rec is not None:
            per.setdefault(cand, {})[k] = rec["result"]
    out: dict[str, Any] = {"folds": layout, "candidates": {}, "paired": {},
                           "known": KNOWN["star_galaxy_cv"]}
    for cand, res in per.items():
        ks = sorted(res)
        conf = np.sum([np.asarray(res[k]["confusion"]) for k in ks], axis=0)
        pooled = float(np.mean(np.diag(conf) / np.maximum(conf.sum(axis=1), 1)))
        out["candidates"][cand] = {
            "folds_done": ks,
            "balanced_accuracy": summarize([res[k]["balanced_accuracy"] for k in ks]),
            "accuracy": summarize([res[k]["accuracy"] for k in ks]),
            "recall_galaxy": summarize([res[k]["recall"]["galaxy"] for k in ks]),
            "recall_star": summarize([res[k]["recall"]["star"] for k in ks]),
            "pooled_balanced_accuracy": pooled, "pooled_confusion": conf.tolist()}
    for model in [c for c in per if c.startswith("recipe")]:
        for base in [c for c in per if not c.startswith("recipe")]:
            ks = sorted(set(per[model]) & set(per[base]))
            if ks:
                study = paired_study([per[base][k]["balanced_accuracy"] for k in ks],
                                     [per[model][k]["balanced_accuracy"] for k in ks])
                out["paired"][f"{model} - {base}"] = {
                    "folds": ks, "metric": "balanced_accuracy",
                    "differences": study["differences"],
                    "mean_difference": study["mean_difference"],
                    "std_difference": study["std_difference"],
                    "paired_t": study["paired_t"], "paired_p": study["paired_p"]}
    return out


RUNNERS = {"default_zero_shot": default_zero_shot, "dss_nebula_share": dss_nebula_share,
           "star_galaxy_cv": star_galaxy_cv, "gz1_morphology": gz1_morphology}


# --------------------------------------------------------------------------- report
def _pm(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s.get("std") is not None else f"{s['mean']:.3f}"


def cv_table(cv: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the cross-validation table (one per candidate)."""
    return [{"candidate": cand, "folds": len(c["folds_done"]),
             "balanced acc": _pm(c["balanced_accuracy"]), "accuracy": _pm(c["accuracy"]),
             "recall galaxy": _pm(c["recall_galaxy"]), "recall star": _pm(c["recall_star"]),
             "pooled bacc": round(c["pooled_balanced_accuracy"], 3)}
            for cand, c in cv.get("candidates", {}).items()]


def markdown(log: UnitLog, command: str) -> str:
    """The short Markdown report written beside the JSON."""
    s = log.summary
    runs = list(dict.fromkeys([r["command"] for r in log.runs if r.get("command")] + [command]))
    lines = ["# real_skies (issue 16)", "", "Runs that made these units (each resumes the last):",
             ""] + [f"- `{c}`" for c in runs] + [""]
    if "default_zero_shot" in s:
        d = s["default_zero_shot"]
        lines += ["## default_zero_shot: bundled `default` on every star_galaxy cutout", "",
                  markdown_table([{"n": d["n"], "star-vs-rest bacc (argmax)":
                                   round(d["balanced_accuracy_argmax"], 3),
                                   "bacc (p_star > 0.5)": round(d["balanced_accuracy_p_star"], 3),
                                   "accuracy": round(d["accuracy_argmax"], 3),
                                   "known": d["known"]}]), ""]
    if "dss_nebula_share" in s:
        d = s["dss_nebula_share"]
        rows = [{"field": e, "nebula_cluster share": round(v, 3) if v is not None else "-"}
                for e, v in d["per_field_nebula_cluster"].items()]
        rows.append({"field": f"all ({d['n']} sources)",
                     "nebula_cluster share": round(d["nebula_cluster_share"], 3)})
        lines += [f"## dss_nebula_share (goal {d['goal']}; met: {d['goal_met']})", "",
                  markdown_table(rows), ""]
    cv = s.get("star_galaxy_cv")
    if cv and cv.get("candidates"):
        lines += ["## star_galaxy_cv: leave-fields-out, mean ± std over folds", "",
                  markdown_table(cv_table(cv)), ""]
        paired = [{"pair": k, "folds": len(v["folds"]),
                   "mean diff bacc": round(v["mean_difference"], 3),
                   "paired p": "-" if v["paired_p"] is None else f"{v['paired_p']:.3g}"}
                  for k, v in cv["paired"].items()]
        if paired:
            lines += [markdown_table(paired), ""]
    if "gz1_morphology" in s:
        g = s["gz1_morphology"]
        rows = [{"model": k if k != "model" else v.get("name"),
                 **{kk: (round(vv, 3) if isinstance(vv, float) else vv)
                    for kk, vv in v.items() if kk != "name"}}
                for k, v in g.items() if isinstance(v, dict)]
        lines += [f"## gz1_morphology (held-out 20% by object, n = {g['n_test']})", "",
                  markdown_table(rows), ""]
    if log.skipped:
        lines += ["## skipped", ""] + [f"- {k}: {v}" for k, v in log.skipped.items()] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen parts; return ``{"path", "ran", "reused", "skipped", "summary"}``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.write_gz1_train is not None or args.write_gz1_test is not None:
        folder, why = rd.dataset(args.data, "gz1_galaxies")
        if folder is None:
            raise SystemExit(f"real_skies: {why}")
        counts = {}
        for part, path in (("train", args.write_gz1_train), ("test", args.write_gz1_test)):
            if path is not None:
                counts[part] = write_training_csv(folder, path, seed=args.seed, part=part)
                print(f"wrote {counts[part]} {part} objects to {path} "
                      f"(import them from {folder})")
        return {"path": args.write_gz1_train or args.write_gz1_test, "ran": 0, "reused": 0,
                "skipped": {}, "summary": {f"gz1_{k}_objects": v for k, v in counts.items()}}
    command = rd.shown_command("real_skies", argv)
    run = {"command": command, "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                          time.gmtime()),
           "parts": args.parts, "machine": _machine()}
    header = {"benchmark": "real_skies", "issue": 16, "data": str(args.data),
              "cache": str(args.cache),
              "note": ("each unit (a model x fold) is saved when it finishes, with its settings; "
                       "a rerun skips units whose settings match. The machine is shared: "
                       "seconds are noisy, the accuracies are not")}
    with exclusive(args.results):  # one writer per results file
        log = UnitLog(args.results, header, run)
        if not args.data.is_dir():
            print(f"real_skies: data folder {args.data} not found; pass --data DIR (the folder "
                  f"holding star_galaxy/, dss_galaxies/, gz1_galaxies/)", file=sys.stderr)
        for part in args.parts:
            print(f"### {part}", flush=True)
            RUNNERS[part](log, args)
            log.save()
        log.runs[-1]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.runs[-1]["units_ran"], log.runs[-1]["units_reused"] = log.ran, log.reused
        path = log.save()
        md = markdown(log, command)
        atomic_write(path.with_suffix(".md"), md + "\n")
        print(md)
    for name, why in log.skipped.items():
        print(f"real_skies: skipped {name}: {why}", file=sys.stderr)
    return {"path": path, "ran": log.ran, "reused": log.reused, "skipped": dict(log.skipped),
            "summary": log.summary}


if __name__ == "__main__":
    main()
