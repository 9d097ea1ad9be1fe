"""Train a classifier of the model zoo on a cutout store; write a checkpoint and its card.

Minimal but sound: whole exposures held out for validation, augmentation on the
fly in torch, class-balanced loss, AdamW with a cosine schedule, early stopping
on validation balanced accuracy keeping the best weights, temperature scaling,
out-of-distribution statistics (:mod:`pipeline.training.ood`: fitted on the training
split, ranked on the validation split, written beside the checkpoint), and a card that
records the data, the split, the command and the metrics.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.checks import fraction, positive_int, positive_number
from pipeline.errors import SkysieveError, StoreError, TrainingError, TrainingStopped
from pipeline.imaging.preprocess import apply_stretch, resize, to_snr, validate_stretch
from pipeline.imaging.psf_shape import round_psf
from pipeline.imaging.rescale import psf_zoom, rescale, validate_input_scale
from pipeline.training.augment import AUGMENT_KW, AUGMENTS
from pipeline.training.data import load_labelled
from pipeline.training.distill import bind_teacher, load_teacher
from pipeline.training.loop import ResumeFile, amp_settings, fit_epochs, logits_of
from pipeline.training.metrics import (classification_metrics, expected_calibration_error,
                                       fit_temperature, nll, softmax)
from pipeline.training.ood import fit_training_ood
from pipeline.training.machine import run_conditions
from pipeline.training.splits import (SPLITS, WHOLE, group_fields, label_subset,
                                      split_validation)
from pipeline.training.transfer import read_weights, transfer_summary, transfer_weights
from workers.checkpoint import ModelCard, save_checkpoint
from workers.inference import pick_device
from workers.models import create_model, is_model

__all__ = ["train"]


# --------------------------------------------------------------------------- train
def _check_args(arch: str, epochs: int, batch_size: int, lr: float, patience: int,
                split_by: str, image_size: int | None, val_fraction: float, kd_alpha: float,
                kd_temperature: float) -> None:
    """Refuse bad training settings with a :class:`~pipeline.errors.TrainingError`."""
    if not is_model(arch):
        with _training_errors():
            create_model(arch, num_classes=2)  # raises the ValueError listing the names
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        positive_int(name, value, where="train", error=TrainingError)
    if batch_size < 2:
        raise TrainingError(f"train: batch_size must be >= 2 (BatchNorm), got {batch_size!r}")
    positive_number("lr", lr, where="train", error=TrainingError)
    if split_by not in SPLITS:
        raise TrainingError(f"train: unknown split_by {split_by!r}; valid: {', '.join(SPLITS)}")
    if image_size is not None:
        positive_int("image_size", image_size, where="train", error=TrainingError)
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not 0.0 < val_fraction < 1.0):
        raise TrainingError(f"train: val_fraction must be between 0 and 1 (both excluded), got "
                            f"{val_fraction!r}")
    fraction("kd_alpha", kd_alpha, where="train", error=TrainingError)
    positive_number("kd_temperature", kd_temperature, where="train", error=TrainingError)


@contextlib.contextmanager
def _training_errors() -> Iterator[None]:
    """Re-raise the ``ValueError`` of a check outside this package as a ``TrainingError``.

    For the model zoo's, the stretch's and the device's checks of user settings; the
    message stays the same.
    """
    try:
        yield
    except SkysieveError:
        raise
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc


def train(store: Path, *, arch: str, out: Path, epochs: int = 30, batch_size: int = 128,
          lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
          image_size: int | None = None, split_by: str = "exposure", val_fraction: float = 0.2,
          patience: int = 8, device: str | None = None, progress: bool = True,
          split_seed: int | None = None, init: Path | None = None,
          init_sha256: str | None = None, teacher: Path | None = None,
          kd_alpha: float = 0.5, kd_temperature: float = 4.0, augment: str = "full",
          stretch: dict[str, Any] | None = None,
          exclude_classes: Sequence[str] = (),
          input_scale: dict[str, Any] | None = None, resume: bool = False,
          time_limit_s: float | None = None, train_fraction: float = 1.0) -> ModelCard:
    """Train ``arch`` on the labelled sources of a cutout store and write a checkpoint.

    All labelled stamps are read into memory and normalised once (S/N units,
    :func:`pipeline.imaging.preprocess.to_snr`): fine for training sets of up to a few
    hundred thousand 64x64 stamps (1 GB per 64k float32).  Each batch is then
    augmented in torch (``augment``: see :data:`pipeline.training.augment.AUGMENTS`),
    stretched (``stretch``, recorded in the card, which inference applies) and
    resized exactly as :func:`pipeline.imaging.preprocess.prepare` does.
    The loss is cross-entropy weighted by inverse class frequency; AdamW with a
    one-epoch warm-up and a cosine decay; early stopping on the validation
    balanced accuracy after ``patience`` epochs without improvement, keeping the
    best weights; then a temperature is fitted on the validation logits, and the
    out-of-distribution statistics (:func:`pipeline.training.ood.fit_training_ood`) on
    the training split's features, ranked on the validation split, are written to
    ``MODEL.ood.npz`` (sha256 in the card's ``ood`` entry).
    Deterministic for a seed on one machine and thread count (the global RNG is
    restored afterwards).  On CUDA the steps run under autocast (bfloat16 where
    supported, else float16 with a gradient scaler); on the CPU in float32.

    Fine-tuning (``init``): the model starts from the weights of a skysieve
    checkpoint or a local state-dict file instead of a random initialisation,
    see :mod:`pipeline.training.transfer` (matching tensors
    copied, an RGB stem summed to one band, a head for other classes left fresh).

    Distillation (``teacher``, Hinton et al. 2015): a skysieve checkpoint with
    the same classes (any order) sees each augmented batch, stretched and
    resized as its card says, in eval mode; the loss is ``(1 - kd_alpha) CE +
    kd_alpha T^2 KL(softmax(teacher / T) || softmax(student / T))`` with
    ``T = kd_temperature`` (raw teacher logits; its calibration temperature is
    not applied).  Validation and early stopping still use the labels only.

    Parameters
    ----------
    store : Path
        Cutout store (Zarr): ``image(source, band, y, x)`` and per-source ``label``
        (``""`` = unknown, skipped) and ``exposure``.
    arch : str
        Registered model name (``workers.models.list_models()``).
    out : Path
        Checkpoint to write: ``MODEL.pt`` (``MODEL.json`` beside it).
    epochs, batch_size, lr, weight_decay, seed, patience
        Optimisation settings.
    image_size : int, optional
        Model input side; default the stamp size.
    split_by : {"exposure", "frame", "field", "source"}, default: "exposure"
        See :func:`pipeline.training.splits.split_validation`.
    val_fraction : float, default: 0.2
    device : str, optional
        See :func:`workers.inference.pick_device`.
    progress : bool, default: True
        Print one line per epoch to stderr (and a progress bar within the epoch
        when stderr is a terminal).
    split_seed : int, optional
        Seed of the validation split only (default ``seed``): hold out the same
        exposures while ``seed`` varies the initialisation and augmentation.
    init : Path, optional
        Weights to start from (see :func:`pipeline.training.transfer.read_weights`).
    init_sha256 : str, optional
        Expected sha256 of the ``init`` weights file; a mismatch is refused.
    teacher : Path, optional
        Skysieve checkpoint to distil from (its sha256 is checked against its card).
    kd_alpha : float, default: 0.5
        Weight of the distillation term, in [0, 1].
    kd_temperature : float, default: 4.0
        Softmax temperature of the distillation term, > 0.
    augment : {"full", "geometric", "robust", "photometric", "clipped"}, default: "full"
        ``"full"``: dihedral flips/rotations, shifts <= 2 px, PSF blur (p=0.3,
        sigma 0.3-1.5 px) and dimming (p=0.5, to >= 0.6 of the flux) at fixed
        noise; ``"geometric"``: dihedral and shifts only; ``"robust"``: as
        ``"full"`` with blur p=0.4, sigma 0.3-4 px (robust to blur);
        ``"photometric"``: dihedral, shifts and dimming (p=0.6, to >= 0.25), no
        blur; ``"clipped"``: ``"robust"`` and 40% of the stamps clipped flat at
        4-15 sigma, as 8-bit previews (see :data:`pipeline.training.augment.AUGMENTS`).
    stretch : dict, optional
        The stretch of the model input (see
        :func:`pipeline.imaging.preprocess.validate_stretch`); default
        :data:`pipeline.imaging.preprocess.DEFAULT_STRETCH`.
    exclude_classes : sequence of str, default: ()
        Labels left out of training (treated as unknown), e.g. Galaxy Zoo's
        ``"uncertain"``; the card records them, and ``evaluate`` leaves them out too.
    input_scale : dict, optional
        ``{"mode": "psf", "fwhm_px": K}``: every stamp resampled so its PSF (the store's
        ``psf_fwhm``) spans ``K`` px (:mod:`pipeline.imaging.rescale`); ``"min_zoom": m``
        shrinks no stamp below ``m``; recorded in the card.
    resume : bool, default: False
        Save the loop's state after every epoch to ``MODEL.resume.pt`` and, when that file is
        there (from a run killed or stopped with the same settings and data), go on from it
        (:mod:`pipeline.training.loop`); removed once the checkpoint is written.
    time_limit_s : float, optional
        With ``resume``: stop after the first epoch that ends this many seconds in, saving the
        state, and raise :class:`~pipeline.errors.TrainingStopped` (rerun to go on).
    train_fraction : float, default: 1.0
        Train on this seeded, class-stratified share of the training split only (a learning
        curve; :func:`pipeline.training.splits.label_subset`, seeded by ``split_seed``); the
        validation split is unchanged.

    Returns
    -------
    workers.checkpoint.ModelCard
        The card as written.

    Raises
    ------
    pipeline.errors.TrainingError
        Bad settings (unknown arch, augment, split or stretch, numbers out of range).
    pipeline.errors.StoreError
        A store that cannot be read or trained on (one class, a split that cannot hold
        out whole groups, a class left without training sources).
    workers.checkpoint.CheckpointError
        ``init`` or ``teacher`` weights that cannot be used.
    """
    store, out = Path(store), Path(out)
    _check_args(arch, epochs, batch_size, lr, patience, split_by, image_size, val_fraction,
                kd_alpha, kd_temperature)
    if (isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float))
            or not 0.0 < train_fraction <= 1.0):
        raise TrainingError(f"train: train_fraction must be in (0, 1], got {train_fraction!r}")
    if augment not in AUGMENTS:
        raise TrainingError(f"train: unknown augment {augment!r}; valid: {', '.join(AUGMENTS)}")
    with _training_errors():
        stretch = validate_stretch(stretch)
        input_scale = validate_input_scale(input_scale)
        dev = pick_device(device)
    if split_seed is None:
        split_seed = seed
    if init_sha256 is not None and init is None:
        raise TrainingError("train: init_sha256 given without init; pass the weights file too")
    source = read_weights(Path(init), sha256=init_sha256) if init is not None else None
    kd = (load_teacher(Path(teacher), alpha=kd_alpha, temperature=kd_temperature)
          if teacher is not None else None)
    exclude_classes = sorted({str(c) for c in exclude_classes})
    data = load_labelled(store, exclude=exclude_classes)
    labels, exposures = data["labels"], data["exposures"]
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise StoreError(f"{store}: only one class ({classes[0]!r}) among the labelled sources; "
                         "a classifier needs at least two")
    y_all = np.searchsorted(np.asarray(classes), labels)
    fields: list[str] = []
    groups = exposures
    if split_by == "field":
        field_of = group_fields(exposures, data["x"], data["y"], data["ra"], data["dec"])
        fields = sorted({f for f in field_of.values() if "+" in f})
        groups = np.asarray([field_of[str(v)] for v in exposures])
        if progress and fields:
            print(f"split by field: {len(fields)} field(s) imaged by several exposures: "
                  f"{', '.join(fields)}", file=sys.stderr, flush=True)
    try:
        train_idx, val_idx, val_groups = split_validation(
            groups, labels, by=split_by, val_fraction=val_fraction, seed=split_seed)
    except TrainingError as exc:  # the arguments were checked: the store's groups cannot split
        raise StoreError(f"{store}: {exc}") from exc
    n_split_train = int(train_idx.size)
    train_idx = label_subset(train_idx, labels, train_fraction, seed=split_seed)
    images = data.pop("images")
    n_chan, height, width = images.shape[1:]
    image_size = int(image_size or height)
    if kd is not None:
        kd = bind_teacher(kd, classes, int(n_chan))

    z_all = to_snr(images)
    del images
    if data.get("psf_shape") is not None:
        # elongated PSFs made round, in units of the noise as stored: what classify feeds
        z_all = torch.as_tensor(round_psf(z_all.numpy(), data["psf_shape"],
                                          np.zeros(len(z_all), np.float32)))
    if input_scale is not None:
        z_all = rescale(z_all, psf_zoom(data["psf_fwhm"], input_scale["fwhm_px"],
                                        input_scale.get("min_zoom")))
    z_train, y_train = z_all[train_idx], torch.as_tensor(y_all[train_idx])
    x_val = resize(apply_stretch(z_all[val_idx], stretch), image_size).contiguous()
    y_val = y_all[val_idx]
    del z_all
    present = np.bincount(y_all[train_idx], minlength=len(classes))
    if np.any(present == 0):
        missing = [c for c, k in zip(classes, present) if k == 0]
        raise StoreError(f"{store}: no training sources of class(es) {missing!r} after the "
                         f"split; add data or use split_by='source'")
    weights = torch.as_tensor(len(train_idx) / (len(classes) * present), dtype=torch.float32)

    conditions = {"start": run_conditions()}
    det_was = (torch.are_deterministic_algorithms_enabled(),
               torch.is_deterministic_algorithms_warn_only_enabled())
    t_start = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            with _training_errors():  # e.g. an image_size too small for the arch
                model = create_model(arch, num_classes=len(classes), in_chans=int(n_chan),
                                     image_size=image_size)
            init_info = None
            if source is not None:
                init_info = transfer_weights(model, source, arch=arch, classes=classes)
                del source
                if progress:
                    print(transfer_summary(init_info), file=sys.stderr, flush=True)
            model.to(dev)
            if kd is not None:
                kd["model"].to(dev)
            saved = (ResumeFile(out, {
                "arch": arch, "classes": classes, "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "weight_decay": weight_decay, "seed": seed, "split_seed": split_seed,
                "image_size": image_size, "split_by": split_by, "val_fraction": val_fraction,
                "train_fraction": train_fraction,
                "patience": patience, "augment": augment, "stretch": stretch,
                "input_scale": input_scale, "exclude": exclude_classes,
                "init": init_info and init_info.get("sha256"), "device": dev.type,
                "teacher": kd and [kd["card"].sha256, kd_alpha, kd_temperature],
                "data": [data["data_sha256"], data["pixels_sha256"]]},
                time_limit_s=time_limit_s, started=t_start) if resume else None)
            history = fit_epochs(model, z_train, y_train, x_val, y_val, weights.to(dev), dev,
                           classes=classes, stretch=stretch, image_size=image_size,
                           epochs=epochs, batch_size=batch_size, lr=lr,
                           weight_decay=weight_decay, patience=patience, seed=seed,
                           progress=progress, kd=kd, augment=AUGMENT_KW[augment],
                           resume=saved)
        finally:
            torch.use_deterministic_algorithms(det_was[0], warn_only=det_was[1])

    if history is None:
        raise TrainingStopped(f"train: stopped at the time limit ({time_limit_s:g} s) after "
                              f"epoch {len(saved.load()['history'])} of {epochs}; the state is "
                              f"in {saved.path}: rerun the same command to go on")
    logits = logits_of(model, x_val, dev, 4 * batch_size)
    temperature = fit_temperature(logits, y_val)
    proba_raw, proba_cal = softmax(logits), softmax(logits, temperature)
    metrics = classification_metrics(y_val, logits.argmax(axis=1), classes)
    metrics.update({
        "ece": expected_calibration_error(proba_raw, y_val),
        "ece_calibrated": expected_calibration_error(proba_cal, y_val),
        "nll": nll(logits, y_val, 1.0), "nll_calibrated": nll(logits, y_val, temperature),
        "n_train": int(train_idx.size), "n_val": int(val_idx.size),
        "n_unlabelled_skipped": data["n_unlabelled"],
    })
    loss = "cross-entropy weighted by inverse class frequency"
    extra: dict[str, Any] = {}
    if init_info is not None:
        extra["init"] = init_info
    if kd is not None:
        loss = (f"knowledge distillation (Hinton et al. 2015): {1 - kd_alpha:g} x {loss} + "
                f"{kd_alpha:g} x T^2 x KL(softmax(teacher/T) || softmax(student/T)), "
                f"T = {kd_temperature:g}")
        extra["teacher"] = {"path": kd["path"], "sha256": kd["card"].sha256,
                            "arch": kd["card"].arch, "alpha": float(kd_alpha),
                            "temperature": float(kd_temperature)}
    amp, amp_dtype = amp_settings(dev)
    card = ModelCard(
        arch=arch, classes=classes, in_chans=int(n_chan), image_size=image_size,
        bands=data["bands"], stretch=stretch, temperature=temperature,
        input_scale=input_scale or {},
        training={
            "store": str(store.resolve()), "data_sha256": data["data_sha256"],
            "pixels_sha256": data["pixels_sha256"],
            "split": {"by": split_by, "val_fraction": val_fraction, "seed": split_seed,
                      "val_exposures": (sorted(set(exposures[val_idx].tolist()))
                                        if split_by in WHOLE else []),
                      "n_train": int(train_idx.size), "n_val": int(val_idx.size),
                      "train_fraction": train_fraction, "n_train_split": n_split_train,
                      **({"val_fields": val_groups, "groups": fields}
                         if split_by == "field" else {})},
            "seed": seed, "epochs": epochs, "epochs_run": history["epochs_run"],
            "best_epoch": history["best_epoch"], "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "patience": patience, "device": str(dev),
            "stamp": [int(height), int(width)],
            "store_import": data["import"],
            "augment": augment, "augment_detail": AUGMENTS[augment],
            # whether the store had its frames' PSF shape, so training made them round
            "round_psf": data.get("psf_shape") is not None,
            "excluded_classes": exclude_classes, "n_excluded": data["n_excluded"],
            "loss": loss,
            **extra,
            "optimizer": "AdamW, 1-epoch warm-up + cosine",
            "precision": str(amp_dtype).removeprefix("torch.") + (" autocast" if amp else ""),
            "seconds": round(time.perf_counter() - t_start, 2),
            "conditions": {**conditions, "end": run_conditions()},
            "history": history["epochs"],
            **({"resumed_after_epoch": history["resumed_after"]} if history["resumed_after"]
               else {}),
            "command": shlex.join(sys.argv),
        },
        metrics=metrics,
        ood={"fitted_on": {"store": str(store.resolve()), "data_sha256": data["data_sha256"],
                           "split": "the training split of this run (training.split)",
                           "command": shlex.join(sys.argv)}},
    )
    ood = fit_training_ood(model, z_train, y_train.numpy(), x_val, num_classes=len(classes),
                           stretch=stretch, image_size=image_size, temperature=temperature,
                           device=dev, batch_size=4 * batch_size)
    if out.suffix != ".pt":
        out = out.with_name(out.name + ".pt")
    card = save_checkpoint(model.cpu(), card, out, ood=ood)
    if saved is not None:
        saved.remove()
    return card
