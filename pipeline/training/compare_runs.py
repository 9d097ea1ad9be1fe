"""One run of ``skysieve compare``: train it unless it can be reused, evaluate it unless that is.

A run is ``out/models/<name>.pt`` (its card beside it) and ``out/eval/<name>/evaluation.json``.
It is reused when its card matches the settings asked for and its evaluation names the card's
sha256 and the store it should be scored on; a run kept as a record only (the two JSON files,
not the weights: what ``benchmarks/results/seed_studies`` commits) is reused too unless another
run starts from its weights.  So a long study resumes where it stopped, on this machine or,
from its records, on another.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import CompareError
from pipeline.store import open_store
from workers.checkpoint import CheckpointError, file_sha256, load_card

__all__ = ["SPLIT_SEED", "given_teacher", "reusable", "run_one", "say", "stamp_size"]

#: The validation split of every run of a comparison (the seeds vary the rest).
SPLIT_SEED = 0


def stamp_size(store: Path) -> int:
    """The stamp side of a cutout store, opened and checked by :func:`pipeline.store.open_store`."""
    return int(open_store(store)["image"].shape[-1])


def say(progress: bool, text: str) -> None:
    """Print ``compare: text`` to stderr when ``progress``."""
    if progress:
        print(f"compare: {text}", file=sys.stderr, flush=True)


def reusable(pt: Path, eval_dir: Path, want: dict[str, Any], eval_sha: str | None, *,
              need_weights: bool = False) -> dict[str, Any] | None:
    """Return the evaluation of an existing run that matches ``want``, else None.

    A checkpoint with its card but no (matching) evaluation returns ``{}``: evaluate
    it again without retraining.  A checkpoint trained with other settings is refused.
    A run kept as a *record* only (its card and evaluation committed, the weights
    not, as in ``benchmarks/results/seed_studies``) is reused from the two JSON files when
    the evaluation names the card's sha256 and ``need_weights`` is False (no run
    starts from these weights), so a study resumes on another machine without them.
    """
    card_path = pt.with_suffix(".json")
    if not card_path.is_file() or (need_weights and not pt.is_file()):
        return None
    try:
        card = load_card(pt)
    except (CheckpointError, ValueError, OSError):
        return None  # a half-written card: train again
    if pt.is_file() and file_sha256(pt) != card.sha256:
        return None
    t = card.training or {}
    have = {"arch": card.arch, "image_size": card.image_size, "epochs": t.get("epochs"),
            "seed": t.get("seed"), "split_seed": (t.get("split") or {}).get("seed"),
            "data_sha256": t.get("data_sha256"), "batch_size": t.get("batch_size"),
            "teacher": (t.get("teacher") or {}).get("sha256"),
            "init": (t.get("init") or {}).get("sha256"),
            "split_by": (t.get("split") or {}).get("by"), "lr": t.get("lr"),
            "patience": t.get("patience"), "augment": t.get("augment"),
            "softening": (card.stretch or {}).get("softening"),
            "train_fraction": (t.get("split") or {}).get("train_fraction", 1.0)}
    diff = {k: (have[k], v) for k, v in want.items() if v is not None and have.get(k) != v}
    if diff:
        what = ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in diff.items())
        raise CompareError(f"{pt}: an earlier compare trained this run with other settings: "
                           f"{what}; use a new --out folder or delete {pt.parent} to start over")
    ev_path = eval_dir / "evaluation.json"
    try:
        ev = json.loads(ev_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        ev = {}
    if ((ev.get("model") or {}).get("sha256") != card.sha256
            or (ev.get("store") or {}).get("data_sha256") != eval_sha):
        ev = {}  # not evaluated, or on another store: evaluate again
    elif pt.is_file() and "pairwise" not in (ev.get("metrics") or {}):
        ev = {}  # evaluated before the pairwise scores existed: evaluate again (cheap)
    if not pt.is_file() and not ev:
        return None  # a record without its evaluation cannot be scored again: retrain
    return ev


def run_one(store: Path, *, arch: str, pt: Path, eval_dir: Path, seed: int, epochs: int,
         batch_size: int, image_size: int, data_sha: str | None, blur_sweep: Sequence[float],
         speed: bool, progress: bool, teacher: Path | None = None, init: Path | None = None,
         label: str, fit: dict[str, Any], test: tuple[Path, str] | None = None,
         train_fraction: float = 1.0, need_weights: bool = False,
         report_only: bool = False, missing: list[str] | None = None) -> dict[str, Any] | None:
    """Train (unless reusable) and evaluate (unless reusable) one model; return its record.

    ``fit`` holds the training settings every run shares (``split_by``, ``lr``,
    ``patience``, ``augment``, ``softening``); ``test`` the store to evaluate on and its
    data sha256 (default: the validation split of ``store``).  With ``report_only`` a run
    that would have to be trained is not: its name is appended to ``missing`` and None is
    returned (a finished run without its evaluation is still evaluated).
    """
    from pipeline.training.evaluate import evaluate
    from pipeline.training.fit import train

    want = {"arch": arch, "image_size": image_size, "epochs": epochs, "seed": seed,
            "split_seed": SPLIT_SEED, "data_sha256": data_sha, "batch_size": batch_size,
            "teacher": load_card(teacher).sha256 if teacher is not None else None,
            "init": file_sha256(init) if init is not None else None,
            "train_fraction": train_fraction, **fit}
    eval_store, eval_sha = test if test is not None else (store, data_sha)
    ev = reusable(pt, eval_dir, want, eval_sha, need_weights=need_weights)
    trained = ev is None
    if trained and report_only:
        say(progress, f"{label}: not finished yet ({pt.stem}); left out of this report")
        if missing is not None:
            missing.append(pt.stem)
        return None
    if trained:
        say(progress, f"{label}: training {arch} (seed {seed}, {epochs} epochs) -> {pt}")
        options = {k: v for k, v in fit.items() if k != "softening" and v is not None}
        stretch = None if fit.get("softening") is None else {"softening": fit["softening"]}
        train(store, arch=arch, out=pt, epochs=epochs, batch_size=batch_size, seed=seed,
              split_seed=SPLIT_SEED, image_size=image_size, teacher=teacher, init=init,
              progress=progress, stretch=stretch, train_fraction=train_fraction, **options)
    else:
        say(progress, f"{label}: reusing {pt}" + ("" if pt.is_file() else " (its record)"))
    if not ev:
        say(progress, f"{label}: evaluating on {eval_store} -> {eval_dir}")
        ev = evaluate(pt, eval_store, out=eval_dir, blur_sweep=tuple(blur_sweep),
                      subset="all" if test is not None else "val",
                      batch_size=batch_size, speed=speed, progress=False, seed=seed)
    card = load_card(pt)
    return {"card": card, "evaluation": ev, "trained": trained, "checkpoint": str(pt),
            "evaluation_json": str(eval_dir / "evaluation.json")}


def given_teacher(path: Path, out: Path, label: str, *, blur_sweep: Sequence[float],
                   batch_size: int, test: tuple[Path, str] | None,
                   progress: bool) -> dict[str, Any]:
    """Evaluate a teacher checkpoint given by the user (once; reused while its sha holds)."""
    from pipeline.training.evaluate import evaluate

    card = load_card(path)
    eval_dir = out / "eval" / f"teacher_given_{card.sha256[:12]}"
    ev: dict[str, Any] = {}
    ev_path = eval_dir / "evaluation.json"
    if ev_path.is_file():
        ev = json.loads(ev_path.read_text(encoding="utf-8"))
    if (ev.get("model") or {}).get("sha256") != card.sha256:
        store = test[0] if test else Path(card.training["store"])
        say(progress, f"{label}: evaluating the given teacher on {store} -> {eval_dir}")
        ev = evaluate(path, store, out=eval_dir, blur_sweep=tuple(blur_sweep),
                      subset="all" if test else "val", batch_size=batch_size, speed=True,
                      progress=False, seed=0)
    return {"card": card, "evaluation": ev, "trained": False, "checkpoint": str(path),
            "evaluation_json": str(ev_path)}
