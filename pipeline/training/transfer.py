"""Initial weights for fine-tuning: read a checkpoint or a state-dict file, copy what matches."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch

from workers.checkpoint import CheckpointError, checkpoint_paths, file_sha256, load_checkpoint

__all__ = ["read_weights", "transfer_weights", "transfer_summary"]

_CONTAINERS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "model.")


def read_weights(path: Path, *, sha256: str | None = None) -> dict[str, Any]:
    """Read weights to start a training from (pretraining -> fine-tuning).

    A skysieve checkpoint (``MODEL.pt`` with its card ``MODEL.json`` beside it) is
    read with :func:`workers.checkpoint.load_checkpoint` (sha256 checked against
    the card, and against ``sha256`` when given).  Any other file is a bare
    state dict (``.pt``/``.pth``, e.g. a user's ImageNet-style weights), read
    only with ``torch.load(..., weights_only=True)`` after its sha256 is compared
    with ``sha256`` when given; common containers (``{"state_dict": ...}``,
    ``{"model": ...}``) are unwrapped and ``module.``/``model.`` prefixes shared
    by every key are stripped.

    Parameters
    ----------
    path : Path
        The checkpoint (``.pt``, ``.json`` or stem) or the state-dict file.
    sha256 : str, optional
        Expected sha256 of the weights file; a mismatch is refused.

    Returns
    -------
    dict
        ``state`` (name -> tensor), ``path`` (absolute, of the weights file),
        ``sha256``, ``arch`` and ``classes`` (``None`` for a bare state dict).

    Raises
    ------
    workers.checkpoint.CheckpointError
        Missing file, sha256 mismatch, pickled code, no tensors, bad card.
    """
    path = Path(path)
    pt, card_path = checkpoint_paths(path)
    if path.suffix in (".pt", ".json", "") and card_path.is_file():
        with torch.random.fork_rng(devices=[]):  # building the model draws random numbers
            model, card = load_checkpoint(pt, sha256=sha256)
        return {"state": model.state_dict(), "path": str(pt.resolve()), "sha256": card.sha256,
                "arch": card.arch, "classes": list(card.classes)}
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; give a skysieve checkpoint "
                              "(MODEL.pt with MODEL.json beside it) or a local state-dict file "
                              "(.pt/.pth)")
    actual = file_sha256(path)
    if sha256 is not None and actual != str(sha256).strip().lower():
        raise CheckpointError(f"{path}: sha256 {actual} does not match the expected {sha256!r}; "
                              "the file changed or is not the one meant")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            blocked = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - only used to improve a message
            blocked = ""
        raise CheckpointError(f"{path}: refused, the file carries pickled code or objects that "
                              f"weights_only loading does not allow"
                              f"{f' (blocked globals: {blocked})' if blocked else ''}; save "
                              "the weights as a plain state_dict: "
                              "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch weights file ({first})") from exc
    return {"state": _unwrap_state(obj, path), "path": str(path.resolve()), "sha256": actual,
            "arch": None, "classes": None}


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, out of a common container, common prefixes stripped."""
    for _ in range(3):
        if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    state = ({k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
             if isinstance(obj, dict) else {})
    if not state:
        keys = f" with keys {', '.join(map(repr, list(obj)[:5]))}" if isinstance(obj, dict) else ""
        raise CheckpointError(f"{path}: no tensors found (got {type(obj).__name__}{keys}); "
                              "expected a state_dict, or {'state_dict': ...} or {'model': ...} "
                              "holding one")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-conv weight ``(O, I, kh, kw)`` to ``in_chans`` inputs, as timm does.

    One channel: the sum over the input channels (a grey image seen by an RGB
    filter).  Otherwise the channels are repeated cyclically to ``in_chans`` and
    scaled by ``I / in_chans``, keeping the response to uncorrelated inputs.
    """
    w = weight.float()
    if in_chans == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / w.shape[1])
        out = w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans)
    return out.to(weight.dtype)


def _head_keys(model: torch.nn.Module, num_classes: int) -> set[str]:
    """Weight and bias names of the classifier: the last Linear with ``num_classes`` outputs."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and m.out_features == num_classes:
            name = n
    return set() if name is None else {f"{name}.weight", f"{name}.bias"}


def transfer_weights(model: torch.nn.Module, source: dict[str, Any], *, arch: str,
                     classes: list[str] | None = None) -> dict[str, Any]:
    """Copy the matching tensors of ``source`` (from :func:`read_weights`) into ``model``.

    Every tensor whose name and shape match is copied.  The first convolution
    whose input-channel count differs (an RGB stem for a one-band model) is
    adapted by :func:`_adapt_input_conv`.  The classifier head is copied only
    when it describes the same classes: rows are reordered by name when the
    source names its classes in another order; a different class list (or
    count) leaves the head freshly initialised.

    Parameters
    ----------
    model : torch.nn.Module
        The freshly built model; changed in place.
    source : dict
        ``state``, ``path``, ``sha256``, ``arch``, ``classes`` as :func:`read_weights` returns.
    arch : str
        The model's registered name (for messages).
    classes : list of str, optional
        The model's classes in logit order.

    Returns
    -------
    dict
        ``path``, ``sha256``, ``arch`` (of the source, when known), ``loaded`` (number
        of tensors copied unchanged), ``adapted`` and ``skipped`` (names of the model's
        tensors adapted, and left as initialised).

    Raises
    ------
    workers.checkpoint.CheckpointError
        Fewer than half of the model's tensors could be taken from ``source``.
    """
    target = model.state_dict()
    state, src_classes = source["state"], source.get("classes")
    head = _head_keys(model, len(classes)) if classes else set()
    new: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    for name, dst in target.items():
        src = state.get(name)
        if src is None:
            continue
        if name in head and src_classes is not None and list(src_classes) != list(classes):
            if sorted(src_classes) != sorted(classes) or src.shape != dst.shape:
                continue  # other classes: the head stays freshly initialised
            src = src[[src_classes.index(c) for c in classes]]  # same classes, other order
        if src.shape == dst.shape:
            new[name] = src.to(dst.dtype)
        elif (not adapted and src.dim() == 4 and dst.dim() == 4 and src.shape[1] != dst.shape[1]
              and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]):
            new[name] = _adapt_input_conv(src, int(dst.shape[1])).to(dst.dtype)
            adapted.append(name)
    skipped = [k for k in target if k not in new]
    if len(new) < len(target) / 2:
        unmatched = ", ".join(skipped[:4]) + (" ..." if len(skipped) > 4 else "")
        theirs = ", ".join(list(state)[:3])
        said = f" (its card says arch {source['arch']!r})" if source.get("arch") else ""
        raise CheckpointError(
            f"{source['path']}: only {len(new)} of the {len(target)} tensors of arch {arch!r} "
            f"could be loaded from it{said}; unmatched: {unmatched}; the file has e.g. {theirs}. "
            f"Is it a checkpoint of arch {arch!r}?")
    model.load_state_dict(new, strict=False)
    return {"path": source["path"], "sha256": source["sha256"], "arch": source.get("arch"),
            "loaded": len(new) - len(adapted), "adapted": adapted, "skipped": skipped}


def transfer_summary(info: dict[str, Any]) -> str:
    """One line saying what weights were used and how, from :func:`transfer_weights`' result."""
    arch = f"arch {info['arch']}, " if info.get("arch") else ""
    fresh = ", ".join(info["skipped"][:4]) + (" ..." if len(info["skipped"]) > 4 else "")
    return (f"init from {info['path']} ({arch}sha256 {info['sha256'][:12]}): "
            f"{info['loaded']} tensors loaded, {len(info['adapted'])} adapted"
            f"{' (' + ', '.join(info['adapted']) + ')' if info['adapted'] else ''}, "
            f"{len(info['skipped'])} left as initialised{' (' + fresh + ')' if fresh else ''}")
