"""Knowledge distillation (Hinton et al. 2015): the loss, and the teacher, loaded and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.imaging.preprocess import DEFAULT_STRETCH, validate_stretch
from workers.checkpoint import CheckpointError, checkpoint_paths, load_checkpoint

__all__ = ["kd_loss", "load_teacher", "bind_teacher"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, ce: torch.Tensor, *, alpha: float,
            temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): ``(1 - alpha) ce + alpha T^2 KL(softmax(t/T) || softmax(s/T))``.

    Parameters
    ----------
    student, teacher : torch.Tensor
        Logits ``(N, K)``, columns in the same class order.
    ce : torch.Tensor
        The label loss of the batch (a scalar).
    alpha : float
        Weight of the distillation term, in [0, 1].
    temperature : float
        Softmax temperature ``T`` > 0.

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=1),
                  F.log_softmax(teacher.float() / t, dim=1),
                  log_target=True, reduction="batchmean")
    return (1.0 - alpha) * ce + alpha * t * t * kl


def load_teacher(path: Path, *, alpha: float, temperature: float) -> dict[str, Any]:
    """Load a teacher checkpoint (sha256 checked against its card), frozen, in eval mode.

    Returns
    -------
    dict
        ``model``, ``card``, ``path`` (of the ``.pt``), its ``stretch`` and
        ``image_size``, and ``alpha``, ``temperature`` as given.

    Raises
    ------
    workers.checkpoint.CheckpointError
        A checkpoint that cannot be loaded.
    """
    with torch.random.fork_rng(devices=[]):  # building the model draws random numbers
        model, card = load_checkpoint(path, sha256=None)
    for p in model.parameters():
        p.requires_grad_(False)
    return {"model": model.eval(), "card": card,
            "path": str(checkpoint_paths(path)[0].resolve()),
            "stretch": validate_stretch(card.stretch or DEFAULT_STRETCH),
            "image_size": int(card.image_size), "alpha": float(alpha),
            "temperature": float(temperature)}


def bind_teacher(kd: dict[str, Any], classes: list[str], n_chan: int) -> dict[str, Any]:
    """Check that the teacher can teach ``classes`` on ``n_chan`` bands; map its logits to them.

    Returns
    -------
    dict
        ``kd`` (from :func:`load_teacher`) with ``order``: the teacher's logit column
        of each of ``classes``.

    Raises
    ------
    workers.checkpoint.CheckpointError
        Other classes or another band count than the student's.
    """
    card, pt = kd["card"], kd["path"]
    if sorted(card.classes) != sorted(classes):
        raise CheckpointError(f"{pt}: the teacher's classes {card.classes!r} are not the "
                              f"student's {classes!r} (from the store); distil from a model "
                              "trained on the same classes")
    if card.in_chans != n_chan:
        raise CheckpointError(f"{pt}: the teacher takes {card.in_chans} band(s), the store has "
                              f"{n_chan}; distil from a model trained on the same bands")
    return {**kd, "order": [card.classes.index(c) for c in classes]}
