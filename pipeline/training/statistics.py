"""Statistics of per-seed results: mean ± sample standard deviation, paired and Welch t-tests."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["summarize", "paired_study"]


def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof=1``) of per-seed values.

    ``None``/NaN values are left out; ``std`` is ``None`` with fewer than two values,
    ``mean`` is ``None`` with none.
    """
    arr = _finite(values)
    return {"mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std(ddof=1)) if arr.size >= 2 else None,
            "n": int(arr.size), "values": [None if v is None else float(v) for v in values]}


def _p(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def paired_study(baseline: Sequence[float], treated: Sequence[float]) -> dict[str, Any]:
    """Compare per-seed results of two variants: mean difference, paired and Welch t-tests.

    Parameters
    ----------
    baseline, treated : sequence of float
        One value per seed, in the same seed order (seed ``i`` of both share the
        initialisation seed and the validation split).

    Returns
    -------
    dict
        ``baseline`` and ``treated`` (:func:`summarize`), ``differences``
        (treated - baseline, per seed), ``mean_difference``, ``std_difference``,
        ``paired_t`` / ``paired_p`` (``scipy.stats.ttest_rel``, two-sided) and
        ``welch_t`` / ``welch_p`` (``scipy.stats.ttest_ind(equal_var=False)``).
        A statistic that is undefined (fewer than two seeds, zero variance) is ``None``.

    Raises
    ------
    ValueError
        The two sequences differ in length (a programming error of the caller).
    """
    from scipy import stats

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(treated, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_study: need one value per seed for both variants, got "
                         f"{a.size} and {b.size}")
    diff = b - a
    out: dict[str, Any] = {
        "baseline": summarize(a.tolist()), "treated": summarize(b.tolist()),
        "differences": diff.tolist(),
        "mean_difference": float(diff.mean()) if diff.size else None,
        "std_difference": float(diff.std(ddof=1)) if diff.size >= 2 else None,
        "n": int(diff.size), "paired_t": None, "paired_p": None, "welch_t": None,
        "welch_p": None,
    }
    if diff.size >= 2:
        with warnings.catch_warnings():  # zero variance: scipy warns and returns NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            rel = stats.ttest_rel(b, a)
            welch = stats.ttest_ind(b, a, equal_var=False)
        out.update({"paired_t": _p(rel.statistic), "paired_p": _p(rel.pvalue),
                    "welch_t": _p(welch.statistic), "welch_p": _p(welch.pvalue)})
    return out
