"""Compare architectures of the model zoo over seeds: ``skysieve compare``.

For every architecture token and seed, :func:`compare` trains a model on one
cutout store (:func:`pipeline.training.fit.train`, the same validation exposures for
every run: ``split_seed=0``), evaluates it on those validation exposures
(:func:`pipeline.training.evaluate.evaluate`) and collects one table (Markdown and JSON)
of accuracy, balanced accuracy, calibrated ECE, speed and blur robustness, mean
± standard deviation over the seeds, plus two optional studies with paired
statistics:

* distillation, when both ``X`` and ``X+kd`` are among the tokens: ``X`` trained
  alone against ``X`` distilled from a teacher trained once (seed 0) on the same
  store and split;
* pretraining, when a ``pretrain_store`` is given: one architecture trained from
  scratch on the store against the same architecture initialised from a
  checkpoint pretrained on ``pretrain_store`` and fine-tuned on the store (same
  epochs, same seeds).

Every run writes ``out/models/<token>_s<seed>.pt`` (its card beside it) and
``out/eval/<token>_s<seed>/evaluation.json``; a run whose checkpoint and
evaluation already exist (and match the settings asked for) is reused, so an
interrupted compare resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.checks import positive_int
from pipeline.errors import CompareError
from pipeline.files import atomic_write, to_jsonable, write_json
from pipeline.store import open_store
from pipeline.training.machine import machine_info
from pipeline.training.statistics import paired_study, summarize
from pipeline.training.tables import compare_markdown
from pipeline.training.tokens import KD_SUFFIX, parse_token, resolve_arch
from workers.checkpoint import CheckpointError, file_sha256, load_card

__all__ = [
    "JSON_NAME",
    "KD_SUFFIX",
    "MARKDOWN_NAME",
    "compare",
    "parse_token",
    "resolve_arch",
]

JSON_NAME = "compare.json"
MARKDOWN_NAME = "compare.md"

_SPLIT_SEED = 0
_BLUR_REFERENCE = 1.0  # the table's blur column: accuracy at +1 PSF FWHM


# --------------------------------------------------------------------------- checks
def _stamp_size(store: Path) -> int:
    """The stamp side of a cutout store, opened and checked by :func:`pipeline.store.open_store`."""
    return int(open_store(store)["image"].shape[-1])


# --------------------------------------------------------------------------- runs
def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"compare: {text}", file=sys.stderr, flush=True)


def _reusable(pt: Path, eval_dir: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """Return the evaluation of an existing run that matches ``want``, else None.

    A checkpoint with its card but no (matching) evaluation returns ``{}``: evaluate
    it again without retraining.  A checkpoint trained with other settings is refused.
    """
    if not (pt.is_file() and pt.with_suffix(".json").is_file()):
        return None
    try:
        card = load_card(pt)
    except (CheckpointError, ValueError, OSError):
        return None  # a half-written card: train again
    if file_sha256(pt) != card.sha256:
        return None
    t = card.training or {}
    have = {"arch": card.arch, "image_size": card.image_size, "epochs": t.get("epochs"),
            "seed": t.get("seed"), "split_seed": (t.get("split") or {}).get("seed"),
            "data_sha256": t.get("data_sha256"), "batch_size": t.get("batch_size"),
            "teacher": (t.get("teacher") or {}).get("sha256"),
            "init": (t.get("init") or {}).get("sha256")}
    diff = {k: (have[k], v) for k, v in want.items() if v is not None and have.get(k) != v}
    if diff:
        what = ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in diff.items())
        raise CompareError(f"{pt}: an earlier compare trained this run with other settings: "
                           f"{what}; use a new --out folder or delete {pt.parent} to start over")
    ev_path = eval_dir / "evaluation.json"
    if not ev_path.is_file():
        return {}
    try:
        ev = json.loads(ev_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if (ev.get("model") or {}).get("sha256") != card.sha256:
        return {}
    return ev


def _run(store: Path, *, arch: str, pt: Path, eval_dir: Path, seed: int, epochs: int,
         batch_size: int, image_size: int, data_sha: str | None, blur_sweep: Sequence[float],
         speed: bool, progress: bool, teacher: Path | None = None, init: Path | None = None,
         label: str) -> dict[str, Any]:
    """Train (unless reusable) and evaluate (unless reusable) one model; return its record."""
    from pipeline.training.evaluate import evaluate
    from pipeline.training.fit import train

    want = {"arch": arch, "image_size": image_size, "epochs": epochs, "seed": seed,
            "split_seed": _SPLIT_SEED, "data_sha256": data_sha, "batch_size": batch_size,
            "teacher": load_card(teacher).sha256 if teacher is not None else None,
            "init": file_sha256(init) if init is not None else None}
    ev = _reusable(pt, eval_dir, want)
    trained = ev is None
    if trained:
        _say(progress, f"{label}: training {arch} (seed {seed}, {epochs} epochs) -> {pt}")
        train(store, arch=arch, out=pt, epochs=epochs, batch_size=batch_size, seed=seed,
              split_seed=_SPLIT_SEED, image_size=image_size, teacher=teacher, init=init,
              progress=progress)
    else:
        _say(progress, f"{label}: reusing {pt}")
    if not ev:
        _say(progress, f"{label}: evaluating -> {eval_dir}")
        ev = evaluate(pt, store, out=eval_dir, blur_sweep=tuple(blur_sweep), subset="val",
                      batch_size=batch_size, speed=speed, progress=False, seed=seed)
    card = load_card(pt)
    return {"card": card, "evaluation": ev, "trained": trained, "checkpoint": str(pt),
            "evaluation_json": str(eval_dir / "evaluation.json")}


def _blur_at(ev: dict[str, Any], factor: float, key: str = "accuracy") -> float | None:
    for row in (ev.get("blur") or {}).get("curve", []):
        if math.isclose(float(row["factor"]), factor):
            return row.get(key)
    return None


def _seed_record(seed: int, rec: dict[str, Any]) -> dict[str, Any]:
    ev, card = rec["evaluation"], rec["card"]
    m = ev["metrics"]
    return {"seed": seed, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "ece_calibrated": (m.get("ece") or {}).get("calibrated"),
            "blur_accuracy": _blur_at(ev, _BLUR_REFERENCE),
            "blur_curve": (ev.get("blur") or {}).get("curve"),
            "n_val": ev.get("n"), "epochs_run": card.training.get("epochs_run"),
            "best_epoch": card.training.get("best_epoch"),
            "train_seconds": card.training.get("seconds"), "trained_now": rec["trained"],
            "sha256": card.sha256, "checkpoint": rec["checkpoint"],
            "evaluation": rec["evaluation_json"]}


def _row(parsed: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    per_seed = [_seed_record(r["seed"], r["rec"]) for r in records]
    first = records[0]["rec"]
    speed = first["evaluation"].get("speed") or {}
    return {
        "token": parsed["token"], "arch": parsed["arch"], "kd": parsed["kd"],
        "params": first["card"].params,
        "accuracy": summarize([s["accuracy"] for s in per_seed]),
        "balanced_accuracy": summarize([s["balanced_accuracy"] for s in per_seed]),
        "ece_calibrated": summarize([s["ece_calibrated"] for s in per_seed]),
        "blur_accuracy": summarize([s["blur_accuracy"] for s in per_seed]),
        "ms_per_sample_batch1": speed.get("batch1_ms_per_sample"),
        "cutouts_per_s": speed.get("batched_cutouts_per_s"),
        "speed_batch_size": speed.get("batch_size"),
        "per_seed": per_seed,
    }


def _study(base: list[dict[str, Any]], treated: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seeds": [s["seed"] for s in base],
        "accuracy": paired_study([s["accuracy"] for s in base],
                                 [s["accuracy"] for s in treated]),
        "balanced_accuracy": paired_study([s["balanced_accuracy"] for s in base],
                                          [s["balanced_accuracy"] for s in treated]),
    }


# --------------------------------------------------------------------------- the record
def _command_line(store: Path, out: Path, tokens: list[str], **kw: Any) -> str:
    """The command line that ran: ``sys.argv`` under ``skysieve compare``, else its equivalent."""
    argv = list(sys.argv)
    if len(argv) >= 2 and argv[1] == "compare":
        return shlex.join(["skysieve"] + argv[1:])
    args = ["skysieve", "compare", str(store), "--archs", ",".join(tokens), "--out", str(out)]
    for key, value in kw.items():
        if value is None:
            continue
        if key == "blur_sweep":
            value = ",".join(f"{v:g}" for v in value)
        args += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(args) + "  # equivalent of the Python call compare(...)"


# --------------------------------------------------------------------------- main
def compare(store: Path, *, archs: Sequence[str], seeds: int = 3, out: Path, epochs: int = 15,
            batch_size: int = 128, image_size: int | None = None,
            teacher_arch: str = "wide_resnet16_4", teacher_epochs: int | None = None,
            pretrain_store: Path | None = None, pretrain_arch: str | None = None,
            pretrain_epochs: int | None = None, blur_sweep: Sequence[float] = (0, 0.5, 1, 2, 4),
            progress: bool = True) -> dict[str, Any]:
    """Train and evaluate architectures over seeds on one store; write the comparison table.

    Parameters
    ----------
    store : Path
        Labelled cutout store (with ``exposure``); every run holds out the same
        validation exposures (split seed 0) and is evaluated on them.
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
    pretrain_store : Path, optional
        Run the pretraining study: pretrain on this store (seed 0), fine-tune on ``store``.
    pretrain_arch : str, optional
        Architecture of the study; default the first token without ``+kd``.
    pretrain_epochs : int, optional
        Pretraining epochs; default ``epochs`` (fine-tuning always uses ``epochs``).
    blur_sweep : sequence of float, default: (0, 0.5, 1, 2, 4)
        Added blur in PSF FWHM (see :func:`pipeline.training.evaluate.evaluate`); the table's
        blur column is the factor 1.
    progress : bool, default: True
        Print what runs to stderr (and the training epochs).

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
    from pipeline.training.evaluate import validate_blur_sweep

    store = Path(store)
    out = Path(out)
    check = {"where": "compare", "error": CompareError}
    seeds = positive_int("seeds", seeds, **check)
    epochs = positive_int("epochs", epochs, **check)
    batch_size = positive_int("batch_size", batch_size, **check)
    teacher_epochs = positive_int("teacher_epochs",
                                  epochs if teacher_epochs is None else teacher_epochs, **check)
    pretrain_epochs = positive_int("pretrain_epochs",
                                   epochs if pretrain_epochs is None else pretrain_epochs, **check)
    if image_size is not None:
        image_size = positive_int("image_size", image_size, **check)
    sweep = validate_blur_sweep(blur_sweep)
    if isinstance(archs, str) or not isinstance(archs, Sequence) or not archs:
        raise CompareError(f"compare: archs must be a non-empty list of tokens like "
                           f"['lenet5', 'mobilenetv3_small+kd'], got {archs!r}")
    stamp = _stamp_size(store)
    size = image_size or stamp
    parsed = [parse_token(a, image_size=size) for a in archs]
    tokens = [p["token"] for p in parsed]
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise CompareError(f"compare: token(s) {repeated!r} given twice in archs {tokens!r}")
    need_teacher = any(p["kd"] for p in parsed)
    teacher_resolved = resolve_arch(teacher_arch, image_size=size)
    study_arch = None
    if pretrain_store is not None:
        pretrain_store = Path(pretrain_store)
        _stamp_size(pretrain_store)
        if pretrain_arch is None:
            plain = [p for p in parsed if not p["kd"]]
            if not plain:
                raise CompareError("compare: the pretraining study needs pretrain_arch or a token "
                                   f"without {KD_SUFFIX!r} among archs {tokens!r}")
            study = plain[0]
        else:
            study = parse_token(pretrain_arch, image_size=size)
            if study["kd"]:
                raise CompareError(f"compare: pretrain_arch {pretrain_arch!r} cannot be a "
                                   f"{KD_SUFFIX!r} token; give a registered name")
        study_arch = study

    from pipeline.training.data import load_labelled

    data_sha = load_labelled(store)["data_sha256"]
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    common = {"epochs": epochs, "batch_size": batch_size, "image_size": size,
              "blur_sweep": sweep, "progress": progress}
    n_runs = len(parsed) * seeds + (1 if need_teacher else 0) + (
        1 + seeds * (1 if study_arch and study_arch["token"] in tokens else 2)
        if study_arch else 0)
    counter = iter(range(1, n_runs + 1))

    def label(text: str) -> str:
        return f"[{next(counter)}/{n_runs}] {text}"

    teacher = None
    if need_teacher:
        tname = f"teacher_{teacher_arch}_s0"
        teacher = _run(store, arch=teacher_resolved, pt=out / "models" / f"{tname}.pt",
                       eval_dir=out / "eval" / tname, seed=0, data_sha=data_sha, speed=False,
                       label=label(f"teacher {teacher_arch}"),
                       **{**common, "epochs": teacher_epochs})

    runs: dict[str, list[dict[str, Any]]] = {}
    for p in parsed:
        runs[p["token"]] = []
        for seed in range(seeds):
            name = f"{p['token']}_s{seed}"
            rec = _run(store, arch=p["arch"], pt=out / "models" / f"{name}.pt",
                       eval_dir=out / "eval" / name, seed=seed, data_sha=data_sha,
                       speed=seed == 0, teacher=(Path(teacher["checkpoint"]) if p["kd"]
                                                 else None),
                       label=label(f"{p['token']} seed {seed}"), **common)
            runs[p["token"]].append({"seed": seed, "rec": rec})
    rows = [_row(p, runs[p["token"]]) for p in parsed]
    by_token = {r["token"]: r for r in rows}

    notes = [(f"accuracy, balanced accuracy, ECE and blur columns: mean ± sample standard "
             f"deviation (ddof=1) over {seeds} seed(s) on the validation exposures; ECE of the "
             f"temperature-calibrated probabilities (15 bins; the temperature was fitted on these "
              f"same validation sources, so it is an in-sample, optimistic figure)."),
             ("Speed: the seed-0 model's forward pass on prepared stamps "
             "(Predictor.predict_logits, torch.inference_mode), median of repeated runs, on "
             "this machine while other jobs may have shared it; batch 1 latency and batched "
             "throughput.")]
    if any(p["arch"] != p["name"] for p in parsed):  # a cutout variant stood in
        notes.append("hr_celestialnet is the documented cutout variant hr_celestialnet_cutout "
                     "(padded convolutions, 2x2 poolings, adaptive head): the full-exposure "
                     "network needs inputs of thousands of pixels.")
    if need_teacher:
        notes.append(f"NAME{KD_SUFFIX}: NAME distilled from {teacher_arch} (trained once, seed "
                     "0, same store and split).")
    if not any(math.isclose(f, _BLUR_REFERENCE) for f in sweep):
        notes.append("the blur sweep has no factor 1, so the blur column is empty.")

    distillation = []
    for p in parsed:
        if p["kd"] and p["name"] in by_token:
            base, kd = by_token[p["name"]], by_token[p["token"]]
            tcard, tev = teacher["card"], teacher["evaluation"]
            distillation.append({
                "base": p["name"], "kd": p["token"],
                "teacher": {"arch": teacher_arch, "resolved_arch": tcard.arch,
                            "params": tcard.params, "epochs": teacher_epochs,
                            "checkpoint": teacher["checkpoint"], "sha256": tcard.sha256,
                            "accuracy": tev["metrics"]["accuracy"],
                            "balanced_accuracy": tev["metrics"]["balanced_accuracy"],
                            "blur_accuracy": _blur_at(tev, _BLUR_REFERENCE)},
                "loss": runs[p["token"]][0]["rec"]["card"].training.get("loss"),
                **_study(base["per_seed"], kd["per_seed"]),
            })

    pretraining = None
    if study_arch is not None:
        pname = f"pretrain_{study_arch['token']}_s0"
        pre = _run(pretrain_store, arch=study_arch["arch"], pt=out / "models" / f"{pname}.pt",
                   eval_dir=out / "eval" / pname, seed=0, data_sha=None, speed=False,
                   label=label(f"pretrain {study_arch['token']} on {pretrain_store}"),
                   **{**common, "epochs": pretrain_epochs, "blur_sweep": [0.0]})
        pre_pt = Path(pre["checkpoint"])
        token = study_arch["token"]

        def seed_runs(prefix: str, what: str, **extra: Any) -> list[dict[str, Any]]:
            """One run of the study architecture per seed on ``store``."""
            return [{"seed": seed, "rec": _run(
                store, arch=study_arch["arch"], pt=out / "models" / f"{prefix}_{token}_s{seed}.pt",
                eval_dir=out / "eval" / f"{prefix}_{token}_s{seed}", seed=seed,
                data_sha=data_sha, speed=False, label=label(f"{what} {token} seed {seed}"),
                **extra, **common)} for seed in range(seeds)]

        scratch = by_token.get(token)
        if scratch is None:
            scratch = _row(study_arch, seed_runs("scratch", "scratch"))
        tuned = seed_runs("finetune", "fine-tune", init=pre_pt)
        tuned_row = _row(study_arch, tuned)
        pcard = pre["card"]
        pretraining = {
            "arch": study_arch["token"], "resolved_arch": study_arch["arch"],
            "pretrain": {"store": str(pretrain_store), "epochs": pretrain_epochs,
                         "checkpoint": pre["checkpoint"], "sha256": pcard.sha256,
                         "n_train": pcard.metrics.get("n_train"),
                         "accuracy": pre["evaluation"]["metrics"]["accuracy"],
                         "balanced_accuracy": pre["evaluation"]["metrics"]["balanced_accuracy"]},
            "scratch": scratch, "finetuned": tuned_row,
            **_study(scratch["per_seed"], tuned_row["per_seed"]),
        }

    # figures: seed 0 of every token
    from pipeline.training import plots

    seed0 = []
    for p in parsed:
        ev = dict(runs[p["token"]][0]["rec"]["evaluation"])
        ev["model"] = {**ev["model"], "name": p["token"]}
        seed0.append(ev)
    plots.plot_blur_curves(seed0, out / "blur_curves.png",
                                title="Blur robustness (seed 0 of each architecture)")
    plots.plot_reliability(seed0, out / "reliability.png",
                                title="Reliability (seed 0 of each architecture)")

    card0 = runs[parsed[0]["token"]][0]["rec"]["card"]
    split = card0.training.get("split") or {}
    all_recs = [r["rec"] for rs in runs.values() for r in rs]
    if teacher:
        all_recs.append(teacher)
    if pretraining:
        all_recs += [pre]
    result = to_jsonable({
        "command": _command_line(store, out, tokens, seeds=seeds, epochs=epochs,
                                 batch_size=batch_size, image_size=image_size,
                                 teacher_arch=teacher_arch, teacher_epochs=teacher_epochs,
                                 pretrain_store=pretrain_store, pretrain_arch=pretrain_arch,
                                 pretrain_epochs=pretrain_epochs, blur_sweep=sweep),
        "call": {"store": str(store), "archs": tokens, "seeds": seeds, "out": str(out),
                 "epochs": epochs, "batch_size": batch_size, "image_size": image_size,
                 "teacher_arch": teacher_arch, "teacher_epochs": teacher_epochs,
                 "pretrain_store": None if pretrain_store is None else str(pretrain_store),
                 "pretrain_arch": pretrain_arch, "pretrain_epochs": pretrain_epochs,
                 "blur_sweep": sweep},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"seeds": seeds, "epochs": epochs, "batch_size": batch_size,
                     "image_size": size, "stamp": stamp, "blur_sweep": sweep,
                     "split_seed": _SPLIT_SEED, "blur_reference_factor": _BLUR_REFERENCE,
                     "teacher_arch": teacher_arch if need_teacher else None},
        "store": {"path": str(store.resolve()), "data_sha256": data_sha,
                  "val_exposures": split.get("val_exposures", []),
                  "n_train": split.get("n_train"), "n_val": split.get("n_val")},
        "rows": rows,
        "distillation": distillation,
        "pretraining": pretraining,
        "notes": notes,
        "runs_trained": sum(bool(r["trained"]) for r in all_recs),
        "files": {"markdown": MARKDOWN_NAME, "json": JSON_NAME,
                  "figures": ["blur_curves.png", "reliability.png"]},
    })
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    atomic_write(out / MARKDOWN_NAME, compare_markdown(result))
    write_json(out / JSON_NAME, result)
    _say(progress, f"wrote {out / MARKDOWN_NAME} and {out / JSON_NAME} "
                   f"({result['wall_s'] / 60:.1f} min)")
    return result
