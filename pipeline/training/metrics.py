"""Classification and calibration metrics in numpy (no scikit-learn).

Used by training (validation metrics, temperature scaling) and by
``skysieve evaluate``.  Labels are integer class indices ``0..K-1`` into a list
of class names; probabilities are ``(N, K)`` arrays whose columns follow that
list.  Undefined values (a recall for a class with no true sources, a precision
for a class never predicted, an AUC for a class with no negatives) are
``None`` in the returned dicts, so they are JSON-ready as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata

__all__ = ["classification_metrics", "pairwise_balanced_accuracy", "expected_calibration_error", "reliability_bins",
           "roc_auc_ovr", "fit_temperature", "softmax", "nll"]


def _opt(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _check_labels(y: np.ndarray, k: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class indices, got shape {y.shape!r}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise ValueError(f"{what} must hold integer class indices in [0, {k - 1}], got values "
                         f"{np.unique(y)[:10].tolist()!r}")
    return y.astype(np.int64, copy=False)


def _check_proba(proba: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"proba must be (N, K), got shape {proba.shape!r}")
    y = _check_labels(y_true, proba.shape[1], "y_true")
    if y.size != proba.shape[0]:
        raise ValueError(f"proba has {proba.shape[0]} rows but y_true has {y.size} labels")
    return proba, y


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, macro F1, confusion.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray
        Integer class indices (into ``classes``) of the truth and the prediction.
    classes : list of str
        Class names.

    Returns
    -------
    dict
        ``accuracy``; ``balanced_accuracy`` (mean recall over the classes present in
        ``y_true``); ``precision``, ``recall``, ``f1`` and ``support`` (dicts by class;
        ``None`` where undefined: precision of a class never predicted, recall of a class
        absent from the truth, F1 of a class neither true nor predicted); ``macro_f1``
        (mean F1 over the classes true or predicted at least once, as scikit-learn's
        ``f1_score(average="macro")``); ``confusion``, a list of rows
        ``confusion[true][predicted]``.
    """
    k = len(classes)
    y_true = _check_labels(y_true, k, "y_true")
    y_pred = _check_labels(y_pred, k, "y_pred")
    if y_true.size != y_pred.size:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    nan = np.full(k, np.nan)
    recall = np.divide(tp, support, out=nan.copy(), where=support > 0)
    precision = np.divide(tp, predicted, out=nan.copy(), where=predicted > 0)
    denom = support + predicted  # 2 TP + FP + FN
    f1 = np.divide(2.0 * tp, denom, out=nan.copy(), where=denom > 0)
    present = support > 0
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "balanced_accuracy": float(np.mean(recall[present])) if present.any() else float("nan"),
        "precision": {c: _opt(v) for c, v in zip(classes, precision)},
        "recall": {c: _opt(v) for c, v in zip(classes, recall)},
        "f1": {c: _opt(v) for c, v in zip(classes, f1)},
        "macro_f1": float(np.mean(f1[denom > 0])) if (denom > 0).any() else float("nan"),
        "support": {c: int(s) for c, s in zip(classes, support)},
        "confusion": cm.tolist(),
    }


def pairwise_balanced_accuracy(scores: np.ndarray, y_true: np.ndarray,
                               classes: list[str]) -> dict[str, float | None]:
    """Balanced accuracy of every two-class question the model answers among its classes.

    For classes ``a`` and ``b``: the sources whose true class is ``a`` or ``b``, each called
    by the larger of its two scores (logits or probabilities), so a third class cannot take
    the answer (e.g. elliptical vs spiral in a model that also knows mergers).

    Parameters
    ----------
    scores : numpy.ndarray
        ``(n, k)`` logits or probabilities.
    y_true : numpy.ndarray
        True class indices.
    classes : list of str
        The ``k`` class names.

    Returns
    -------
    dict
        ``"a|b"`` (names sorted) -> balanced accuracy, None where a class has no source.
    """
    scores = np.asarray(scores)
    y = _check_labels(np.asarray(y_true), len(classes), "y_true")
    out: dict[str, float | None] = {}
    order = sorted(range(len(classes)), key=lambda i: classes[i])
    for pos, i in enumerate(order):
        for j in order[pos + 1:]:
            recalls = []
            for want, other in ((i, j), (j, i)):
                mask = y == want
                if not mask.any():
                    break
                a, b = scores[mask, want], scores[mask, other]
                recalls.append(float(np.mean(a > b) + 0.5 * np.mean(a == b)))  # a tie: half
            out[f"{classes[i]}|{classes[j]}"] = (sum(recalls) / 2 if len(recalls) == 2
                                                 else None)
    return out


def _bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, *, bins: int = 15) -> float:
    """Expected calibration error of the top-class probability (equal-width bins).

    ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over ``bins`` bins of width ``1 / bins``
    in confidence; bin ``b`` holds ``b / bins <= confidence < (b + 1) / bins`` (the last
    bin includes 1).  0 for no samples.
    """
    _check_bins(bins)
    proba, y = _check_proba(proba, y_true)
    if y.size == 0:
        return 0.0
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    which = _bin_index(conf, bins)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(proba: np.ndarray, y_true: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Accuracy against confidence in equal-width bins (the reliability diagram's data).

    Parameters
    ----------
    proba : numpy.ndarray
        Class probabilities ``(N, K)``.
    y_true : numpy.ndarray
        True class indices ``(N,)``.
    bins : int, default: 15
        Number of equal-width confidence bins on ``[0, 1]``, as in
        :func:`expected_calibration_error`.

    Returns
    -------
    dict
        ``edges`` (``bins + 1`` floats); per bin ``confidence`` (mean top-class
        probability), ``accuracy`` (fraction whose top class is right), both ``None`` for an
        empty bin, and ``count``; ``ece`` (:func:`expected_calibration_error`).
    """
    _check_bins(bins)
    proba, y = _check_proba(proba, y_true)
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    which = _bin_index(conf, bins)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    mean_conf = [float(s / c) if c else None for s, c in zip(conf_sum, count)]
    mean_acc = [float(s / c) if c else None for s, c in zip(acc_sum, count)]
    return {"edges": np.linspace(0.0, 1.0, bins + 1).tolist(), "confidence": mean_conf,
            "accuracy": mean_acc, "count": count.astype(int).tolist(),
            "ece": expected_calibration_error(proba, y, bins=bins)}


def roc_auc_ovr(proba: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """One-vs-rest ROC AUC of each class, by the rank (Mann-Whitney U) statistic.

    For class ``k`` the score is ``proba[:, k]``, positives are the sources of class
    ``k``: ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum
    of the positives' ranks (ties get their average rank, i.e. count one half).

    Parameters
    ----------
    proba : numpy.ndarray
        Scores ``(N, K)``, columns following ``classes``.
    y_true : numpy.ndarray
        True class indices ``(N,)``.
    classes : list of str

    Returns
    -------
    dict
        ``per_class`` (dict by class; ``None`` where the class has no positives or no
        negatives) and ``macro`` (mean over the classes with a value; NaN if none).
    """
    proba, y = _check_proba(proba, y_true)
    if proba.shape[1] != len(classes):
        raise ValueError(f"proba has {proba.shape[1]} columns for {len(classes)} classes")
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        pos = y == k
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            per_class[name] = None
            continue
        ranks = rankdata(proba[:, k])  # average ranks for ties
        u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
        per_class[name] = float(u / (n_pos * n_neg))
    values = [v for v in per_class.values() if v is not None]
    return {"per_class": per_class, "macro": float(np.mean(values)) if values else float("nan")}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return ``softmax(logits / temperature)`` over the last axis, float64, stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes ``y`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(y.size), y].mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Return the temperature ``T`` in [0.05, 20] minimising the NLL of ``softmax(logits / T)``.

    1.0 when there are no samples.
    """
    if y_true.size == 0:
        return 1.0
    res = minimize_scalar(lambda log_t: nll(logits, y_true, math.exp(log_t)),
                          bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                          options={"xatol": 1e-4})
    return float(math.exp(res.x))
