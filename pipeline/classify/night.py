"""The whole night in one call: ingest + classify (``skysieve run``), and the demo."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["run_night", "run_demo", "NightResult", "score_against_truth"]


@dataclass
class NightResult:
    """Where a night's outputs are and what it found."""

    store: Path
    catalogue: Path
    ingest: object
    classify: object
    seconds: float

    def describe(self) -> str:
        """Lines for the terminal."""
        return "\n".join([self.ingest.describe(), "", self.classify.describe(),
                          f"total          {self.seconds:.1f} s"])


def run_night(exposures: list[Path], out: Path, *, truth: Path | None = None,
              sources: Path | None = None, model: str | None = None,
              batch_size: int | None = None, overwrite: bool = False,
              progress: bool = True) -> NightResult:
    """Ingest ``exposures`` into ``out/cutouts.zarr`` and classify them into ``out/catalogue``.

    Rerunning resumes the classification where it stopped (parts already whole are kept)
    and reuses an existing store.
    """
    from pipeline.classify.graph import classify
    from pipeline.ingest.exposures import ingest

    t0 = time.perf_counter()
    out = Path(out)
    store, cat = out / "cutouts.zarr", out / "catalogue"
    out.mkdir(parents=True, exist_ok=True)
    if store.exists() and not overwrite:
        from pipeline.store import open_store

        open_store(store)  # validate what a previous run left
        ingest_summary = _ReusedStore(store)
    else:
        ingest_summary = ingest(list(exposures), store, sources=sources, truth=truth,
                                overwrite=overwrite)
    summary = classify(store, cat, model=model, batch_size=batch_size, overwrite=overwrite,
                       progress=progress)
    return NightResult(store, cat, ingest_summary, summary, time.perf_counter() - t0)


@dataclass
class _ReusedStore:
    store: Path

    def describe(self) -> str:
        return f"store          {self.store} (kept from an earlier run; --overwrite to redo)"


def score_against_truth(catalogue: Path) -> dict[str, object]:
    """Accuracy of the catalogue's ``label`` against ``true_label`` where truth is known.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``n`` (rows with truth), ``recall`` per class,
        ``counts`` (rows per predicted label).
    """
    from pipeline.catalogue import read_catalogue

    df = read_catalogue(catalogue)
    counts = df["label"].value_counts().sort_index().to_dict()
    if "true_label" not in df:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "n": 0,
                "recall": {}, "counts": counts}
    known = df[df["true_label"].astype(str) != ""]
    hit = (known["label"] == known["true_label"]).to_numpy()
    recall = {c: float(hit[(known["true_label"] == c).to_numpy()].mean())
              for c in sorted(known["true_label"].unique())}
    return {"accuracy": float(hit.mean()) if hit.size else float("nan"),
            "balanced_accuracy": float(np.mean(list(recall.values()))) if recall else float("nan"),
            "n": int(hit.size), "recall": recall, "counts": counts}


def run_demo(out: Path, *, exposures: int = 4, size: int = 2048, seed: int = 2026,
             model: str | None = None, overwrite: bool = True, progress: bool = True) -> str:
    """Synthesise a small survey, run the night on it, and report the accuracy against truth.

    Returns
    -------
    str
        The report printed by ``skysieve demo``.
    """
    from pipeline.simulation.survey import synthesize

    t0 = time.perf_counter()
    out = Path(out)
    survey = synthesize(out / "survey", exposures=exposures, size=size, seed=seed)
    night = run_night(survey.files, out, truth=survey.truth, model=model, overwrite=overwrite,
                      progress=progress)
    score = score_against_truth(night.catalogue)
    lines = [survey.describe(), "", night.describe(), "", "class counts (predicted):"]
    lines += [f"  {label:<16}{n:>7}" for label, n in score["counts"].items()]
    lines += ["", f"accuracy against the synthetic truth: {score['accuracy']:.3f} "
              f"(balanced {score['balanced_accuracy']:.3f}) over {score['n']} matched sources"]
    lines += [f"  recall {c:<16}{r:.3f}" for c, r in score["recall"].items()]
    lines += ["", f"survey     {out / 'survey'}", f"store      {night.store}",
              f"catalogue  {night.catalogue}",
              f"try        skysieve query {night.catalogue} "
              "\"SELECT label, count(*) AS n, avg(confidence) FROM catalogue GROUP BY 1\"",
              f"demo took {time.perf_counter() - t0:.0f} s"]
    return "\n".join(lines)
