"""Fitting a model's out-of-distribution statistics: at the end of ``train``, or for an existing checkpoint.

The statistics (:mod:`workers.ood`) are fitted on the penultimate features of the
training split (un-augmented stamps, prepared as inference prepares them) and ranked on
the validation split, the same split ``train`` held out.  :func:`fit_checkpoint_ood`
(``skysieve ood-fit MODEL STORE --out NEW.pt``) does it for a checkpoint that has none,
without retraining: the weights are copied byte for byte, so every sha256 that names
them stays valid; the statistics go to ``NEW.ood.npz``, whose sha256 the new card records.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import bundled
from pipeline.checks import fraction, positive_int
from pipeline.errors import StoreError, TrainingError
from pipeline.imaging.preprocess import apply_stretch, prepare, resize
from pipeline.training.data import load_labelled
from pipeline.training.splits import SPLITS, group_fields, split_validation
from workers.checkpoint import (ModelCard, checkpoint_paths, file_sha256, load_card,
                                load_checkpoint, write_ood_stats)
from workers.ood import DEFAULT_THRESHOLD, MAX_DIM, OODStats, fit_ood_stats, penultimate_features

__all__ = ["fit_training_ood", "fit_checkpoint_ood"]

_BLOCK = 2048  # stamps prepared and run at a time


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


def fit_checkpoint_ood(model: str | Path, store: Path, out: Path, *,
                       split_by: str | None = None, val_fraction: float | None = None,
                       split_seed: int | None = None, threshold: float = DEFAULT_THRESHOLD,
                       max_dim: int = MAX_DIM, batch_size: int = 256,
                       device: str | None = None, progress: bool = True) -> ModelCard:
    """Fit OOD statistics for an existing checkpoint on a labelled store, without retraining.

    The store's labelled sources are split as ``train`` splits (by default as the card's
    ``training.split`` says: ``by``, ``val_fraction``, ``seed``); the class means and the
    shared covariance are fitted on the training part and the score quantiles on the
    validation part.  Stamps are prepared exactly as ``classify`` prepares them.

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
        Wider features are PCA-projected to this many dimensions.
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
    from workers.inference import pick_device

    fraction("threshold", threshold, where="ood-fit", error=TrainingError)
    positive_int("max_dim", max_dim, where="ood-fit", error=TrainingError)
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
            block = data["images"][idx[start:start + _BLOCK]]
            x = prepare(block, stretch=card.stretch, image_size=card.image_size)
            yield from x.split(batch_size)

    f_train, _ = penultimate_features(net, batches(train_idx), device=dev)
    f_val, logits_val = penultimate_features(net, batches(val_idx), device=dev)
    stats = fit_ood_stats(f_train, y[train_idx], f_val, logits_val,
                          num_classes=card.num_classes, temperature=card.temperature,
                          max_dim=max_dim)
    src_pt, src_card = checkpoint_paths(source)
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
                           "data_sha256": data["data_sha256"],
                           "split": split,
                           "command": shlex.join(sys.argv)}}
    return write_ood_stats(out_pt, stats, entry=entry)
