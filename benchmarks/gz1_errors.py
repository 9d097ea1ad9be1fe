"""Are the elliptical-vs-spiral errors on Galaxy Zoo 1 the models' or the objects'?

    python -m benchmarks.gz1_errors NAME=MODEL:STORE [NAME=MODEL:STORE ...] [--results NAME]

Each ``MODEL`` (a bundled name or a checkpoint) is scored on its ``STORE`` of held-out GZ1
galaxies, imported as its card's ``training.store_import`` says (``real_skies
--write-gz1-test CSV`` writes the held-out objects' labels).  For each model: the
elliptical-vs-spiral balanced accuracy (each galaxy called by the larger of its two
probabilities, as :func:`pipeline.training.metrics.pairwise_balanced_accuracy`), the
3-class balanced accuracy, and both again with test-time dihedral averaging (the mean
probability over the 8 rotations and flips).  For each pair of models, matched by
``source_id``: how many elliptical/spiral galaxies both get wrong, against the number
expected were their errors independent, and the two models' average.

Errors that many independently trained models share are a property of the objects (their
labels, or what the images show at this resolution), not of one model: a ceiling no
model of the same inputs is shown to pass.  Writes ``benchmarks/results/<--results>.json``
(default ``gz1_errors``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import report
from benchmarks._real_data import dihedral_views

__all__ = ["score", "shared_errors", "main"]

PAIR = ("elliptical", "spiral")


def _balanced(pred: np.ndarray, y: np.ndarray, classes: list[int]) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def score(model: str, store: Path) -> dict[str, Any]:
    """Probabilities of ``model`` on ``store`` (plain and dihedral-averaged) and their scores."""
    import xarray as xr

    from pipeline import bundled
    from pipeline.imaging.preprocess import prepare
    from workers.checkpoint import load_checkpoint
    from workers.inference import Predictor

    net, card = load_checkpoint(bundled.resolve(model))
    missing = [c for c in PAIR if c not in card.classes]
    if missing:
        raise SystemExit(f"gz1_errors: {model} has no class {missing[0]!r} (classes "
                         f"{list(card.classes)}); give a Galaxy Zoo morphology model")
    predictor = Predictor(net, card, device="cpu")
    ds = xr.open_zarr(store)
    labels = np.array([str(v) for v in ds["label"].values])
    keep = np.isin(labels, card.classes)
    x = prepare(ds["image"].values[keep], stretch=card.stretch, image_size=card.image_size)
    views = [predictor.predict_proba(view) for view in dihedral_views(x)]
    y = np.searchsorted(card.classes, labels[keep])
    es = [list(card.classes).index(c) for c in PAIR]
    out: dict[str, Any] = {"model": str(model), "store": str(store), "n": int(keep.sum()),
                           "source_id": ds["source_id"].values[keep], "y": y, "es": es}
    for name, proba in (("plain", views[0]), ("dihedral8", np.mean(views, axis=0))):
        in_pair = np.isin(y, es)
        pick = np.asarray(es)[proba[:, es].argmax(axis=1)]
        out[name] = {"elliptical_vs_spiral": _balanced(pick[in_pair], y[in_pair], es),
                     "balanced_3class": _balanced(proba.argmax(axis=1), y,
                                                  list(range(len(card.classes)))),
                     "p_spiral": proba[:, es[1]] / proba[:, es].sum(axis=1),
                     "wrong": in_pair & (pick != y)}
    return out


def shared_errors(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Elliptical/spiral galaxies both models get wrong, and what independence would give."""
    common, ia, ib = np.intersect1d(a["source_id"], b["source_id"], return_indices=True)
    y = a["y"][ia]
    in_pair = np.isin(y, a["es"])
    wa, wb = a["plain"]["wrong"][ia][in_pair], b["plain"]["wrong"][ib][in_pair]
    n = int(in_pair.sum())
    mean_p = (a["plain"]["p_spiral"][ia] + b["plain"]["p_spiral"][ib])[in_pair] / 2
    pick = np.where(mean_p > 0.5, a["es"][1], a["es"][0])
    return {"n": n, "wrong_a": int(wa.sum()), "wrong_b": int(wb.sum()),
            "wrong_both": int((wa & wb).sum()),
            "expected_if_independent": float(wa.mean() * wb.mean() * n),
            "average_elliptical_vs_spiral": _balanced(pick, y[in_pair], a["es"])}


def main(argv: list[str] | None = None) -> dict:
    """Command line: score every model, compare every pair; write the JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gz1_errors",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="NAME=MODEL:STORE")
    p.add_argument("--results", default="gz1_errors", help="result file name (no .json)")
    args = p.parse_args(argv)
    scored = {}
    for item in args.runs:
        name, eq, rest = item.partition("=")
        model, colon, store = rest.rpartition(":")
        if not (eq and colon and name and model and store):
            raise SystemExit(f"gz1_errors: {item!r}: give NAME=MODEL:STORE")
        if not Path(store).is_dir():
            raise SystemExit(f"gz1_errors: {store}: no such store; import the held-out "
                             "galaxies as the model's card says (docs/models.md)")
        scored[name] = score(model, Path(store))
    rows = [{"model": k, "n": v["n"],
             "E vs S": v["plain"]["elliptical_vs_spiral"],
             "E vs S, dihedral8": v["dihedral8"]["elliptical_vs_spiral"],
             "3-class": v["plain"]["balanced_3class"],
             "3-class, dihedral8": v["dihedral8"]["balanced_3class"]} for k, v in scored.items()]
    pairs = {f"{a}|{b}": shared_errors(scored[a], scored[b])
             for a, b in itertools.combinations(scored, 2)}
    payload = {"runs": {k: {"model": v["model"], "store": v["store"], "n": v["n"],
                            **{m: {s: v[m][s] for s in ("elliptical_vs_spiral",
                                                         "balanced_3class")}
                               for m in ("plain", "dihedral8")}}
                        for k, v in scored.items()},
               "rows": rows, "pairs": pairs,
               "command": " ".join(["python -m benchmarks.gz1_errors",
                                    *(sys.argv[1:] if argv is None else argv)])}
    for key, pair in pairs.items():
        print(f"{key}: wrong {pair['wrong_a']} and {pair['wrong_b']} of {pair['n']}, both "
              f"{pair['wrong_both']} (independent: {pair['expected_if_independent']:.1f}); "
              f"average {pair['average_elliptical_vs_spiral']:.3f}")
    return report(args.results, payload, rows)


if __name__ == "__main__":
    main()
