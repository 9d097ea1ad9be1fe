"""Runs of ``skysieve compare`` gathered into results: table rows over seeds, paired studies,
the pretraining study (scratch against fine-tuned, per pretraining store and label share), and
the compute each needs to reach a fixed validation score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.training.compare_runs import run_one
from pipeline.training.statistics import paired_study, summarize

__all__ = ["BLUR_REFERENCE", "blur_at", "paired", "pretraining_study", "row_of", "time_to"]

BLUR_REFERENCE = 1.0  # the table's blur column: accuracy at +1 PSF FWHM


def blur_at(ev: dict[str, Any], factor: float, key: str = "accuracy") -> float | None:
    """An evaluation's ``key`` at blur ``factor`` (None when the sweep has no such factor)."""
    return _value_at((ev.get("blur") or {}).get("curve"), factor, key)


def seed_record(seed: int, rec: dict[str, Any]) -> dict[str, Any]:
    ev, card = rec["evaluation"], rec["card"]
    m = ev["metrics"]
    t = card.training
    return {"seed": seed, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "recall": m.get("recall") or {}, "pairwise": m.get("pairwise") or {},
            "ece_calibrated": (m.get("ece") or {}).get("calibrated"),
            "blur_accuracy": blur_at(ev, BLUR_REFERENCE),
            "blur_curve": (ev.get("blur") or {}).get("curve"),
            "n_val": ev.get("n"), "epochs_run": t.get("epochs_run"),
            "best_epoch": t.get("best_epoch"), "history": t.get("history") or [],
            "train_seconds": t.get("seconds"), "train_conditions": t.get("conditions"),
            "n_train": (t.get("split") or {}).get("n_train"), "trained_now": rec["trained"],
            "sha256": card.sha256, "checkpoint": rec["checkpoint"],
            "evaluation": rec["evaluation_json"]}


def row_of(parsed: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One table row: a token's numbers over its finished seeds (None when there are none)."""
    if not records:
        return None
    per_seed = [seed_record(r["seed"], r["rec"]) for r in records]
    first = records[0]["rec"]
    speed = first["evaluation"].get("speed") or {}
    classes = list(first["card"].classes)
    return {
        "token": parsed["token"], "arch": parsed["arch"], "kd": parsed["kd"],
        "params": first["card"].params,
        "accuracy": summarize([s["accuracy"] for s in per_seed]),
        "balanced_accuracy": summarize([s["balanced_accuracy"] for s in per_seed]),
        "recall": {c: summarize([s["recall"].get(c) for s in per_seed]) for c in classes},
        "pairwise": {pair: summarize([s["pairwise"].get(pair) for s in per_seed])
                     for pair in per_seed[0]["pairwise"]},
        "ece_calibrated": summarize([s["ece_calibrated"] for s in per_seed]),
        "blur_accuracy": summarize([s["blur_accuracy"] for s in per_seed]),
        "blur_curve": _mean_curve(per_seed),
        "train_seconds": summarize([s["train_seconds"] for s in per_seed]),
        "train_load": summarize([_mean_load(s["train_conditions"]) for s in per_seed]),
        "ms_per_sample_batch1": speed.get("batch1_ms_per_sample"),
        "cutouts_per_s": speed.get("batched_cutouts_per_s"),
        "speed_batch_size": speed.get("batch_size"),
        "speed_conditions": speed.get("conditions"),
        "per_seed": per_seed,
    }


def _mean_load(conditions: dict[str, Any] | None) -> float | None:
    """The mean of a run's 1-minute load at its start and end (None where not recorded)."""
    loads = [(conditions or {}).get(k, {}).get("load_1min") for k in ("start", "end")]
    loads = [v for v in loads if v is not None]
    return sum(loads) / len(loads) if loads else None


def _mean_curve(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy and balanced accuracy against added blur, mean ± sd over the seeds."""
    factors = [row["factor"] for row in (per_seed[0]["blur_curve"] or [])]
    return [{"factor": f, **{key: summarize([_value_at(s["blur_curve"], f, key)
                                             for s in per_seed])
                             for key in ("accuracy", "balanced_accuracy")}}
            for f in factors]


def _value_at(curve: list[dict[str, Any]] | None, factor: float, key: str) -> float | None:
    for row in curve or []:
        if math.isclose(float(row["factor"]), float(factor)):
            return row.get(key)
    return None


def time_to(history: list[dict[str, Any]], target: float,
            key: str = "val_bacc") -> dict[str, Any] | None:
    """The first epoch whose validation ``key`` reaches ``target``, and the seconds to it.

    Parameters
    ----------
    history : list of dict
        A card's ``training.history`` (``epoch``, ``val_bacc``, ``seconds`` per epoch).
    target : float
        The fixed score to reach.
    key : str, default: "val_bacc"

    Returns
    -------
    dict or None
        ``{"epoch", "seconds"}`` (seconds summed over the epochs up to it), or None when
        the run never reached ``target``.
    """
    spent = 0.0
    for row in history:
        spent += float(row.get("seconds") or 0.0)
        if row.get(key) is not None and row[key] >= target:
            return {"epoch": int(row["epoch"]), "seconds": round(spent, 2)}
    return None


def paired(base: list[dict[str, Any]], treated: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired statistics of two variants over the seeds both have finished."""
    seeds = sorted({s["seed"] for s in base} & {s["seed"] for s in treated})
    a = {s["seed"]: s for s in base}
    b = {s["seed"]: s for s in treated}
    return {
        "seeds": seeds,
        "accuracy": paired_study([a[i]["accuracy"] for i in seeds],
                                 [b[i]["accuracy"] for i in seeds]),
        "balanced_accuracy": paired_study([a[i]["balanced_accuracy"] for i in seeds],
                                          [b[i]["balanced_accuracy"] for i in seeds]),
    }


def pretraining_study(store: Path, study_arch: dict[str, Any], pre_stores: list[Path],
                       fractions: list[float], *, seeds: int, out: Path, data_sha: str,
                       pretrain_epochs: int, zoo: dict[str, dict[str, Any]],
                       common: dict[str, Any], label: Any, target: float | None,
                       recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Scratch against pretrained + fine-tuned, per pretraining store and label fraction."""
    token = study_arch["token"]

    def seed_runs(prefix: str, what: str, fraction: float,
                  **extra: Any) -> list[dict[str, Any]]:
        """One run of the study architecture per seed on ``store``."""
        done = []
        for seed in range(seeds):
            name = f"{prefix}_{token}_s{seed}"
            rec = run_one(store, arch=study_arch["arch"], pt=out / "models" / f"{name}.pt",
                       eval_dir=out / "eval" / name, seed=seed, data_sha=data_sha,
                       speed=False, label=label(f"{what} {token} seed {seed}"),
                       train_fraction=fraction, **extra, **common)
            if rec is not None:
                recs.append(rec)
                done.append({"seed": seed, "rec": rec})
        return done

    pretrained = []
    for pstore in pre_stores:
        name = pstore.name.removesuffix(".zarr")
        pname = f"pretrain_{name}_{token}_s0"
        pre = run_one(pstore, arch=study_arch["arch"], pt=out / "models" / f"{pname}.pt",
                   eval_dir=out / "eval" / pname, seed=0, data_sha=None, speed=False,
                   label=label(f"pretrain {token} on {pstore}"), need_weights=True,
                   **{**common, "epochs": pretrain_epochs, "blur_sweep": [0.0], "test": None,
                      "fit": {**common["fit"], "split_by": "source"}})
        if pre is None:  # a report before the pretraining has run: its studies wait
            common["missing"].extend(f"finetune_{name}_f{f:g}_{token}_s{seed}"
                                     for f in fractions for seed in range(seeds))
            continue
        recs.append(pre)
        pcard = pre["card"]
        pretrained.append({"name": name, "store": str(pstore),
                           "epochs": pretrain_epochs, "checkpoint": pre["checkpoint"],
                           "sha256": pcard.sha256, "classes": list(pcard.classes),
                           "n_train": pcard.metrics.get("n_train"),
                           "accuracy": pre["evaluation"]["metrics"]["accuracy"],
                           "balanced_accuracy":
                               pre["evaluation"]["metrics"]["balanced_accuracy"]})

    studies = []
    scratch_rows: dict[float, dict[str, Any]] = {}
    for fraction in fractions:
        tag = f"f{fraction:g}"
        if fraction == 1.0 and token in zoo:
            scratch_rows[fraction] = zoo[token]
        else:
            scratch_rows[fraction] = row_of(study_arch, seed_runs(
                f"scratch_{tag}", f"scratch ({tag})", fraction))
        for pre in pretrained:
            tuned = row_of(study_arch, seed_runs(
                f"finetune_{pre['name']}_{tag}", f"fine-tune {pre['name']} ({tag})", fraction,
                init=Path(pre["checkpoint"])))
            if scratch_rows[fraction] is None or tuned is None:
                continue
            studies.append({"pretrain": pre["name"], "fraction": fraction,
                            "scratch": scratch_rows[fraction], "finetuned": tuned,
                            **paired(scratch_rows[fraction]["per_seed"], tuned["per_seed"])})
    scratch_rows = {f: r for f, r in scratch_rows.items() if r is not None}
    full = scratch_rows[max(scratch_rows)]["per_seed"] if scratch_rows else []
    if target is None:
        best = [max((r.get("val_bacc") or 0.0) for r in s["history"]) for s in full
                if s["history"]]
        target = round(0.95 * sum(best) / len(best), 3) if best else None
    speed_to = []
    if target is not None:
        for fraction in sorted(scratch_rows):
            conds = [("scratch", scratch_rows[fraction])] + [
                (st["pretrain"], st["finetuned"]) for st in studies if st["fraction"] == fraction]
            for name, row in conds:
                hits = [time_to(s["history"], target) for s in row["per_seed"]]
                got = [h for h in hits if h is not None]
                speed_to.append({"fraction": fraction, "condition": name,
                                 "reached": len(got), "of": len(hits),
                                 "epochs": summarize([h["epoch"] for h in got]),
                                 "seconds": summarize([h["seconds"] for h in got])})
    return {"arch": token, "resolved_arch": study_arch["arch"], "fractions": fractions,
            "pretrain": pretrained, "studies": studies, "target_val_bacc": target,
            "time_to_target": speed_to}
