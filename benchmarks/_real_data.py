"""Real data for ``real_skies``: cached stores, stamps, classify-exact predictions, folds.

The real sets live outside the repository (``--data DIR``, or the folder named by
``$SKYSIEVE_REAL_DATA``);
stores made from them go to a cache folder (``--cache``, default ``/tmp/skysieve-real-skies``),
never into ``benchmarks/results``.  A store is named after the sha256 of the labels table it
was made from, so a rerun reuses it and a changed table makes a new one.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_DATA", "DEFAULT_CACHE", "dataset", "csv_sha256", "subsample", "cached_import",
           "read_store", "predict", "frame_fields", "assign_folds", "scores", "stratified_split"]

#: The real data folder when ``--data`` is not given: ``$SKYSIEVE_REAL_DATA`` (None when unset).
DEFAULT_DATA = Path(os.environ["SKYSIEVE_REAL_DATA"]) if os.environ.get("SKYSIEVE_REAL_DATA") else None
DEFAULT_CACHE = Path("/tmp/skysieve-real-skies")


def dataset(data: Path, name: str, marker: str = "labels.csv") -> tuple[Path | None, str]:
    """``(folder, "")`` for a real set under ``data``, or ``(None, reason)`` when it is absent."""
    folder = Path(data) / name
    if not (folder / marker).is_file():
        return None, (f"real data set {name!r} not found at {folder} (no {marker}); pass "
                      f"--data DIR, the folder holding star_galaxy/, dss_galaxies/, gz1_galaxies/")
    return folder, ""


def csv_sha256(table: pd.DataFrame) -> str:
    """sha256 of a labels table as written to CSV (identifies the rows a unit used)."""
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    return hashlib.sha256(buf.getvalue().encode()).hexdigest()


def subsample(table: pd.DataFrame, per_group: int, by: list[str], seed: int = 0) -> pd.DataFrame:
    """At most ``per_group`` rows of each ``by`` group, chosen with a fixed seed, in path order."""
    parts = [g.sample(n=min(per_group, len(g)), random_state=seed)
             for _, g in table.groupby(by, sort=True)]
    return pd.concat(parts).sort_values("path", kind="stable").reset_index(drop=True)


def cached_import(folder: Path, table: pd.DataFrame, cache: Path, tag: str, *,
                  stamp: int | None = None, bands: str | None = None,
                  resize: int | None = None) -> Path:
    """The store ``skysieve import-images`` makes of ``table``'s rows of ``folder`` (cached).

    The labels CSV of the rows is written to the cache beside the store; the store's
    name carries the CSV's sha256 and the import settings (``stamp``, ``bands``,
    ``resize``, as in ``import_images``), so an existing one is reused.
    """
    from pipeline.ingest.images import import_images

    cache.mkdir(parents=True, exist_ok=True)
    # "-e": stores with the frames' PSF ellipticity (psf_e1, psf_e2); older caches lack it
    key = csv_sha256(table)[:16] + "-e" + (f"-s{stamp}" if stamp else "") + (
        f"-r{resize}" if resize else "") + (f"-b{bands.replace(':', '').replace(',', '')}"
                                            if bands else "")
    store = cache / f"{tag}-{key}.zarr"
    if store.is_dir():  # written whole or not at all (pipeline.store.building)
        return store
    csv = cache / f"{tag}-{key}.csv"
    table.to_csv(csv, index=False)
    summary = import_images(folder, csv, store, stamp=stamp, bands=bands, resize=resize)
    if summary.store is None:
        raise RuntimeError(f"import-images made no store from {csv}: {summary.describe()}")
    return store


def read_store(store: Path, names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every row of a store: ``image`` and the stored stamp statistics, plus ``names``."""
    from pipeline.imaging.stamp_stats import STAMP_STATS
    from pipeline.store import open_store, read_rows

    n = int(open_store(store).sizes["source"])
    rows, _ = read_rows(store, 0, n, ("image", "source_id", "exposure", "psf_fwhm", "psf_e1",
                                      "psf_e2", *STAMP_STATS, *names))
    for key in ("label", "exposure"):
        if key in rows:
            rows[key] = np.asarray(rows[key], dtype=object).astype(str)
    return rows


def dihedral_views(x: Any) -> list[Any]:
    """The 8 rotations and flips of prepared stamps ``(N, C, H, W)`` (torch), the stamps
    themselves first, each contiguous: for test-time averaging."""
    import torch

    views = []
    for k in range(4):
        turned = torch.rot90(x, k, dims=(2, 3))
        views += [turned.contiguous(), torch.flip(turned, dims=(3,)).contiguous()]
    return views


def predict(checkpoint: str | Path, rows: dict[str, np.ndarray], index: np.ndarray | None = None,
            *, block: int = 2048, dihedral: bool = False) -> tuple[np.ndarray, list[str], str]:
    """Calibrated class probabilities of store rows, prepared exactly as ``skysieve classify`` does.

    The PSF made round where the store has its ellipticity (config ``classify.round-psf``),
    ``prepare`` with the store's ``stamp_bg``/``stamp_noise`` (as
    :func:`pipeline.classify.graph.classify_chunk`), then
    :meth:`workers.inference.Predictor.predict_proba`, rows renormalised to sum to 1.
    ``dihedral``: the mean over the 8 rotations and flips of each prepared stamp
    (test-time averaging; a sky has no preferred orientation).

    Returns
    -------
    (numpy.ndarray, list of str, str)
        Probabilities ``(N, K)``, the card's classes, the checkpoint's sha256.
    """
    import torch

    from pipeline import bundled
    from pipeline.imaging.preprocess import prepare
    from pipeline.imaging.psf_shape import stored_psf_shape
    from pipeline.imaging.rescale import scale_for_model
    from workers.checkpoint import file_sha256, load_checkpoint
    from workers.inference import Predictor

    path = bundled.resolve(checkpoint)
    sha = file_sha256(path)
    net, card = load_checkpoint(path, sha256=sha)
    predictor = Predictor(net, card, device="cpu")
    idx = np.arange(rows["image"].shape[0]) if index is None else np.asarray(index)
    stored = "stamp_bg" in rows and "stamp_noise" in rows
    shape = stored_psf_shape(rows, card)
    out = []
    for start in range(0, idx.size, block):
        sel = idx[start:start + block]
        images, bg, noise = scale_for_model(
            rows["image"][sel].astype(np.float32, copy=False), card.input_scale,
            rows["psf_fwhm"][sel] if "psf_fwhm" in rows else None,
            rows["stamp_bg"][sel] if stored else None, rows["stamp_noise"][sel] if stored else None,
            psf_shape=None if shape is None else shape[sel])
        with torch.inference_mode():
            x = prepare(images, stretch=card.stretch, image_size=card.image_size,
                        background=bg, noise=noise)
        views = dihedral_views(x) if dihedral else [x]
        p = np.mean([predictor.predict_proba(v).astype(np.float64) for v in views], axis=0)
        out.append(p / p.sum(axis=1, keepdims=True))
    probs = np.concatenate(out) if out else np.zeros((0, len(card.classes)))
    return probs, list(card.classes), sha


def frame_fields(table: pd.DataFrame) -> dict[str, str]:
    """Frame -> field (frames of one field joined) from a table's ``frame``, ``x``, ``y``.

    :func:`pipeline.training.splits.group_fields` on the whole table, as
    ``skysieve train --split-by field`` does on a store of it.
    """
    from pipeline.training.splits import group_fields

    return group_fields(table["frame"].astype(str).to_numpy(), table["x"].to_numpy(float),
                        table["y"].to_numpy(float))


def assign_folds(fields: np.ndarray, labels: np.ndarray, k: int) -> dict[str, int]:
    """Deal whole fields into ``k`` test folds, deterministically, balancing every class.

    Fields go, largest share of some class first (ties by name), to the fold where the
    sum over classes of the squared class shares would grow least (ties: the lower
    fold), so that each fold holds about ``1/k`` of every class.

    Returns
    -------
    dict
        Field name -> fold (0 .. k-1); every fold gets at least one field.

    Raises
    ------
    ValueError
        ``k < 2`` or fewer fields than folds.
    """
    fields, labels = np.asarray(fields).astype(str), np.asarray(labels).astype(str)
    names, f = np.unique(fields, return_inverse=True)
    classes, y = np.unique(labels, return_inverse=True)
    if k < 2 or names.size < k:
        raise ValueError(f"cannot make {k} folds of whole fields from {names.size} field(s)")
    counts = np.zeros((names.size, classes.size))
    np.add.at(counts, (f, y), 1)
    share = counts / counts.sum(axis=0)
    order = sorted(range(names.size), key=lambda i: (-share[i].max(), names[i]))
    load = np.zeros((k, classes.size))
    fold_of: dict[str, int] = {}
    for done, i in enumerate(order):
        empty = [j for j in range(k) if not load[j].any()]
        if len(empty) >= names.size - done:  # the rest must each open an empty fold
            j = empty[0]
        else:
            j = int(np.argmin([((load[j] + share[i]) ** 2).sum() - (load[j] ** 2).sum()
                               for j in range(k)]))
        load[j] += share[i]
        fold_of[str(names[i])] = j
    return fold_of


def scores(true: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Balanced accuracy, accuracy, recall and support per class, confusion (string labels)."""
    from pipeline.training.metrics import classification_metrics

    lookup = {c: i for i, c in enumerate(classes)}
    m = classification_metrics(np.asarray([lookup[t] for t in true], np.int64),
                               np.asarray([lookup[p] for p in pred], np.int64), classes)
    return {"balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
            "recall": m["recall"], "support": m["support"], "confusion": m["confusion"],
            "n": int(len(true))}


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices: ``fraction`` of each class (at least one) to test."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(str)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.extend(members[:max(1, int(round(fraction * members.size)))].tolist())
    test_idx = np.sort(np.asarray(test, np.int64))
    return np.setdiff1d(np.arange(labels.size), test_idx), test_idx


def shown_command(name: str, argv: list[str]) -> str:
    """The command line a result file records: ``OMP_NUM_THREADS`` as set, the data folder as ``DIR``.

    The real data lie outside the repository, so the recorded command names its folder by
    the placeholder the docs use (``--data DIR``); the JSON's ``data`` field keeps the path.
    """
    import os
    import shlex

    shown = list(argv)
    for i, arg in enumerate(shown):
        if arg == "--data" and i + 1 < len(shown):
            shown[i + 1] = "DIR"
        elif arg.startswith("--data="):
            shown[i] = "--data=DIR"
    threads = os.environ.get("OMP_NUM_THREADS")
    return " ".join(filter(None, [f"OMP_NUM_THREADS={threads}" if threads else "",
                                  shlex.join(["python", "-m", "benchmarks", name, *shown])]))

