"""The seed studies of issue #14, reproduced: ``python -m benchmarks.seed_studies PART ...``
(``--report-only``: the tables from the runs finished so far, training nothing).

Each part is one ``skysieve compare`` run (a subprocess, so the command it records is the one
a user types) with the settings fixed here; its records land in
``benchmarks/results/seed_studies/<folder>/`` (the cards and evaluations are committed, the
weights are not) and its table in ``compare.md`` there.  The stores it needs are made first
under ``--work`` (default ``/tmp/skysieve-seed-studies``) by the project's own commands and
reused when present, so rerunning a part resumes it where it stopped, in this session or the
next (:mod:`pipeline.training.compare_runs`).

Parts:

* ``zoo``: LeNet-5, AlexNet, VGG-11, ResNet-18, HR-CelestialNet (cutout variant) and
  MobileNetV3-Small on real SDSS galaxies (``gz1_galaxies``: 3 classes, cropped to the galaxy
  and downscaled to 32 px), 3 seeds, scored on the held-out 20% of the objects (the split of
  ``real_skies``'s ``gz1_morphology``).  ``--archs`` runs a subset (two processes can share
  the work; a last run with all of them writes the whole table).
* ``pretrain``: MobileNetV3-Small from scratch against pretrained on a formula-driven fractal
  set (:mod:`benchmarks.fractal_images`, no astronomy) and on the synthetic survey, then
  fine-tuned, at 5%, 20% and 100% of the labels, 5 seeds.
* ``distill``: MobileNetV3-Small alone against distilled from the zoo's best network (by
  mean *validation* balanced accuracy when the part first runs, seed 0; the choice is kept
  in ``teacher.json``), 5 seeds.
* ``distill_large``: the same student against distilled from a large teacher, ResNet-18
  (11 M parameters, 7x the student), trained in the study's folder with the zoo's settings
  and seed 0 (training is deterministic, so it is the zoo's ``resnet18_s0``), 5 seeds.
* ``whole``: HR-CelestialNet against AlexNet, VGG-11 and ResNet-18 on whole pointed synthetic
  exposures (galaxy vs nebula/star cluster), downsampled for the CPU, with a blur sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["PARTS", "main", "prepare", "compare_args"]

RESULTS = Path(__file__).resolve().parent / "results" / "seed_studies"
DEFAULT_WORK = Path("/tmp/skysieve-seed-studies")
ZOO_ARCHS = ["lenet5", "alexnet", "vgg11", "resnet18", "hr_celestialnet", "mobilenetv3_small"]
WHOLE_ARCHS = ["hr_celestialnet", "alexnet", "vgg11", "resnet18"]
PARTS = {"zoo": "zoo_gz1", "pretrain": "pretrain_gz1", "distill": "distill_gz1",
         "distill_large": "distill_gz1_resnet18", "whole": "whole_pointed"}
#: The large distillation teacher of ``distill_large``.
LARGE_TEACHER = "resnet18"

#: Training settings shared by the GZ1 parts (cropped to the galaxy at import, 32 px input).
#: The plain AlexNet (no batch norm) collapses to one class at lr 1e-3 on some seeds, even with
#: the Kaiming initialisation (docs/seed-studies.md); it trains at 3e-4, the others at 1e-3.
ARCH_LR = ["--arch-lr", "alexnet=3e-4"]
GZ1_TRAINING = ["--epochs", "30", "--patience", "6", "--lr", "1e-3", "--batch-size", "64",
                "--softening", "20", "--augment", "geometric", "--image-size", "32",
                "--split-by", "source", "--blur-sweep", "0,0.1,0.2,0.35,0.5"]
WHOLE_TRAINING = ["--epochs", "30", "--patience", "6", "--lr", "1e-3", "--batch-size", "16",
                  "--augment", "geometric", "--image-size", "64", "--split-by", "source",
                  "--blur-sweep", "0,0.5,1,2,4", "--seeds", "3"]


def _skysieve(*args: str) -> None:
    """Run one ``skysieve`` command (an argument list, no shell); stop on failure."""
    cmd = [shutil.which("skysieve") or "skysieve", *map(str, args)]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _made(store: Path) -> bool:
    return (store / "zarr.json").is_file() or (store / ".zgroup").is_file()


def prepare(part: str, data: Path, work: Path) -> dict[str, Path]:
    """Make (or find) the stores ``part`` needs under ``work``; return them by role."""
    work.mkdir(parents=True, exist_ok=True)
    stores: dict[str, Path] = {}
    if part in ("zoo", "pretrain", "distill", "distill_large"):
        from benchmarks._gz1 import write_training_csv

        folder = Path(data) / "gz1_galaxies"
        if not (folder / "labels.csv").is_file():
            raise SystemExit(f"seed_studies: {folder}/labels.csv not found; pass --data DIR, "
                             "the folder holding gz1_galaxies/")
        for role in ("train", "test"):
            store = work / f"gz1_{role}.zarr"
            if not _made(store):
                csv = work / f"gz1_{role}.csv"
                write_training_csv(folder, csv, seed=0, part=role)
                _skysieve("import-images", folder, "--labels", csv, "--bands", "g:B,r:G,i:R",
                          "--resize", "128", "--stamp", "64", "--out", store)
            stores[role] = store
    if part == "pretrain":
        fractals = work / "fractals.zarr"
        if not _made(fractals):
            from benchmarks.fractal_images import write_set

            write_set(work / "fractals", classes=32, per_class=300, size=64, seed=0)
            _skysieve("import-images", work / "fractals", "--labels",
                      work / "fractals" / "labels.csv", "--bands", "g:B,r:G,i:R", "--stamp", "64",
                      "--out", fractals)
        survey = work / "simsurvey.zarr"
        if not _made(survey):
            _synth_and_ingest(work / "simsurvey", survey, "--exposures", "10", "--size", "2048",
                              "--seed", "21")
        stores.update(fractals=fractals, survey=survey)
    if part == "whole":
        for role, n, seed in (("train", "300", "31"), ("test", "100", "32")):
            store = work / f"pointed_{role}.zarr"
            if not _made(store):
                _synth_and_ingest(work / f"pointed_{role}", store, "--pointed", "--exposures", n,
                                  "--size", "1024", "--seed", seed, whole=True)
            stores[role] = store
        blurry = work / "pointed_test_blurred.zarr"
        if not _made(blurry):  # HR-CelestialNet's blurry set: the test exposures truly blurred
            import pandas as pd

            truth = pd.read_parquet(work / "pointed_test" / "truth.parquet")
            names = sorted(set(truth.loc[truth["blurred"], "exposure"].astype(str)))
            fits = [str(work / "pointed_test" / f"{name}.fits") for name in names]
            _skysieve("ingest", *fits, "--whole-exposure", "--downsample", "8", "--truth",
                      work / "pointed_test" / "truth.parquet", "--out", blurry)
        stores["blurred"] = blurry
    return stores


def _synth_and_ingest(folder: Path, store: Path, *synth: str, whole: bool = False) -> None:
    _skysieve("synth", folder, *synth)
    fits = sorted(str(p) for p in folder.glob("*.fits"))
    extra = ["--whole-exposure", "--downsample", "8"] if whole else []
    _skysieve("ingest", *fits, *extra, "--truth", folder / "truth.parquet", "--out", store)


def _teacher() -> Path:
    """The distillation teacher: the one chosen before, else the zoo's best network now.

    The best is seed 0 of the zoo network with the highest mean *validation* balanced
    accuracy over its finished seeds (the test store plays no part in the choice).  The
    choice is written to ``distill_gz1/teacher.json`` with the checkpoint's sha256 and kept,
    so the distilled runs of later sessions learn from the same teacher.
    """
    record = RESULTS / PARTS["distill"] / "teacher.json"
    if record.is_file():
        chosen = json.loads(record.read_text())
        pt = RESULTS / PARTS["zoo"] / "models" / chosen["checkpoint"]
        if not pt.is_file():
            raise SystemExit(f"seed_studies: the distillation teacher {pt} is gone; rerun the "
                             f"zoo part for it (training is deterministic) and try again")
        return pt
    models = RESULTS / PARTS["zoo"] / "models"
    by_arch: dict[str, list[float]] = {}
    for card in models.glob("*_s[0-9].json"):
        token = card.stem.rsplit("_s", 1)[0]
        by_arch.setdefault(token, []).append(
            json.loads(card.read_text())["metrics"]["balanced_accuracy"])
    ranked = sorted(((sum(v) / len(v), a) for a, v in by_arch.items()), reverse=True)
    for score, token in ranked:
        pt = models / f"{token}_s0.pt"
        if pt.is_file():
            from workers.checkpoint import file_sha256

            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({
                "checkpoint": pt.name, "sha256": file_sha256(pt), "arch": token,
                "mean_validation_balanced_accuracy": score,
                "seeds_finished": len(by_arch[token]),
                "ranking": [{"arch": a, "mean_validation_balanced_accuracy": v}
                            for v, a in ranked]}, indent=1), encoding="utf-8")
            return pt
    raise SystemExit(f"seed_studies: distill needs a zoo checkpoint ({models}/<arch>_s0.pt); "
                     "run the zoo part first")


def _share_runs(source: str, target: str, token: str) -> None:
    """Copy ``token``'s runs from one study folder to another where the target lacks them.

    The distillation baseline is the pretraining study's scratch runs (same store and
    settings); compare checks each copied card against the settings asked for, so a copy
    that does not match is refused rather than used.
    """
    src, dst = RESULTS / PARTS[source], RESULTS / PARTS[target]
    for card in sorted((src / "models").glob(f"{token}_s[0-9].json")):
        name = card.stem
        evaluation = src / "eval" / name / "evaluation.json"
        if (dst / "models" / card.name).exists() or not evaluation.is_file():
            continue
        (dst / "models").mkdir(parents=True, exist_ok=True)
        (dst / "eval" / name).mkdir(parents=True, exist_ok=True)
        for path in src.glob(f"models/{name}.*"):
            shutil.copy2(path, dst / "models" / path.name)
        shutil.copy2(evaluation, dst / "eval" / name / "evaluation.json")


def compare_args(part: str, stores: dict[str, Path], archs: list[str] | None = None) -> list[str]:
    """The ``skysieve compare`` arguments of ``part`` (after ``compare``)."""
    out = RESULTS / PARTS[part]
    if part == "whole":
        return [str(stores["train"]), "--archs", ",".join(archs or WHOLE_ARCHS), *WHOLE_TRAINING,
                *ARCH_LR, "--test-store", str(stores["test"]), "--out", str(out)]
    gz1 = [str(stores["train"]), *GZ1_TRAINING, "--test-store", str(stores["test"]),
           "--out", str(out)]
    if part == "zoo":
        return gz1[:1] + ["--archs", ",".join(archs or ZOO_ARCHS), "--seeds", "3",
                          *ARCH_LR] + gz1[1:]
    if part == "pretrain":
        return gz1[:1] + ["--archs", "mobilenetv3_small", "--seeds", "5",
                          "--pretrain-store", str(stores["fractals"]),
                          "--pretrain-store", str(stores["survey"]), "--pretrain-epochs", "20",
                          "--label-fractions", "0.05,0.2,1"] + gz1[1:]
    teacher = (["--teacher-arch", LARGE_TEACHER] if part == "distill_large"
               else ["--teacher", str(_teacher())])
    return gz1[:1] + ["--archs", "mobilenetv3_small,mobilenetv3_small+kd", "--seeds", "5",
                      *teacher] + gz1[1:]


def _grey(images: np.ndarray, side: int) -> np.ndarray:
    """Band-mean stamps box-averaged to ``side`` px, minus their outer-ring median."""
    grey = np.nan_to_num(images.astype(np.float32)).mean(axis=1)
    n, h, _ = grey.shape
    if side != h:
        k = h // side
        grey = grey[:, :side * k, :side * k].reshape(n, side, k, side, k).mean(axis=(2, 4))
    ring = np.ones((side, side), bool)
    ring[2:-2, 2:-2] = False
    return grey - np.median(grey[:, ring], axis=1)[:, None, None]


def baselines(part: str, stores: dict[str, Path]) -> dict:
    """Hand-feature logistic regressions fitted on the part's training store, scored on its
    test store, at the stamp size and at the networks' input size; written beside compare.md.
    """
    from benchmarks import _baselines as bl
    from benchmarks._real_data import read_store
    from pipeline.training.metrics import classification_metrics, pairwise_balanced_accuracy

    train, test = (read_store(stores[k], ("label",)) for k in ("train", "test"))
    keep_tr, keep_te = train["label"] != "", test["label"] != ""
    classes = sorted(set(train["label"][keep_tr]))
    y_tr = np.searchsorted(classes, train["label"][keep_tr])
    y_te = np.searchsorted(classes, test["label"][keep_te])
    training = WHOLE_TRAINING if part == "whole" else GZ1_TRAINING
    size = int(training[training.index("--image-size") + 1])
    stamp = int(train["image"].shape[-1])
    rows = []
    for side in sorted({stamp, size}):
        x_tr = bl.hand_features(_grey(train["image"][keep_tr], side))
        x_te = bl.hand_features(_grey(test["image"][keep_te], side))
        model = bl.fit_logistic(x_tr, y_tr, len(classes))
        proba = bl.predict_logistic(model, x_te)
        m = classification_metrics(y_te, proba.argmax(axis=1), classes)
        rows.append({"baseline": f"logistic regression on {len(bl.FEATURES)} hand features",
                     "input_px": side, "n_train": int(y_tr.size), "n_test": int(y_te.size),
                     "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                     "recall": m["recall"],
                     "pairwise": pairwise_balanced_accuracy(proba, y_te, classes)})
    result = {"part": part, "classes": classes, "features": list(bl.FEATURES),
              "baselines_version": bl.BASELINES_VERSION, "rows": rows,
              "train_store": str(stores["train"]), "test_store": str(stores["test"]),
              "note": "fitted on every labelled source of the training store (no early "
                      "stopping to need a validation split), scored on the test store the "
                      "networks are scored on"}
    out = RESULTS / PARTS[part]
    out.mkdir(parents=True, exist_ok=True)
    (out / "baseline.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    pairs = list(rows[0]["pairwise"]) if len(classes) > 2 else []
    lines = ["# Baselines beside the networks", "", result["note"] + ".", "",
             "| baseline | input px | accuracy | balanced acc. |"
             + "".join(f" recall {c} |" for c in classes)
             + "".join(f" {p.replace('|', ' vs ')} |" for p in pairs),
             "|---|---|---|---|" + "---|" * (len(classes) + len(pairs))]
    for r in rows:
        lines.append(f"| {r['baseline']} | {r['input_px']} | {r['accuracy']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} |"
                     + "".join(f" {r['recall'][c]:.3f} |" for c in classes)
                     + "".join(f" {r['pairwise'][p]:.3f} |" for p in pairs))
    (out / "baseline.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return result


def against_baseline(part: str) -> dict:
    """Each network's balanced accuracy over its seeds against the baseline at its input size.

    A one-sample t-test of the per-seed test balanced accuracies against the logistic
    regression's (one deterministic fit on the same stores, its own sampling error on the
    test set left out), written to ``against_baseline.md`` / ``.json`` beside
    ``compare.md``: a network is called ahead of or behind the baseline only where
    p < 0.05.
    """
    from scipy import stats

    out = RESULTS / PARTS[part]
    compared = json.loads((out / "compare.json").read_text())
    base = json.loads((out / "baseline.json").read_text())
    size = compared["settings"]["image_size"]
    ref = next(r for r in base["rows"] if r["input_px"] == size)["balanced_accuracy"]
    rows = []
    for row in compared["rows"]:
        values = [s["balanced_accuracy"] for s in row["per_seed"]]
        p = float(stats.ttest_1samp(values, ref).pvalue) if len(values) > 1 else None
        mean = float(np.mean(values))
        verdict = ("not resolved" if p is None or not p < 0.05
                   else "ahead of the baseline" if mean > ref else "behind the baseline")
        rows.append({"arch": row["token"], "seeds": len(values), "mean": mean,
                     "difference": mean - ref, "p": p, "verdict": verdict})
    result = {"part": part, "baseline_balanced_accuracy": ref, "input_px": size, "rows": rows,
              "test": "one-sample t-test of the per-seed balanced accuracies against the "
                      "baseline's (p < 0.05 to call a difference)"}
    (out / "against_baseline.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    lines = [f"# The networks against the hand-feature baseline ({ref:.3f} balanced, {size} px)",
             "", result["test"] + ".", "",
             "| arch | seeds | balanced acc. | minus the baseline | p | verdict |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['seeds']} | {r['mean']:.3f} | {r['difference']:+.3f} | "
              + ("n/a" if r["p"] is None else f"{r['p']:.3g}") + f" | {r['verdict']} |"
              for r in rows]
    (out / "against_baseline.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return result


def blurry_set(stores: dict[str, Path]) -> dict:
    """Every finished whole-exposure run scored on the blurred test exposures alone.

    HR-CelestialNet's own robustness test: a set of exposures that are blurred as taken
    (defocus, bad seeing), not blurred after the fact.  Written to ``blurry_set.md`` /
    ``.json`` beside ``compare.md``.  A run kept as a record only (card committed, weights
    not) is reused from its committed ``eval_blurred`` evaluation when that names the
    card's sha256 and the same blurred store; runs with neither are skipped.
    """
    from pipeline.training.data import data_sha256
    from pipeline.training.evaluate import evaluate
    from pipeline.training.statistics import summarize

    out = RESULTS / PARTS["whole"]
    blurred_sha = data_sha256(stores["blurred"])
    by_arch: dict[str, list[dict]] = {}
    for card in sorted((out / "models").glob("*_s[0-9].json")):
        pt, kept = card.with_suffix(".pt"), out / "eval_blurred" / card.stem / "evaluation.json"
        ev = json.loads(kept.read_text()) if kept.is_file() else None
        if ev is None or ev["model"]["sha256"] != json.loads(card.read_text())["sha256"] or (
                ev["store"]["data_sha256"] != blurred_sha):
            if not pt.is_file():
                continue
            ev = evaluate(pt, stores["blurred"], out=out / "eval_blurred" / pt.stem,
                          blur_sweep=(0,), subset="all", speed=False, progress=False)
        token, seed = pt.stem.rsplit("_s", 1)
        whole = json.loads((out / "eval" / pt.stem / "evaluation.json").read_text())
        by_arch.setdefault(token, []).append({
            "seed": int(seed), "n": ev["n"], "accuracy": ev["metrics"]["accuracy"],
            "balanced_accuracy": ev["metrics"]["balanced_accuracy"],
            "all_test_accuracy": whole["metrics"]["accuracy"]})
    rows = [{"arch": a, "seeds": len(v), "n": v[0]["n"],
             "accuracy": summarize([r["accuracy"] for r in v]),
             "balanced_accuracy": summarize([r["balanced_accuracy"] for r in v]),
             "all_test_accuracy": summarize([r["all_test_accuracy"] for r in v]),
             "per_seed": v} for a, v in by_arch.items()]
    result = {"store": str(stores["blurred"]), "rows": rows}
    (out / "blurry_set.json").write_text(json.dumps(result, indent=1), encoding="utf-8")

    def pm(x: dict) -> str:
        return "n/a" if x["mean"] is None else (
            f"{x['mean']:.3f}" + ("" if x["std"] is None else f" ± {x['std']:.3f}"))

    lines = ["# The blurry set: test exposures blurred as taken (defocus, bad seeing)", "",
             "| arch | seeds | exposures | accuracy | balanced acc. | accuracy on all test |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['seeds']} | {r['n']} | {pm(r['accuracy'])} | "
              f"{pm(r['balanced_accuracy'])} | {pm(r['all_test_accuracy'])} |" for r in rows]
    (out / "blurry_set.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: prepare the stores of a part and run its compare."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.seed_studies",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=sorted(PARTS))
    p.add_argument("--data", type=Path, default=Path(os.environ.get("SKYSIEVE_REAL_DATA", "")),
                   help="folder holding gz1_galaxies/ (or set SKYSIEVE_REAL_DATA)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help="where the stores are made and kept (default %(default)s)")
    p.add_argument("--archs", default=None, help="comma-separated subset of the part's networks")
    p.add_argument("--prepare-only", action="store_true", help="make the stores and stop")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the study's tables from its finished runs")
    p.add_argument("--baselines-only", action="store_true",
                   help="only fit and score the hand-feature baselines (written beside compare.md)")
    args = p.parse_args(argv)
    stores = prepare(args.part, args.data, args.work)
    if args.prepare_only:
        print(json.dumps({k: str(v) for k, v in stores.items()}, indent=1))
        return 0
    if args.part in ("zoo", "whole"):
        baselines(args.part, stores)
        if args.baselines_only:
            return 0
    archs = [a for a in (args.archs or "").split(",") if a] or None
    if args.part in ("distill", "distill_large"):
        _share_runs("pretrain", args.part, "mobilenetv3_small")
    extra = ["--report-only"] if args.report_only else []
    _skysieve("compare", *compare_args(args.part, stores, archs), *extra)
    if args.part in ("zoo", "whole"):
        against_baseline(args.part)
    if args.part == "whole":
        blurry_set(stores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
