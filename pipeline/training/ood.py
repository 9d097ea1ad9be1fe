"""Fitting a model's out-of-distribution statistics: at the end of ``train``, or for an existing checkpoint.

The statistics (:mod:`workers.ood`; :func:`fit_ood_stats`: the kNN bank, the Mahalanobis
statistics) are fitted on the penultimate features of the training split (un-augmented
stamps, prepared as inference prepares them) and ranked on the validation split, the same
split ``train`` held out.  :func:`fit_checkpoint_ood`
(``skysieve ood-fit MODEL STORE --out NEW.pt``) does it for a checkpoint that has none,
without retraining: the weights are copied byte for byte, so every sha256 that names
them stays valid; the statistics go to ``NEW.ood.npz``, whose sha256 the new card records.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import bundled
from pipeline.checks import fraction, positive_int
from pipeline.errors import StoreError, TrainingError
from pipeline.imaging.preprocess import apply_stretch, prepare, resize
from pipeline.imaging.psf_shape import wants_round
from pipeline.imaging.rescale import scale_for_model
from pipeline.training.data import load_labelled
from pipeline.training.splits import SPLITS, group_fields, split_validation
from workers.checkpoint import (ModelCard, checkpoint_paths, file_sha256, load_card,
                                load_checkpoint, write_ood_stats)
from workers.ood import (COMBINED, DEFAULT_THRESHOLD, KNN_K, MAX_BANK, MAX_DIM, OODStats,
                         energy_score, l2_normalise, penultimate_features, unconfidence)

__all__ = ["fit_ood_stats", "ledoit_wolf_shrinkage", "fit_training_ood", "fit_checkpoint_ood",
           "split_features", "SplitFeatures"]

_BLOCK = 2048  # stamps prepared and run at a time
_MAX_REFERENCE = 200_000  # validation scores kept (evenly spaced order statistics beyond)
_MAX_BANK_BYTES = 16 << 20  # wide heads keep fewer rows in the kNN bank (float16)


def _shared_covariance(g: np.ndarray, y: np.ndarray,
                       k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means ``(k, d)`` (NaN rows for absent classes), the within-class residuals and
    their pooled covariance."""
    means = np.full((k, g.shape[1]), np.nan)
    resid = np.empty_like(g)
    for c in range(k):
        rows = y == c
        if rows.any():
            means[c] = g[rows].mean(axis=0)
            resid[rows] = g[rows] - means[c]
    return means, resid, resid.T @ resid / max(g.shape[0], 1)


def ledoit_wolf_shrinkage(resid: np.ndarray, cov: np.ndarray, *, max_rows: int = 20_000) -> float:
    """Ledoit & Wolf (2004) shrinkage of ``cov`` towards ``mean(eigenvalues) * I``, in [0, 1].

    ``resid`` are the centred rows ``cov`` was computed from (``cov = resid.T resid / n``);
    the variance term is estimated on at most ``max_rows`` of them (evenly spaced).
    """
    n, p = resid.shape
    mu = float(np.trace(cov)) / p
    delta = float(((cov - mu * np.eye(p)) ** 2).sum()) / p
    if delta <= 0 or n < 2:
        return 1.0
    x = resid[np.linspace(0, n - 1, min(n, max_rows)).round().astype(int)]
    m = x.shape[0]
    sq = (x * x).sum(axis=1)
    # sum_i |x_i x_i^T - S|_F^2 = sum_i |x_i|^4 - 2 sum_i x_i^T S x_i + m |S|_F^2
    spread = (sq ** 2).sum() - 2.0 * ((x @ cov) * x).sum() + m * (cov ** 2).sum()
    beta = min(float(spread) / (m * m) / p * (m / n), delta)  # scaled to the n rows of cov
    return float(np.clip(beta / delta, 0.0, 1.0))


def fit_ood_stats(train_features: np.ndarray, train_labels: np.ndarray,
                  val_features: np.ndarray, val_logits: np.ndarray, *, num_classes: int,
                  temperature: float = 1.0, max_dim: int = MAX_DIM,
                  shrinkage: float | None = None, knn_k: int = KNN_K,
                  bank_size: int = MAX_BANK) -> OODStats:
    """Fit the kNN bank and the Mahalanobis statistics on training features; rank the validation scores.

    ``ood_score`` then ranks ``max(q_knn, q_conf)`` (:meth:`workers.ood.OODStats.distance`)
    among the validation stamps' own.

    Parameters
    ----------
    train_features : numpy.ndarray
        ``(N, D)`` penultimate features of the training stamps (no augmentation).
    train_labels : numpy.ndarray
        ``(N,)`` class indices in ``[0, num_classes)``.
    val_features, val_logits : numpy.ndarray
        ``(M, D)`` features and ``(M, K)`` logits of held-out validation stamps.
    num_classes : int
        ``K``; classes without training stamps get NaN means and are left out of the minimum.
    temperature : float, default: 1.0
        Of the energy and the confidence (the card's temperature).
    max_dim : int, default: :data:`MAX_DIM`
        Features wider than this are projected on their first ``max_dim`` principal components.
    shrinkage : float, optional
        Weight ``a`` of the shrunk covariance ``(1 - a) S + a mean(eig S) I``; default the
        Ledoit-Wolf estimate (:func:`ledoit_wolf_shrinkage`: near 0 for many training stamps
        per feature, larger for few).  A floor of 1e-6 keeps it invertible (dead ReLU units).
    knn_k : int, default: :data:`workers.ood.KNN_K`
        The neighbour of the kNN score (at most the bank's rows); 0: no bank, and
        ``ood_score`` ranks the Mahalanobis distance (as sidecars written before the bank).
    bank_size : int, default: :data:`workers.ood.MAX_BANK`
        Most training features in the bank, taken evenly spaced in their order (fewer for
        features wider than 400: the bank stays under 16 MiB).

    Returns
    -------
    OODStats
    """
    f = np.asarray(train_features, np.float64)
    y = np.asarray(train_labels).astype(np.int64)
    if f.ndim != 2 or y.shape != (f.shape[0],) or f.shape[0] < 2:
        raise ValueError(f"fit_ood_stats: need (N >= 2, D) features and (N,) labels, got "
                         f"{f.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"fit_ood_stats: labels must lie in [0, {num_classes})")
    if np.asarray(val_features).shape[0] == 0:
        raise ValueError("fit_ood_stats: no validation stamps to rank the scores against")
    center = f.mean(axis=0)
    g = f - center
    dim = f.shape[1]
    projection = None
    if dim > max_dim:
        _, vecs = np.linalg.eigh(g.T @ g / g.shape[0])
        projection = vecs[:, ::-1][:, :max_dim]
        g = g @ projection
    means, resid, cov = _shared_covariance(g, y, num_classes)
    if shrinkage is None:
        shrinkage = ledoit_wolf_shrinkage(resid, cov)
    shrinkage = max(float(shrinkage), 1e-6)
    s, u = np.linalg.eigh(cov)
    s = np.clip(s, 0.0, None)
    scale = float(np.mean(s)) if np.mean(s) > 0 else 1.0
    whiten = u / np.sqrt((1.0 - shrinkage) * s + shrinkage * scale)
    transform = whiten if projection is None else projection @ whiten
    base = dict(center=center, transform=transform, means=means @ whiten)
    val_f = torch.as_tensor(np.asarray(val_features, np.float32))
    val_m = OODStats(**base, val_mahalanobis=[0.0], val_energy=[0.0]).mahalanobis(val_f).numpy()
    val_e = energy_score(val_logits, temperature)
    knn: dict[str, Any] = {}
    if knn_k > 0:
        rows = max(1, min(int(bank_size), f.shape[0], _MAX_BANK_BYTES // (2 * dim)))
        pick = np.linspace(0, f.shape[0] - 1, rows).round().astype(int)
        knn = {"bank": l2_normalise(f[pick]).astype(np.float16), "knn_k": min(int(knn_k), rows),
               "temperature": float(temperature)}
        probe = OODStats(**base, val_mahalanobis=val_m, val_energy=[0.0], **knn,
                         val_knn=[0.0], val_unconfidence=[0.0], val_combined=[0.0])
        knn["val_knn"] = _reference(probe.knn(val_f).numpy())
        knn["val_unconfidence"] = _reference(unconfidence(val_logits, temperature).numpy())
        probe = OODStats(**base, val_mahalanobis=val_m, val_energy=[0.0], **knn,
                         val_combined=[0.0])  # the quantiles' references known now
        knn["val_combined"] = _reference(probe.distance(val_f, val_logits).numpy())
    levels = (0.5, 0.9, 0.95, 0.99)
    info = {
        "score": COMBINED if knn else "mahalanobis",
        "dim": int(dim), "reduced_dim": int(transform.shape[1]), "pca": projection is not None,
        "covariance": "shared within-class, Ledoit-Wolf shrinkage towards a scaled identity",
        "shrinkage": float(shrinkage), "energy_temperature": float(temperature),
        "n_train": int(f.shape[0]), "n_val": int(val_f.shape[0]),
        "classes_fitted": int(np.isfinite(means).all(axis=1).sum()),
        "val_mahalanobis_quantiles": {str(q): float(np.quantile(val_m, q)) for q in levels},
        "val_energy_quantiles": {str(q): float(np.quantile(val_e, q)) for q in levels},
    }
    if knn:
        info.update({"knn": "distance of the L2-normalised features to the k-th nearest "
                            "training feature (Sun et al. 2022)",
                     "knn_k": knn["knn_k"], "bank_size": int(knn["bank"].shape[0]),
                     "val_knn_quantiles": {str(q): float(np.quantile(knn["val_knn"], q))
                                           for q in levels},
                     "val_unconfidence_quantiles": {
                         str(q): float(np.quantile(knn["val_unconfidence"], q)) for q in levels}})
    return OODStats(**base, val_mahalanobis=_reference(val_m), val_energy=_reference(val_e),
                    **knn, info=info)


def _reference(scores: np.ndarray) -> np.ndarray:
    """Sorted validation scores, thinned to evenly spaced order statistics beyond _MAX_REFERENCE."""
    v = np.sort(np.asarray(scores, np.float32))
    if v.size > _MAX_REFERENCE:
        v = v[np.linspace(0, v.size - 1, _MAX_REFERENCE).round().astype(int)]
    return v


def _snr_batches(z: torch.Tensor, stretch: dict[str, Any], image_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, z.shape[0], _BLOCK):
        yield resize(apply_stretch(z[start:start + _BLOCK], stretch), image_size)


def fit_training_ood(model: torch.nn.Module, z_train: torch.Tensor, y_train: np.ndarray,
                     x_val: torch.Tensor, *, num_classes: int, stretch: dict[str, Any],
                     image_size: int, temperature: float, device: torch.device,
                     batch_size: int = 512) -> OODStats:
    """The OOD statistics of a model just trained (called at the end of ``train``).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model, on ``device`` (left in eval mode).
    z_train : torch.Tensor
        Training stamps in S/N units (not augmented); stretched and resized here in blocks.
    y_train : numpy.ndarray
        Their class indices.
    x_val : torch.Tensor
        Prepared validation stamps.
    num_classes, stretch, image_size, temperature, device, batch_size
        As in the card; ``batch_size`` stamps per forward pass.
    """
    def batches(source: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for block in source:
            yield from block.split(batch_size)

    f_train, _ = penultimate_features(model, batches(_snr_batches(z_train, stretch, image_size)),
                                      device=device)
    f_val, logits_val = penultimate_features(model, batches(iter([x_val])), device=device)
    return fit_ood_stats(f_train, np.asarray(y_train), f_val, logits_val,
                         num_classes=num_classes, temperature=temperature)


def _split(store: Path, data: dict[str, Any], card: ModelCard, split_by: str | None,
           val_fraction: float | None, seed: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train/validation indices as ``train`` would choose them (defaults: the card's split)."""
    split = card.training.get("split", {}) if isinstance(card.training, dict) else {}
    by = split_by or split.get("by") or "exposure"
    frac = val_fraction if val_fraction is not None else split.get("val_fraction", 0.2)
    seed = seed if seed is not None else int(split.get("seed", 0))
    if by not in SPLITS:
        raise TrainingError(f"ood-fit: unknown split_by {by!r}; valid: {', '.join(SPLITS)}")
    if not 0.0 < float(frac) < 1.0:
        raise TrainingError(f"ood-fit: val_fraction must be between 0 and 1, got {frac!r}")
    groups = data["exposures"]
    if by == "field":
        field_of = group_fields(groups, data["x"], data["y"], data["ra"], data["dec"])
        groups = np.asarray([field_of[str(v)] for v in groups])
    try:
        train_idx, val_idx, val_groups = split_validation(groups, data["labels"], by=by,
                                                          val_fraction=float(frac), seed=seed)
    except TrainingError as exc:
        raise StoreError(f"{store}: {exc}") from exc
    return train_idx, val_idx, {"by": by, "val_fraction": float(frac), "seed": seed,
                                "val_groups": val_groups, "n_train": int(train_idx.size),
                                "n_val": int(val_idx.size)}


@dataclass
class SplitFeatures:
    """Penultimate features of a labelled store, split as ``train`` splits it (:func:`split_features`).

    Attributes
    ----------
    card : workers.checkpoint.ModelCard
        The checkpoint's card.
    source : Path
        The checkpoint file.
    train, val : numpy.ndarray
        ``(N, D)`` and ``(M, D)`` float32 features of the training and validation stamps.
    y_train, y_val : numpy.ndarray
        Their class indices (in ``card.classes``).
    logits_val : numpy.ndarray
        ``(M, K)`` raw logits of the validation stamps.
    split : dict
        ``by``, ``val_fraction``, ``seed``, ``val_groups``, ``n_train``, ``n_val``.
    data_sha256 : str
        Checksum of the store's labels (:func:`pipeline.training.data.load_labelled`).
    """

    card: ModelCard
    source: Path
    train: np.ndarray
    y_train: np.ndarray
    val: np.ndarray
    y_val: np.ndarray
    logits_val: np.ndarray
    split: dict[str, Any]
    data_sha256: str


def split_features(model: str | Path, store: Path, *, split_by: str | None = None,
                   val_fraction: float | None = None, split_seed: int | None = None,
                   batch_size: int = 256, device: str | None = None,
                   progress: bool = True) -> SplitFeatures:
    """Features of a checkpoint on a labelled store's training and validation stamps.

    The store's labelled sources of the model's classes are split as ``train`` splits (by
    default as the card's ``training.split`` says) and prepared exactly as ``classify``
    prepares them; one forward pass gives features and logits.

    Parameters
    ----------
    model : str or Path
        Bundled name or checkpoint path.
    store : Path
        Labelled cutout store.
    split_by, val_fraction, split_seed : optional
        Override the card's split.
    batch_size : int, default: 256
    device : str, optional
        See :func:`workers.inference.pick_device`.
    progress : bool, default: True
        Say what is being run on stderr.

    Returns
    -------
    SplitFeatures

    Raises
    ------
    pipeline.errors.TrainingError
        Bad settings.
    pipeline.errors.StoreError
        A store without labels of the model's classes, or that cannot be split.
    """
    from workers.inference import pick_device

    positive_int("batch_size", batch_size, where="ood-fit", error=TrainingError)
    source = bundled.resolve(model)
    card = load_card(source)
    try:
        dev = pick_device(device)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    net, card = load_checkpoint(source, sha256=card.sha256, device=dev, check_ood=False)
    data = load_labelled(store, exclude=card.training.get("excluded_classes", ()))
    known = np.isin(data["labels"], card.classes)
    if not known.any():
        raise StoreError(f"{store}: no labelled source of the model's classes "
                         f"{card.classes!r}")
    if not known.all():
        data = {k: (v[known] if isinstance(v, np.ndarray) and v.shape[:1] == known.shape else v)
                for k, v in data.items()}
    train_idx, val_idx, split = _split(Path(store), data, card, split_by, val_fraction,
                                       split_seed)
    order = {c: i for i, c in enumerate(card.classes)}
    y = np.asarray([order[c] for c in data["labels"]], np.int64)
    if progress:
        print(f"ood-fit: {card.arch} on {store}: {train_idx.size} training and {val_idx.size} "
              f"validation stamps (split by {split['by']})", file=sys.stderr, flush=True)

    def batches(idx: np.ndarray) -> Iterator[torch.Tensor]:
        for start in range(0, idx.size, _BLOCK):
            sel = idx[start:start + _BLOCK]
            shape = data.get("psf_shape") if wants_round(card) else None
            pixels, bg, noise = scale_for_model(data["images"][sel], card.input_scale,
                                                data["psf_fwhm"][sel],
                                                psf_shape=None if shape is None else shape[sel])
            x = prepare(pixels, stretch=card.stretch, image_size=card.image_size,
                        background=bg, noise=noise)
            yield from x.split(batch_size)

    f_train, _ = penultimate_features(net, batches(train_idx), device=dev)
    f_val, logits_val = penultimate_features(net, batches(val_idx), device=dev)
    return SplitFeatures(card=card, source=Path(source), train=f_train, y_train=y[train_idx],
                         val=f_val, y_val=y[val_idx], logits_val=logits_val, split=split,
                         data_sha256=data["data_sha256"])


def fit_checkpoint_ood(model: str | Path, store: Path, out: Path, *,
                       split_by: str | None = None, val_fraction: float | None = None,
                       split_seed: int | None = None, threshold: float = DEFAULT_THRESHOLD,
                       max_dim: int = MAX_DIM, batch_size: int = 256,
                       device: str | None = None, progress: bool = True) -> ModelCard:
    """Fit OOD statistics for an existing checkpoint on a labelled store, without retraining.

    The store's labelled sources are split as ``train`` splits (:func:`split_features`);
    the statistics are fitted on the training part (:func:`fit_ood_stats`) and
    the score quantiles on the validation part.

    Parameters
    ----------
    model : str or Path
        Bundled name or checkpoint path.
    store : Path
        Labelled cutout store; sources whose label is not one of the model's classes are
        left out.
    out : Path
        The checkpoint to write, ``NEW.pt`` (+ ``NEW.json``, ``NEW.ood.npz``): the weights are
        copied byte for byte.  ``out`` may be the model itself (its card and statistics are
        replaced; the ``.pt`` is not touched).
    split_by, val_fraction, split_seed : optional
        Override the card's split.
    threshold : float, default: 0.99
        ``ood_score`` above which ``classify`` sets ``FLAG_OOD``.
    max_dim : int, default: 512
        Wider features are PCA-projected to this many dimensions (Mahalanobis).
    batch_size : int, default: 256
    device : str, optional
        See :func:`workers.inference.pick_device`.
    progress : bool, default: True
        Say what is being fitted on stderr.

    Returns
    -------
    workers.checkpoint.ModelCard
        The new card.

    Raises
    ------
    pipeline.errors.TrainingError
        Bad settings.
    pipeline.errors.StoreError
        A store without labels of the model's classes, or that cannot be split.
    workers.checkpoint.CheckpointError
        A checkpoint that cannot be loaded.
    """
    fraction("threshold", threshold, where="ood-fit", error=TrainingError)
    positive_int("max_dim", max_dim, where="ood-fit", error=TrainingError)
    feats = split_features(model, store, split_by=split_by, val_fraction=val_fraction,
                           split_seed=split_seed, batch_size=batch_size, device=device,
                           progress=progress)
    card = feats.card
    stats = fit_ood_stats(feats.train, feats.y_train, feats.val, feats.logits_val,
                          num_classes=card.num_classes, temperature=card.temperature,
                          max_dim=max_dim)
    src_pt, src_card = checkpoint_paths(feats.source)
    out = Path(out)
    out_pt, out_card = checkpoint_paths(out if out.suffix in (".pt", ".json")
                                        else out.with_name(out.name + ".pt"))
    if out_pt.resolve() != src_pt.resolve():
        out_pt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_pt, out_pt)
        shutil.copyfile(src_card, out_card)
        if file_sha256(out_pt) != card.sha256:
            raise TrainingError(f"{out_pt}: the copied weights changed (sha256); disk error?")
    entry = {"threshold": float(threshold),
             "fitted_on": {"store": str(Path(store).resolve()),
                           "data_sha256": feats.data_sha256,
                           "split": feats.split,
                           "command": shlex.join(sys.argv)}}
    return write_ood_stats(out_pt, stats, entry=entry)
