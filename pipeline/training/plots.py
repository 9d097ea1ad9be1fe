"""Figures of ``skysieve evaluate``: confusion matrix, blur-robustness curves, reliability diagram.

Every function takes evaluation dicts as :func:`pipeline.training.evaluate.evaluate` returns
them (or paths to ``evaluation.json`` files) and writes one PNG with matplotlib's
Agg backend.  :func:`plot_blur_curves` and :func:`plot_reliability` take several
evaluations, so models can be compared on one figure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import EvaluationError

__all__ = ["plot_confusion", "plot_blur_curves", "plot_reliability", "load_evaluation"]

_DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10})
    return plt


def load_evaluation(ev: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Return an evaluation dict: ``ev`` itself, or read from an ``evaluation.json`` (or its folder).

    Raises
    ------
    pipeline.errors.EvaluationError
        The dict or file does not look like the output of ``skysieve evaluate``.
    """
    if isinstance(ev, Mapping):
        data = dict(ev)
        where = "evaluation dict"
    else:
        path = Path(ev)
        if path.is_dir():
            path = path / "evaluation.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{path}: not a readable evaluation.json ({exc}); write one "
                                  "with `skysieve evaluate`") from exc
        where = str(path)
    missing = [k for k in ("model", "metrics", "blur") if k not in data]
    if missing:
        raise EvaluationError(f"{where}: lacks {', '.join(missing)}; expected the output of "
                              "`skysieve evaluate`")
    return data


def _labels(evals: list[dict[str, Any]]) -> list[str]:
    """One legend label per evaluation, unique."""
    names = [str(ev["model"].get("name", "model")) for ev in evals]
    for detail in (lambda i, ev: ev["model"].get("sha256", "")[:8],
                   lambda i, ev: f"{ev.get('subset', {}).get('used', '?')}, n={ev.get('n', '?')}",
                   lambda i, ev: f"#{i + 1}"):
        if len(set(names)) == len(names):
            break
        names = [f"{n} ({detail(i, ev)})" if names.count(n) > 1 else n
                 for i, (n, ev) in enumerate(zip(names, evals))]
    return names


def _save(fig, path: Path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _as_list(evals) -> list[dict[str, Any]]:
    if isinstance(evals, (Mapping, str, Path)):
        evals = [evals]
    out = [load_evaluation(ev) for ev in evals]
    if not out:
        raise EvaluationError("no evaluation to plot")
    return out


def _for_models(evals) -> tuple[Any, list[dict[str, Any]], list[str], Any]:
    """Return pyplot, the evaluations as a list (:func:`_as_list`), their labels, the colours."""
    plt = _plt()
    evals = _as_list(evals)
    return plt, evals, _labels(evals), plt.get_cmap("tab10")


def plot_confusion(ev: Mapping[str, Any] | str | Path, path: Path) -> Path:
    """Write the confusion matrix: colour = row-normalised fraction, text = count and percentage.

    Rows are the true class, columns the predicted class (``confusion[true][predicted]``).

    Parameters
    ----------
    ev : dict or path
        One evaluation (see :func:`load_evaluation`).
    path : Path
        PNG to write.

    Returns
    -------
    Path
    """
    plt = _plt()
    ev = load_evaluation(ev)
    classes = list(ev["model"]["classes"])
    cm = np.asarray(ev["metrics"]["confusion"], dtype=np.int64)
    support = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    k = len(classes)
    side = max(3.6, 0.75 * k + 2.2)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            colour = "white" if frac[i, j] > 0.55 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%", ha="center", va="center",
                    color=colour, fontsize=9 if k <= 6 else 7)
    ax.set_xticks(range(k), classes, rotation=30 if max(map(len, classes)) > 6 else 0,
                  ha="right" if max(map(len, classes)) > 6 else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    m = ev["metrics"]
    ax.set_title(f"{ev['model']['name']} on {ev.get('n', int(cm.sum()))} sources "
                 f"({ev.get('subset', {}).get('used', '?')})\naccuracy {m['accuracy']:.3f}, "
                 f"balanced {m['balanced_accuracy']:.3f}, macro F1 {m.get('macro_f1', float('nan')):.3f}")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of the true class (row)")
    return _save(fig, path)


def plot_blur_curves(evals: Sequence[Mapping[str, Any] | str | Path] | Mapping[str, Any],
                     path: Path, *, title: str | None = None) -> Path:
    """Write accuracy (solid) and balanced accuracy (dashed) against added blur, one colour a model.

    Parameters
    ----------
    evals : evaluation dict(s) or path(s)
        One or several evaluations (see :func:`load_evaluation`).
    path : Path
        PNG to write.
    title : str, optional
        Default: the model's name for one evaluation, else "Blur robustness".

    Returns
    -------
    Path
    """
    plt, evals, labels, cmap = _for_models(evals)
    many = len(evals) > 1  # several models: the legend goes beside the axes, not over the curves
    fig, ax = plt.subplots(figsize=(9.0 if many else 6.4, 4.2))
    n_classes = []
    for i, (ev, label) in enumerate(zip(evals, labels)):
        curve = sorted(ev["blur"]["curve"], key=lambda r: r["factor"])
        f = [r["factor"] for r in curve]
        acc = [np.nan if r["accuracy"] is None else r["accuracy"] for r in curve]
        bacc = [np.nan if r["balanced_accuracy"] is None else r["balanced_accuracy"]
                for r in curve]
        colour = cmap(i % 10)
        ax.plot(f, acc, "-o", color=colour, label=f"{label}: accuracy", ms=5)
        ax.plot(f, bacc, "--s", color=colour, label=f"{label}: balanced accuracy", ms=7,
                mfc="none", alpha=0.85)
        n_classes.append(len(ev["model"]["classes"]))
    if len(set(n_classes)) == 1:
        ax.axhline(1.0 / n_classes[0], color="grey", ls=":", lw=1,
                   label=f"chance (balanced, {n_classes[0]} classes)")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("added blur: Gaussian FWHM / PSF FWHM")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if title is None:
        title = (f"Blur robustness: {labels[0]} ({evals[0]['model'].get('arch', '?')}, "
                 f"n={evals[0].get('n', '?')})" if len(evals) == 1 else "Blur robustness")
    ax.set_title(title)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_reliability(evals: Sequence[Mapping[str, Any] | str | Path] | Mapping[str, Any],
                     path: Path, *, title: str | None = None) -> Path:
    """Write the reliability diagram: accuracy against confidence per bin, raw and calibrated.

    Calibrated (``softmax(logits / T)``, the card's temperature) is solid, raw (T = 1)
    dashed, one colour a model; the ECE of each is in the legend; the diagonal is perfect
    calibration.  A lower panel shows how many sources fall in each (calibrated) bin.

    Parameters
    ----------
    evals : evaluation dict(s) or path(s)
    path : Path
        PNG to write.
    title : str, optional

    Returns
    -------
    Path
    """
    plt, evals, labels, cmap = _for_models(evals)
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5.8, 6.4), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    width = 1.0 / max(1, len(evals))
    for i, (ev, label) in enumerate(zip(evals, labels)):
        colour = cmap(i % 10)
        rel = ev["metrics"]["reliability"]
        for kind, style in (("calibrated", "-o"), ("raw", "--^")):
            bins = rel[kind]
            conf = np.array([np.nan if c is None else c for c in bins["confidence"]], float)
            acc = np.array([np.nan if a is None else a for a in bins["accuracy"]], float)
            ok = np.isfinite(conf) & np.isfinite(acc)
            temp = (f", T={ev.get('temperature', float('nan')):.2f}" if kind == "calibrated"
                    else ", T=1")
            ax.plot(conf[ok], acc[ok], style, color=colour, ms=4,
                    alpha=1.0 if kind == "calibrated" else 0.6,
                    label=f"{label} {kind}{temp} (ECE {bins['ece']:.3f})")
        cal = rel["calibrated"]
        edges = np.asarray(cal["edges"], float)
        left = edges[:-1] + i * width * np.diff(edges)
        bars = axn.bar(left, cal["count"], width=width * np.diff(edges), align="edge",
                       color=colour, alpha=0.7, edgecolor="white", linewidth=0.5)
        if len(evals) == 1:  # small bins are invisible next to the confident one: give counts
            axn.bar_label(bars, labels=[str(c) if c else "" for c in cal["count"]], fontsize=7,
                          padding=1)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("accuracy in bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title is None:
        title = (f"Reliability: {labels[0]} (n={evals[0].get('n', '?')})" if len(evals) == 1
                 else "Reliability")
    ax.set_title(title)
    axn.set_xlabel("confidence (top-class probability)")
    axn.set_ylabel("sources\n(calibrated)")
    axn.grid(alpha=0.3)
    axn.margins(y=0.25)
    return _save(fig, path)
