"""The model card: what a checkpoint is and how to use it, stored as ``MODEL.json`` beside it.

:mod:`workers.checkpoint` writes and reads cards with their weights; this module holds
the card itself and its validation, so it can be read without torch models.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.ood import DEFAULT_THRESHOLD

__all__ = ["ModelCard", "OOD_SUFFIX"]

#: Suffix of the out-of-distribution statistics beside ``MODEL.pt``: ``MODEL.ood.npz``.
OOD_SUFFIX = ".ood.npz"

_REQUIRED = ("arch", "classes")
_OMIT_EMPTY = ("input_scale", "ood")  # fields not written when empty


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class ModelCard:
    """What a checkpoint is and how to use it; stored as ``MODEL.json`` beside ``MODEL.pt``.

    Attributes
    ----------
    arch : str
        Registry name (``workers.models.list_models()``).
    classes : list of str
        Class names in logit order.
    in_chans, image_size : int
        Input bands and stamp side (pixels) the model expects.
    bands : list of str
        Band names in channel order.
    stretch : dict
        The normalisation of ``pipeline.imaging.preprocess`` (``{"name": "asinh", ...}``).
    temperature : float
        Logit temperature from calibration (1.0 until calibrated).
    sha256 : str
        Of the ``.pt`` file; filled in by :func:`save_checkpoint`.
    params : int
        Number of parameters; filled in by :func:`save_checkpoint`.
    training, metrics : dict
        Provenance (store, data checksum, split, seed, command...) and validation metrics.
    input_scale : dict
        How stamps are resampled before the model sees them
        (:mod:`pipeline.imaging.rescale`): ``{"mode": "psf", "fwhm_px": K}`` magnifies
        each stamp so its PSF spans ``K`` pixels; empty (and not written): as they are.
    ood : dict
        Out-of-distribution statistics, when fitted: ``file`` (the sidecar's name, beside
        the card), its ``sha256``, ``threshold`` (of ``ood_score``, default 0.99) and what
        was fitted on what (see :mod:`workers.ood`); empty (and not written) without them.
    skysieve_version, created : str
        Software version and ISO-8601 UTC time of writing.
    extra : dict
        Keys this version does not know; written back unchanged (forward compatibility).
    """

    arch: str
    classes: list[str]
    in_chans: int = 1
    image_size: int = 64
    bands: list[str] = field(default_factory=list)
    stretch: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    sha256: str = ""
    params: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    input_scale: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] = field(default_factory=dict)
    skysieve_version: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (logits)."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Return the card as a JSON-ready dict (``extra`` keys merged at the top level).

        ``ood`` and ``input_scale`` are left out when empty, so a card without them
        reads as before.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and not (f.name in _OMIT_EMPTY and not getattr(self, f.name))}
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def to_json(self) -> str:
        """Return the card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from a dict; unknown keys go to ``extra``.

        Raises
        ------
        ValueError
            A required key (``arch``, ``classes``) is missing or a field has the wrong type.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a model card is a JSON object, got {type(data).__name__}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"model card lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in data.items() if k in known}
        extra = dict(data.get("extra", {})) if isinstance(data.get("extra"), dict) else {}
        extra.update({k: v for k, v in data.items() if k not in known and k != "extra"})
        card = cls(**kw, extra=extra)
        card._validate()
        return card

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card from JSON text (see :meth:`from_dict`)."""
        return cls.from_dict(json.loads(text))

    def _validate(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"card 'arch' must be a model name, got {self.arch!r}")
        if (not isinstance(self.classes, list) or not self.classes
                or not all(isinstance(c, str) for c in self.classes)):
            raise ValueError(f"card 'classes' must be a non-empty list of names, got {self.classes!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"card 'classes' has duplicates: {self.classes!r}")
        for key in ("in_chans", "image_size", "params"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"card {key!r} must be a non-negative integer, got {value!r}")
        if not _is_number(self.temperature) or not self.temperature > 0:
            raise ValueError(f"card 'temperature' must be a positive number, got {self.temperature!r}")
        for key in ("stretch", "training", "metrics", "input_scale", "ood"):
            if not isinstance(getattr(self, key), dict):
                raise ValueError(f"card {key!r} must be an object, got {getattr(self, key)!r}")
        k = self.input_scale.get("fwhm_px")
        if self.input_scale and (self.input_scale.get("mode") != "psf" or not _is_number(k)
                                 or not 1.0 <= k <= 16.0):
            raise ValueError(f"card 'input_scale' must be mode 'psf' with fwhm_px in [1, 16] "
                             f"pixels, got {self.input_scale!r}")
        if self.ood:
            name, digest = self.ood.get("file"), self.ood.get("sha256")
            if (not isinstance(name, str) or not name.endswith(OOD_SUFFIX)
                    or Path(name).name != name):
                raise ValueError(f"card 'ood.file' must be a file name ending in {OOD_SUFFIX} "
                                 f"beside the card, got {name!r}")
            if not isinstance(digest, str) or len(digest) != 64:
                raise ValueError(f"card 'ood.sha256' must be a 64-hex-digit digest: {digest!r}")
            threshold = self.ood.get("threshold", DEFAULT_THRESHOLD)
            if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                    or not 0.0 <= threshold <= 1.0):
                raise ValueError(f"card 'ood.threshold' must be a fraction in [0, 1], got "
                                 f"{threshold!r}")

    @property
    def ood_threshold(self) -> float | None:
        """``ood_score`` above which a source is flagged, or ``None`` without OOD statistics."""
        return float(self.ood.get("threshold", DEFAULT_THRESHOLD)) if self.ood else None
