"""Compare architectures of the model zoo over seeds: ``skysieve compare``.

For every architecture token and seed, :func:`compare` trains a model on one
cutout store (:func:`pipeline.training.fit.train`, the same validation sources for
every run: split seed 0), scores it on those validation sources or on a separate test
store of held-out objects (:func:`pipeline.training.evaluate.evaluate`) and collects one
table (Markdown and JSON) of accuracy, balanced accuracy, per-class recall, calibrated
ECE, speed (with the threads and load beside it) and accuracy as blur grows, mean ±
standard deviation over the seeds, plus two optional studies with paired statistics:

* distillation, when both ``X`` and ``X+kd`` are among the tokens: ``X`` trained
  alone against ``X`` distilled from a teacher (trained once, seed 0, on the same
  store and split, or a checkpoint given);
* pretraining, for each ``pretrain_store``: one architecture trained from scratch on
  the store against the same architecture initialised from a checkpoint pretrained
  there and fine-tuned on the store (same epochs, same seeds), at each share of the
  training labels asked for (a learning curve), with the epochs and seconds each needs
  to reach a fixed validation score.

Runs are trained and reused by :mod:`pipeline.training.compare_runs` (an interrupted
compare resumes where it stopped, also from committed records) and gathered by
:mod:`pipeline.training.studies`.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.checks import positive_int
from pipeline.errors import CompareError
from pipeline.files import atomic_write, to_jsonable, write_json
from pipeline.training.compare_runs import SPLIT_SEED, given_teacher, run_one, say, stamp_size
from pipeline.training.machine import machine_info
from pipeline.training.studies import (BLUR_REFERENCE, blur_at, paired, pretraining_study,
                                       row_of, time_to)
from pipeline.training.tables import compare_markdown
from pipeline.training.tokens import KD_SUFFIX, parse_token, resolve_arch

__all__ = [
    "JSON_NAME",
    "KD_SUFFIX",
    "MARKDOWN_NAME",
    "compare",
    "parse_token",
    "resolve_arch",
    "time_to",
]

JSON_NAME = "compare.json"
MARKDOWN_NAME = "compare.md"

_IN_SAMPLE = ", these same ones, so it is an in-sample, optimistic figure"


# --------------------------------------------------------------------------- checks
# --------------------------------------------------------------------------- the record
def _command_line(store: Path, out: Path, tokens: list[str], **kw: Any) -> str:
    """The command line that ran: ``sys.argv`` under ``skysieve compare``, else its equivalent."""
    argv = list(sys.argv)
    if len(argv) >= 2 and argv[1] == "compare":
        return shlex.join(["skysieve"] + argv[1:])
    args = ["skysieve", "compare", str(store), "--archs", ",".join(tokens), "--out", str(out)]
    for key, value in kw.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(f"--{key.replace('_', '-')}")
            continue
        if key == "pretrain_store":
            for path in value:
                args += ["--pretrain-store", str(path)]
            continue
        if key in ("blur_sweep", "label_fractions"):
            value = ",".join(f"{v:g}" for v in value)
        args += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(args) + "  # equivalent of the Python call compare(...)"


# --------------------------------------------------------------------------- main
def compare(store: Path, *, archs: Sequence[str], seeds: int = 3, out: Path, epochs: int = 15,
            batch_size: int = 128, image_size: int | None = None,
            teacher_arch: str = "wide_resnet16_4", teacher_epochs: int | None = None,
            teacher: Path | None = None,
            pretrain_store: Path | Sequence[Path] | None = None, pretrain_arch: str | None = None,
            pretrain_epochs: int | None = None, blur_sweep: Sequence[float] = (0, 0.5, 1, 2, 4),
            test_store: Path | None = None, split_by: str = "exposure", lr: float = 3e-3,
            patience: int = 8, augment: str = "full", softening: float | None = None,
            label_fractions: Sequence[float] = (1.0,), target: float | None = None,
            report_only: bool = False, progress: bool = True,
            arch_lr: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Train and evaluate architectures over seeds on one store; write the comparison table.

    Parameters
    ----------
    store : Path
        Labelled cutout store; every run holds out the same validation sources (split
        seed 0, ``split_by``) for early stopping and, without ``test_store``, is scored on them.
    archs : sequence of str
        Architecture tokens: a registered name (``workers.models.list_models()``), or
        ``NAME+kd``: ``NAME`` distilled from the teacher.  ``hr_celestialnet`` at cutout
        sizes means the cutout variant ``hr_celestialnet_cutout``.
    seeds : int, default: 3
        Seeds ``0 .. seeds-1`` (initialisation and augmentation) per token.
    out : Path
        Folder for ``models/``, ``eval/``, ``compare.md``, ``compare.json``,
        ``blur_curves.png`` and ``reliability.png``.
    epochs, batch_size : int
        Training settings of every run (``batch_size`` is also the batched speed test's).
    image_size : int, optional
        Model input side in pixels; default the store's stamp size.
    teacher_arch : str, default: "wide_resnet16_4"
        Teacher of the ``+kd`` tokens, trained once (seed 0) on ``store``.
    teacher_epochs : int, optional
        Default ``epochs``.
    teacher : Path, optional
        A trained checkpoint to distil from instead (e.g. the best network of an earlier
        compare); it is evaluated like the others, not trained.
    pretrain_store : Path or sequence of Path, optional
        Run the pretraining study once per store: pretrain on it (seed 0), fine-tune on
        ``store``, against training from scratch.
    pretrain_arch : str, optional
        Architecture of the study; default the first token without ``+kd``.
    pretrain_epochs : int, optional
        Pretraining epochs; default ``epochs`` (fine-tuning always uses ``epochs``).
    blur_sweep : sequence of float, default: (0, 0.5, 1, 2, 4)
        Added blur in PSF FWHM (see :func:`pipeline.training.evaluate.evaluate`); the table's
        blur column is the factor 1.
    test_store : Path, optional
        Score every run on all labelled sources of this store (objects or fields never
        trained on) instead of on the validation split that chose its epoch.
    split_by, lr, patience, augment, softening
        Training settings of every run (see :func:`pipeline.training.fit.train`;
        ``softening`` of the default stretch, None for its default).
    label_fractions : sequence of float, default: (1.0,)
        The pretraining study's learning curve: scratch and fine-tuned runs on these
        shares of the training labels (:func:`pipeline.training.splits.label_subset`).
    target : float, optional
        The validation balanced accuracy whose epochs and seconds to reach the study
        reports (:func:`time_to`); default 0.95 x the mean best of the scratch runs on all
        labels.
    report_only : bool, default: False
        Train nothing: write the tables from the runs finished so far (a long study's
        interim report), listing the runs not finished yet (``not_finished``).
    progress : bool, default: True
        Print what runs to stderr (and the training epochs).
    arch_lr : mapping of str to float, optional
        A learning rate per network name (``{"alexnet": 3e-4}``), for its plain and ``+kd``
        runs and as a teacher, instead of ``lr``: the plain AlexNet, without batch norm,
        collapses to one class at the rate the others train at.

    Returns
    -------
    dict
        What ``compare.json`` holds: ``command``, ``machine``, ``settings``, ``store``,
        ``rows`` (one per token, with the per-seed numbers), ``distillation`` (a list),
        ``pretraining`` (or None), ``notes``, ``files``, ``wall_s``.

    Raises
    ------
    pipeline.errors.CompareError
        An unknown architecture token (the registry is listed), a repeated token, bad
        numbers, or an ``out`` folder holding runs trained with other settings.
    pipeline.errors.EvaluationError
        A bad blur sweep.
    pipeline.errors.StoreError
        A store that cannot be read or trained on.
    """
    t_start = time.perf_counter()
    from pipeline.training.data import data_sha256
    from pipeline.training.evaluate import validate_blur_sweep
    from pipeline.training.splits import SPLITS

    store = Path(store)
    out = Path(out)
    check = {"where": "compare", "error": CompareError}
    seeds = positive_int("seeds", seeds, **check)
    epochs = positive_int("epochs", epochs, **check)
    batch_size = positive_int("batch_size", batch_size, **check)
    patience = positive_int("patience", patience, **check)
    teacher_epochs = positive_int("teacher_epochs",
                                  epochs if teacher_epochs is None else teacher_epochs, **check)
    pretrain_epochs = positive_int("pretrain_epochs",
                                   epochs if pretrain_epochs is None else pretrain_epochs, **check)
    if image_size is not None:
        image_size = positive_int("image_size", image_size, **check)
    if split_by not in SPLITS:
        raise CompareError(f"compare: unknown split_by {split_by!r}; valid: {', '.join(SPLITS)}")
    fractions = _fractions(label_fractions)
    sweep = validate_blur_sweep(blur_sweep)
    if isinstance(archs, str) or not isinstance(archs, Sequence) or not archs:
        raise CompareError(f"compare: archs must be a non-empty list of tokens like "
                           f"['lenet5', 'mobilenetv3_small+kd'], got {archs!r}")
    stamp = stamp_size(store)
    size = image_size or stamp
    parsed = [parse_token(a, image_size=size) for a in archs]
    tokens = [p["token"] for p in parsed]
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise CompareError(f"compare: token(s) {repeated!r} given twice in archs {tokens!r}")
    arch_lr = _arch_lr(arch_lr, {p["name"] for p in parsed} | {teacher_arch})
    need_teacher = any(p["kd"] for p in parsed)
    teacher_resolved = resolve_arch(teacher_arch, image_size=size)
    if teacher is not None and not Path(teacher).is_file():
        raise CompareError(f"compare: teacher checkpoint {teacher} does not exist; give a "
                           "skysieve checkpoint (MODEL.pt with MODEL.json) or drop --teacher")
    pre_stores = _pretrain_stores(pretrain_store)
    study_arch = None
    if pre_stores:
        if pretrain_arch is None:
            plain = [p for p in parsed if not p["kd"]]
            if not plain:
                raise CompareError("compare: the pretraining study needs pretrain_arch or a token "
                                   f"without {KD_SUFFIX!r} among archs {tokens!r}")
            study_arch = plain[0]
        else:
            study_arch = parse_token(pretrain_arch, image_size=size)
            if study_arch["kd"]:
                raise CompareError(f"compare: pretrain_arch {pretrain_arch!r} cannot be a "
                                   f"{KD_SUFFIX!r} token; give a registered name")

    data_sha = data_sha256(store)
    test = None
    if test_store is not None:
        test_store = Path(test_store)
        test = (test_store, data_sha256(test_store))
        if test[1] == data_sha:
            raise CompareError(f"compare: test_store {test_store} holds the same sources as the "
                               f"training store {store}; give a store of held-out objects")
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    fit = {"split_by": split_by, "lr": lr, "patience": patience, "augment": augment,
           "softening": softening}

    def fit_of(name: str) -> dict[str, Any]:
        return {**fit, "lr": arch_lr.get(name, lr)}

    missing: list[str] = []
    common = {"epochs": epochs, "batch_size": batch_size, "image_size": size,
              "blur_sweep": sweep, "progress": progress, "fit": fit, "test": test,
              "report_only": report_only, "missing": missing}
    n_study = 0
    if study_arch:
        per_fraction = seeds * (1 + len(pre_stores))
        n_study = len(pre_stores) + per_fraction * len(fractions) - (
            seeds if study_arch["token"] in tokens and 1.0 in fractions else 0)
    n_runs = len(parsed) * seeds + (1 if need_teacher else 0) + n_study
    counter = iter(range(1, n_runs + 1))

    def label(text: str) -> str:
        return f"[{next(counter)}/{n_runs}] {text}"

    teacher_rec = None
    if need_teacher and teacher is not None:
        teacher_rec = given_teacher(Path(teacher), out, label(f"teacher {teacher}"),
                                    blur_sweep=sweep, batch_size=batch_size, test=test,
                                    progress=progress)
        teacher_arch = teacher_rec["card"].arch
    elif need_teacher:
        tname = f"teacher_{teacher_arch}_s0"
        teacher_rec = run_one(store, arch=teacher_resolved, pt=out / "models" / f"{tname}.pt",
                           eval_dir=out / "eval" / tname, seed=0, data_sha=data_sha,
                           speed=True, label=label(f"teacher {teacher_arch}"), need_weights=True,
                           **{**common, "epochs": teacher_epochs, "fit": fit_of(teacher_arch)})

    runs: dict[str, list[dict[str, Any]]] = {}
    for p in parsed:
        runs[p["token"]] = []
        if p["kd"] and teacher_rec is None:  # a report before the teacher was trained
            missing.extend(f"{p['token']}_s{seed}" for seed in range(seeds))
            continue
        for seed in range(seeds):
            name = f"{p['token']}_s{seed}"
            rec = run_one(store, arch=p["arch"], pt=out / "models" / f"{name}.pt",
                          eval_dir=out / "eval" / name, seed=seed, data_sha=data_sha,
                          speed=seed == 0, teacher=(Path(teacher_rec["checkpoint"]) if p["kd"]
                                                    else None),
                          label=label(f"{p['token']} seed {seed}"),
                          **{**common, "fit": fit_of(p["name"])})
            if rec is not None:
                runs[p["token"]].append({"seed": seed, "rec": rec})
    done = [p for p in parsed if runs[p["token"]]]
    if not done:
        raise CompareError(f"compare: no run of {tokens!r} has finished in {out} yet; run "
                           "without report_only to train them")
    rows = [row_of(p, runs[p["token"]]) for p in done]
    by_token = {r["token"]: r for r in rows}

    scored = ("all labelled sources of the test store (never trained on, nor used to stop)"
              if test else "the validation sources")
    notes = [(f"accuracy, balanced accuracy, recall, ECE and blur columns: mean ± sample "
              f"standard deviation (ddof=1) over the finished seeds (column 'seeds'; {seeds} "
              f"asked) on {scored}; ECE of the "
              f"temperature-calibrated probabilities (15 bins; the temperature was fitted on "
              f"the validation sources{_IN_SAMPLE if not test else ''})."),
             ("Speed: the seed-0 model's forward pass on prepared stamps "
              "(Predictor.predict_logits, torch.inference_mode), median of repeated runs; the "
              "threads and the 1-minute load average of each measurement are in the table, "
              "and speeds compare only at similar load.")]
    if arch_lr:
        notes.append("learning rate " + ", ".join(f"{n} {v:g}" for n, v in sorted(arch_lr.items()))
                     + f"; every other network {lr:g}.")
    if any(p["arch"] != p["name"] for p in parsed):  # a cutout variant stood in
        notes.append("hr_celestialnet is the documented cutout variant hr_celestialnet_cutout "
                     "(padded convolutions, 2x2 poolings, adaptive head): the full-exposure "
                     "network needs inputs of thousands of pixels.")
    if need_teacher:
        notes.append(f"NAME{KD_SUFFIX}: NAME distilled from {teacher_arch} "
                     + ("(the given checkpoint)." if teacher is not None
                        else "(trained once, seed 0, same store and split)."))

    distillation = []
    for p in parsed:
        if p["kd"] and p["name"] in by_token and p["token"] in by_token:
            base, kd = by_token[p["name"]], by_token[p["token"]]
            tcard, tev = teacher_rec["card"], teacher_rec["evaluation"]
            tspeed = tev.get("speed") or {}
            distillation.append({
                "base": p["name"], "kd": p["token"],
                "teacher": {"arch": teacher_arch, "resolved_arch": tcard.arch,
                            "params": tcard.params,
                            "epochs": (tcard.training or {}).get("epochs", teacher_epochs),
                            "checkpoint": teacher_rec["checkpoint"], "sha256": tcard.sha256,
                            "accuracy": tev["metrics"]["accuracy"],
                            "balanced_accuracy": tev["metrics"]["balanced_accuracy"],
                            "blur_accuracy": blur_at(tev, BLUR_REFERENCE),
                            "ms_per_sample_batch1": tspeed.get("batch1_ms_per_sample"),
                            "cutouts_per_s": tspeed.get("batched_cutouts_per_s"),
                            "speed_conditions": tspeed.get("conditions")},
                "loss": runs[p["token"]][0]["rec"]["card"].training.get("loss"),
                **paired(base["per_seed"], kd["per_seed"]),
            })

    pretraining = None
    pre_recs: list[dict[str, Any]] = []
    if study_arch is not None:
        pretraining = pretraining_study(
            store, study_arch, pre_stores, fractions, seeds=seeds, out=out, data_sha=data_sha,
            pretrain_epochs=pretrain_epochs, zoo=by_token, common=common, label=label,
            target=target, recs=pre_recs)

    # figures: seed 0 of every token
    from pipeline.training import plots

    seed0 = []
    for p in done:
        ev = dict(runs[p["token"]][0]["rec"]["evaluation"])
        ev["model"] = {**ev["model"], "name": p["token"]}
        seed0.append(ev)
    plots.plot_blur_curves(seed0, out / "blur_curves.png",
                           title="Blur robustness (seed 0 of each architecture)")
    plots.plot_reliability(seed0, out / "reliability.png",
                           title="Reliability (seed 0 of each architecture)")

    card0 = runs[done[0]["token"]][0]["rec"]["card"]
    split = card0.training.get("split") or {}
    all_recs = [r["rec"] for rs in runs.values() for r in rs] + pre_recs
    if teacher_rec:
        all_recs.append(teacher_rec)
    result = to_jsonable({
        "command": _command_line(store, out, tokens, seeds=seeds, epochs=epochs,
                                 batch_size=batch_size, image_size=image_size,
                                 teacher_arch=teacher_arch, teacher_epochs=teacher_epochs,
                                 teacher=teacher, pretrain_arch=pretrain_arch,
                                 pretrain_epochs=pretrain_epochs, blur_sweep=sweep,
                                 test_store=test_store, split_by=split_by, lr=lr,
                                 patience=patience, augment=augment, softening=softening,
                                 label_fractions=fractions, target=target,
                                 report_only=report_only,
                                 pretrain_store=pre_stores or None),
        "call": {"store": str(store), "archs": tokens, "seeds": seeds, "out": str(out),
                 "epochs": epochs, "batch_size": batch_size, "image_size": image_size,
                 "teacher_arch": teacher_arch, "teacher_epochs": teacher_epochs,
                 "teacher": None if teacher is None else str(teacher),
                 "pretrain_store": [str(p) for p in pre_stores] or None,
                 "pretrain_arch": pretrain_arch, "pretrain_epochs": pretrain_epochs,
                 "blur_sweep": sweep, "test_store": None if test is None else str(test_store),
                 **fit, "label_fractions": fractions, "target": target},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"seeds": seeds, "epochs": epochs, "batch_size": batch_size,
                     "image_size": size, "stamp": stamp, "blur_sweep": sweep,
                     "split_seed": SPLIT_SEED, "blur_reference_factor": BLUR_REFERENCE,
                     "teacher_arch": teacher_arch if need_teacher else None, **fit,
                     "arch_lr": dict(arch_lr) or None,
                     "scored_on": "test" if test else "validation"},
        "store": {"path": str(store.resolve()), "data_sha256": data_sha,
                  "val_exposures": split.get("val_exposures", []),
                  "n_train": split.get("n_train"), "n_val": split.get("n_val"),
                  "test": None if test is None else {
                      "path": str(test_store.resolve()), "data_sha256": test[1],
                      "n": runs[done[0]["token"]][0]["rec"]["evaluation"].get("n")}},
        "rows": rows,
        "distillation": distillation,
        "pretraining": pretraining,
        "notes": notes,
        "not_finished": missing,
        "runs_trained": sum(bool(r["trained"]) for r in all_recs),
        "files": {"markdown": MARKDOWN_NAME, "json": JSON_NAME,
                  "figures": ["blur_curves.png", "reliability.png"]},
    })
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    atomic_write(out / MARKDOWN_NAME, compare_markdown(result))
    write_json(out / JSON_NAME, result)
    say(progress, f"wrote {out / MARKDOWN_NAME} and {out / JSON_NAME} "
                   f"({result['wall_s'] / 60:.1f} min)")
    return result


def _arch_lr(given: Mapping[str, float] | None, names: set[str]) -> dict[str, float]:
    """Check ``arch_lr``: names of this comparison's networks, positive finite rates."""
    out: dict[str, float] = {}
    for name, rate in (given or {}).items():
        if name not in names:
            raise CompareError(f"compare: arch_lr names {name!r}, which is not among the "
                               f"networks compared ({', '.join(sorted(names))})")
        value = float(rate)
        if not (math.isfinite(value) and value > 0):
            raise CompareError(f"compare: arch_lr[{name!r}] must be a positive learning rate, "
                               f"got {rate!r}")
        out[name] = value
    return out


def _fractions(values: Sequence[float]) -> list[float]:
    """Check the learning curve's label fractions: each in (0, 1], none repeated."""
    try:
        out = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        raise CompareError(f"compare: label_fractions must be numbers in (0, 1], got "
                           f"{values!r}") from None
    if not out or any(not 0.0 < v <= 1.0 for v in out):
        raise CompareError(f"compare: label_fractions must be numbers in (0, 1], like "
                           f"0.05,0.2,1; got {values!r}")
    return out


def _pretrain_stores(value: Path | Sequence[Path] | None) -> list[Path]:
    """The pretraining stores as a list (one study each), each one checked to open."""
    if value is None:
        return []
    stores = [Path(value)] if isinstance(value, (str, Path)) else [Path(v) for v in value]
    names = [p.name for p in stores]
    if len(set(names)) != len(names):
        raise CompareError(f"compare: pretraining stores need distinct folder names (they "
                           f"name the runs), got {names!r}")
    for p in stores:
        stamp_size(p)
    return stores


