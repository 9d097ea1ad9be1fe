"""Model checkpoints: ``MODEL.pt`` (a plain ``state_dict``) plus a JSON card ``MODEL.json``.

The weights are only ever read with ``torch.load(..., weights_only=True)``: a file
carrying pickled code is refused with the names of the blocked globals, never
loaded another way.  The card records everything needed to rebuild the model
and to use it correctly (architecture, classes, input size, bands, stretch,
temperature), where it came from (training data and command) and the sha256 of
the ``.pt`` file, which :func:`load_checkpoint` checks before unpickling anything.

A checkpoint may carry out-of-distribution statistics (:mod:`workers.ood`) in a sidecar
``MODEL.ood.npz``: the card's ``ood`` entry names the file and records its sha256, checked
before the file is parsed (with ``allow_pickle=False``), so the statistics are covered by
the card exactly as the weights are.  Adding or refitting them leaves ``MODEL.pt`` untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.model_card import OOD_SUFFIX, ModelCard
from workers.models import create_model
from workers.ood import DEFAULT_THRESHOLD, OODStats, last_linear, ood_bytes, ood_from_bytes

__all__ = ["CheckpointError", "ModelCard", "save_checkpoint", "load_checkpoint", "load_card",
           "file_sha256", "checkpoint_paths", "load_ood_stats", "write_ood_stats",
           "OOD_SUFFIX"]

class CheckpointError(ValueError):
    """A checkpoint or model card that cannot be used; the message names the file and why."""


def _software_version() -> str:
    try:
        return version("skysieve")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(MODEL.pt, MODEL.json)`` for a path naming either file or their common stem."""
    path = Path(path)
    if path.suffix in (".pt", ".json"):
        stem = path.with_suffix("")
    else:
        stem = path
    return stem.with_name(stem.name + ".pt"), stem.with_name(stem.name + ".json")


def file_sha256(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks of ``chunk_size`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read the card of a checkpoint (``path`` names the ``.pt``, the ``.json`` or the stem).

    Raises
    ------
    CheckpointError
        The card is missing, is not JSON or does not describe a model.
    """
    pt, card_path = checkpoint_paths(path)
    try:
        text = card_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{card_path}: model card not found; a checkpoint is {pt.name} plus "
                              f"the JSON card {card_path.name} beside it") from None
    try:
        return ModelCard.from_json(text)
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{card_path}: invalid model card ({exc})") from exc


def _ood_entry(card: ModelCard, stats: OODStats, name: str, data: bytes, model: nn.Module,
               where: str) -> dict[str, Any]:
    """The card's ``ood`` entry for ``stats`` written as ``name``; checks they fit the model."""
    if stats.num_classes != card.num_classes:
        raise CheckpointError(f"{where}: OOD statistics of {stats.num_classes} classes for a "
                              f"model of {card.num_classes}")
    layer, head = last_linear(model)
    if head.in_features != stats.dim:
        raise CheckpointError(f"{where}: OOD statistics of {stats.dim} features, but the "
                              f"model's last nn.Linear {layer!r} takes {head.in_features}")
    kept = {k: v for k, v in card.ood.items() if k not in ("file", "sha256")}
    return {**kept, **stats.info, "file": name,
            "features": f"input of {layer!r} (nn.Linear {head.in_features} -> {head.out_features})",
            "sha256": hashlib.sha256(data).hexdigest(),
            "threshold": float(kept.get("threshold", DEFAULT_THRESHOLD))}


def save_checkpoint(model: nn.Module, card: ModelCard, path: str | os.PathLike[str], *,
                    ood: OODStats | None = None) -> ModelCard:
    """Write ``MODEL.pt`` (the ``state_dict``) and ``MODEL.json`` (the card) atomically.

    The weights are serialised in memory, hashed, written to a temporary name and
    renamed, then the card (with ``sha256``, ``params``, ``skysieve_version`` and
    ``created`` filled in) is written the same way.  Identical weights give a
    byte-identical ``.pt``.  The state_dict is checked to load into
    ``create_model(card.arch, ...)`` first, so a card that does not describe the
    model is refused before anything is written.

    Parameters
    ----------
    model : torch.nn.Module
        The model; its tensors are copied to the CPU, contiguous.
    card : ModelCard
        Description of the model.
    path : path-like
        ``MODEL.pt``, ``MODEL.json`` or the stem ``MODEL``; parent folders are created.
    ood : workers.ood.OODStats, optional
        Out-of-distribution statistics, written to ``MODEL.ood.npz`` (before the card, which
        records its sha256; the card's ``ood`` entry keeps its ``threshold`` and provenance
        keys).  Without them the card's ``ood`` entry is cleared: statistics belong to the
        weights they were fitted on.

    Returns
    -------
    ModelCard
        The card as written.
    """
    pt, card_path = checkpoint_paths(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    fitted = _check_fits(state, card, where=str(pt))
    sidecar, ood_data, ood_entry = None, b"", {}
    if ood is not None:
        sidecar = pt.with_name(pt.stem + OOD_SUFFIX)
        ood_data = ood_bytes(ood)
        ood_entry = _ood_entry(card, ood, sidecar.name, ood_data, fitted, str(pt))
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    card = dataclasses.replace(
        card,
        sha256=hashlib.sha256(data).hexdigest(),
        params=int(sum(p.numel() for p in model.parameters())),
        skysieve_version=card.skysieve_version or _software_version(),
        created=card.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ood=ood_entry,
    )
    card._validate()
    pt.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(pt, data)
    if sidecar is not None:
        _atomic_write(sidecar, ood_data)
    _atomic_write(card_path, card.to_json().encode("utf-8"))
    return card


def write_ood_stats(path: str | os.PathLike[str], stats: OODStats, *,
                    entry: dict[str, Any] | None = None) -> ModelCard:
    """Add (or replace) the OOD statistics of an existing checkpoint; its ``.pt`` is not touched.

    Writes ``MODEL.ood.npz``, then the card with its ``ood`` entry (the file's name and
    sha256, the statistics' summary, and ``entry``: e.g. ``threshold`` and provenance).

    Parameters
    ----------
    path : path-like
        ``MODEL.pt``, ``MODEL.json`` or the stem; the checkpoint must load (sha256 checked).
    stats : workers.ood.OODStats
        Fitted on this model's features (by ``train`` or ``skysieve ood-fit``).
    entry : dict, optional
        More keys of the card's ``ood`` entry.

    Returns
    -------
    ModelCard
        The card as written.
    """
    pt, card_path = checkpoint_paths(path)
    model, card = load_checkpoint(pt, check_ood=False)
    sidecar, data = pt.with_name(pt.stem + OOD_SUFFIX), ood_bytes(stats)
    base = dataclasses.replace(card, ood=dict(entry or {}))
    card = dataclasses.replace(card, ood=_ood_entry(base, stats, sidecar.name, data, model, str(pt)))
    card._validate()
    _atomic_write(sidecar, data)
    _atomic_write(card_path, card.to_json().encode("utf-8"))
    return card


def load_ood_stats(path: str | os.PathLike[str], card: ModelCard | None = None) -> OODStats | None:
    """Read a checkpoint's OOD statistics after checking their sha256 against the card.

    Parameters
    ----------
    path : path-like
        ``MODEL.pt``, ``MODEL.json`` or the stem.
    card : ModelCard, optional
        Its card, if already read.

    Returns
    -------
    workers.ood.OODStats or None
        ``None`` when the card records no statistics.

    Raises
    ------
    CheckpointError
        The file named by the card is missing, its sha256 differs from the card's (both
        named), or it is not a valid statistics file (read with ``allow_pickle=False``).
    """
    pt, card_path = checkpoint_paths(path)
    card = card if card is not None else load_card(pt)
    if not card.ood:
        return None
    sidecar = card_path.with_name(card.ood["file"])
    try:
        data = sidecar.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{sidecar}: OOD statistics not found; the card {card_path.name} "
                              f"records them (copy the file with the checkpoint)") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != str(card.ood["sha256"]).lower():
        raise CheckpointError(f"{sidecar}: sha256 {actual} does not match "
                              f"{card.ood['sha256']!r} recorded in {card_path.name}; the OOD "
                              f"statistics changed or belong to another model")
    try:
        stats = ood_from_bytes(data, info=card.ood)
    except ValueError as exc:
        raise CheckpointError(f"{sidecar}: invalid OOD statistics ({exc})") from exc
    if stats.num_classes != card.num_classes:
        raise CheckpointError(f"{sidecar}: OOD statistics of {stats.num_classes} classes for a "
                              f"model of {card.num_classes}")
    return stats


def _build(card: ModelCard, where: str) -> nn.Module:
    try:
        return create_model(card.arch, num_classes=card.num_classes, in_chans=card.in_chans,
                            image_size=card.image_size)
    except ValueError as exc:
        raise CheckpointError(f"{where}: the card's model cannot be built ({exc})") from exc


def _check_fits(state: dict[str, Any], card: ModelCard, *, where: str) -> nn.Module:
    """Build the card's model and load ``state`` into it strictly; return the model."""
    model = _build(card, where)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise CheckpointError(
            f"{where}: the weights do not fit arch={card.arch!r} with {card.num_classes} classes, "
            f"in_chans={card.in_chans}, image_size={card.image_size} (wrong architecture or "
            f"class count?): {detail}") from exc
    return model


def _refused_globals(pt: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(pt))
    except Exception:  # noqa: BLE001 - only used to improve a message
        return []


def load_checkpoint(path: str | os.PathLike[str], *, sha256: str | None = None,
                    device: str | torch.device = "cpu",
                    check_ood: bool = True) -> tuple[nn.Module, ModelCard]:
    """Load a checkpoint safely and return ``(model in eval mode, card)``.

    Parameters
    ----------
    path : path-like
        ``MODEL.pt``, ``MODEL.json`` or the stem ``MODEL``.
    sha256 : str, optional
        Expected sha256 of ``MODEL.pt`` (e.g. from the run config); checked besides the card's.
    device : str or torch.device, default: "cpu"
        Where to put the model (the file is always read to the CPU first).
    check_ood : bool, default: True
        Also check the OOD statistics the card names (:func:`load_ood_stats`) and that they
        fit the model's features.

    Returns
    -------
    (torch.nn.Module, ModelCard)

    Raises
    ------
    CheckpointError
        Missing or invalid card; missing, truncated or corrupt ``.pt``; sha256 mismatch (both
        hashes named); a file carrying pickled code (the blocked globals named; never loaded
        unsafely); weights that do not fit the card's architecture or class count; OOD
        statistics that are missing, changed (sha256) or do not fit the model.
    """
    pt, _ = checkpoint_paths(path)
    card = load_card(pt)
    if not pt.is_file():
        raise CheckpointError(f"{pt}: checkpoint weights not found (the card is there)")
    if not card.sha256:
        raise CheckpointError(f"{pt}: its card records no sha256; write checkpoints with "
                              f"workers.checkpoint.save_checkpoint")
    actual = file_sha256(pt)
    for label, expected in (("its card", card.sha256), ("the caller", sha256)):
        if expected is not None and actual != expected.lower():
            raise CheckpointError(f"{pt}: sha256 {actual} does not match {expected!r} given by "
                                  f"{label}; the file changed or is a different model")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = _refused_globals(pt)
        what = f"blocked globals: {', '.join(blocked)}" if blocked else " ".join(
            line for line in str(exc).splitlines() if "GLOBAL" in line) or "unsupported content"
        raise CheckpointError(f"{pt}: refused, the file carries pickled code or objects that "
                              f"weights_only loading does not allow ({what}); a skysieve "
                              f"checkpoint is a plain state_dict of tensors") from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{pt}: truncated or corrupt checkpoint ({first})") from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{pt}: expected a state_dict (str -> tensor), got "
                              f"{type(state).__name__}")
    model = _check_fits(state, card, where=str(pt))
    if check_ood:
        stats = load_ood_stats(pt, card)
        if stats is not None:
            layer, head = last_linear(model)
            if head.in_features != stats.dim:
                raise CheckpointError(f"{pt}: its OOD statistics have {stats.dim} features, "
                                      f"but the last nn.Linear {layer!r} takes "
                                      f"{head.in_features}")
    return model.to(device).eval(), card
